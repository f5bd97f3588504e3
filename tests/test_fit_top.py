"""fit_top: training the top of a hybrid model on the cached output of its frozen prefix."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKEND, ArrayPyDataset

from keras_classpca import fit_top, hybridize
from keras_classpca.hybrid import training as fit_top_module
from keras_classpca.hybrid.training import PrefixOutputCache, cache_point

L = keras.layers


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (
        rng.normal(size=(n, 8, 8, 1))
        + 0.6 * y[:, None, None, None] * np.linspace(-1, 1, 8)[None, :, None, None]
    )
    return x.astype("float32"), y


def _model(cutoff=1, dropout=False, seed=3, compile=True):
    """Conv -> BN -> pool -> Dense(16) [-> Dropout] -> Dense(3), hybridized and compiled."""
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((8, 8, 1)),
        L.Conv2D(4, 3, activation="relu", name="conv"),
        L.BatchNormalization(name="bn"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(16, activation="relu", name="hidden"),
    ]
    if dropout:
        layers.append(L.Dropout(0.3, seed=11, name="drop"))
    layers.append(L.Dense(3, activation="softmax", name="out"))
    model = keras.Sequential(layers)
    x, y = _data()
    if cutoff:  # (the head starts random even above a full solve: training moves it)
        hybridize(model, (x, y), cutoff=cutoff, verbose=0, warm_head=False)
    if compile:
        model.compile(
            keras.optimizers.Adam(1e-2),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=False,
        )
    return model


class _ListDir(keras.callbacks.Callback):
    """Records the files in `directory` at the end of every epoch."""

    def __init__(self, directory):
        super().__init__()
        self.directory, self.seen = directory, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(sorted(os.listdir(self.directory)))


@pytest.mark.parametrize("cutoff, dropout, spill", [(1, False, True), (2, True, False)])
def test_cached_training_equals_plain_fit(cutoff, dropout, spill, tmp_path):
    # cutoff=1: the BatchNorm after the solved conv stays trainable (part of the top);
    # cutoff=2 with Dropout above the frozen prefix: the same dropout masks are drawn.
    x, y = _data()
    xv, yv = _data(90, seed=1)
    plain, cached = _model(cutoff, dropout), _model(cutoff, dropout)
    assert all(np.array_equal(a, b) for a, b in zip(plain.get_weights(), cached.get_weights()))
    initial = {l.name: [w.copy() for w in l.get_weights()] for l in cached.layers}
    args = dict(batch_size=32, epochs=2, shuffle=False, verbose=0)
    if spill:
        args["validation_data"] = (xv, yv)

    keras.utils.set_random_seed(5)
    plain_history = plain.fit(x, y, **args)
    keras.utils.set_random_seed(5)
    spy = _ListDir(tmp_path)
    history = fit_top(
        cached,
        x,
        y,
        cache=True,
        memory_limit=0 if spill else 2**30,
        cache_dir=str(tmp_path),
        callbacks=[spy],
        **args,
    )

    assert history.cache_used is True
    # Same ops on the same batches in the same order: bit-identical weights and logs.
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        assert np.array_equal(a, b)
    assert history.history == plain_history.history
    # The training happened in the user's model object: the top moved, the prefix did not.
    for layer in cached.layers:
        moved = any(
            not np.array_equal(a, b) for a, b in zip(layer.get_weights(), initial[layer.name])
        )
        assert moved == (layer.trainable and bool(layer.weights)), layer.name
    assert history.history["loss"][-1] < history.history["loss"][0]
    if spill:
        # validation ran on the cached validation features; the last value matches evaluate()
        val_loss = cached.evaluate(xv, yv, verbose=0, batch_size=32)[0]
        assert history.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-5)
    # the spill files existed during training (train + validation caches) and are gone
    assert [len(files) for files in spy.seen] == [2 if spill else 0] * 2
    assert os.listdir(tmp_path) == []
    if not spill:
        # The user's optimizer did the cached training: a further plain epoch continues
        # from the same Adam state as in the plain run.
        # (The Dropout is seeded: an unseeded one under torch draws from torch's global
        # generator, which Keras' torch trainer also draws from on a model's first fit.)
        assert int(cached.optimizer.iterations) == int(plain.optimizer.iterations)
        plain.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        cached.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        for a, b in zip(plain.get_weights(), cached.get_weights()):
            assert np.array_equal(a, b)


def test_spilled_cache_with_default_shuffle_trains_and_cleans_up(tmp_path):
    x, y = _data()
    model = _model(cutoff=2)
    before = model.evaluate(x, y, verbose=0)[0]
    history = fit_top(
        model,
        x,
        y,
        batch_size=32,
        epochs=2,
        cache=True,
        memory_limit=0,
        cache_dir=str(tmp_path),
        verbose=0,
    )
    assert history.cache_used and os.listdir(tmp_path) == []
    assert model.evaluate(x, y, verbose=0)[0] < before - 0.1


def test_dataset_input_equals_plain_fit_on_the_dataset():
    # `fit` keeps a dataset's batches in their order (it ignores `shuffle`): so does the
    # cached training by default, over several epochs.
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(25)
    plain, cached = _model(2), _model(2)
    keras.utils.set_random_seed(5)
    plain.fit(dataset, epochs=2, verbose=0)
    keras.utils.set_random_seed(5)
    history = fit_top(cached, dataset, epochs=2, cache=True, verbose=0)
    assert history.cache_used
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_failed_caching_removes_its_spill_file(tmp_path):
    x, y = _data()
    model = _model(cutoff=2)

    def failing():
        for start in range(0, 200, 50):
            if start == 150:
                raise RuntimeError("disk on fire")
            yield x[start : start + 50], y[start : start + 50]

    with pytest.raises(RuntimeError, match="disk on fire"):
        fit_top(model, failing(), cache=True, memory_limit=0, cache_dir=str(tmp_path), verbose=0)
    assert os.listdir(tmp_path) == []
    # the same for a failure while caching the validation data
    with pytest.raises(RuntimeError, match="disk on fire"):
        fit_top(
            model,
            x,
            y,
            validation_data=failing(),
            cache=True,
            memory_limit=0,
            cache_dir=str(tmp_path),
            verbose=0,
        )
    assert os.listdir(tmp_path) == []


def test_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="must be compiled"):
        fit_top(_model(1, compile=False), x, y, verbose=0)
    unsolved = _model(cutoff=0)
    with pytest.raises(ValueError, match="no frozen layers with weights"):
        fit_top(unsolved, x, y, cache=True, verbose=0)
    model = _model(1)
    for bad in ("yes", "always", None):
        with pytest.raises(ValueError, match="`cache` must be"):
            fit_top(model, x, y, cache=bad, verbose=0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="memory_limit"):
            fit_top(model, x, y, cache=True, memory_limit=bad, verbose=0)


def test_unfrozen_solve_has_no_cache_point():
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3), L.Flatten(), L.Dense(3)])
    x, y = _data()
    hybridize(model, (x, y), cutoff=1, freeze=False, verbose=0)
    assert cache_point(model) is None
    model.layers[0].trainable = False
    # frozen conv, then Flatten (no weights, deterministic): the cache is Flatten's output
    assert cache_point(model) is model.layers[1].output


def test_cache_auto_follows_the_timing_prediction(monkeypatch):
    x, y = _data()
    # with one epoch the prefix is computed once either way: caching cannot pay
    history = fit_top(_model(2), x, y, epochs=1, cache="auto", verbose=0)
    assert history.cache_used is False and isinstance(history, keras.callbacks.History)
    # the decision follows the predicted ratio
    for ratio, expected in ((0.2, True), (5.0, False)):
        monkeypatch.setattr(fit_top_module, "cache_ratio", lambda *a, ratio=ratio: ratio)
        history = fit_top(_model(2), x, y, epochs=1, cache="auto", verbose=0)
        assert history.cache_used is expected
        assert len(history.history["loss"]) == 1


class _CountSteps(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


@pytest.mark.parametrize("ratio", [0.2, 5.0])
def test_cache_auto_trains_on_every_batch_of_a_one_shot_generator(monkeypatch, ratio):
    x, y = _data(200)
    monkeypatch.setattr(fit_top_module, "cache_ratio", lambda *a: ratio)
    model = _model(2)
    counter = _CountSteps()
    generator = ((x[s : s + 50], y[s : s + 50]) for s in range(0, 200, 50))
    history = fit_top(
        model,
        generator,
        batch_size=50,
        epochs=1,
        cache="auto",
        shuffle=False,
        verbose=0,
        callbacks=[counter],
    )
    assert history.cache_used is (ratio < 1)
    assert counter.steps == 4  # the batch read to time the prefix is trained on too


def test_predicted_speedup_is_bounded_by_the_epochs():
    keras.utils.set_random_seed(0)
    heavy = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            L.Conv2D(64, 5, padding="same"),
            L.Conv2D(64, 5, padding="same"),
            L.GlobalAveragePooling2D(),
            L.Dense(2),
        ]
    )
    for layer in heavy.layers[:2]:
        layer.trainable = False
    prefix = keras.Model(heavy.inputs[0], cache_point(heavy))
    batch = np.zeros((16, 32, 32, 3), "float32")
    # Timings are noisy on a busy machine; these bounds hold for any timing: caching pays
    # the prefix once instead of every epoch, so it never loses and gains at most x epochs.
    for epochs in (2, 10):
        ratio = fit_top_module.predict_cache_speedup(heavy, prefix, batch, epochs=epochs)
        assert 1.0 / epochs <= ratio < 1.0
    assert fit_top_module.predict_cache_speedup(heavy, prefix, batch, epochs=1) == pytest.approx(
        1.0
    )


def test_skip_connection_around_the_prefix_falls_back_to_plain_fit():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    x = (rng.normal(size=(200, 8)) + y[:, None]).astype("float32")
    inputs = keras.Input((8,))
    a = L.Dense(8, name="a")(inputs)
    b = L.Dense(8, name="b")(a)
    outputs = L.Dense(2, activation="softmax")(L.Add()([inputs, b]))  # reads the input again
    model = keras.Model(inputs, outputs)
    hybridize(model, (x, y), cutoff=1, verbose=0)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)
    with pytest.raises(
        ValueError, match="`cache=True` but the layers above the frozen prefix also read"
    ):
        fit_top(model, x, y, cache=True, verbose=0)
    before = model.get_layer("b").get_weights()[0].copy()
    history = fit_top(model, x, y, epochs=2, cache="auto", verbose=0)
    assert history.cache_used is False and len(history.history["loss"]) == 2
    assert not np.array_equal(model.get_layer("b").get_weights()[0], before)


def test_sample_weights_are_honoured_with_and_without_the_cache():
    x, y = _data(200)
    weights = np.zeros(200, "float32")  # zero weights: training must not move anything
    model = _model(2)
    before = [w.copy() for w in model.get_weights()]
    # arrays: sample_weight reaches the cached training
    history = fit_top(model, x, y, sample_weight=weights, epochs=1, cache=True, verbose=0)
    assert history.cache_used
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # a dataset of (x, y, w): the cache carries w along with the prefix outputs
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(50)
    for cache in (True, False, "auto"):  # "auto" first times a batch of the dataset
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = fit_top(model, dataset, epochs=1, cache=cache, verbose=0)
        # fit_top trains with the weights: no "class-PCA ignores them" warning
        assert not [w for w in caught if "ignore them" in str(w.message)], cache
        assert history.cache_used is (cache is True) or cache == "auto"
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# ------------------------------------------------------------------ shared prefix outputs
class _CountPrefixCalls:
    """Counts `predict_batch` calls: how often a prefix output was computed."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = fit_top_module.predict_batch

        def counted(*args):
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(fit_top_module, "predict_batch", counted)


