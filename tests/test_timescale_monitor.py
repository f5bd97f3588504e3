"""TimescaleMonitor and the subspace-overlap math: hand-computed cases."""

import json

import keras
import numpy as np
import pytest

from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.subspace import (
    chance_overlap,
    leading_subspace,
    principal_cosines,
    subspace_overlap,
)
from keras_classpca.diagnostics import TimescaleMonitor
from keras_classpca.diagnostics.timescale_monitor import settled_epoch
from keras_classpca.layers.geometry import iter_rows


def _rotated(basis, theta, seed=0):
    """`basis` (orthonormal, d x k) rotated by `theta` towards an orthogonal k-frame."""
    d, k = basis.shape
    rng = np.random.default_rng(seed)
    other = rng.normal(size=(d, k))
    other -= basis @ (basis.T @ other)
    other, _ = np.linalg.qr(other)
    return np.cos(theta) * basis + np.sin(theta) * other, other


# ---------------------------------------------------------------------- overlap math
def test_identical_subspaces_overlap_one_whatever_the_basis():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3))
    mix = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    assert subspace_overlap(a, a @ mix) == pytest.approx(1.0, abs=1e-12)
    assert subspace_overlap(a, 5 * a) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_subspaces_overlap_zero():
    e = np.eye(6)
    assert subspace_overlap(e[:, :2], e[:, 2:5]) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("theta", [0.0, np.pi / 7, np.pi / 4, np.pi / 3, np.pi / 2])
def test_rotation_by_theta_gives_cos_squared(theta):
    basis, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(9, 3)))
    rotated, _ = _rotated(basis, theta)
    assert subspace_overlap(basis, rotated) == pytest.approx(np.cos(theta) ** 2, abs=1e-12)
    np.testing.assert_allclose(
        principal_cosines(basis, rotated), [abs(np.cos(theta))] * 3, atol=1e-12
    )


def test_mixed_angles_average_their_squared_cosines():
    e = np.eye(4)
    # Plane 1 = e0, e1; plane 2 = e0 and e1 rotated by 60 degrees towards e2.
    b = np.column_stack([e[:, 0], 0.5 * e[:, 1] + np.sqrt(0.75) * e[:, 2]])
    assert subspace_overlap(e[:, :2], b) == pytest.approx((1.0 + 0.25) / 2, abs=1e-12)


def test_contained_subspace_counts_as_identical_over_the_smaller_rank():
    e = np.eye(5)
    assert subspace_overlap(e[:, :1], e[:, :3]) == pytest.approx(1.0)
    assert subspace_overlap(e[:, 3:4], e[:, :3]) == pytest.approx(0.0)


def test_chance_overlap_matches_random_subspaces():
    rng = np.random.default_rng(2)
    values = [
        subspace_overlap(rng.normal(size=(40, 4)), rng.normal(size=(40, 4))) for _ in range(400)
    ]
    assert np.mean(values) == pytest.approx(chance_overlap(4, 4, 40), abs=0.01)
    assert chance_overlap(4, 4, 40) == 0.1


def test_leading_subspace_picks_heaviest_directions():
    e = np.eye(5)
    kernel = np.column_stack([10 * e[:, 0], e[:, 1], 5 * e[:, 2]])
    lead = leading_subspace(kernel, 2)
    assert subspace_overlap(lead, e[:, [0, 2]]) == pytest.approx(1.0)


def test_overlap_rejects_mismatched_or_empty_spans():
    with pytest.raises(ValueError, match="same space"):
        subspace_overlap(np.ones((3, 1)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="non-empty"):
        subspace_overlap(np.zeros((3, 1)), np.ones((3, 1)))


def test_settled_epoch():
    assert settled_epoch([0, 1, 2, 3, 4], [None, 0.3, 0.04, 0.06, 0.02], 0.05) == 4
    assert settled_epoch([0, 1, 2, 3], [None, 0.3, 0.04, 0.03], 0.05) == 2
    assert settled_epoch([0, 1, 2], [None, 0.3, 0.2], 0.05) is None


# ---------------------------------------------------------------------- the monitor
def _dense_setup(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=8, n_per_class=120, class_mean_scale=1.0)
    x, y = data.x.astype("float32"), data.y
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(3, name="b")]
    )
    monitor = TimescaleMonitor((x, y), layers=["a"], samples=len(x))
    monitor.set_model(model)
    reference = ClassPCA(3).fit(x.astype(np.float64), y).components_
    return model, monitor, reference


