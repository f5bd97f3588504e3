"""fit_progressive: freezing settled bottom layers between epochs, optimizer state
carried over, schedules, snapping, and argument errors."""

import warnings

import keras
import numpy as np
import pytest
from conftest import ArrayPyDataset

import keras_classpca
from keras_classpca.hybrid.progressive import (
    FreezeOut,
    SettleOnChange,
    carry_optimizer,
    fit_progressive,
    linear_cka,
)

STEPS = 4  # batches per epoch: 128 samples, batch 32


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10, 10, 1)).astype("float32")
    y = (x[:, :5, :, 0].mean(axis=(1, 2)) > x[:, 5:, :, 0].mean(axis=(1, 2))).astype("int64")
    return x, y


def _model(compiled=True):
    model = keras.Sequential(
        [
            keras.Input((10, 10, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    if compiled:
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


class _Weights(keras.callbacks.Callback):
    """Copies every layer's kernel at each epoch end; counts train begin/end."""

    def __init__(self):
        super().__init__()
        self.kernels, self.begins, self.ends = [], 0, 0

    def on_train_begin(self, logs=None):
        self.begins += 1

    def on_train_end(self, logs=None):
        self.ends += 1

    def on_epoch_end(self, epoch, logs=None):
        self.kernels.append(
            {
                layer.name: keras.ops.convert_to_numpy(layer.kernel).copy()
                for layer in self.model.layers
                if getattr(layer, "kernel", None) is not None
            }
        )


def _identical(kernels, name, first, last):
    """Whether `name`'s kernel is bit-identical from epoch end `first` to `last` (1-based)."""
    reference = kernels[first - 1][name]
    return all(np.array_equal(k[name], reference) for k in kernels[first - 1 : last])


def test_schedule_freezes_at_the_scheduled_epochs_and_frozen_weights_stay_identical():
    x, y = _data()
    model = _model()
    weights = _Weights()
    history = fit_progressive(
        model, x, y, epochs=4, settle=[1, 2], batch_size=32, verbose=0, callbacks=[weights]
    )
    report = history.progressive
    assert report.frozen_at == {"conv1": 1, "conv2": 2, "hidden": None}
    assert [layer.trainable for layer in model.layers if layer.weights] == [
        False, False, True, True,
    ]
    # Frozen layers: bit-identical from their freezing epoch on; the others keep moving.
    assert _identical(weights.kernels, "conv1", 1, 4)
    assert _identical(weights.kernels, "conv2", 2, 4)
    assert not np.array_equal(weights.kernels[0]["conv2"], weights.kernels[1]["conv2"])
    for epoch in range(1, 4):
        for name in ("hidden", "out"):
            before, after = weights.kernels[epoch - 1][name], weights.kernels[epoch][name]
            assert not np.array_equal(before, after)
    # One run as far as History and the callbacks can tell.
    assert history.epoch == [0, 1, 2, 3]
    assert len(history.history["loss"]) == 4
    assert (weights.begins, weights.ends, len(weights.kernels)) == (1, 1, 4)
    assert model.history is history
    assert len(report.epoch_seconds) == 4


def test_optimizer_state_is_carried_for_the_variables_still_training():
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    old = model.optimizer
    model.layers[0].trainable = False
    new = carry_optimizer(old, model.trainable_variables)
    assert int(keras.ops.convert_to_numpy(new.iterations)) == STEPS
    old_slots = {v.path: keras.ops.convert_to_numpy(v) for v in old.variables}
    new_slots = {v.path: keras.ops.convert_to_numpy(v) for v in new.variables}
    assert len(new_slots) < len(old_slots)  # conv1's moments are dropped
    moments = [p for p in new_slots if p.endswith(("_momentum", "_velocity"))]
    assert len(moments) == 2 * len(model.trainable_variables)
    for path in moments:
        assert np.array_equal(new_slots[path], old_slots[path])
        assert np.any(new_slots[path] != 0)
    assert not any("conv1" in p for p in moments)


def _train_then_freeze_conv1(optimizer_after):
    """1 epoch, freeze conv1, recompile with `optimizer_after(old optimizer)`, 1 epoch."""
    x, y = _data()
    keras.utils.set_random_seed(7)
    model = _model()
    model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    model.layers[0].trainable = False
    model.compile(optimizer_after(model.optimizer), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, initial_epoch=1, batch_size=32, shuffle=False, verbose=0)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_fit_progressive_continues_the_optimizer_as_if_never_recompiled():
    x, y = _data()
    keras.utils.set_random_seed(7)
    model = _model()
    fit_progressive(model, x, y, epochs=2, settle=[1], batch_size=32, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * STEPS
    assert len(model.optimizer._trainable_variables) == len(model.trainable_variables)
    progressive = [keras.ops.convert_to_numpy(w) for w in model.weights]
    # A fresh Adam after the freeze (step count and moments restarted) lands elsewhere.
    fresh = _train_then_freeze_conv1(lambda old: keras.optimizers.Adam(1e-2))
    assert not np.allclose(progressive[-2], fresh[-2], atol=1e-6)
    if keras.backend.backend() == "jax":
        return  # JAX cannot keep the old optimizer (built on more variables): no reference
    # TensorFlow and torch accept the old optimizer object itself, slots and all: the
    # carried copy must train exactly as it does.
    same = _train_then_freeze_conv1(lambda old: old)
    for a, b in zip(progressive, same):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_threshold_criterion_freezes_bottom_up_and_a_tiny_threshold_freezes_nothing():
    x, y = _data()
    model = _model()
    history = fit_progressive(
        model,
        x,
        y,
        epochs=3,
        settle=SettleOnChange(0.99, measure="output", keep_top=0),
        batch_size=32,
        verbose=0,
    )
    assert history.progressive.frozen_at == {"conv1": 1, "conv2": 1, "hidden": 1}
    assert all(len(c) == 3 for c in history.progressive.changes.values())
    assert history.progressive.changes["conv1"][1:] == [None, None]

    model = _model()
    history = fit_progressive(
        model, x, y, epochs=3, settle=SettleOnChange(1e-12), batch_size=32, verbose=0
    )
    assert history.progressive.frozen_at == {"conv1": None, "conv2": None, "hidden": None}
    assert all(layer.trainable for layer in model.layers)
    changes = history.progressive.changes["conv1"]
    assert len(changes) == 3 and all(c > 0 for c in changes)


def test_a_settled_layer_above_a_training_one_is_not_frozen(monkeypatch):
    from keras_classpca.hybrid import progressive

    moving = {"conv1"}  # the layers whose measured change stays large

    def state(self):
        return {u.layer.name: (1.0 if u.layer.name in moving else 0.0)
                for u in self.units if not u.frozen}

    monkeypatch.setattr(progressive._Controller, "_state", state)
    monkeypatch.setattr(progressive._Controller, "_change", lambda self, now, before: now)
    x, y = _data()
    criterion = SettleOnChange(0.5, keep_top=0)
    model = _model()
    history = fit_progressive(model, x, y, epochs=3, settle=criterion, batch_size=32, verbose=0)
    # conv2 and hidden count as settled every epoch, but conv1 below them never does.
    assert history.progressive.frozen_at == {"conv1": None, "conv2": None, "hidden": None}
    assert history.progressive.changes["conv2"] == [0.0, 0.0, 0.0]
    assert all(layer.trainable for layer in model.layers)

    moving.clear()
    moving.add("conv2")  # now conv1 settles; conv2 does not, so hidden must wait
    model = _model()
    history = fit_progressive(model, x, y, epochs=3, settle=criterion, batch_size=32, verbose=0)
    assert history.progressive.frozen_at == {"conv1": 1, "conv2": None, "hidden": None}


def test_subspace_measure_and_patience():
    x, y = _data()
    model = _model()
    history = fit_progressive(
        model,
        x,
        y,
        epochs=4,
        settle=SettleOnChange(0.99, measure="subspace", patience=2, keep_top=0),
        batch_size=32,
        verbose=0,
    )
    assert history.progressive.frozen_at == {"conv1": 2, "conv2": 2, "hidden": 2}


def test_freezeout_schedule():
    assert FreezeOut(0.5).freeze_epochs(3, 8) == [4, 5, 7]
    assert FreezeOut(1.0).freeze_epochs(2, 8) == [None, None]
    assert FreezeOut(epochs=[2]).freeze_epochs(3, 8) == [2, None, None]
    # a layer freezes after at least one epoch of training, never before it
    assert FreezeOut(0.05).freeze_epochs(2, 4) == [1, 2]  # t_0 · 4 epochs rounds to 0
    with pytest.raises(ValueError, match="positive integers .* set `layer.trainable = False`"):
        FreezeOut(epochs=[0, 2])
    x, y = _data()
    model = _model()
    history = fit_progressive(model, x, y, epochs=4, settle="freezeout", batch_size=32, verbose=0)
    # t = 0.5, 2/3, 5/6 of 4 epochs -> after epochs 2, 3 (2.67) and 3 (3.33).
    assert history.progressive.frozen_at == {"conv1": 2, "conv2": 3, "hidden": 3}
    import json

    record = json.loads(json.dumps(history.progressive.to_dict(), allow_nan=False))
    assert record["frozen_at"] == {"conv1": 2, "conv2": 3, "hidden": 3}
    assert len(record["epoch_seconds"]) == 4


def test_initial_epoch_validation_data_and_tf_data():
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model = _model()
    history = fit_progressive(
        model,
        dataset,
        shuffle=False,
        epochs=4,
        initial_epoch=2,
        settle=[1],
        validation_data=(x[:32], y[:32]),
        verbose=0,
    )
    assert history.epoch == [2, 3]
    assert len(history.history["val_loss"]) == 2
    assert history.progressive.frozen_at["conv1"] == 3


def test_a_user_stop_ends_the_whole_run():
    x, y = _data()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    model = _model()
    history = fit_progressive(
        model, x, y, epochs=4, settle=[1], batch_size=32, verbose=0, callbacks=[Stop()]
    )
    assert history.epoch == [0]
    assert history.progressive.frozen_at["conv1"] is None


def test_hybridize_then_progressive():
    x, y = _data()
    model = _model(compiled=False)
    keras_classpca.hybridize(model, (x, y), cutoff=1, verbose=0)
    solved = keras.ops.convert_to_numpy(model.layers[0].kernel).copy()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    history = fit_progressive(model, x, y, epochs=3, settle=0.99, batch_size=32, verbose=0)
    # The layer under the classifier is measured but kept training (keep_top=1).
    assert history.progressive.frozen_at == {"conv1": 0, "conv2": 1, "hidden": None}
    assert len(history.progressive.changes["hidden"]) == 3
    assert np.array_equal(keras.ops.convert_to_numpy(model.layers[0].kernel), solved)


def test_a_fixed_schedule_past_the_last_epoch_warns():
    # `settle=[10]` with `epochs=4` froze nothing, silently.
    x, y = _data()
    with pytest.warns(UserWarning, match=r"`settle` freezes conv1 after epoch 4, conv2 after "
                                         r"epoch 9, but this call trains 4 epoch\(s\)"):
        history = fit_progressive(_model(), x, y, epochs=4, settle=[4, 9], batch_size=64,
                                  verbose=0)
    assert history.progressive.frozen_at == {"conv1": None, "conv2": None, "hidden": None}


def test_a_schedule_longer_than_the_bottom_layers_says_what_ends_them():
    # It said "0 layer(s) can freeze here (none)" without naming the trainable
    # Embedding that ends the bottom layers.
    rng = np.random.default_rng(0)
    tokens, y = rng.integers(1, 20, (64, 10)), rng.integers(0, 2, 64)
    model = keras.Sequential([keras.Input((10,), dtype="int32"),
                              keras.layers.Embedding(20, 8, name="emb"),
                              keras.layers.Conv1D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"but 0 layer\(s\) can freeze here \(none\): the "
                                         r"bottom layers end because Embedding 'emb' is not"):
        fit_progressive(model, tokens, y, epochs=2, settle=[1], verbose=0)


def test_a_layer_the_user_froze_above_a_training_one_is_reported_frozen():
    # It was reported "trained to the end" (frozen_at None) although it never trained.
    x, y = _data()
    model = _model(compiled=False)
    model.get_layer("conv2").trainable = False  # pretrained
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    kept = keras.ops.convert_to_numpy(model.get_layer("conv2").kernel).copy()
    history = fit_progressive(model, x, y, epochs=3, settle=[1], batch_size=32, verbose=0)
    assert history.progressive.frozen_at == {"conv1": 1, "conv2": 0, "hidden": None}
    assert "conv2               frozen before training" in str(history.progressive)
    assert np.array_equal(keras.ops.convert_to_numpy(model.get_layer("conv2").kernel), kept)


def test_hybridize_then_progressive_freezes_the_adapted_batchnorm_at_the_first_check():
    # hybridize leaves the BatchNormalization after a solved conv trainable; the frozen
    # conv does not move, so its unit (conv + BN) freezes after the first epoch.
    x, y = _data()
    L = keras.layers
    model = keras.Sequential([
        keras.Input((10, 10, 1)), L.Conv2D(4, 3, name="conv1"), L.BatchNormalization(name="bn1"),
        L.ReLU(), L.Conv2D(6, 3, activation="relu", name="conv2"), L.Flatten(),
        L.Dense(8, activation="relu", name="hidden"), L.Dense(2, activation="softmax"),
    ])
    report = keras_classpca.hybridize(model, (x, y), cutoff=1, verbose=0)
    assert report.frozen == ["conv1"] and model.get_layer("bn1").trainable
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    history = fit_progressive(model, x, y, epochs=3, settle=1e-6, batch_size=32, verbose=0)
    assert history.progressive.frozen_at["conv1"] == 1
    assert history.progressive.changes["conv1"][0] == pytest.approx(0.0, abs=1e-9)
    assert not model.get_layer("bn1").trainable


def test_snap_replaces_the_layer_when_it_freezes():
    x, y = _data()
    model = _model()
    weights = _Weights()
    history = fit_progressive(
        model, x, y, epochs=3, settle=[1], snap=True, batch_size=32, verbose=0,
        callbacks=[weights],
    )
    snapped = history.progressive.snapped["conv1"]
    assert 0 < snapped["kernel_change"] and 0 <= snapped["output_cka"] <= 1 + 1e-9
    final = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert not np.array_equal(weights.kernels[0]["conv1"], final)  # replaced at freezing
    assert np.array_equal(weights.kernels[1]["conv1"], final)  # and frozen from then on


def test_snap_and_the_output_probe_take_a_named_input_as_fit_does():
    # `fit({"image": x}, y)`: the samples for snap and the probe were drawn as if the
    # dict were a stream of batches, and a TypeError said the data was not data.
    x, y = _data()

    def named():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((10, 10, 1), name="image")
        model = keras.Model(inputs, _model(compiled=False)(inputs))
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
        return model

    finals = []
    for data in (x, {"image": x}):
        model = named()
        history = fit_progressive(model, data, y, epochs=2, settle=[1], snap=True,
                                  batch_size=32, verbose=0)
        assert "conv1" in history.progressive.snapped
        finals.append([keras.ops.convert_to_numpy(w) for w in model.weights])
    for a, b in zip(*finals):
        np.testing.assert_array_equal(a, b)
    fit_progressive(named(), {"image": x}, y, epochs=2, verbose=0,
                    settle=SettleOnChange(measure="output"), batch_size=32)


@pytest.mark.parametrize("weighting", ["sample_weight", "class_weight"])
def test_snap_says_its_statistics_ignore_the_weights_fit_applies(weighting):
    x, y = _data(64)
    weights = ({"sample_weight": np.linspace(0.5, 2.0, len(y))} if weighting == "sample_weight"
               else {"class_weight": {0: 1.0, 1: 3.0}})
    with pytest.warns(UserWarning, match=f"ignore `{weighting}`") as caught:
        history = fit_progressive(_model(), x, y, epochs=2, settle=[1], snap=True,
                                  batch_size=32, verbose=0, **weights)
    assert "conv1" in history.progressive.snapped
    assert any(record.filename == __file__ for record in caught)  # points at the call
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # without snap: nothing to say
        fit_progressive(_model(), x, y, epochs=2, settle=[1], batch_size=32, verbose=0,
                        **weights)


def test_snap_on_a_one_shot_iterator_says_what_snap_needs():
    x, y = _data(32)
    generator = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8))
    with pytest.raises(TypeError, match="one-shot iterator: `snap=True` cannot draw the "
                                        "labelled sample") as error:
        fit_progressive(_model(), generator, epochs=1, snap=True, verbose=0)
    assert "SettleOnChange(probe" not in str(error.value)  # no help for snap


def test_linear_cka():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 5))
    assert linear_cka(a, a) == pytest.approx(1.0)
    assert linear_cka(a, rng.normal(size=(40, 5))) < 0.5


@pytest.mark.parametrize(
    "kwargs, error, word",
    [
        ({"epochs": 0}, ValueError, "`epochs`"),
        ({"epochs": 2, "settle": "sometimes"}, ValueError, "`settle`"),
        ({"epochs": 2, "settle": object()}, TypeError, "`settle`"),
        ({"epochs": 2, "settle": 1.5}, ValueError, "`threshold`"),
        ({"epochs": 2, "settle": [2, 1]}, ValueError, "`epochs`"),
        ({"epochs": 2, "settle": [1, 1, 1, 1]}, ValueError, r"3 layer\(s\) can freeze"),
        ({"epochs": 2, "snap": "yes"}, TypeError, "`snap`"),
        ({"epochs": 2, "initial_epoch": 2}, ValueError, "`initial_epoch`"),
    ],
)
def test_bad_arguments(kwargs, error, word):
    x, y = _data(32)
    with pytest.raises(error, match=word):
        fit_progressive(_model(), x, y, verbose=0, **kwargs)


def test_bad_model_and_criteria():
    x, y = _data(32)
    with pytest.raises(ValueError, match="compiled"):
        fit_progressive(_model(compiled=False), x, y, epochs=1)
    with pytest.raises(TypeError, match="`model`"):
        fit_progressive("model", x, y, epochs=1)
    with pytest.raises(ValueError, match="`t0`"):
        FreezeOut(0.0)
    with pytest.raises(ValueError, match="`measure`"):
        SettleOnChange(measure="weights")
    with pytest.raises(ValueError, match="`patience`"):
        SettleOnChange(patience=0)
    generator = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8))
    with pytest.raises(TypeError, match="one-shot"):  # the output probe needs re-iterable data
        fit_progressive(
            _model(), generator, epochs=1, settle=SettleOnChange(measure="output"), verbose=0
        )


