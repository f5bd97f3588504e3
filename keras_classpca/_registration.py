"""Register the Keras-serializable classes once Keras is imported, without importing it.

`keras.saving.load_model` finds `keras_classpca>ClassPCADense` only after the module
defining the class has run its `register_keras_serializable` decorator. Importing those
modules from `keras_classpca/__init__.py` would import Keras and its backend
(TensorFlow: seconds) on every `import keras_classpca`, the CLI's `--help` included.
Deserialization needs Keras anyway, so the registration waits for Keras: at once if
it is already imported, otherwise right after its import finishes (a one-shot import
hook that removes itself).
"""

import importlib.abc
import importlib.util
import sys

_LAYERS = "keras_classpca.layers"  # its __init__ imports every serializable class


def register_serializables():
    """Import the modules that define the serializable classes (idempotent)."""
    layers = sys.modules.get(_LAYERS)
    if layers is not None and not getattr(layers, "_READY", False):
        return  # being imported right now: its __init__ finishes the registration
    importlib.import_module(_LAYERS)


class _AfterKerasImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `keras` with the other finders, runs it, then registers our classes."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        self._keras_loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._keras_loader.create_module(spec)

    def exec_module(self, module):
        self._keras_loader.exec_module(module)
        register_serializables()


def register_when_keras_loads():
    if "keras" in sys.modules:
        register_serializables()
    elif not any(isinstance(finder, _AfterKerasImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())