def test_output_cache_is_shared_by_calls_with_the_same_prefix_and_data(monkeypatch):
    x, y = _data()
    xv, yv = _data(90, seed=1)
    counter = _CountPrefixCalls(monkeypatch)
    outputs = PrefixOutputCache()
    args = dict(batch_size=32, epochs=2, shuffle=False, verbose=0, validation_data=(xv, yv))

    first = _model(2)
    fit_top(first, x, y, cache=True, output_cache=outputs, **args)
    computed = counter.calls
    assert computed > 0 and len(outputs) == 2  # training and validation outputs
    assert (outputs.hits, outputs.misses) == (0, 2)

    # A new model (as in a new tuner trial) with the same solved prefix: nothing computed,
    # and with cache="auto" nothing timed either; the result equals a plain fit.
    plain, second = _model(2), _model(2)
    keras.utils.set_random_seed(5)
    plain_history = plain.fit(x, y, **args)
    keras.utils.set_random_seed(5)
    history = fit_top(second, x, y, cache="auto", output_cache=outputs, **args)
    assert history.cache_used and counter.calls == computed
    assert (outputs.hits, outputs.misses) == (2, 2)
    for a, b in zip(plain.get_weights(), second.get_weights()):
        assert np.array_equal(a, b)
    assert history.history == plain_history.history

    # Another prefix (other frozen weights), or other data: computed again, not reused.
    other = _model(2)
    kernel, bias = other.get_layer("conv").get_weights()
    other.get_layer("conv").set_weights([kernel * 1.01, bias])
    fit_top(other, x, y, cache=True, output_cache=outputs, **args)
    assert counter.calls > computed and len(outputs) == 4
    calls = counter.calls
    fit_top(_model(2), x[:-1], y[:-1], cache=True, output_cache=outputs, **dict(
        args, validation_data=None))
    assert counter.calls > calls


