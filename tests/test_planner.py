"""The graph planner: solvable layers of functional graphs in topological order
(residual blocks with projection shortcuts, nested backbones, preprocessing and
augmentation layers, BatchNormalization anywhere), why the rest is blocked, subclassed
models, keras.applications — through public Keras API."""

import socket

import keras
import numpy as np
import pytest

from keras_classpca.hybrid.planner import FeatureModel, outer_call_tensors, plan_model

L = keras.layers


def _np(t):
    return keras.ops.convert_to_numpy(t)


def residual_cnn(input_shape=(12, 12, 3), classes=3):
    """Stem + two basic blocks, the second with a projection shortcut, Conv-BN-ReLU."""
    inputs = keras.Input(input_shape)
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU()(x)
    # block 1: identity shortcut
    y = L.Conv2D(8, 3, padding="same", name="b1_c1")(x)
    y = L.BatchNormalization(name="b1_bn1")(y)
    y = L.ReLU()(y)
    y = L.Conv2D(8, 3, padding="same", name="b1_c2")(y)
    x = L.ReLU()(L.Add(name="b1_add")([x, y]))
    # block 2: strided, projection shortcut
    y = L.Conv2D(16, 3, strides=2, padding="same", name="b2_c1")(x)
    y = L.ReLU()(y)
    y = L.Conv2D(16, 3, padding="same", name="b2_c2")(y)
    shortcut = L.Conv2D(16, 1, strides=2, name="b2_proj")(x)
    shortcut = L.BatchNormalization(name="b2_proj_bn")(shortcut)
    x = L.ReLU()(L.Add(name="b2_add")([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="residual")


def test_residual_cnn_plan_order_dependencies_and_batchnorms():
    plan = plan_model(residual_cnn())
    names = plan.names
    assert set(names) == {"stem", "b1_c1", "b1_c2", "b2_c1", "b2_c2", "b2_proj"}
    # topological: every layer comes after the layers it depends on
    for step in plan.steps:
        for dependency in step.depends_on:
            if dependency in names:
                assert names.index(dependency) < names.index(step.name)
    by_name = {s.name: s for s in plan.steps}
    assert set(by_name["b2_c2"].depends_on) == {"stem", "b1_c1", "b1_c2", "b2_c1",
                                                "stem_bn", "b1_bn1"}
    assert "b2_c2" not in by_name["b2_proj"].depends_on  # the shortcut is its own branch
    # each BatchNormalization is adapted right after the last layer it depends on
    adapted = {bn.name: step.name for step in plan.steps for bn, _, _ in step.batchnorms}
    assert adapted == {"stem_bn": "stem", "b1_bn1": "b1_c1", "b2_proj_bn": "b2_proj"}
    assert plan.blocked == [("head", "Dense 'head' is the model's last layer with weights "
                             "(always trained).")]
    # cutoff: the first k steps; the reason names the next layer
    assert [s.name for s in plan.cut(2)] == names[:2]
    assert plan.reason_after(2).startswith(
        f"cutoff=2: the next solvable layer, Conv2D '{names[2]}'"
    )
    assert plan.reason_after(6) == plan.blocked[0][1]
    assert plan.frozen_names(2) == ["stem", "stem_bn", "b1_c1"]  # in graph order
    assert all(plan.layers[step.position] is step.layer for step in plan.steps)
    assert plan.top_input == (plan.model.get_layer("head").input, ())


def test_feature_model_gives_the_layer_input():
    model = residual_cnn()
    plan = plan_model(model)
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32")
    step = plan.steps[plan.names.index("b2_proj")]
    got = _np(plan.feature_model(step.input, step.scope).predict_on_batch(x))
    # brute force: b2_proj's input is the ReLU after b1_add
    expected = keras.Model(model.inputs[0], model.get_layer("b1_add").output)(x)
    np.testing.assert_allclose(got, np.maximum(_np(expected), 0), rtol=1e-5, atol=1e-5)


def backbone_model():
    inner = keras.Input((10, 10, 3))
    h = L.Conv2D(6, 3, name="bb_c1")(inner)
    h = L.BatchNormalization(name="bb_bn")(h)
    h = L.Activation("relu")(h)
    h = L.Conv2D(6, 3, name="bb_c2")(h)
    backbone = keras.Model(inner, h, name="backbone")
    head = keras.Sequential([L.Conv2D(4, 1, name="seq_c")], name="neck")
    inputs = keras.Input((10, 10, 3))
    x = L.Rescaling(1 / 2.0, name="rescale")(inputs)
    x = backbone(x)
    x = head(x)
    x = L.Flatten()(x)
    x = L.Dense(8, name="d")(x)
    outputs = L.Dense(2, name="out")(x)
    return keras.Model(inputs, outputs), backbone


def test_nested_backbone_is_flattened():
    model, backbone = backbone_model()
    plan = plan_model(model)
    assert plan.names == ["bb_c1", "bb_c2", "seq_c", "d"]
    step = plan.steps[1]
    assert step.scope == (backbone,)
    assert [bn.name for bn, _, _ in plan.steps[0].batchnorms] == ["bb_bn"]
    assert plan.steps[3].depends_on[:3] == ["bb_c1", "bb_c2", "seq_c"]
    # features inside the backbone: through the outer prefix (Rescaling), then inner
    x = np.random.default_rng(1).normal(size=(3, 10, 10, 3)).astype("float32")
    predictor = plan.feature_model(step.input, step.scope)
    assert isinstance(predictor, FeatureModel)
    inner = keras.Model(backbone.inputs[0], backbone.get_layer("bb_c2").input)
    np.testing.assert_allclose(predictor.predict_on_batch(x), _np(inner(x / 2.0)),
                               rtol=1e-5, atol=1e-5)


def test_outer_call_tensors_of_a_nested_model():
    """The one Keras detail the planner relies on: fails loudly if Keras changes it."""
    model, backbone = backbone_model()
    called_on, returned = outer_call_tensors(backbone)
    assert called_on[0] is model.get_layer("rescale").output
    assert returned[0] is not backbone.outputs[0]  # the parent graph's own tensor
    assert backbone.input is backbone.inputs[0]  # a model's own `input`: inner graph
    assert model.get_layer("neck").input is returned[0]


def test_preprocessing_and_augmentation_layers_are_passed():
    normalization = L.Normalization(name="norm")
    normalization.adapt(np.random.default_rng(2).normal(size=(20, 16, 16, 3)))
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        L.Resizing(12, 12, name="resize"),
        L.Rescaling(1 / 255.0),
        normalization,
        L.RandomFlip(name="flip"),
        L.RandomRotation(0.1, name="rotate"),
        L.Conv2D(4, 3, name="c"),
        L.GaussianNoise(0.1),
        L.Flatten(),
        L.Dense(2, name="out"),
    ])
    plan = plan_model(model)
    assert plan.names == ["c"]
    assert {"resize", "norm", "flip", "rotate"} <= set(plan.passed)