def test_cache_trains_the_rest_on_the_cached_prefix_once_nothing_more_can_freeze():
    x, y = _data()
    model = _model()
    weights = _Weights()
    history = fit_progressive(
        model, x, y, epochs=4, settle=[1, 2], cache=True, batch_size=32, verbose=0,
        callbacks=[weights],
    )
    report = history.progressive
    assert report.cached
    assert report.frozen_at == {"conv1": 1, "conv2": 2, "hidden": None}
    assert history.epoch == [0, 1, 2, 3] and len(report.epoch_seconds) == 4
    assert (weights.begins, weights.ends, len(weights.kernels)) == (1, 1, 4)
    conv2 = keras.ops.convert_to_numpy(model.get_layer("conv2").kernel)
    assert np.array_equal(conv2, weights.kernels[1]["conv2"])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4 * STEPS
    with pytest.raises(ValueError, match="`cache`"):
        fit_progressive(_model(), x, y, epochs=1, cache="yes")


def test_cache_takes_fit_tops_cache_settings():
    # `memory_limit=` reached `fit` ("unexpected keyword argument") after epochs of
    # training; `output_cache` and `cache_dir` likewise.
    from keras_classpca import PrefixOutputCache

    x, y = _data()
    shared = PrefixOutputCache()
    history = fit_progressive(_model(), x, y, epochs=3, settle=[1, 2], cache=True,
                              output_cache=shared, memory_limit=10**8, batch_size=32,
                              verbose=0)
    assert history.progressive.cached and shared.nbytes > 0  # the output went there
    with pytest.raises(ValueError, match="`memory_limit` sets the prefix-output cache"):
        fit_progressive(_model(), x, y, epochs=1, memory_limit=10**8, verbose=0)
    with pytest.raises(ValueError, match="`memory_limit` must be a non-negative integer"):
        fit_progressive(_model(), x, y, epochs=1, cache=True, memory_limit=-1, verbose=0)
    with pytest.raises(TypeError, match="`output_cache` must be a PrefixOutputCache"):
        fit_progressive(_model(), x, y, epochs=1, cache="auto", output_cache={}, verbose=0)


