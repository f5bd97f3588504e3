"""Optional dependencies: imported on use, with an error that names the extra to install."""

import importlib

# Module -> the keras-classpca extra that installs it.
EXTRAS = {
    "tensorflow": "tensorflow",
    "keras_tuner": "tuner",
    "tensorflow_datasets": "tfds",
    "matplotlib": "plots",
    "sklearn": "digits",
}


def import_optional(module, purpose):
    """Import `module` (its top-level package must be in `EXTRAS`), or raise an
    `ImportError` saying which extra `purpose` needs.

    >>> import_optional("numpy.linalg", "linear algebra").__name__
    'numpy.linalg'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        extra = EXTRAS.get(package)
        install = f"pip install 'keras-classpca[{extra}]'" if extra else f"pip install {package}"
        raise ImportError(
            f"{purpose} needs `{package}`, which is not installed: {install}"
        ) from error
