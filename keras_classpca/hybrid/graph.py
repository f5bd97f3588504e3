"""Helpers for reading Keras models: whether a model has a layer graph (the error
that names the ways out when it has not), building an unbuilt Sequential model,
which layers draw random numbers in training, and batched predictions.

Which layers `hybridize` solves, in which order, is the planner's
(`keras_classpca.hybrid.planner`).
"""

import weakref

import keras
import numpy as np

from keras_classpca.core.data_adapter import as_standard_float

# Layers whose training-time behaviour is random: the prefix stops being
# deterministic there (matters for caching the prefix's output).
RANDOM_IN_TRAINING = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


def has_layer_graph(model):
    """Whether `model` is Sequential or functional (a subclassed model has no graph)."""
    return isinstance(model, keras.Sequential) or getattr(model, "inputs", None) is not None


def no_graph_error(model, what="hybridize"):
    """The error for a subclassed model: it has no layer graph to walk."""
    return ValueError(
        f"`model` ({type(model).__name__}) is a subclassed keras.Model: it has no layer "
        f"graph (no `model.inputs`, even after it was called), so {what} cannot see which "
        "layer feeds which. Either build it functionally (`keras.Input` -> layers -> "
        "`keras.Model(inputs, outputs)`), or solve its layers one by one: "
        "`ClassPCAInitializer.from_data(...)` as a layer's kernel initializer, or the "
        "`ClassPCA*` layers (`ClassPCADense`, `ClassPCAConv2D`, ...) and their "
        "`adapt((x, y))`."
    )


def ensure_built(model, sample_shape, what="hybridize"):
    """Build an unbuilt Sequential model for inputs of `sample_shape` (no batch)."""
    if not model.built or not getattr(model, "inputs", None):
        if not isinstance(model, keras.Sequential):
            if not has_layer_graph(model):
                raise no_graph_error(model, what)
            raise ValueError(
                "`model` must be built: give it a `keras.Input` or call it once on data."
            )
        model.build((None,) + tuple(sample_shape))


def draws_random(layer):
    """Whether `layer` draws random numbers when training (dropout, noise, augmentation):
    it holds a `keras.random.SeedGenerator`, or is one of `RANDOM_IN_TRAINING`."""
    return isinstance(layer, RANDOM_IN_TRAINING) or any(
        isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()
    )


def normalized_axes(layer, rank):
    """The axes a BatchNormalization `layer` normalizes over a tensor of `rank`, as
    non-negative indices (its `axis` may be one int, negative)."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return [axis % rank for axis in axes]


# Under TensorFlow, `predict_on_batch` traces a predict function for every new model
# (10-50 ms), then runs a batch about twice as fast as an eager call. A solve builds a
# model per layer and per probe, many run on a few batches only (the cutoff decision's
# sample, small data): those are cheaper called eagerly, and their traces would add up
# to TensorFlow's "N out of the last M calls triggered tf.function retracing" warning.
# So the first `EAGER_BATCHES` batches of a model are run eagerly; a longer pass traces
# once. (JAX compiles each eager op on its first call, torch has no trace: they always
# use `predict_on_batch`.)
#
# Batches whose shapes vary (sequences padded per batch, images of several sizes)
# would trace the predict function again at every new shape, and so would a function
# traced for any size, once per model: TensorFlow counts the traces of every model's
# function together. A model whose batches change shape runs eagerly throughout.
EAGER_BATCHES = 8
_eager_calls = weakref.WeakKeyDictionary()
_batch_shapes = weakref.WeakKeyDictionary()  # model -> its first batch's shapes, or None


def predict_on_batch(model, x):
    """`model.predict_on_batch(x)`, called eagerly under TensorFlow (backend tensors
    then, not numpy) for a model's first `EAGER_BATCHES` batches and for all of them
    once its batches change shape."""
    if keras.backend.backend() == "tensorflow":
        shapes = keras.tree.map_structure(lambda value: tuple(np.shape(value)), x)
        first = _batch_shapes.setdefault(model, shapes)
        if first != shapes:
            _batch_shapes[model] = first = None  # varying: never traced
        calls = _eager_calls.get(model, 0)
        if calls < EAGER_BATCHES or first is None:
            _eager_calls[model] = calls + 1
            return model(x, training=False)
    return model.predict_on_batch(x)


def predict_batch(model, x, pad_to):
    """`model.predict_on_batch(x)` as numpy, padding a shorter batch to `pad_to` rows
    (copies of its first row; their outputs are dropped).

    A compiled predict function is traced again for every new input shape; padding
    the last, shorter batch of a pass to the pass's first batch size keeps one trace
    per model.
    """
    n = len(x)
    if n < pad_to:
        # Copies of the first row, not zeros: any dtype (strings too) stays valid input.
        x = np.concatenate([x, np.repeat(x[:1], pad_to - n, axis=0)])
    # Low-precision outputs (a `mixed_bfloat16` policy) become float32 for the statistics.
    # A model of several outputs (a tensor and its mask) gives a list of arrays.
    return keras.tree.map_structure(
        lambda value: as_standard_float(keras.ops.convert_to_numpy(value))[:n],
        predict_on_batch(model, x))