def test_output_cache_memory_limit_drops_the_oldest_and_skips_oversized():
    cache = PrefixOutputCache(memory_limit=100)
    labels = np.zeros(2, "int8")  # 2 bytes
    cache.put("a", np.zeros(10, "float32"), labels)  # 42 bytes
    cache.put("b", np.zeros(10, "float32"), labels)  # 84 held
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", np.zeros(10, "float32"), labels)  # over 100: "b" is dropped
    assert "b" not in cache and "a" in cache and "c" in cache and cache.nbytes == 84
    cache.put("big", np.zeros(30, "float32"), labels)  # larger than the limit: not kept
    assert "big" not in cache and len(cache) == 2
    assert cache.get("big") is None and cache.misses == 1
    with pytest.raises(ValueError, match="memory_limit"):
        PrefixOutputCache(memory_limit=-1)
    with pytest.raises(TypeError, match="output_cache"):
        fit_top(_model(1), *_data(), output_cache={}, verbose=0)


def test_callbacks_see_the_whole_model_during_cached_training(tmp_path):
    x, y = _data()
    model = _model(2)
    checkpoint = str(tmp_path / "best.weights.h5")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model)

    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    history = fit_top(
        model, x, y, epochs=5, cache=True, verbose=0,
        callbacks=[Record(), stop,
                   keras.callbacks.ModelCheckpoint(checkpoint, save_weights_only=True)],
    )
    assert history.cache_used
    assert seen and all(m is model for m in seen)
    # EarlyStopping (no epoch improves the loss by 10) stopped the cached training.
    assert len(history.history["loss"]) == 2
    # The checkpoint holds the whole model: it loads into a fresh copy and predicts alike.
    fresh = _model(cutoff=0, compile=False)
    fresh.load_weights(checkpoint)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_callbacks_that_look_a_metric_up_on_the_model_work_on_cached_training(tmp_path):
    # EarlyStopping / ModelCheckpoint(save_best_only) find "accuracy" among the model's
    # compiled metrics to tell "max" from "min": the user's model never trained a step,
    # so they raised "isn't able to automatically determine whether that metric should
    # be maximized" (mode="max" was needed).
    x, y = _data()
    model = _model(2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=0)
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"),
                                           monitor="val_accuracy", save_best_only=True)
    history = fit_top(model, x, y, epochs=3, cache=True, verbose=0,
                      validation_data=(x, y), callbacks=[stop, best])
    assert history.cache_used
    assert stop.monitor_op is keras.ops.greater and best.monitor_op is keras.ops.greater
    assert (tmp_path / "best.keras").exists()
    # Nothing of that one row is left in the metrics the next evaluation reports.
    assert [m.name for m in model.metrics] == ["loss", "compile_metrics"]
    assert model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] == pytest.approx(
        float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)), abs=1e-6)