def test_unsolvable_layer_blocks_what_depends_on_it_only():
    inputs = keras.Input((8, 8, 2))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    t = L.Conv2DTranspose(4, 3, padding="same", name="up")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="after_up")(t)
    c = L.Conv2D(4, 3, padding="same", name="after_a")(a)
    x = L.Concatenate()([c, b])
    x = L.Conv2D(4, 1, name="merged")(x)
    outputs = L.Dense(2, name="out")(L.Flatten()(x))
    plan = plan_model(keras.Model(inputs, outputs))
    assert plan.names == ["a", "after_a"]
    reasons = dict(plan.blocked)
    assert "Conv2DTranspose 'up' is not a layer kind class-PCA solves" in reasons["up"]
    assert reasons["after_up"].startswith("Conv2D 'after_up' depends on Conv2DTranspose 'up'")
    assert "depends on Conv2DTranspose 'up'" in reasons["merged"]
    assert plan.reason_after(2) == plan.blocked[0][1]


class _PositiveDense(L.Dense):  # non-negative weights: not the Dense a solve stands for
    def call(self, inputs):
        return self.activation(keras.ops.matmul(inputs, keras.ops.abs(self.kernel)) + self.bias)


class _GainDense(L.Dense):  # a learned gain per unit, on top of Dense.call
    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(shape=(self.units,), initializer="ones", name="gain")