def test_monitor_overlap_one_zero_and_cos_squared_on_a_dense_layer(subspace_classes):
    model, monitor, reference = _dense_setup(subspace_classes)
    layer = model.get_layer("a")
    basis, _ = np.linalg.qr(reference)
    layer.kernel.assign((basis @ np.diag([2.0, 1.0, 0.5])).astype("float32"))
    overlap, _, d, rank, _ = monitor.measure()["a"]
    assert (d, rank) == (8, 3)
    assert overlap == pytest.approx(1.0, abs=1e-5)
    theta = 0.6
    rotated, other = _rotated(basis, theta)
    layer.kernel.assign(other.astype("float32"))
    assert monitor.measure()["a"][0] == pytest.approx(0.0, abs=1e-5)
    layer.kernel.assign(rotated.astype("float32"))
    assert monitor.measure()["a"][0] == pytest.approx(np.cos(theta) ** 2, abs=1e-5)


def test_monitor_sees_the_layers_of_a_nested_backbone(subspace_classes):
    flat, flat_monitor, _ = _dense_setup(subspace_classes)
    data = subspace_classes([2, 2, 2], n_features=8, n_per_class=120, class_mean_scale=1.0)
    x, y = data.x.astype("float32"), data.y
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="inner")])
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)))
    model.get_layer("head").set_weights(flat.get_layer("b").get_weights())
    backbone.get_layer("inner").set_weights(flat.get_layer("a").get_weights())
    monitor = TimescaleMonitor((x, y), samples=len(x))
    monitor.set_model(model)
    measured = monitor.measure()
    assert set(measured) == {"inner", "head"}
    # the nested layer measures as the same layer at the top of a flat model does
    assert measured["inner"][0] == pytest.approx(flat_monitor.measure()["a"][0], abs=1e-6)


def test_monitor_compares_conv_kernel_with_class_pca_of_its_patches():
    rng = np.random.default_rng(3)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 6, 6, 2)).astype("float32") + y[:, None, None, None]
    x[..., 1] *= 1 + y[:, None, None]
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 2, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    layer = model.get_layer("conv")
    rows, labels = next(iter_rows(layer, x, y))
    components = ClassPCA(4).fit(rows.astype(np.float64), labels).components_  # (8, 4)
    layer.kernel.assign(components.reshape(2, 2, 2, 4).astype("float32"))
    monitor = TimescaleMonitor((x, y), layers=["conv"], samples=60, patches_per_image=None)
    monitor.set_model(model)
    overlap, _, d, rank, _ = monitor.measure()["conv"]
    assert (d, rank) == (8, 4)
    assert overlap == pytest.approx(1.0, abs=1e-5)
    # The kernel's (kh, kw, C) axes transposed: same numbers, wrong patch order.
    layer.kernel.assign(
        np.transpose(components.reshape(2, 2, 2, 4), (2, 1, 0, 3)).astype("float32")
    )
    assert monitor.measure()["conv"][0] < 0.95