def test_what_callbacks_add_to_the_logs_reaches_the_history_as_in_a_plain_fit():
    # A callback that writes a metric (a tuner objective computed by a callback) and
    # ReduceLROnPlateau (its `learning_rate`): cached or not, the History has them.
    x, y = _data()

    class AddMetric(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_custom"] = float(epoch)

    histories = {}
    for cache in (False, True):
        callbacks = [AddMetric(), keras.callbacks.ReduceLROnPlateau(
            "loss", patience=0, min_delta=10.0)]
        histories[cache] = fit_top(_model(2), x, y, epochs=3, cache=cache, verbose=0,
                                   callbacks=callbacks)
    assert histories[True].cache_used and not histories[False].cache_used
    assert sorted(histories[True].history) == sorted(histories[False].history)
    assert histories[True].history["val_custom"] == [0.0, 1.0, 2.0]
    assert len(histories[True].history["learning_rate"]) == 3
    np.testing.assert_allclose(histories[True].history["learning_rate"],
                               histories[False].history["learning_rate"])


def test_a_model_with_two_outputs_trains_plainly_and_cache_true_says_why():
    x, y = _data()
    inputs = keras.Input(x.shape[1:])
    hidden = L.Flatten()(L.Conv2D(4, 3, activation="relu", name="c")(inputs))
    model = keras.Model(inputs, {"cls": L.Dense(3, activation="softmax", name="cls")(hidden),
                                 "odd": L.Dense(1, activation="sigmoid", name="odd")(hidden)})
    hybridize(model, (x, y), cutoff=1, verbose=0)
    model.compile("adam", {"cls": "sparse_categorical_crossentropy",
                           "odd": "binary_crossentropy"})
    targets = {"cls": y, "odd": (y % 2).astype("float32")}
    with pytest.raises(ValueError, match=r"1 input\(s\) and 2 output\(s\).*cache=False"):
        fit_top(model, x, targets, epochs=1, cache=True, verbose=0)
    history = fit_top(model, x, targets, epochs=1, verbose=0)  # "auto": a plain fit
    assert not history.cache_used and "loss" in history.history


class ExtraLossModel(keras.Model):
    """A functional model with its own training logic (a constant added to the loss)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return super().compute_loss(x, y, y_pred, sample_weight, training=training) + 100.0


def _stopper(epoch):
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index == epoch:
                raise RuntimeError("interrupted")
    return Stop()


@pytest.mark.parametrize("case", ["custom compute_loss", "BackupAndRestore",
                                  "activity regularizer"])
def test_what_the_cache_would_change_trains_plainly_and_cache_true_says_why(case, tmp_path):
    # The cached training fits a plain model on stored outputs: a model's own training
    # logic, a callback resuming the fitted model, or a loss term computed from the
    # frozen layers' outputs would be lost. "auto" trains plainly; True refuses.
    x, y = _data()
    regularizer = keras.regularizers.L2(0.01) if case == "activity regularizer" else None
    cls = ExtraLossModel if case == "custom compute_loss" else keras.Model
    callbacks = ([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))]
                 if case == "BackupAndRestore" else [])

    def model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input(x.shape[1:])
        hidden = L.Flatten()(L.Conv2D(4, 3, activation="relu", name="c",
                                      activity_regularizer=regularizer)(inputs))
        m = cls(inputs, L.Dense(3, activation="softmax")(L.Dense(8, activation="relu")(hidden)))
        hybridize(m, (x, y), cutoff=1, verbose=0)
        m.compile("adam", "sparse_categorical_crossentropy", jit_compile=False)
        return m

    why = {"custom compute_loss": "overrides compute_loss", "BackupAndRestore":
           "`BackupAndRestore` resumes", "activity regularizer": "activity regularizer"}[case]
    with pytest.raises(ValueError, match=why):
        fit_top(model(), x, y, epochs=1, cache=True, verbose=0, callbacks=callbacks)
    monkey = model()
    history = fit_top(monkey, x, y, epochs=2, verbose=0, callbacks=callbacks)
    assert not history.cache_used and monkey.history is history
    if case == "custom compute_loss":
        assert min(history.history["loss"]) > 100.0  # the model's own loss ran
    if case == "BackupAndRestore":  # interrupted after epoch 1, resumed at epoch 2
        interrupted = model()
        with pytest.raises(RuntimeError):
            fit_top(interrupted, x, y, epochs=4, verbose=0,
                    callbacks=[callbacks[0], _stopper(1)])
        resumed = fit_top(model(), x, y, epochs=4, verbose=0, callbacks=callbacks)
        assert resumed.epoch == [2, 3]


def test_cached_training_sets_model_history():
    model = _model()
    x, y = _data()
    history = fit_top(model, x, y, epochs=2, batch_size=32, cache=True, verbose=0)
    assert history.cache_used and model.history is history


# ------------------------------------------------------------------ residual graphs
def _residual_model(cutoff, seed=3):
    """Conv stem -> basic block (identity shortcut) -> Conv -> GAP -> Dense(3)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    stem = L.ReLU()(L.Conv2D(4, 3, padding="same", name="stem")(inputs))
    branch = L.ReLU()(L.Conv2D(4, 3, padding="same", name="block_a")(stem))
    branch = L.Conv2D(4, 3, padding="same", name="block_b")(branch)
    block = L.ReLU(name="block_out")(L.Add()([branch, stem]))
    top = L.Conv2D(4, 3, activation="relu", name="top_conv")(block)
    outputs = L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(top))
    model = keras.Model(inputs, outputs)
    hybridize(model, _data(), cutoff=cutoff, verbose=0)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    return model