class _DefaultsConv(L.Conv2D):  # only other defaults: a Conv2D
    def __init__(self, filters, **kwargs):
        super().__init__(filters, 3, padding="same", **kwargs)


def test_a_subclass_with_its_own_call_or_weights_is_not_solved_as_its_base_kind():
    # They were solved as plain Dense layers, silently: the solved projection and what
    # `_PositiveDense` computes differed by 5.5 (relative), and a gain stayed frozen.
    inputs = keras.Input((8, 8, 2))
    x = _DefaultsConv(4, name="defaults")(inputs)
    x = L.Flatten()(x)
    positive = keras.Model(inputs, L.Dense(2)(_PositiveDense(6, name="pos")(x)))
    gain = keras.Model(inputs, L.Dense(2)(_GainDense(6, name="gain")(x)))
    plan = plan_model(positive)
    assert plan.names == ["defaults"]
    assert plan.reason_after(1).startswith(
        "_PositiveDense 'pos' is a Dense with a `call()` of its own")
    plan = plan_model(gain)
    assert plan.names == ["defaults"]
    assert plan.reason_after(1).startswith(
        "_GainDense 'gain' has trainable weights of its own (gain) besides the Dense's")


def test_every_solvable_kind_is_planned():
    model = keras.Sequential([
        keras.Input((16, 3)),
        L.Conv1D(6, 3, padding="causal", groups=3, name="c1"),
        L.DepthwiseConv1D(3, name="dw"),
        L.SeparableConv1D(4, 3, name="sep"),
        L.Reshape((2, 6, 4)),
        L.Conv2D(4, 2, name="c2"),
        L.Reshape((1, 5, 1, 4)),
        L.Conv3D(2, 1, name="c3"),
        L.Dense(3, name="per_position"),
        L.Flatten(),
        L.Dense(2, name="out"),
    ])
    assert plan_model(model).names == ["c1", "dw", "sep", "c2", "c3", "per_position"]


def test_subclassed_model_error_names_both_ways_out():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)
            self.out = L.Dense(2)

        def call(self, x):
            return self.out(self.dense(x))

    model = Net()
    model(np.zeros((2, 4), "float32"))  # called on data: built, still no graph
    with pytest.raises(ValueError, match="no layer graph") as error:
        plan_model(model)
    message = str(error.value)
    assert "functionally" in message and "ClassPCAInitializer" in message and "adapt" in message


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# Building these models under JAX costs 20-40 s each (every weight's initializer is
# compiled); the graph the planner reads is the same on every backend.
needs_cheap_model_building = pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="keras.applications construction takes 20-40 s per model under JAX",
)


@pytest.mark.slow
@needs_cheap_model_building
@pytest.mark.parametrize("name", ["ResNet50V2", "MobileNetV2", "EfficientNetB0"])
def test_keras_applications_plan_at_least_eight_layers(name, no_network):
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=4)
    plan = plan_model(model)
    assert len(plan.steps) >= 8
    assert plan.blocked == [("predictions", "Dense 'predictions' is the model's last layer "
                             "with weights (always trained).")]
    kinds = {type(step.layer).__name__ for step in plan.steps}
    if name != "ResNet50V2":
        assert "DepthwiseConv2D" in kinds
    # every BatchNormalization of the model is adapted somewhere
    adapted = {bn.name for bn, _, _ in plan.batchnorms_until(len(plan.steps))}
    assert adapted == {l.name for l in model.layers if isinstance(l, L.BatchNormalization)}


