"""read_chain / ensure_built: which layers of a Keras model hybridize can walk and solve."""

import keras
import numpy as np
import pytest

from keras_classpca.hybrid.graph import ensure_built, read_chain

L = keras.layers


def _names(chain, indices=None):
    layers = chain.layers if indices is None else [chain.layers[i] for i in indices]
    return [layer.name for layer in layers]


def test_sequential_cnn_candidates_pass_through_and_stop_before_last_weighted_layer():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, activation="relu", name="c1"),
            L.BatchNormalization(name="bn1"),
            L.MaxPooling2D(name="pool"),
            L.Conv2D(4, 2, name="c2"),
            L.Activation("relu", name="act"),
            L.Dropout(0.3, name="drop"),
            L.Flatten(name="flat"),
            L.Dense(6, name="d1"),
            L.Dense(3, name="out"),
        ]
    )
    chain = read_chain(model)
    assert _names(chain) == ["c1", "bn1", "pool", "c2", "act", "drop", "flat", "d1"]
    assert _names(chain, chain.candidates) == ["c1", "c2", "d1"]
    assert "out" in chain.stop_reason and "last layer with weights" in chain.stop_reason
    # inputs/outputs are the symbolic tensors of the layers, consecutive in the chain.
    assert chain.inputs[0] is model.inputs[0]
    for i in range(1, len(chain.layers)):
        assert chain.inputs[i] is chain.outputs[i - 1]
    # feature_model reaches an intermediate tensor of this very model.
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype("float32")
    features = chain.feature_model(chain.outputs[2])(x)
    expected = keras.Model(model.inputs[0], model.get_layer("pool").output)(x)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(features), keras.ops.convert_to_numpy(expected)
    )


def test_functional_chain_matches_sequential_reading():
    inputs = keras.Input((10,))
    h = L.Dense(8, activation="relu", name="a")(inputs)
    h = L.Dropout(0.1, name="drop")(h)
    h = L.Dense(8, name="b")(h)
    h = L.BatchNormalization(name="bn")(h)
    outputs = L.Dense(2, activation="softmax", name="out")(h)
    chain = read_chain(keras.Model(inputs, outputs))
    assert _names(chain) == ["a", "drop", "b", "bn"]
    assert _names(chain, chain.candidates) == ["a", "b"]
    assert "out" in chain.stop_reason


@pytest.mark.parametrize(
    "make_layer, kind, words",
    [
        (lambda: L.DepthwiseConv2D(3, name="stop"), "DepthwiseConv2D", "not a Dense or Conv2D"),
        (lambda: L.Conv2D(4, 3, groups=2, name="stop"), "Conv2D", "grouped convolution (groups=2)"),
        (lambda: L.SeparableConv2D(4, 3, name="stop"), "SeparableConv2D", "not a Dense or Conv2D"),
        (lambda: L.LayerNormalization(name="stop"), "LayerNormalization", "not a Dense or Conv2D"),
    ],
)
def test_unsupported_conv_like_layers_stop_the_prefix(make_layer, kind, words):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(4, 3, name="ok"),
            make_layer(),
            L.Conv2D(4, 3, name="after"),
            L.Flatten(),
            L.Dense(2, name="out"),
        ]
    )
    chain = read_chain(model)
    assert _names(chain, chain.candidates) == ["ok"]  # nothing after the stop
    assert _names(chain) == ["ok"]
    assert f"{kind} 'stop'" in chain.stop_reason
    assert words in chain.stop_reason


def test_lstm_and_embedding_stop_the_prefix():
    lstm_model = keras.Sequential(
        [keras.Input((5, 3)), L.Dense(4, name="d"), L.LSTM(4, name="rnn"), L.Dense(2, name="out")]
    )
    chain = read_chain(lstm_model)
    assert _names(chain, chain.candidates) == ["d"]
    assert "LSTM 'rnn'" in chain.stop_reason and "not a Dense or Conv2D" in chain.stop_reason

    embedding_model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            L.Embedding(20, 4, name="emb"),
            L.Flatten(),
            L.Dense(8, name="d"),
            L.Dense(2, name="out"),
        ]
    )
    chain = read_chain(embedding_model)
    assert chain.candidates == [] and chain.layers == []
    assert "Embedding 'emb'" in chain.stop_reason


