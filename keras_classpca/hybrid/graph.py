"""Read an ordinary Keras model as the chain of layers that `hybridize` can walk.

The walk starts at the model's input and follows single-input, single-output layers in
topological order. Dense and Conv2D layers are candidates for solving; parameter-free
layers (activations, pooling, Flatten, Reshape, Dropout, ...) and BatchNormalization
are passed through; the walk stops, with a one-sentence reason, at the first layer it
cannot pass (a branch, a layer with weights it cannot solve) and before the model's
last layer with weights, which is always trained.
"""

import dataclasses

import keras
import numpy as np

from keras_classpca.core.data_adapter import as_standard_float
from keras_classpca.layers.geometry import unsolvable_reason

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


@dataclasses.dataclass
class ModelChain:
    """The walkable prefix of a model.

    Attributes:
        model_input: the model's symbolic input.
        layers: the chain's layers in order (no InputLayer).
        inputs: the symbolic input tensor of each chain layer in this model.
        outputs: the symbolic output tensor of each chain layer in this model.
        candidates: indices into `layers` of the Dense/Conv2D layers that can be solved.
        stop_reason: why the walk ended where it did (None if it reached the end).
    """

    model_input: object
    layers: list
    inputs: list
    outputs: list
    candidates: list
    stop_reason: str = None

    def feature_model(self, tensor):
        """A Keras model from the model's input to a symbolic `tensor` of the chain."""
        return keras.Model(self.model_input, tensor)


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


def _has_weights(layer):
    return bool(layer.weights)


def _chain_reason(layer):
    """Why the linear chain cannot solve `layer` (it solves Dense and ungrouped Conv2D)."""
    name = f"{type(layer).__name__} '{layer.name}'"
    if isinstance(layer, keras.layers.Conv2D) and layer.groups != 1:
        return (
            f"{name} is a grouped convolution (groups={layer.groups}); only groups=1 is "
            "solvable."
        )
    if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        return (
            f"{name} is not a Dense or Conv2D layer; class-PCA solves only those "
            "(other layers with weights end the solved prefix)."
        )
    return unsolvable_reason(layer)


def draws_random(layer):
    """Whether `layer` draws random numbers when training (dropout, noise, augmentation):
    it holds a `keras.random.SeedGenerator`, or is one of `RANDOM_IN_TRAINING`."""
    return isinstance(layer, RANDOM_IN_TRAINING) or any(
        isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()
    )


def _graph(model):
    # A Sequential model keeps its layer graph in an inner Functional.
    return getattr(model, "_functional", None) or model


def _node_key(layer, index):
    """Keras' key of a layer's `index`-th call in a functional graph's `_nodes`: the
    one private Keras detail here, with its current formula when Keras moves it."""
    try:
        from keras.src.ops.function import make_node_key
    except ImportError:  # pragma: no cover - a Keras without it
        return f"{id(layer)}_ib-{index}"
    return make_node_key(layer, index)


def _node_in(graph, layer):
    """The node of `layer` that belongs to `graph` (a layer may be shared by models)."""
    nodes = [
        node
        for index, node in enumerate(layer._inbound_nodes)
        if _node_key(layer, index) in graph._nodes
    ]
    return nodes[0] if len(nodes) == 1 else None


def read_chain(model):
    """Walk `model` from its input; see the module docstring."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not has_layer_graph(model):
        raise no_graph_error(model)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            "`hybridize` needs a model with one input and one output; this model has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    graph = _graph(model)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    weighted = [i for i, layer in enumerate(layers) if _has_weights(layer)]
    last_weighted = weighted[-1] if weighted else None
    chain = ModelChain(model.inputs[0], [], [], [], [])
    previous_output = model.inputs[0]
    for i, layer in enumerate(layers):
        name = f"{type(layer).__name__} '{layer.name}'"
        node = _node_in(graph, layer)
        if node is None or len(node.input_tensors) != 1 or len(node.output_tensors) != 1 or (
            node.input_tensors[0] is not previous_output
        ):
            chain.stop_reason = (
                f"the model branches or merges at {name}; hybridize solves the linear "
                "chain of layers from the input."
            )
            return chain
        if i == last_weighted:
            chain.stop_reason = f"{name} is the model's last layer with weights (always trained)."
            return chain
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            reason = _chain_reason(layer)
            if reason:
                chain.stop_reason = reason
                return chain
            chain.candidates.append(len(chain.layers))
        elif _has_weights(layer) and not isinstance(layer, keras.layers.BatchNormalization):
            if any(w.trainable for w in layer.weights):
                chain.stop_reason = _chain_reason(layer)
                return chain
        chain.layers.append(layer)
        chain.inputs.append(node.input_tensors[0])
        chain.outputs.append(node.output_tensors[0])
        previous_output = node.output_tensors[0]
    return chain


def predict_batch(model, x, pad_to):
    """`model.predict_on_batch(x)` as numpy, padding a shorter batch to `pad_to` rows.

    A compiled predict function is traced again for every new input shape; padding
    the last, shorter batch of a pass to the pass's first batch size keeps one trace
    per model.
    """
    n = len(x)
    if n < pad_to:
        x = np.concatenate([x, np.zeros((pad_to - n,) + x.shape[1:], dtype=x.dtype)])
    # Low-precision outputs (a `mixed_bfloat16` policy) become float32 for the statistics.
    return as_standard_float(keras.ops.convert_to_numpy(model.predict_on_batch(x)))[:n]
