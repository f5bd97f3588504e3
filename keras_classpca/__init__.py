"""keras-classpca: compute the lower layers of a Keras network from data.

Class-based PCA weights (Dehmamy, Rohani & Katsaggelos, arXiv 1703.04757): solve the
bottom layers from a fraction of the data, freeze them, train the rest with `fit()`.

    report = keras_classpca.hybridize(model, (x, y))
    model.compile(...)
    keras_classpca.fit_top(model, x, y, epochs=3)

Public names load on first use (PEP 562), so `import keras_classpca` costs no Keras
backend, KerasTuner, TFDS or matplotlib import. The Keras-serializable classes
(`ClassPCADense`, the `ClassPCAConv*`, `ClassPCADepthwiseConv*` and
`ClassPCASeparableConv*` layers, `ClassPCAInitializer`, `NormalizedReLU`) are
registered as soon as Keras itself is imported, so `keras.saving.load_model` finds
them after `import keras_classpca` with no `custom_objects`.
"""

import importlib
import importlib.util

from keras_classpca._registration import register_when_keras_loads

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ClassPCA": "keras_classpca.core.class_pca",
    "ClassSketch": "keras_classpca.core.sketch",
    "ClassStatistics": "keras_classpca.core.statistics",
    "ClassPCAInitializer": "keras_classpca.layers.class_pca_initializer",
    "ClassPCADense": "keras_classpca.layers.class_pca_dense",
    "ClassPCAConv1D": "keras_classpca.layers.class_pca_conv1d",
    "ClassPCAConv2D": "keras_classpca.layers.class_pca_conv2d",
    "ClassPCAConv3D": "keras_classpca.layers.class_pca_conv3d",
    "ClassPCADepthwiseConv1D": "keras_classpca.layers.class_pca_depthwise_conv",
    "ClassPCADepthwiseConv2D": "keras_classpca.layers.class_pca_depthwise_conv",
    "ClassPCASeparableConv1D": "keras_classpca.layers.class_pca_separable_conv",
    "ClassPCASeparableConv2D": "keras_classpca.layers.class_pca_separable_conv",
    "NormalizedReLU": "keras_classpca.layers.normalized_relu",
    "hybridize": "keras_classpca.hybrid.builder",
    "freeze_solved_layers": "keras_classpca.hybrid.builder",
    "AutoRule": "keras_classpca.hybrid.policy",
    "plan_model": "keras_classpca.hybrid.planner",
    "fit_top": "keras_classpca.hybrid.training",
    "PrefixOutputCache": "keras_classpca.hybrid.training",
    "fit_progressive": "keras_classpca.hybrid.progressive",
    "SettleOnChange": "keras_classpca.hybrid.settling",
    "FreezeOut": "keras_classpca.hybrid.settling",
    "HybridReport": "keras_classpca.hybrid.report",
    "ProgressiveReport": "keras_classpca.hybrid.progressive",
    "Plan": "keras_classpca.hybrid.planner",
    "NotFittedError": "keras_classpca.core.class_pca",
    "OvercompleteWarning": "keras_classpca.core.class_pca",
    "UnsolvableDataError": "keras_classpca.layers.geometry",
    "SolvedLayer": "keras_classpca.hybrid.report",
    "SolveCache": "keras_classpca.hybrid.cache",
    "export_for_serving": "keras_classpca.serving.export",
    "strip_class_pca": "keras_classpca.serving.strip",
    "artifact_sizes": "keras_classpca.serving.requests",
    "signature_info": "keras_classpca.serving.requests",
    "predict_request_body": "keras_classpca.serving.requests",
    "TimescaleMonitor": "keras_classpca.diagnostics.timescale_monitor",
    "AlignmentMonitor": "keras_classpca.diagnostics.alignment_monitor",
    "HybridHyperModel": "keras_classpca.tuner",
}
# Subpackages reachable as attributes (`keras_classpca.theory.gram_spectrum`).
_SUBMODULES = (
    "cli",
    "core",
    "datasets",
    "diagnostics",
    "distributed",
    "hybrid",
    "layers",
    "serving",
    "theory",
    "tuner",
)

# Names whose modules need an optional dependency (the package that must be
# importable): out of `__all__`, so that `from keras_classpca import *`, `help()` and
# `inspect.getmembers` work on a core install (and import no TensorFlow under JAX);
# `dir()` lists them where the dependency is installed.
_NEEDS = {"HybridHyperModel": "keras_tuner", "tuner": "keras_tuner",
          "distributed": "tensorflow"}

__all__ = sorted(set(_EXPORTS) - set(_NEEDS)) + [
    name for name in _SUBMODULES if name not in _NEEDS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    available = {name for name, package in _NEEDS.items()
                 if importlib.util.find_spec(package) is not None}
    return sorted(set(globals()) | set(__all__) | available)


register_when_keras_loads()
