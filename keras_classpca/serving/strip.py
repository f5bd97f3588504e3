"""`strip_class_pca(model)`: the same model in plain Keras layers, for deployment.

A model built with `ClassPCADense` / `ClassPCAConv*` layers, or with a
`ClassPCAInitializer` in a layer's config, needs `keras_classpca` installed to load
from `.keras`. Once its weights are computed (and trained), nothing of the package is
needed to run it: as `tfmot.sparsity.keras.strip_pruning` does for pruning wrappers,
`strip_class_pca` returns a clone in which every ClassPCA layer is its Keras parent
(`keras.layers.Dense`, `Conv2D`, ...) with the same configuration, `trainable` flag
and weights, and every `ClassPCAInitializer` in a config is the layer's default
initializer (the weights are copied anyway). Layers with no Keras equivalent
(`NormalizedReLU`) stay as they are.
"""

import inspect

import keras

from keras_classpca.hybrid.graph import has_layer_graph, no_graph_error

PACKAGE = "keras_classpca"


def _keras_parent(layer):
    """The first Keras layer class among `layer`'s bases if `layer` is a class of this
    package (`ClassPCADense` -> `keras.layers.Dense`); None otherwise."""
    if not type(layer).__module__.startswith(PACKAGE):
        return None
    for base in type(layer).__mro__[1:]:
        if base.__module__.startswith("keras.") and issubclass(base, keras.layers.Layer):
            return None if base is keras.layers.Layer else base
    return None


def _names_this_package(value):
    if isinstance(value, dict):
        return str(value.get("module", "")).startswith(PACKAGE) or any(
            _names_this_package(v) for v in value.values())
    return False


def _plain_initializers(config, layer_class):
    """`config` with every initializer of this package replaced by the layer class's
    default (or Glorot uniform / zeros where the class has none)."""
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(layer_class.__init__).parameters.items()}
    config = dict(config)
    for key, value in config.items():
        if key.endswith("_initializer") and _names_this_package(value):
            default = defaults.get(key, inspect.Parameter.empty)
            if default is inspect.Parameter.empty or default is None:
                default = "zeros" if key.startswith("bias") else "glorot_uniform"
            config[key] = default
    return config


def _plain_weights(layer):
    """The layer's weights without the `adapted` flag of a ClassPCA layer."""
    adapted = getattr(layer, "_adapted", None)
    return [variable.numpy() for variable in layer.weights if variable is not adapted]


def strip_class_pca(model):
    """A clone of `model` in plain Keras layers, with the same weights.

    Every ClassPCA layer becomes its Keras parent class (same config, `trainable` flag
    and weights, without the `adapted` flag); every `ClassPCAInitializer` in a layer's
    config becomes that layer's default initializer. The clone loads from `.keras`
    without `keras_classpca` installed. Like `keras.models.clone_model`, it is not
    compiled. Functional and Sequential models (nested ones too); subclassed models
    have no layer graph to clone.

    Args:
        model: a built functional or Sequential Keras model.

    Returns:
        The plain-Keras clone.

    Example:

    >>> import keras, numpy as np
    >>> from keras_classpca import ClassPCADense
    >>> x = np.random.default_rng(0).normal(size=(90, 6)).astype("float32")
    >>> solved = ClassPCADense(3, activation="relu")
    >>> solved.adapt((x, np.arange(90) % 3))
    >>> model = keras.Sequential([keras.Input((6,)), solved, keras.layers.Dense(3)])
    >>> plain = strip_class_pca(model)
    >>> type(plain.layers[0]).__name__, plain.layers[0].trainable
    ('Dense', False)
    >>> bool(np.array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0)))
    True
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not has_layer_graph(model):
        raise no_graph_error(model, "strip_class_pca")
    if not model.built:
        raise ValueError("`model` must be built: give it a `keras.Input` or call it on data.")
    pairs = []

    def clone_layer(layer):
        parent = _keras_parent(layer)
        layer_class = parent or type(layer)
        config = parent.get_config(layer) if parent is not None else layer.get_config()
        clone = layer_class.from_config(_plain_initializers(config, layer_class))
        pairs.append((layer, clone))
        return clone

    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for layer, twin in pairs:
        weights = _plain_weights(layer)
        if weights:
            twin.set_weights(weights)
    return clone