def test_frozen_layer_with_weights_is_passed_through():
    # A frozen (e.g. pretrained) non-solvable layer is a fixed feature map: the walk continues.
    frozen = L.LayerNormalization(name="ln")
    frozen.trainable = False
    model = keras.Sequential(
        [keras.Input((6,)), frozen, L.Dense(4, name="d"), L.Dense(2, name="out")]
    )
    chain = read_chain(model)
    assert _names(chain) == ["ln", "d"]
    assert _names(chain, chain.candidates) == ["d"]


def test_branching_functional_model_stops_at_the_branch():
    inputs = keras.Input((10,))
    a = L.Dense(8, name="a")(inputs)
    b = L.Dense(8, name="b")(a)
    c = L.Dense(8, name="c")(a)  # second consumer of `a`: not on the chain
    merged = L.Add(name="add")([b, c])
    outputs = L.Dense(2, name="out")(merged)
    chain = read_chain(keras.Model(inputs, outputs))
    assert _names(chain, chain.candidates) == ["a", "b"]
    assert "branches or merges" in chain.stop_reason and "'c'" in chain.stop_reason


def test_model_with_skip_from_input_stops_before_the_merge():
    inputs = keras.Input((10,))
    a = L.Dense(10, name="a")(inputs)
    merged = L.Add(name="add")([inputs, a])
    outputs = L.Dense(2, name="out")(merged)
    chain = read_chain(keras.Model(inputs, outputs))
    assert _names(chain, chain.candidates) == ["a"]
    assert "Add 'add'" in chain.stop_reason and "branches or merges" in chain.stop_reason


def test_shared_layer_used_twice_stops_the_walk():
    shared = L.Dense(6, name="shared")
    inputs = keras.Input((6,))
    h = shared(shared(inputs))
    outputs = L.Dense(2, name="out")(h)
    chain = read_chain(keras.Model(inputs, outputs))
    assert chain.candidates == []
    assert "shared" in chain.stop_reason


def test_model_whose_only_weighted_layer_is_the_output_has_no_candidates():
    model = keras.Sequential([keras.Input((4,)), L.Flatten(), L.Dense(2, name="out")])
    chain = read_chain(model)
    assert chain.candidates == []
    assert "'out'" in chain.stop_reason


def test_multi_input_model_and_non_model_rejected():
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], L.Dense(1)(L.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="one input and one output; this model has 2 inputs"):
        read_chain(model)
    with pytest.raises(TypeError, match="keras.Model"):
        read_chain(L.Dense(3))


def test_ensure_built_builds_unbuilt_sequential_and_rejects_unbuilt_subclass():
    model = keras.Sequential([L.Dense(4), L.Dense(2)])
    ensure_built(model, (7,))
    assert model.built and model.layers[0].kernel.shape == (7, 4)
    assert [layer.name for layer in read_chain(model).layers] == [model.layers[0].name]

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    # Built or not, a subclassed model has no layer graph: the error says so and
    # names the two ways out (issue: "must be built" was wrong advice after a call).
    called = Sub()
    called(np.zeros((2, 3), "float32"))
    for model in (Sub(), called):
        with pytest.raises(
            ValueError,
            match="subclassed keras.Model: it has no layer graph"
            r".*build it functionally.*ClassPCAInitializer.*adapt",
        ):
            ensure_built(model, (3,))


def test_node_key_is_the_key_of_the_layers_call_in_its_graph():
    # The one private Keras detail read_chain relies on (keras_classpca.hybrid.graph).
    from keras_classpca.hybrid.graph import _node_key

    inputs = keras.Input((4,))
    shared = keras.layers.Dense(3, name="shared")
    first = keras.Model(inputs, shared(inputs))
    second_inputs = keras.Input((4,))
    second = keras.Model(second_inputs, shared(second_inputs))
    assert _node_key(shared, 0) in first._nodes and _node_key(shared, 1) not in first._nodes
    assert _node_key(shared, 1) in second._nodes and _node_key(shared, 0) not in second._nodes