def test_residual_graph_is_cut_after_its_last_fully_frozen_block():
    # cutoff 3 freezes the stem and the whole block: the cut is the block's output
    model = _residual_model(3)
    assert cache_point(model) is model.get_layer("block_out").output
    # cutoff 2 leaves block_b training while the shortcut reads the stem: cut at the stem
    model = _residual_model(2)
    assert cache_point(model) is model.get_layer("block_a").input
    # cached training of the residual model equals its plain fit
    x, y = _data()
    plain, cached = _residual_model(3), _residual_model(3)
    args = dict(batch_size=32, epochs=2, shuffle=False, verbose=0)
    keras.utils.set_random_seed(5)
    plain_history = plain.fit(x, y, **args)
    keras.utils.set_random_seed(5)
    history = fit_top(cached, x, y, cache=True, **args)
    assert history.cache_used
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], plain_history.history["loss"], rtol=1e-5)


def test_random_augmentation_is_never_cached():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.RandomFlip("horizontal", seed=1),
                              L.Conv2D(4, 3), L.Flatten(), L.Dense(3)])
    hybridize(model, _data(), cutoff=1, verbose=0)
    assert not model.layers[1].trainable  # the conv is solved and frozen ...
    assert cache_point(model) is None  # ... but behind a layer that draws in training
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"`cache=True` but the frozen layers read the output "
                                         r"of random_flip.*random numbers in training"):
        fit_top(model, *_data(), epochs=1, cache=True, verbose=0)