def test_grouped_convolution_is_skipped_by_default_and_refused_by_name():
    # A grouped kernel spans one subspace per group: not monitored. fit() must not fail.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 4)).astype("float32"), np.arange(64) % 3
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(4, 3, groups=2, name="grouped"),
        keras.layers.Conv2D(4, 3, name="plain"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", name="head"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    monitor = TimescaleMonitor((x, y), samples=64)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[monitor])
    assert "grouped" not in monitor.measure()
    assert "plain" in monitor.measure()
    named = TimescaleMonitor((x, y), layers=["grouped"])
    named.set_model(model)
    with pytest.raises(ValueError, match="grouped convolution"):
        named.measure()


def test_weight_change_and_history(subspace_classes, tmp_path):
    model, monitor, _ = _dense_setup(subspace_classes)
    layer = model.get_layer("a")
    w = layer.kernel.numpy()
    monitor.set_params({"epochs": 4})
    monitor.every = 2
    monitor.on_train_begin()
    layer.kernel.assign(2 * w)
    monitor.on_epoch_end(0)  # epoch 1: not a check (every=2)
    monitor.on_epoch_end(1)  # epoch 2: ‖2W - W‖ / ‖2W‖ = 0.5 over 2 epochs
    layer.kernel.assign(2 * w + 0.01 * w)
    monitor.on_epoch_end(2)
    monitor.on_epoch_end(3)  # epoch 4: 0.01 / 2.01 / 2
    history = monitor.history
    assert history["epochs"] == [0, 2, 4]
    changes = history["layers"]["a"]["weight_change"]
    assert changes[0] is None
    assert changes[1] == pytest.approx(0.25, rel=1e-5)
    assert changes[2] == pytest.approx(0.01 / 2.01 / 2, rel=1e-4)
    assert history["settled_epoch"] == {"a": 4}
    assert len(monitor.table()) == 3
    path = monitor.save(tmp_path / "h.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(history))
    assert "epoch 4" in monitor.format_table()


def test_subspace_change_ignores_rescaling_and_sees_rotation(subspace_classes):
    # Adam-like steps rescale every weight; the filter subspace is what settles.
    model, monitor, _ = _dense_setup(subspace_classes)
    layer = model.get_layer("a")
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    layer.kernel.assign(q[:, :3].astype("float32"))
    monitor.set_params({"epochs": 3})
    monitor.on_train_begin()
    layer.kernel.assign((3.0 * q[:, :3] @ np.diag([1.0, 2.0, 0.5])).astype("float32"))
    monitor.on_epoch_end(0)  # rescaled columns: same span
    theta = 0.3  # rotate one of three directions by theta out of the span
    rotated = q[:, :3].copy()
    rotated[:, 0] = np.cos(theta) * q[:, 0] + np.sin(theta) * q[:, 5]
    layer.kernel.assign(rotated.astype("float32"))
    monitor.on_epoch_end(1)
    monitor.on_epoch_end(2)  # unchanged
    entry = monitor.history["layers"]["a"]
    assert entry["subspace_change"][0] is None
    assert entry["subspace_change"][1] == pytest.approx(0.0, abs=1e-6)
    assert entry["weight_change"][1] > 0.5  # what a weight-step measure would call moving
    assert entry["subspace_change"][2] == pytest.approx(np.sin(theta) ** 2 / 3, rel=1e-4)
    assert entry["subspace_change"][3] == pytest.approx(0.0, abs=1e-6)
    assert monitor.history["subspace_settled_epoch"] == {"a": 3}
    assert "dS" in monitor.format_table()


def test_callback_does_not_change_training():
    rng = np.random.default_rng(4)
    y = np.arange(192) % 4
    x = (rng.normal(size=(192, 8, 8, 1)) + y[:, None, None, None] * 0.5).astype("float32")

    def train(with_monitor):
        keras.utils.set_random_seed(7)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(4, activation="softmax"),
            ]
        )
        model.compile("adam", "sparse_categorical_crossentropy")
        callbacks = [TimescaleMonitor((x, y), samples=64)] if with_monitor else []
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=callbacks)
        return model.get_weights(), callbacks

    plain, _ = train(False)
    monitored, (monitor,) = train(True)
    for a, b in zip(plain, monitored):
        np.testing.assert_array_equal(a, b)
    history = monitor.history
    assert history["epochs"] == [0, 1, 2]
    assert list(history["layers"]) == [layer for layer in history["layers"]]
    assert len(history["layers"]) == 2
    for entry in history["layers"].values():
        assert all(0.0 <= v <= 1.0 for v in entry["overlap"])
        assert all(v > 0 for v in entry["weight_change"][1:])


def test_invalid_arguments():
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match="every"):
        TimescaleMonitor((x, y), every=0)
    with pytest.raises(ValueError, match="max_rank_fraction"):
        TimescaleMonitor((x, y), max_rank_fraction=1.5)
    with pytest.raises(TypeError, match=r"\(x, y\)"):
        TimescaleMonitor(x)
    with pytest.raises(ValueError, match="allocation"):
        TimescaleMonitor((x, y), allocation="nope")
    # (seed=None failed in int(); a bad seed or verbose was taken)
    for bad in ("a", -1, 1.5):
        with pytest.raises(ValueError, match="`seed` must be a non-negative integer"):
            TimescaleMonitor((x, y), seed=bad)
    with pytest.raises(ValueError, match="`verbose` must be 0, 1, 2"):
        TimescaleMonitor((x, y), verbose="loud")
    drawn = TimescaleMonitor((x, y), seed=None, verbose="auto")
    assert isinstance(drawn.seed, int) and drawn.verbose == 1
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    monitor = TimescaleMonitor((x, y), layers=["nope"])
    monitor.set_model(model)
    with pytest.raises(ValueError, match="no monitorable"):
        monitor.measure()