def _residual_model():
    """Conv-BN-ReLU stem, one basic block with a projection shortcut, GAP, Dense head."""
    inputs = keras.Input((10, 10, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization(name="stem_bn")(h))
    branch = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="branch")(h)
    shortcut = keras.layers.Conv2D(6, 1, name="shortcut")(h)
    h = keras.layers.Add()([branch, shortcut])
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


def _bn_state(model, name):
    layer = model.get_layer(name)
    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


@pytest.mark.parametrize("cache", [False, True])
def test_residual_graph_freezes_in_plan_order_with_its_batchnorm(cache):
    x, y = _data()
    model = _residual_model()
    weights = _Weights()
    bn_at_freeze = {}

    class _BatchNorm(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            bn_at_freeze.setdefault(epoch, _bn_state(model, "stem_bn"))

    history = fit_progressive(
        model, x, y, epochs=4, settle=[1, 2, 2], cache=cache, batch_size=32, verbose=0,
        callbacks=[weights, _BatchNorm()],
    )
    report = history.progressive
    # The plan's order (stem, branch, shortcut); the head is never a unit.
    assert report.layers == ["stem", "branch", "shortcut"]
    assert report.frozen_at == {"stem": 1, "branch": 2, "shortcut": 2}
    assert report.cached is cache
    assert not model.get_layer("stem_bn").trainable  # frozen with its convolution
    assert _identical(weights.kernels, "stem", 1, 4)
    assert _identical(weights.kernels, "branch", 2, 4)
    assert _identical(weights.kernels, "shortcut", 2, 4)
    for after, final in zip(bn_at_freeze[0], _bn_state(model, "stem_bn")):
        np.testing.assert_array_equal(after, final)  # moving statistics too
    assert not np.array_equal(weights.kernels[1]["out"], weights.kernels[3]["out"])


def test_output_measure_on_a_residual_graph_and_subspace_of_depthwise_layers():
    x, y = _data()
    history = fit_progressive(
        _residual_model(), x, y, epochs=2, batch_size=32, verbose=0,
        settle=SettleOnChange(0.5, measure="output", samples=32),
    )
    changes = history.progressive.changes
    assert set(changes) == {"stem", "branch", "shortcut"}
    assert all(0.0 <= c <= 1.0 for c in changes["branch"] if c is not None)

    model = keras.Sequential([
        keras.Input((10, 10, 1)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise"),
        keras.layers.SeparableConv2D(6, 3, name="separable"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax", name="out"),
    ])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    history = fit_progressive(model, x, y, epochs=2, settle=SettleOnChange(0.999, keep_top=0),
                              batch_size=32, verbose=0)
    report = history.progressive
    assert report.layers == ["conv", "depthwise", "separable"]
    # Every kind has a subspace change, and a threshold near 1 freezes all bottom-up.
    assert report.frozen_at == {"conv": 1, "depthwise": 1, "separable": 1}
    with pytest.raises(ValueError, match="`snap=True`.*DepthwiseConv2D 'depthwise'"):
        fit_progressive(model, x, y, epochs=1, snap=True, verbose=0)


def test_an_optimizer_with_moving_averages_is_refused():
    # Every freeze ends a fit segment, where Keras writes the averages into the weights
    # still training: they would restart from them at each freeze.
    x, y = _data()
    model = _model(compiled=False)
    model.compile(keras.optimizers.Adam(1e-2, use_ema=True), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="use_ema=True"):
        fit_progressive(model, x, y, epochs=2, settle=[1], verbose=0)


def test_cache_true_is_refused_before_training_when_no_prefix_could_be_cached():
    x, y = _data()
    inputs = keras.Input((10, 10, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Flatten()(h))
    two_heads = keras.Model(inputs, [keras.layers.Dense(2, activation="softmax")(h),
                                     keras.layers.Dense(2, activation="softmax")(h)])
    two_heads.compile("adam", ["sparse_categorical_crossentropy"] * 2)
    weights = _Weights()
    with pytest.raises(ValueError, match=r"`cache=True` but the model has 1 input\(s\) and 2"):
        fit_progressive(two_heads, x, (y, y), epochs=2, settle=[1], cache=True, verbose=0,
                        callbacks=[weights])
    assert weights.begins == 0 and all(layer.trainable for layer in two_heads.layers)


def test_cache_true_warns_and_trains_on_when_the_frozen_prefix_cannot_be_cached():
    # A Dropout below the first layer: its output changes every epoch, so the frozen
    # prefix cannot be computed once. Found only once conv1 froze: a warning, not an
    # error after an epoch of training.
    x, y = _data()
    model = keras.Sequential([keras.Input((10, 10, 1)), keras.layers.Dropout(0.2, seed=1),
                              *_model(compiled=False).layers])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    weights = _Weights()
    with pytest.warns(UserWarning, match="`cache=True` but the frozen layers read the output"):
        history = fit_progressive(model, x, y, epochs=3, settle=[1], cache=True,
                                  batch_size=32, verbose=0, callbacks=[weights])
    assert history.epoch == [0, 1, 2] and not history.progressive.cached
    assert (weights.begins, weights.ends) == (1, 1)


def test_keep_top_spares_the_layer_under_the_head_not_under_an_unsolvable_layer():
    # Conv1D under an LSTM: it settled but `keep_top=1` kept it training to the end,
    # as if it were right under the classifier.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12, 3)).astype("float32")
    y = (x[:, :, 0].mean(axis=1) > 0).astype("int64")

    def model(recurrent):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((12, 3))
        hidden = keras.layers.Conv1D(4, 3, activation="relu", name="front")(inputs)
        hidden = (keras.layers.LSTM(4)(hidden) if recurrent
                  else keras.layers.GlobalAveragePooling1D()(hidden))
        built = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
        built.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        return built

    settle = SettleOnChange(threshold=0.99)  # everything "settles" after one epoch
    under_lstm = fit_progressive(model(True), x, y, epochs=3, settle=settle,
                                 batch_size=32, verbose=0)
    assert under_lstm.progressive.frozen_at["front"] == 1
    under_head = fit_progressive(model(False), x, y, epochs=3, settle=settle,
                                 batch_size=32, verbose=0)
    assert under_head.progressive.frozen_at["front"] is None  # keep_top=1 spares it


@pytest.mark.parametrize("snap", [False, True])
def test_sample_weights_are_named_as_ignored_only_when_snap_solves_from_them(snap):
    # The probe sample of a PyDataset of (x, y, w) is drawn through the data adapter:
    # its weights matter to the training, and to class-PCA only when `snap` solves.
    x, y = _data()
    data = ArrayPyDataset(x, y, 32, weights=np.ones(len(y), "float32"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # "output" compares outputs on a probe sample; snap solves on a labelled one
        settle = [1] if snap else SettleOnChange(measure="output")
        fit_progressive(_model(), data, epochs=2, settle=settle, snap=snap, verbose=0)
    assert sum("ignore them" in str(w.message) for w in caught) == (1 if snap else 0)