def test_auto_times_once_per_prefix_and_data_and_amortises_over_uses(monkeypatch):
    from keras_classpca.hybrid import training

    x, y = _data()
    timings = []

    def timed(*args):
        timings.append(1)
        # prefix 1.0 s, top 0.2 s: at 2 epochs caching predicts (1 + 1.2) / 3.2 = 0.69
        # alone (plain), (0.5 + 1.2) / 3.2 = 0.53 when a second call shares it (cache)
        return 1.0, 1.2

    monkeypatch.setattr(training, "forward_seconds", timed)
    outputs = PrefixOutputCache()
    args = dict(batch_size=32, shuffle=False, verbose=0)
    runs = [fit_top(_model(2), x, y, epochs=2, cache="auto", output_cache=outputs, **args)
            for _ in range(3)]
    # Timed once; the second call computes and stores the outputs, the third reuses them.
    assert [h.cache_used for h in runs] == [False, True, True]
    assert len(timings) == 1
    assert (outputs.misses, outputs.hits, len(outputs)) == (1, 1, 1)
    # Another prefix (one layer fewer) is timed and counted apart.
    other = fit_top(_model(1), x, y, epochs=2, cache="auto", output_cache=outputs, **args)
    assert other.cache_used is False and len(timings) == 2


def test_cache_ratio_amortises_the_prefix_pass_over_its_uses():
    from keras_classpca.hybrid.training import cache_ratio

    alone = cache_ratio(1.0, 1.2, epochs=2)
    assert alone == pytest.approx((1.0 + 2 * 0.6) / (2 * 1.6))
    assert cache_ratio(1.0, 1.2, epochs=2, uses=2) == pytest.approx((0.5 + 1.2) / 3.2)
    # One epoch, one use: the prefix is computed once either way.
    assert cache_ratio(1.0, 1.2, epochs=1) == pytest.approx(1.0)
    # Many uses: only the top's steps remain.
    assert cache_ratio(1.0, 1.2, epochs=2, uses=10**9) == pytest.approx(1.2 / 3.2)


def test_a_raw_operation_in_the_graph_is_a_fixed_function_of_the_prefix():
    # `h + 3.0` puts a keras.Operation (no weights, no `trainable`) in the graph, as
    # keras.applications.MobileNetV3 does.
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = L.MaxPooling2D()(h + 3.0)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(h)))
    hybridize(model, _data(), cutoff=1, verbose=0)
    assert cache_point(model) is not None  # the cut passes the operation
    model.compile("adam", "sparse_categorical_crossentropy")
    history = fit_top(model, *_data(), epochs=1, cache=True, verbose=0)
    assert history.cache_used


@pytest.mark.skipif(BACKEND != "tensorflow", reason="string tensors are TensorFlow's")
def test_a_short_last_batch_of_strings_is_padded_with_valid_rows():
    from keras_classpca.hybrid.graph import predict_batch

    vectorize = L.TextVectorization(vocabulary=["a", "b", "c"], output_mode="count")
    inputs = keras.Input((), dtype="string")
    model = keras.Model(inputs, vectorize(inputs))
    batch = np.array([b"a b", b"c c"], dtype=object)
    np.testing.assert_array_equal(predict_batch(model, batch, pad_to=5),
                                  np.asarray(model.predict_on_batch(batch)))


def test_cache_auto_reads_a_dataset_every_epoch(monkeypatch):
    # A pipeline may draw new augmentation every epoch: cached outputs would freeze it
    # into one draw, so "auto" trains plainly on a dataset for more than one epoch (even
    # when caching would be faster), and `cache=True` still caches it.
    monkeypatch.setattr(fit_top_module, "cache_ratio", lambda *a: 0.1)
    x, y = _data(200)
    reads = []

    def pipeline():
        reads.append(1)
        for start in range(0, 200, 50):
            yield x[start:start + 50], y[start:start + 50]

    dataset = tf.data.Dataset.from_generator(pipeline, output_signature=(
        tf.TensorSpec((None,) + x.shape[1:], tf.float32), tf.TensorSpec((None,), tf.int64)))
    model = _model(2)
    history = fit_top(model, dataset, epochs=3, verbose=0)
    assert history.cache_used is False and len(reads) >= 3  # (jax: one more read)
    reads.clear()
    assert fit_top(model, dataset, epochs=3, cache=True, verbose=0).cache_used
    assert len(reads) == 1
    assert fit_top(model, x, y, epochs=3, verbose=0).cache_used  # arrays: no pipeline