def test_a_layer_called_twice_blocks_what_reads_its_second_output():
    shared = L.Dense(6, name="shared")
    inputs = keras.Input((6,))
    first = shared(inputs)
    second = shared(L.ReLU()(first))  # the second call's output has no listed producer
    x = L.Dense(4, name="after_second")(L.ReLU()(second))  # through a parameter-free layer
    outputs = L.Dense(2, name="out")(L.Concatenate()([x, L.Dense(4, name="side")(first)]))
    plan = plan_model(keras.Model(inputs, outputs))
    # The shared layer itself is not solved (one call's input would not fit the
    # other), so neither is what depends on it.
    assert plan.names == []
    blocked = dict(plan.blocked)
    assert "called 2 times in the model (a shared layer)" in blocked["shared"]
    assert "depends on Dense 'shared'" in blocked["side"]
    assert "no layer of the graph produces once" in blocked["after_second"]


def test_a_layer_called_twice_in_parallel_is_not_solved_from_its_first_call():
    # conv(x) + conv(-x): the first call's patches alone would give filters fitted to
    # half of what the layer sees; and conv(conv(x)) is refused for the same reason,
    # not as "the model's last layer with weights".
    inputs = keras.Input((8, 8, 3))
    conv = L.Conv2D(4, 3, padding="same", name="twice")
    merged = L.Add()([conv(inputs), conv(L.Rescaling(-1.0)(inputs))])
    before = L.Conv2D(4, 3, name="before")(inputs)
    outputs = L.Dense(2)(L.Flatten()(L.Concatenate()([merged, L.ZeroPadding2D()(before)])))
    plan = plan_model(keras.Model(inputs, outputs))
    assert plan.names == ["before"]
    assert "called 2 times" in dict(plan.blocked)["twice"]
    inputs = keras.Input((8, 8, 3))
    conv = L.Conv2D(3, 3, padding="same", name="stacked")
    outputs = L.Dense(2)(L.Flatten()(L.Conv2D(4, 3, name="after")(conv(conv(inputs)))))
    plan = plan_model(keras.Model(inputs, outputs))
    assert plan.names == [] and plan.stop_reason.startswith(
        "Conv2D 'stacked' is called 2 times")


def test_the_layers_of_a_nested_model_called_twice_are_not_solved_from_its_first_call():
    # enc(x) and enc(pre(x)): enc's layers see both inputs, the graph shows the first.
    inner = keras.Input((8, 8, 1))
    encoder = keras.Model(inner, L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="e1")(inner)),
                          name="encoder")
    inputs = keras.Input((8, 8, 1))
    pre = L.Conv2D(1, 1, name="pre")(inputs)
    merged = L.Concatenate()([encoder(inputs), encoder(pre)])
    plan = plan_model(keras.Model(inputs, L.Dense(2, name="out")(merged)))
    assert plan.names == []
    blocked = dict(plan.blocked)
    assert "nested model 'encoder', which is called 2 times" in blocked["e1"]
    # `pre` feeds only the hidden second call: not "the model's last layer".
    assert "feeds a layer call the model's graph does not show" in blocked["pre"]
    assert "last layer" not in blocked["pre"]


def test_a_layer_inside_a_nested_model_and_in_the_outer_graph_is_shared():
    conv = L.Conv2D(4, 3, padding="same", name="both")
    inner = keras.Input((8, 8, 1))
    nested = keras.Model(inner, conv(inner), name="nested")
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(1, 1, name="first")(nested(inputs))
    outputs = L.Dense(2)(L.Flatten()(L.Concatenate()([conv(h), h])))
    plan = plan_model(keras.Model(inputs, outputs))
    assert "both" not in plan.names
    assert "called 2 times" in dict(plan.blocked)["both"]


