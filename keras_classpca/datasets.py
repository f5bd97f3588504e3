"""Data sets for the demo, the command-line tool and the benchmarks — offline first.

`load_fashion_mnist` calls the real `keras.datasets.fashion_mnist.load_data()`. That
function downloads only when its cache (`$KERAS_HOME/datasets/fashion-mnist`, default
`~/.keras`) lacks the four IDX files; when Debian's `dataset-fashion-mnist` package
is installed we first link its files into that cache, so no network is ever needed.
"""

import os
from pathlib import Path

import numpy as np

from keras_classpca._optional import import_optional

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)
DATASET_NAMES = ("fashion_mnist", "digits")


def _keras_cache_dir():
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(keras_home) / "datasets" / "fashion-mnist"


def _seed_keras_cache(source_dir):
    cache = _keras_cache_dir()
    missing = [name for name in FASHION_MNIST_FILES if not (cache / name).exists()]
    if not missing or not all((source_dir / name).exists() for name in missing):
        return
    cache.mkdir(parents=True, exist_ok=True)
    for name in missing:
        try:
            (cache / name).symlink_to(source_dir / name)
        except OSError:  # e.g. no symlinks on this filesystem: copy instead
            (cache / name).write_bytes((source_dir / name).read_bytes())


def load_fashion_mnist(source_dir=None):
    """Fashion-MNIST as `((x_train, y_train), (x_test, y_test))`, uint8 images 28×28.

    Args:
        source_dir: a folder holding the four standard IDX `.gz` files. Defaults to
            `$KERAS_CLASSPCA_FASHION_MNIST`, then Debian's
            `/usr/share/datasets/fashion-mnist` (`apt-get install dataset-fashion-mnist`).

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()  # doctest: +SKIP
    >>> x_train.shape  # doctest: +SKIP
    (60000, 28, 28)
    """
    import keras

    source_dir = Path(
        source_dir or os.environ.get("KERAS_CLASSPCA_FASHION_MNIST", DEBIAN_FASHION_MNIST)
    )
    _seed_keras_cache(source_dir)
    cache = _keras_cache_dir()
    if not all((cache / name).exists() for name in FASHION_MNIST_FILES) and not os.environ.get(
        "KERAS_CLASSPCA_ALLOW_DOWNLOAD"
    ):
        raise FileNotFoundError(
            "Fashion-MNIST is not available offline. Install Debian's package "
            "(`apt-get install dataset-fashion-mnist`), point "
            "KERAS_CLASSPCA_FASHION_MNIST at a folder with the four IDX .gz files, or set "
            "KERAS_CLASSPCA_ALLOW_DOWNLOAD=1 to let Keras download it."
        )
    return keras.datasets.fashion_mnist.load_data()


def load_digits():
    """scikit-learn's bundled 8×8 digits (1,797 images, shipped inside the wheel).

    Returns `((x_train, y_train), (x_test, y_test))` with float32 images in [0, 1] of
    shape `(n, 8, 8)` and a fixed, stratified 75/25 split.
    """
    sklearn_datasets = import_optional("sklearn.datasets", "The `digits` data set")
    bunch = sklearn_datasets.load_digits()
    images = (bunch.images / 16.0).astype("float32")
    labels = bunch.target.astype("int64")
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test[rng.choice(members, len(members) // 4, replace=False)] = True
    return (images[~test], labels[~test]), (images[test], labels[test])


def load_tfds(name, split=("train", "test"), data_dir=None):
    """A TFDS data set already present locally (`download=False`), as numpy arrays."""
    tfds = import_optional("tensorflow_datasets", "`load_tfds`")
    parts = tfds.as_numpy(
        tfds.load(name, split=list(split), as_supervised=True, batch_size=-1,
                  download=False, data_dir=data_dir)
    )
    return tuple((np.asarray(x), np.asarray(y)) for x, y in parts)


def load_dataset(name):
    """`"fashion_mnist"`, `"digits"`, or a locally available TFDS name.

    Returns `((x_train, y_train), (x_test, y_test))`; images get a channel axis and
    float32 values in [0, 1].
    """
    if name == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    elif name == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits()
    else:
        try:
            (x_train, y_train), (x_test, y_test) = load_tfds(name)
        except Exception as error:
            # TFDS's own message lists its whole catalogue (hundreds of lines): keep
            # only its first line.
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise ValueError(
                f"Unknown or unavailable data set {name!r}: use one of {DATASET_NAMES} "
                f"or the name of a TFDS data set prepared locally ({first_line})."
            ) from error

    def prepare(images):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype == np.uint8:
            return images.astype("float32") / 255.0
        return images.astype("float32")

    return (prepare(x_train), np.asarray(y_train)), (prepare(x_test), np.asarray(y_test))
