"""Reading plain Sequential and functional models: what `plan_model` passes, where it
stops and why; `ensure_built`."""

import keras
import numpy as np
import pytest

from keras_classpca.hybrid.graph import ensure_built
from keras_classpca.hybrid.planner import plan_model

L = keras.layers


def test_sequential_cnn_steps_pass_parameter_free_layers_and_stop_before_the_head():
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
    plan = plan_model(model)
    assert plan.names == ["c1", "c2", "d1"]
    assert [bn.name for bn, _, _ in plan.steps[0].batchnorms] == ["bn1"]
    assert {"pool", "act", "drop", "flat"} <= set(plan.passed)
    assert "'out'" in plan.stop_reason and "last layer with weights" in plan.stop_reason
    # A step's input and output are the symbolic tensors of this very model.
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype("float32")
    features = plan.feature_model(plan.steps[1].input)(x)
    expected = keras.Model(model.inputs[0], model.get_layer("pool").output)(x)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(features), keras.ops.convert_to_numpy(expected)
    )
    assert plan.steps[1].output is model.get_layer("c2").output


def test_functional_model_reads_as_the_sequential_one():
    inputs = keras.Input((10,))
    h = L.Dense(8, activation="relu", name="a")(inputs)
    h = L.Dropout(0.1, name="drop")(h)
    h = L.Dense(8, name="b")(h)
    h = L.BatchNormalization(name="bn")(h)
    outputs = L.Dense(2, activation="softmax", name="out")(h)
    plan = plan_model(keras.Model(inputs, outputs))
    assert plan.names == ["a", "b"]
    assert [bn.name for bn, _, _ in plan.steps[1].batchnorms] == ["bn"]
    assert "'out'" in plan.stop_reason


def test_lstm_and_embedding_end_the_plan_with_their_reason():
    lstm_model = keras.Sequential(
        [keras.Input((5, 3)), L.Dense(4, name="d"), L.LSTM(4, name="rnn"), L.Dense(2, name="out")]
    )
    plan = plan_model(lstm_model)
    assert plan.names == ["d"]
    assert "LSTM 'rnn'" in plan.stop_reason

    embedding_model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            L.Embedding(20, 4, name="emb"),
            L.Flatten(),
            L.Dense(8, name="d"),
            L.Dense(2, name="out"),
        ]
    )
    plan = plan_model(embedding_model)
    assert plan.names == []
    assert "Embedding 'emb'" in plan.stop_reason
    assert "d" in dict(plan.blocked) and "depends on Embedding 'emb'" in dict(plan.blocked)["d"]


def test_frozen_layer_with_weights_is_a_fixed_function():
    # A frozen (e.g. pretrained) non-solvable layer is a fixed feature map: passed.
    frozen = L.LayerNormalization(name="ln")
    frozen.trainable = False
    model = keras.Sequential(
        [keras.Input((6,)), frozen, L.Dense(4, name="d"), L.Dense(2, name="out")]
    )
    plan = plan_model(model)
    assert plan.names == ["d"] and "ln" in plan.passed


def test_model_whose_only_weighted_layer_is_the_head_has_no_steps():
    plan = plan_model(keras.Sequential([keras.Input((4,)), L.Flatten(), L.Dense(2, name="out")]))
    assert plan.steps == [] and "'out'" in plan.stop_reason
    with pytest.raises(TypeError, match="keras.Model"):
        plan_model(L.Dense(3))


def test_ensure_built_builds_unbuilt_sequential_and_rejects_unbuilt_subclass():
    model = keras.Sequential([L.Dense(4), L.Dense(2)])
    ensure_built(model, (7,))
    assert model.built and model.layers[0].kernel.shape == (7, 4)
    assert plan_model(model).names == [model.layers[0].name]

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


def test_a_custom_layer_made_frozen_is_a_fixed_function_too():
    # keras-io's TokenAndPositionEmbedding pattern: a layer holding two Embeddings, made
    # with `trainable=False`. Keras leaves its inner variables marked trainable but
    # trains none of them (`trainable_weights` is empty): it is passed, as a layer
    # frozen after construction is.
    class TokenAndPosition(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.token = L.Embedding(50, 8)
            self.position = L.Embedding(10, 8)

        def call(self, x):
            return self.token(x) + self.position(keras.ops.arange(keras.ops.shape(x)[-1]))

    embedding = TokenAndPosition(trainable=False, name="tp")
    inputs = keras.Input((10,), dtype="int32")
    h = L.Dense(6, name="proj")(embedding(inputs))
    model = keras.Model(inputs, L.Dense(3)(L.Dense(4)(L.GlobalAveragePooling1D()(h))))
    assert embedding.trainable_weights == [] and any(w.trainable for w in embedding.weights)
    assert plan_model(model).names[0] == "proj"