def test_a_layer_feeding_a_later_call_of_a_shared_layer_is_named_as_such():
    inputs = keras.Input((8, 8, 1))
    a = L.Conv2D(2, 3, name="a")(inputs)
    b = L.Conv2D(2, 3, name="b")(inputs)
    shared = L.Conv2D(4, 3, name="shared")
    merged = L.Add()([shared(a), shared(b)])
    plan = plan_model(keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(merged))))
    blocked = dict(plan.blocked)
    assert "called 2 times" in blocked["shared"]
    assert "feeds a layer call the model's graph does not show" in blocked["b"]
    assert "a" in plan.names  # its consumer, the shared layer's first call, is shown


def test_a_preprocessing_layer_reused_in_a_second_model_is_named():
    norm = L.Normalization(name="shared_norm")
    norm.adapt(np.random.default_rng(0).normal(size=(50, 4)))

    def build(tag):
        inputs = keras.Input((4,))
        hidden = L.Dense(3, name=f"{tag}_hidden")(norm(inputs))
        return keras.Model(inputs, L.Dense(2, name=f"{tag}_out")(hidden))

    assert plan_model(build("first")).names == ["first_hidden"]
    reason = dict(plan_model(build("second")).blocked)["second_hidden"]
    assert "first called in another model: Normalization 'shared_norm'" in reason
    assert "first called in another model" in reason and "from_config" in reason


def _masked_sequence(masking, layer, sequential=False):
    """`masking` (Masking or Embedding(mask_zero=True)) -> `layer` -> mean over the
    steps -> Dense -> Dense: the steps' mask reaches the mean."""
    if masking == "Masking":
        inputs, front = keras.Input((12, 4)), L.Masking(0.0)
    else:
        inputs = keras.Input((12,), dtype="int32")
        front = L.Embedding(20, 4, mask_zero=True, trainable=False)
    stack = [front, layer, L.GlobalAveragePooling1D(),
             L.Dense(5, activation="relu", name="above"), L.Dense(3, activation="softmax")]
    if sequential:
        return keras.Sequential([inputs] + stack)
    h = inputs
    for each in stack:
        h = each(h)
    return keras.Model(inputs, h)


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("masking", ["Masking", "Embedding"])
def test_a_dense_layer_reading_a_masked_tensor_is_solved_from_its_unmasked_steps(
        masking, sequential):
    # Keras passes the mask on through the Dense layer to the mean, which skips the
    # padded steps: the plan solves it from the others (`step.input_mask`). In a
    # Sequential model the mask is an operation between layers the graph must show.
    model = _masked_sequence(masking, L.Dense(6, activation="relu", name="per_step"),
                             sequential)
    plan = plan_model(model)
    assert plan.names == ["per_step", "above"]
    assert plan.steps[0].input_mask is not None and plan.steps[1].input_mask is None
    assert tuple(plan.steps[0].input_mask.shape) == (None, 12)


@pytest.mark.parametrize("masking", ["Masking", "Embedding"])
def test_a_convolution_drops_the_mask_and_is_solved_from_every_step(masking):
    # Keras' convolutions do not support masking: the mask ends there (Keras warns),
    # and the layers above read every step, padded ones too, as the solve does.
    with pytest.warns(UserWarning, match="does not support masking"):
        model = _masked_sequence(masking, L.Conv1D(6, 3, name="per_step"))
    plan = plan_model(model)
    assert plan.names == ["per_step", "above"]
    assert plan.steps[0].input_mask is None


def test_a_mask_entering_a_nested_model_blocks_its_dense_layer():
    # The nested model's own graph shows no mask: the planner follows the one it is
    # called with (Keras applies it to the inner layers when the model runs).
    inner_inputs = keras.Input((12, 4))
    per_step = L.Dense(6, activation="relu", name="per_step")(inner_inputs)
    inner = keras.Model(inner_inputs, L.Activation("relu")(per_step), name="inner")
    inputs = keras.Input((12,), dtype="int32")
    h = inner(L.Embedding(20, 4, mask_zero=True, trainable=False)(inputs))
    h = L.Dense(5, name="above")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inputs, L.Dense(3)(h))
    reasons = dict(plan_model(model).blocked)
    assert ("reads a masked tensor inside the nested model 'inner', with a mask from "
            "outside it") in reasons["per_step"]
    assert "`ClassPCADense.adapt`" in reasons["per_step"]
    assert "depends on Dense 'per_step'" in reasons["above"]
    # The mask ends at a mean over the steps: the Dense layer after it reads none.
    inner_inputs = keras.Input((12, 4))
    pooled = L.Dense(6, name="after_pool")(L.GlobalAveragePooling1D()(inner_inputs))
    inner = keras.Model(inner_inputs, pooled, name="pooling")
    inputs = keras.Input((12,), dtype="int32")
    h = inner(L.Embedding(20, 4, mask_zero=True, trainable=False)(inputs))
    model = keras.Model(inputs, L.Dense(3)(L.Dense(5)(h)))
    assert plan_model(model).names[0] == "after_pool"