def test_a_missing_cache_dir_is_created_for_the_spill_file(tmp_path):
    x, y = _data(120)
    directory = tmp_path / "not" / "yet"
    history = fit_top(_model(2), x, y, epochs=1, cache=True, memory_limit=0,
                      cache_dir=str(directory), verbose=0)
    assert history.cache_used and directory.is_dir() and os.listdir(directory) == []


def test_a_model_frozen_after_fitting_goes_on_with_its_optimizer_state():
    # fit one epoch, freeze a layer by hand, go on with fit_top from epoch 1: the step
    # count, the learning-rate schedule and the moments of the layers still training
    # carry over, as `fit_progressive` does (a fresh optimizer restarted the schedule).
    x, y = _data()
    model = _model(cutoff=0, compile=False)
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 12, 0.5)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=25, verbose=0)  # 12 steps
    moments = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.optimizer.variables
               if "out" in v.path}
    model.get_layer("conv").trainable = False
    model.get_layer("bn").trainable = False
    for cache in (False, True):
        fit_top(model, x, y, epochs=1, batch_size=25, cache=cache, verbose=0, shuffle=False)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 36
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        1e-2 * 0.5 ** 3)
    carried = {v.path: v for v in model.optimizer.variables if v.path in moments}
    assert carried and all(tuple(v.shape) == moments[p].shape for p, v in carried.items())


def test_a_single_callback_is_taken_as_fit_takes_it():
    x, y = _data()
    for cache in ("auto", True):
        history = fit_top(_model(2), x, y, epochs=1, batch_size=50, cache=cache, verbose=0,
                          callbacks=keras.callbacks.TerminateOnNaN())
        assert len(history.epoch) == 1