def test_noise_ceiling_high_for_clean_structure_low_for_noise(subspace_classes):
    # Each class varies along one line only: any sample pins the 3 lines down exactly.
    data = subspace_classes([1, 1, 1], n_features=8, n_per_class=120, class_mean_scale=1.0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="a")])
    clean = TimescaleMonitor((data.x, data.y), samples=len(data.x), noise_ceiling=True)
    clean.set_model(model)
    assert clean.measure()["a"][4] == pytest.approx(1.0, abs=1e-3)
    rng = np.random.default_rng(5)
    noise = TimescaleMonitor((rng.normal(size=(60, 8)), np.arange(60) % 3), noise_ceiling=True)
    noise.set_model(model)
    assert noise.measure()["a"][4] < 0.9


def _small_mlp(built=True):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(8, activation="relu", name="h"),
              keras.layers.Dense(3, activation="softmax", name="out")]
    return keras.Sequential(([keras.Input((6,))] if built else []) + layers)


def _small_data(n=300):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 6)).astype("float32")
    x[np.arange(n), y] += 2.0
    return x, y


def test_a_resumed_fit_labels_and_divides_by_the_epochs_it_trained():
    x, y = _small_data()
    model = _small_mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    kernels = {}

    class Kernels(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            kernels[epoch] = keras.ops.convert_to_numpy(model.get_layer("h").kernel).copy()

        def on_train_end(self, logs=None):
            kernels["end"] = keras.ops.convert_to_numpy(model.get_layer("h").kernel).copy()

    monitor = TimescaleMonitor((x, y), samples=150, layers=["h"])
    model.fit(x, y, epochs=5, initial_epoch=3, verbose=0, callbacks=[Kernels(), monitor])
    assert monitor.history["epochs"] == [3, 4, 5]
    change = monitor.history["layers"]["h"]["weight_change"][1]
    expected = np.linalg.norm(kernels[4] - kernels[3]) / np.linalg.norm(kernels[4])
    assert change == pytest.approx(expected, rel=1e-5)


def test_a_run_stopped_early_is_checked_after_its_last_epoch_and_nan_data_is_refused():
    x, y = _small_data()
    model = _small_mlp(built=False)  # fit builds it: the monitor builds it from its data
    model.compile("adam", "sparse_categorical_crossentropy")

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1

    monitor = TimescaleMonitor((x, y), samples=150, every=3)
    model.fit(x, y, epochs=6, verbose=0, callbacks=[StopAfterTwo(), monitor])
    assert monitor.history["epochs"] == [0, 2]
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="`data` contains NaN"):
        TimescaleMonitor((bad, y), samples=150)


def test_a_dense_layer_on_masked_steps_is_measured_on_the_unmasked_steps():
    # Sequences of 6 steps padded with 4 zero steps behind a `Masking` layer must
    # measure as the same sequences without the padding: the layers above skip it.
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    steps = rng.normal(size=(120, 6, 5)).astype("float32")
    steps[np.arange(120), :, y] += 2.0
    padded = np.concatenate([steps, np.zeros((120, 4, 5), "float32")], axis=1)

    def build(length, masked):
        inputs = keras.Input((length, 5))
        hidden = keras.layers.Masking(0.0)(inputs) if masked else inputs
        hidden = keras.layers.Dense(4, activation="relu", name="proj")(hidden)
        pooled = keras.layers.GlobalAveragePooling1D()(hidden)
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))

    plain, masked = build(6, False), build(10, True)
    masked.set_weights(plain.get_weights())
    overlaps = {}
    for name, model, x in (("plain", plain, steps), ("masked", masked, padded)):
        monitor = TimescaleMonitor((x, y), samples=120, layers=["proj"], noise_ceiling=True)
        monitor.set_model(model)
        overlap, _, _, _, ceiling = monitor.measure()["proj"]
        overlaps[name] = (overlap, ceiling)
    np.testing.assert_allclose(overlaps["masked"], overlaps["plain"], rtol=1e-5)