def test_a_mask_made_inside_a_nested_model_is_read_there():
    # An encoder sub-model holding its own Embedding(mask_zero=True): its graph shows
    # the mask, and its per-token Dense layer is solved from the unmasked steps.
    tokens = keras.Input((12,), dtype="int32")
    h = L.Embedding(20, 4, mask_zero=True, trainable=False)(tokens)
    encoder = keras.Model(tokens, L.Dense(6, activation="relu", name="per_step")(h),
                          name="encoder")
    inputs = keras.Input((12,), dtype="int32")
    h = L.Dense(5, name="above")(L.GlobalAveragePooling1D()(encoder(inputs)))
    plan = plan_model(keras.Model(inputs, L.Dense(3)(h)))
    assert plan.names[:1] == ["per_step"] and plan.steps[0].input_mask is not None
    assert plan.steps[0].scope == (encoder,)


def test_a_frozen_layer_of_another_kind_is_passed_and_the_message_says_so():
    def build(trainable):
        inputs = keras.Input((12,), dtype="int32")
        h = L.Embedding(20, 4, name="embedding", trainable=trainable)(inputs)
        h = L.LayerNormalization(name="norm", trainable=trainable)(h)
        h = L.Conv1D(6, 3, activation="relu", name="conv")(h)
        h = L.Dense(5, name="above")(L.GlobalAveragePooling1D()(h))
        return keras.Model(inputs, L.Dense(3)(h))

    plan = plan_model(build(True))
    assert plan.names == []
    reason = dict(plan.blocked)["embedding"]
    assert "not a layer kind class-PCA solves" in reason
    assert "`layer.trainable = False`" in reason and "pretrained `Embedding`" in reason
    assert plan_model(build(False)).names == ["conv", "above"]


@pytest.mark.parametrize("norm", [L.LayerNormalization, lambda: L.GroupNormalization(2)])
def test_a_normalization_without_statistics_is_passed_and_frozen_with_its_reader(norm):
    # ConvNeXt's stem is Conv2D -> LayerNormalization: a trainable LayerNormalization
    # ended the plan at the stem. It passes as it is, like a BatchNormalization
    # without the adapting, and is frozen only with a solved layer that reads it.
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 2, strides=2, name="stem")(inputs)
    h = norm()(h) if not isinstance(norm, type) else norm(name="norm")(h)
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="second")(h)
    h = L.Dense(5, name="above")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, L.Dense(3)(h))
    plan = plan_model(model)
    norm_name = model.layers[2].name
    assert plan.names == ["stem", "second", "above"]
    assert plan.fixed_normalizations == [norm_name]
    assert norm_name in plan.steps[1].depends_on
    assert plan.frozen_names(1) == ["stem"]
    assert plan.frozen_names(2) == ["stem", norm_name, "second"]
    assert not any(norm_name == bn.name for bn, _, _ in plan.batchnorms_until(3))


@needs_cheap_model_building
def test_convnext_plans_past_its_layer_normalizations():
    # ConvNeXt: the stem, then the first block's depthwise conv and its two per-pixel
    # Dense layers, up to the block's LayerScale (trainable weights of another kind).
    convnext = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3),
                                               classes=4)
    assert len(plan_model(convnext).names) == 4