def test_a_spilled_cache_shuffles_batches_unless_shuffle_is_given(monkeypatch, tmp_path):
    x, y = _data()
    seen = []
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("shuffle"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    for extra in ({}, {"shuffle": True}):
        history = fit_top(_model(2), x, y, epochs=1, batch_size=50, cache=True, verbose=0,
                          memory_limit=1024, cache_dir=str(tmp_path), **extra)
        assert history.cache_used
    assert seen == ["batch", True]


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_pydataset_equals_plain_fit_which_shuffles_its_batch_order(shuffle):
    # `fit` shuffles a PyDataset's batch order every epoch (shuffle=True, its default):
    # the cached training did not (it trained the batches in their order).
    x, y = _data()
    plain, cached = _model(2), _model(2)
    keras.utils.set_random_seed(5)
    plain.fit(ArrayPyDataset(x, y, 25), epochs=3, shuffle=shuffle, verbose=0)
    keras.utils.set_random_seed(5)
    history = fit_top(cached, ArrayPyDataset(x, y, 25), epochs=3, cache=True, shuffle=shuffle,
                      verbose=0)
    assert history.cache_used
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if shuffle:  # and it is not the batches in their order
        ordered = _model(2)
        keras.utils.set_random_seed(5)
        ordered.fit(ArrayPyDataset(x, y, 25), epochs=3, shuffle=False, verbose=0)
        assert not np.allclose(ordered.get_weights()[-2], cached.get_weights()[-2])


def test_a_named_input_is_shuffled_by_row_as_arrays_are():
    # `fit({"name": x}, y)` shuffles rows as `fit(x, y)` does; the cached training took
    # the dict for a dataset and trained the rows in their order.
    x, y = _data()
    trained = []
    for data in (x, {"image": x}):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((8, 8, 1), name="image")
        hidden = L.Dense(16, activation="relu")(L.Flatten()(L.Conv2D(4, 3, name="conv")(inputs)))
        model = keras.Model(inputs, L.Dense(3, activation="softmax")(hidden))
        hybridize(model, (x, y), cutoff=1, verbose=0)
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        keras.utils.set_random_seed(7)
        assert fit_top(model, data, y, epochs=2, batch_size=32, cache=True,
                       verbose=0).cache_used
        trained.append(model.get_weights()[-2])
    np.testing.assert_allclose(trained[0], trained[1], rtol=1e-6, atol=1e-7)


def test_a_generator_with_steps_per_epoch_is_not_read_to_its_end():
    # `fit` draws `steps_per_epoch` batches per epoch from a stream that may never end:
    # caching read it to its end (an endless generator hung).
    x, y = _data()

    def endless():
        rng = np.random.default_rng(0)
        while True:
            rows = rng.choice(len(x), 25)
            yield x[rows], y[rows]

    model = _model(2)
    history = fit_top(model, endless(), steps_per_epoch=4, epochs=2, verbose=0)
    assert not history.cache_used and len(history.history["loss"]) == 2
    with pytest.raises(ValueError, match="`steps_per_epoch` is given with a dataset or gen"):
        fit_top(model, endless(), steps_per_epoch=4, epochs=2, cache=True, verbose=0)


@pytest.mark.parametrize("entry", ["fit_top", "fit_progressive"])
def test_training_a_never_adapted_class_pca_layer_warns(entry):
    # A ClassPCA layer is frozen from construction: trained without adapt or
    # hybridize, it kept its random initializer weights without a word.
    from keras_classpca import ClassPCADense, fit_progressive

    x, y = _data()
    x = x.reshape(len(x), -1)

    def model(adapted, trainable=False):
        layer = ClassPCADense(6, name="solved", trainable=trainable)
        built = keras.Sequential([keras.Input(x.shape[1:]), layer,
                                  keras.layers.Dense(3, activation="softmax")])
        if adapted:
            layer.adapt((x, y))
        built.compile("adam", "sparse_categorical_crossentropy")
        return built

    def train(built):
        if entry == "fit_top":
            return fit_top(built, x, y, epochs=1, verbose=0)
        return fit_progressive(built, x, y, epochs=2, settle=[1], verbose=0)

    with pytest.warns(UserWarning, match=f"{entry}: ClassPCADense 'solved' was never adapted"):
        train(model(adapted=False))
    for built in (model(adapted=True), model(adapted=False, trainable=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            train(built)


@pytest.mark.tensorflow_backend
@pytest.mark.parametrize("cache", [True, "auto", False])
def test_an_unbatched_dataset_is_refused_whatever_the_cache_as_fit_refuses_it(cache):
    # cache=True trained on it (the cached prefix batched it), `fit` failed on it with
    # a shape error: under cache="auto" the outcome depended on the timing.
    x, y = _data()
    model = _model()
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match=r"takes a batched tf.data.Dataset, as `fit` does; "
                                         r"this one yields single samples of shape \(8, 8, 1\)"):
        fit_top(model, unbatched, epochs=1, cache=cache, verbose=0)
    history = fit_top(model, unbatched.batch(32), epochs=1, cache=cache, verbose=0)
    assert len(history.history["loss"]) == 1


def test_a_pair_given_as_x_is_told_to_pass_x_and_y_apart():
    # `fit_top(model, (x, y))` (hybridize's form) failed in Keras with "None values not
    # supported".
    from keras_classpca import fit_progressive

    x, y = _data()
    with pytest.raises(ValueError, match=r"`fit_top` takes `x` and `y` apart, as `fit` "
                                         r"does: `fit_top\(model, x, y\)`"):
        fit_top(_model(), (x, y), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`fit_progressive` takes `x` and `y` apart"):
        fit_progressive(_model(), (x, y), epochs=1, verbose=0)


@pytest.mark.tensorflow_backend
def test_a_y_next_to_a_dataset_or_generator_is_named_as_the_mistake():
    # It said "`x` must be an array or tensor; received _BatchDataset" (x was fine).
    import tensorflow as tf

    from keras_classpca import fit_progressive

    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(ValueError, match=r"`fit_top` takes no `y` when `x` is a "
                                         r"tf.data.Dataset, as `fit` does: its batches hold "
                                         r"the labels.*received `y` of type ndarray"):
        fit_top(_model(), dataset, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`fit_progressive` takes no `y` when `x` is a "
                                         r"generator"):
        fit_progressive(_model(), iter([(x, y)]), y, epochs=1, verbose=0)
    assert len(fit_top(_model(), dataset, epochs=1, verbose=0).history["loss"]) == 1


def test_batch_size_and_epochs_may_be_positional_as_in_fit():
    x, y = _data()
    history = fit_top(_model(), x, y, 64, 2, verbose=0)  # model.fit(x, y, 64, 2)
    assert len(history.history["loss"]) == 2


def test_a_masked_tensor_is_never_the_cache_point():
    # Cached as arrays the per-step output would lose its mask, and the mean above
    # would average the padded steps too: the cut moves up to the unmasked mean.
    inputs = keras.Input((10,), dtype="int32")
    h = L.Embedding(20, 4, mask_zero=True, trainable=False)(inputs)
    per_step = L.Dense(6, activation="relu", name="per_step", trainable=False)(h)
    mean = L.GlobalAveragePooling1D(name="mean")(per_step)
    model = keras.Model(inputs, L.Dense(3)(L.Dense(5)(mean)))
    assert cache_point(model) is model.get_layer("mean").output
    # With a trainable layer reading the masked steps nothing below it can be cut (the
    # layers above also read the mask, an operation on the model's input).
    inputs = keras.Input((10,), dtype="int32")
    h = L.Embedding(20, 4, mask_zero=True, trainable=False)(inputs)
    per_step = L.Dense(6, activation="relu", name="per_step", trainable=False)(h)
    h = L.GlobalAveragePooling1D()(L.Dense(5)(per_step))
    assert cache_point(keras.Model(inputs, L.Dense(3)(h))) is None
