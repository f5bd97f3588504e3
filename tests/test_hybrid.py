"""hybridize: solved layers equal ClassPCA of their actual inputs, BatchNorm adaptation,
streaming, cutoff handling (fixed, auto, errors), unsupported layers, HybridReport."""

import json
import tracemalloc
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_classpca
import keras_classpca.hybrid.decision as decision_module
import keras_classpca.hybrid.policy as policy_module
from keras_classpca import ClassPCA, ClassPCADense, HybridReport, hybridize
from keras_classpca.hybrid.report import SolvedLayer

L = keras.layers


# ----------------------------------------------------------------------------- helpers
def _layer_input(model, layer, x):
    """The actual input of `layer` in `model` (inference mode), computed by Keras."""
    return np.asarray(
        keras.Model(model.inputs[0], layer.input).predict(x, verbose=0, batch_size=512)
    )


def _im2col(images, k):
    """'valid', stride-1 k×k patches flattened in (row, col, channel) order, by hand."""
    n, h, w, c = images.shape
    rows = []
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            rows.append(images[:, i : i + k, j : j + k, :].reshape(n, -1))
    return np.stack(rows, axis=1)  # (n, positions, k*k*c)


def _snapshot(model):
    return [w.copy() for w in model.get_weights()], [l.trainable for l in model.layers]


def _assert_unchanged(model, snapshot):
    weights, flags = snapshot
    after = model.get_weights()
    assert len(after) == len(weights)
    assert all(np.array_equal(a, b) for a, b in zip(after, weights))
    assert [l.trainable for l in model.layers] == flags


def _subspace_data(subspace_classes, n_per_class=100, seed=0):
    data = subspace_classes(
        [2, 2, 2],
        n_features=12,
        n_per_class=n_per_class,
        class_mean_scale=1.5,
        noise=0.3,
        seed=seed,
    )
    return data.x.astype("float32"), data.y


def _mlp(hidden=(8, 8), n_in=12, k=3, bn=False, dropout=False, name="m"):
    layers = [keras.Input((n_in,))]
    for i, units in enumerate(hidden):
        layers.append(L.Dense(units, activation="relu", name=f"{name}_d{i}"))
        if dropout:
            layers.append(L.Dropout(0.5, name=f"{name}_drop{i}"))
        if bn:
            layers.append(L.BatchNormalization(name=f"{name}_bn{i}"))
    layers.append(L.Dense(k, activation="softmax", name=f"{name}_out"))
    return keras.Sequential(layers)


def _images(n=240, k=3, seed=0):
    """8×8×2 images whose class sets the orientation of a stripe pattern, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    grid = np.arange(8)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    patterns = np.stack([np.sin(rows * 1.3), np.sin(cols * 1.3), np.sin((rows + cols) * 0.9)])[:k]
    x = rng.normal(size=(n, 8, 8, 2)) * 0.5
    x[..., 0] += patterns[y] * rng.uniform(0.5, 1.5, size=(n, 1, 1))
    x[..., 1] += 0.3 * x[..., 0] + 0.2  # correlated channel with a nonzero mean
    return x.astype("float32"), y


# ------------------------------------------------------ solved layers equal ClassPCA
def test_sequential_mlp_with_dropout_and_batchnorm(subspace_classes, dense_reference):
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8, 8), bn=True, dropout=True)
    report = hybridize(model, (x, y), cutoff=2, verbose=0, batch_size=64)
    d0, d1 = model.get_layer("m_d0"), model.get_layer("m_d1")
    for layer in (d0, d1):
        h = _layer_input(model, layer, x)
        reference = dense_reference(layer.units, h, y)
        np.testing.assert_allclose(
            np.asarray(layer.kernel), reference.kernel_, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(np.asarray(layer.bias), reference.bias_, rtol=1e-4, atol=1e-5)
    # d1's input passes Dropout (identity at inference) and the adapted BatchNorm.
    for index, bn in enumerate([model.get_layer("m_bn0"), model.get_layer("m_bn1")]):
        h = _layer_input(model, bn, x).astype(np.float64)
        np.testing.assert_allclose(np.asarray(bn.moving_mean), h.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(bn.moving_variance), h.var(axis=0), rtol=1e-4, atol=1e-6
        )
        # relu of standardised outputs: far from the initial (0, 1)
        assert np.all(np.asarray(bn.moving_mean) > 0.1) and np.all(
            np.asarray(bn.moving_variance) < 0.9
        )
    # Solved layers and the BatchNorm between them are frozen; the top is not.
    trainable = {l.name: l.trainable for l in model.layers}
    assert trainable == {
        "m_d0": False,
        "m_drop0": True,
        "m_bn0": False,
        "m_d1": False,
        "m_drop1": True,
        "m_bn1": True,
        "m_out": True,
    }
    assert report.frozen == ["m_d0", "m_bn0", "m_d1"]
    assert [s.name for s in report.layers] == ["m_d0", "m_d1"]
    assert report.layers[0].adapted_batchnorms == ["m_bn0"]
    assert report.layers[1].adapted_batchnorms == ["m_bn1"]
    assert [s.samples for s in report.layers] == [len(x), len(x)]
    assert [s.rows for s in report.layers] == [len(x), len(x)]
    assert [s.n_components for s in report.layers] == [8, 8]
    assert report.cutoff == 2 and report.cutoff_mode == "fixed" and report.evidence == {}
    assert report.candidates == ["m_d0", "m_d1"]
    assert "m_out" in report.stopped_because


def test_functional_cnn_with_batchnorm_and_class_pca_options():
    x, y = _images()
    inputs = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, name="c1")(inputs)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU()(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(5, 2, name="c2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    h = L.Flatten()(h)
    outputs = L.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    # unit vectors and no bias (the authors' recipe): BN statistics are not trivially (0, 1)
    options = dict(scaling="unit", offset="zero", center=False)
    report = hybridize(model, (x, y), cutoff=2, verbose=0, batch_size=100, **options)
    for name, k in (("c1", 3), ("c2", 2)):
        layer = model.get_layer(name)
        patches = _im2col(_layer_input(model, layer, x), k)
        rows = patches.reshape(-1, patches.shape[-1])
        reference = ClassPCA(layer.filters, **options).fit(rows, np.repeat(y, patches.shape[1]))
        kernel = np.asarray(layer.kernel)
        np.testing.assert_allclose(
            kernel.reshape(-1, layer.filters), reference.kernel_, rtol=1e-4, atol=1e-5
        )
        assert np.array_equal(np.asarray(layer.bias), np.zeros(layer.filters))
        assert report.layers[["c1", "c2"].index(name)].rows == len(rows)
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        h = _layer_input(model, bn, x).astype(np.float64)
        np.testing.assert_allclose(
            np.asarray(bn.moving_mean), h.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            np.asarray(bn.moving_variance), h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
        )
        assert np.abs(np.asarray(bn.moving_mean)).max() > 0.2  # not the initial zeros
    assert report.frozen == ["c1", "bn1", "c2"]
    assert not model.get_layer("c1").trainable and not model.get_layer("c2").trainable
    assert model.get_layer("bn2").trainable and model.get_layer("out").trainable
    # The conv kernel computes what Keras computes: solved output == patches @ kernel.
    c1 = model.get_layer("c1")
    keras_out = np.asarray(keras.Model(inputs, c1.output)(x[:5]))
    by_hand = _im2col(x[:5], 3) @ np.asarray(c1.kernel).reshape(-1, 4)
    np.testing.assert_allclose(keras_out.reshape(5, -1, 4), by_hand, rtol=1e-4, atol=1e-4)


def test_dense_on_sequences_then_lstm_stops_the_prefix():
    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    x = (
        rng.normal(size=(200, 5, 3))
        * np.where(y[:, None, None] == 0, [1.0, 0.3, 0.3], [0.3, 1.0, 0.3])
    ).astype("float32")
    model = keras.Sequential(
        [keras.Input((5, 3)), L.Dense(4, name="d"), L.LSTM(4, name="rnn"), L.Dense(2, name="out")]
    )
    with pytest.raises(ValueError, match=r"cutoff=2 .*only 1 layer.*LSTM 'rnn'"):
        hybridize(model, (x, y), cutoff=2, verbose=0)
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert "LSTM 'rnn'" in report.stopped_because
    assert "not a layer kind class-PCA solves" in report.stopped_because
    # a Dense on (batch, time, features): every time step is a row of its sample's class
    reference = ClassPCA(4).fit(x.reshape(-1, 3), np.repeat(y, 5))
    np.testing.assert_allclose(
        np.asarray(model.get_layer("d").kernel), reference.kernel_, rtol=1e-4, atol=1e-5
    )
    assert report.layers[0].rows == 5 * len(x) and report.layers[0].samples == len(x)


# ------------------------------------------------------------------- streaming
def test_generator_source_is_consumed_lazily_one_batch_at_a_time(monkeypatch, subspace_classes):
    x, y = _subspace_data(subspace_classes)
    produced = []

    def batches():  # a callable returning a fresh generator: one per pass
        for start in range(0, len(x), 50):
            produced.append(start)
            yield x[start : start + 50], y[start : start + 50]

    seen_at_fit = []
    original = ClassPCA.partial_fit

    def spy(self, rows, labels):
        seen_at_fit.append(len(produced))
        return original(self, rows, labels)

    monkeypatch.setattr(ClassPCA, "partial_fit", spy)
    model = _mlp(hidden=(8, 8))
    report = hybridize(model, batches, cutoff=2, verbose=0, warm_head=False)
    per_pass = len(range(0, len(x), 50))
    assert len(produced) == 2 * per_pass  # one pass per solved layer (the head: one more)
    # The k-th statistics update happens right after the k-th batch was produced.
    assert seen_at_fit == list(range(1, 2 * per_pass + 1))
    assert [s.samples for s in report.layers] == [len(x), len(x)]
    # Same solution as from arrays: streaming changes nothing.
    twin = _mlp(hidden=(8, 8), name="twin")
    hybridize(twin, (x, y), cutoff=2, verbose=0, batch_size=37)
    for a, b in zip(model.get_weights()[:4], twin.get_weights()[:4]):  # the solved layers
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_streaming_memory_is_bounded_by_the_statistics_not_the_data():
    # Up to 25 MB of inputs (and as much of first-layer activations), generated per
    # batch: doubling the data must not move the peak, which stays far below the data.
    # (Large batches: tracemalloc slows every allocation, and a batch costs several.)
    batch, d = 512, 128
    y_pattern = np.arange(batch) % 2

    def batches(n_batches):
        def generate():
            rng = np.random.default_rng(0)
            for _ in range(n_batches):
                x = rng.normal(size=(batch, d)).astype("float32")
                x[:, 0] += 2.0 * y_pattern
                yield x, y_pattern

        return generate

    model = keras.Sequential(
        [keras.Input((d,)), L.Dense(d, activation="relu"), L.Dense(8), L.Dense(2)]
    )
    hybridize(model, batches(2), cutoff=2, verbose=0)  # trace once, tiny

    def peak(n_batches):
        tracemalloc.start()
        try:
            report = hybridize(model, batches(n_batches), cutoff=2, samples=None, verbose=0)
            traced = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [s.samples for s in report.layers] == [n_batches * batch] * 2
        return traced

    # The lower of two runs each: a backend's one-time allocations (seen under torch,
    # about 0.7 MB in one run of a full suite) are not what this bounds.
    peaks = {n_batches: min(peak(n_batches), peak(n_batches)) for n_batches in (48, 96)}
    data_bytes = 48 * batch * d * 4
    assert peaks[48] < data_bytes / 2, (
        f"peak {peaks[48] / 1e6:.1f} MB for {data_bytes / 1e6:.1f} MB of data"
    )
    # Twice the data: the peak grows by less than 5 % of the extra data.
    assert peaks[96] - peaks[48] < data_bytes / 20, peaks


def test_tf_data_source_with_samples_uses_the_first_samples():
    x, y = _images(n=300)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    model = keras.Sequential(
        [keras.Input((8, 8, 2)), L.Conv2D(4, 3, name="c"), L.Flatten(), L.Dense(3)]
    )
    report = hybridize(model, dataset, cutoff=1, samples=100, verbose=0)
    assert report.layers[0].samples == 100 and report.layers[0].rows == 100 * 36
    patches = _im2col(x[:100], 3)
    reference = ClassPCA(4).fit(patches.reshape(-1, 18), np.repeat(y[:100], 36))
    np.testing.assert_allclose(
        np.asarray(model.get_layer("c").kernel).reshape(18, 4),
        reference.kernel_,
        rtol=1e-4,
        atol=1e-5,
    )


def test_samples_caps_arrays_and_patches_per_image_caps_rows():
    x, y = _images(n=300)
    model = keras.Sequential(
        [keras.Input((8, 8, 2)), L.Conv2D(4, 3, name="c"), L.Flatten(), L.Dense(3)]
    )
    report = hybridize(model, (x, y), cutoff=1, samples=120, patches_per_image=5, verbose=0)
    assert report.layers[0].samples == 120 and report.layers[0].rows == 120 * 5
    full = keras.Sequential(
        [keras.Input((8, 8, 2)), L.Conv2D(4, 3, name="c2"), L.Flatten(), L.Dense(3)]
    )
    hybridize(full, (x, y), cutoff=1, verbose=0)
    # the cap reaches the solve: fewer rows give another kernel
    assert not np.allclose(
        np.asarray(model.layers[0].kernel), np.asarray(full.layers[0].kernel), atol=1e-3
    )
    # same seed, same subset: reproducible bit for bit
    again = keras.Sequential(
        [keras.Input((8, 8, 2)), L.Conv2D(4, 3, name="c3"), L.Flatten(), L.Dense(3)]
    )
    hybridize(again, (x, y), cutoff=1, samples=120, patches_per_image=5, verbose=0)
    assert np.array_equal(np.asarray(model.layers[0].kernel), np.asarray(again.layers[0].kernel))


def test_one_shot_iterator_is_rejected_when_a_second_pass_is_needed(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    generator = ((x[s : s + 60], y[s : s + 60]) for s in range(0, len(x), 60))
    model = _mlp(hidden=(8, 8))
    with pytest.raises(TypeError, match="one-shot iterator"):
        hybridize(model, generator, cutoff=2, verbose=0)


def test_unbuilt_sequential_is_built_from_the_data(subspace_classes, dense_reference):
    x, y = _subspace_data(subspace_classes)
    model = keras.Sequential([L.Dense(6, activation="relu"), L.Dense(3)])
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert model.built and model.layers[0].kernel.shape == (12, 6)
    assert report.layers[0].samples == len(x)
    # A one-shot generator: the batch read to build the model still counts.
    generator = ((x[s : s + 70], y[s : s + 70]) for s in range(0, len(x), 70))
    model = keras.Sequential([L.Dense(6, activation="relu"), L.Dense(3)])
    report = hybridize(model, generator, cutoff=1, verbose=0)
    assert report.layers[0].samples == len(x)
    np.testing.assert_allclose(
        np.asarray(model.layers[0].kernel), dense_reference(6, x, y).kernel_, rtol=1e-4,
        atol=1e-5
    )


def test_empty_data_is_rejected(subspace_classes):
    empty = (np.zeros((0, 12), "float32"), np.zeros((0,), "int64"))
    with pytest.raises(ValueError, match="`data` is empty"):
        hybridize(keras.Sequential([L.Dense(6), L.Dense(3)]), empty, cutoff=1, verbose=0)
    with pytest.raises(ValueError, match="`data` is empty"):
        hybridize(_mlp(hidden=(8,)), empty, cutoff=1, verbose=0)


# --------------------------------------------------------------- cutoff handling
def test_cutoff_zero_leaves_the_model_bit_identical(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8, 8), bn=True)
    snapshot = _snapshot(model)
    report = hybridize(model, (x, y), cutoff=0, verbose=0)
    _assert_unchanged(model, snapshot)
    assert report.cutoff == 0 and report.layers == [] and report.frozen == []
    assert report.candidates == ["m_d0", "m_d1"]


def test_freeze_false_solves_without_freezing(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8, 8))
    before = np.asarray(model.layers[0].kernel).copy()
    report = hybridize(model, (x, y), cutoff=1, freeze=False, verbose=0)
    assert all(l.trainable for l in model.layers) and report.frozen == []
    assert not np.allclose(np.asarray(model.layers[0].kernel), before)


@pytest.mark.parametrize("cutoff", [-1, 1.5, True, False, "all", None, "AUTO"])
def test_bad_cutoff_values_are_rejected_before_any_change(cutoff, blobs):
    model = _mlp(hidden=(4,), n_in=8)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError,
                       match="`cutoff` must be 'auto', an `AutoRule` or a non-negative integer"):
        hybridize(model, blobs, cutoff=cutoff, verbose=0)
    _assert_unchanged(model, snapshot)


def test_cutoff_numpy_integer_is_accepted(blobs):
    model = _mlp(hidden=(4,), n_in=8)
    assert hybridize(model, blobs, cutoff=np.int64(1), verbose=0).cutoff == 1


def test_cutoff_beyond_the_solvable_prefix_names_it(blobs):
    model = _mlp(hidden=(4, 4), n_in=8)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=r"cutoff=3 but only 2 layer\(s\).*m_d0, m_d1.*m_out"):
        hybridize(model, blobs, cutoff=3, verbose=0)
    _assert_unchanged(model, snapshot)


def test_unknown_and_invalid_class_pca_options(blobs):
    model = _mlp(hidden=(4,), n_in=8)
    snapshot = _snapshot(model)
    with pytest.raises(TypeError, match=r"Unknown option\(s\) \['centre'\]"):
        hybridize(model, blobs, cutoff=1, verbose=0, centre=True)
    with pytest.raises(TypeError, match="Unknown option"):
        hybridize(model, blobs, cutoff=1, verbose=0, n_components=3)  # set by the layer
    with pytest.raises(ValueError, match="allocation"):
        hybridize(model, blobs, cutoff=1, verbose=0, allocation="bogus")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="`samples` must be a positive integer"):
            hybridize(model, blobs, cutoff=1, verbose=0, samples=bad)
    with pytest.raises(ValueError, match="patches_per_image"):
        hybridize(model, blobs, cutoff=1, verbose=0, patches_per_image=0)
    with pytest.raises(TypeError, match="keras.Model"):
        hybridize(L.Dense(3), blobs, cutoff=1, verbose=0)
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize(
    "middle_layer, kind",
    [
        (lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="mid"), "DepthwiseConv2D"),
        (lambda: L.Conv2D(4, 3, groups=2, name="mid"), "Conv2D"),
        (lambda: L.SeparableConv2D(4, 3, name="mid"), "SeparableConv2D"),
    ],
)
def test_depthwise_grouped_and_separable_convs_are_solved(middle_layer, kind):
    x, y = _images(n=120)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(4, 2, name="c"),
            middle_layer(),
            L.Flatten(),
            L.Dense(8),
            L.Dense(3),
        ]
    )
    report = hybridize(model, (x, y), cutoff=2, verbose=0)
    assert [(s.name, s.kind) for s in report.layers] == [("c", "Conv2D"), ("mid", kind)]
    # standardised outputs of the solved middle layer, on its actual input
    out = np.asarray(keras.Model(model.inputs[0], model.get_layer("mid").output)(x))
    out = out.reshape(-1, out.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-3)


def test_unsupported_conv_stops_the_prefix():
    x, y = _images(n=120)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(4, 2, name="c"),
            L.Conv2DTranspose(2, 3, name="stop"),
            L.Flatten(),
            L.Dense(8),
            L.Dense(3),
        ]
    )
    message = "Conv2DTranspose 'stop' is not a layer kind class-PCA solves"
    with pytest.raises(ValueError, match=r"cutoff=2 but only 1 layer\(s\)") as error:
        hybridize(model, (x, y), cutoff=2, verbose=0)
    assert message in str(error.value)
    report = hybridize(model, (x, y), cutoff="auto", verbose=0)
    assert message in report.stopped_because
    assert report.candidates == ["c"] and report.cutoff <= 1


def test_embedding_first_means_nothing_to_solve():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, size=(100, 6)), rng.integers(0, 2, 100)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            L.Embedding(20, 4, name="emb"),
            L.Flatten(),
            L.Dense(8),
            L.Dense(2),
        ]
    )
    snapshot = _snapshot(model)
    report = hybridize(model, (x, y), cutoff="auto", verbose=0)
    assert report.cutoff == 0 and report.candidates == []
    assert "Embedding 'emb'" in report.stopped_because
    _assert_unchanged(model, snapshot)
    with pytest.raises(ValueError, match=r"cutoff=1 but only 0 layer\(s\).*none.*Embedding 'emb'"):
        hybridize(model, (x, y), cutoff=1, verbose=0)


def test_branching_functional_model_solves_both_branches(blobs):
    x, y = blobs
    inputs = keras.Input((8,))
    a = L.Dense(6, activation="relu", name="a")(inputs)
    b = L.Dense(6, name="b")(a)
    c = L.Dense(6, name="c")(a)
    outputs = L.Dense(3, name="out")(L.Concatenate()([b, c]))
    model = keras.Model(inputs, outputs)
    c_before = np.asarray(model.get_layer("c").kernel).copy()
    report = hybridize(model, (x, y), cutoff=2, verbose=0)
    assert report.candidates == ["a", "b", "c"]
    assert "Dense 'out' is the model's last layer" in report.stopped_because
    assert report.next_not_taken.startswith("cutoff=2: the next solvable layer, Dense 'c'")
    assert report.frozen == ["a", "b"]
    assert np.array_equal(np.asarray(model.get_layer("c").kernel), c_before)
    h = _layer_input(model, model.get_layer("b"), x)
    np.testing.assert_allclose(
        np.asarray(model.get_layer("b").kernel), ClassPCA(6).fit(h, y).kernel_, rtol=1e-4, atol=1e-5
    )
    # the other branch: solved on the same input
    report = hybridize(model, (x, y), cutoff=3, verbose=0)
    assert report.frozen == ["a", "b", "c"] and report.next_not_taken is None
    np.testing.assert_allclose(
        np.asarray(model.get_layer("c").kernel), ClassPCA(6).fit(h, y).kernel_, rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------------------- cutoff="auto"
def _check_auto_evidence(report, rule=None):
    """The choice follows the evidence: a row per layer looked at, bottom first; the
    kept ones reach the threshold, the first one that does not ends the decision."""
    rows = report.evidence["layers"]
    assert [row["layer"] for row in rows] == report.candidates[: len(rows)]
    kept = [row for row in rows if row.get("kept")]
    assert len(kept) == report.cutoff and rows[: report.cutoff] == kept
    rule = rule or policy_module.DEFAULT_RULE
    lossless = rule.lossless_share or float("inf")
    for row in kept:
        if row["gain"] is None:  # kept as lossless, without a probe
            assert row["explained_variance"] >= lossless
            continue
        assert 0.0 <= row["before"] <= 1.0 and 0.0 <= row["after"] <= 1.0
        assert row["gain"] == pytest.approx(row["after"] - row["before"])
        assert row["gain"] >= row["threshold"] or row["explained_variance"] >= lossless
    if report.cutoff < len(report.candidates):
        assert len(rows) == report.cutoff + 1  # the decision stops at the first rejection
        rejected = rows[-1]
        if rejected["gain"] is None and "unsolvable" not in rejected:
            # Rejected by the bound: not even a perfect probe after it would reach
            # the threshold (a layer that may not be lossless, left unsolved).
            assert rejected["bound"] == pytest.approx(1.0 - rejected["before"])
            assert rejected["bound"] < rejected["threshold"]
        else:
            assert "unsolvable" in rejected or (
                rejected["gain"] < rejected["threshold"]
                and rejected["explained_variance"] < lossless)
    per_class = report.evidence["samples_per_class"]
    for position, row in enumerate(rows):
        if "unsolvable" not in row:
            assert row["threshold"] == pytest.approx(
                rule.threshold(per_class, row["kind"], position))
    assert f"{rule.threshold(per_class):+.3f}" in report.evidence["rule"]
    assert report.evidence["decision_samples"] > 0 and report.evidence["seconds"] > 0


def test_auto_solves_when_classes_differ_only_by_covariance(subspace_classes, monkeypatch):
    # Zero-mean classes on orthogonal planes: not linearly separable in x, but the energy
    # in each class's plane (class-PCA filters + relu) separates them. (16 units on 12
    # inputs would be kept as lossless without a probe: judge by the probe here.)
    monkeypatch.setattr(policy_module, "DEFAULT_RULE",
                        policy_module.AutoRule(lossless_share=None))
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=200, noise=0.3, seed=3)
    x, y = data.x.astype("float32"), data.y
    model = _mlp(hidden=(16, 16))
    report = hybridize(model, (x, y), cutoff="auto", verbose=0)
    first = report.evidence["layers"][0]
    assert first["before"] < 0.5  # chance is 1/3: raw inputs carry no linear signal
    assert first["after"] > 0.8  # after one solved layer they do
    assert report.evidence["decision_samples"] == len(x)  # fewer than 2,000: all of them
    assert report.cutoff >= 1 and report.cutoff_mode == "auto"
    _check_auto_evidence(report)
    assert not model.get_layer("m_d0").trainable
    assert len(report.layers) == report.cutoff


def test_auto_keeps_nothing_when_class_pca_discards_the_signal():
    # The classes differ by a mean shift along the lowest-variance direction; class-PCA's
    # leading components span the high-variance noise, so solving destroys the signal.
    rng = np.random.default_rng(5)
    n, d = 600, 24
    y = np.arange(n) % 2
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    z = rng.normal(size=(n, d)) * np.concatenate([[0.1], np.linspace(1.0, 3.0, d - 1)])
    z[:, 0] += np.where(y == 1, 0.5, -0.5)
    x = (z @ basis.T).astype("float32")
    model = _mlp(hidden=(8, 8), n_in=d, k=2)
    snapshot = _snapshot(model)
    # Plain class-PCA (the Dense rule would mix in the Fisher direction, which keeps it).
    # A zero threshold: the default's (+0.15 for a Dense layer) would reject the layer
    # unsolved, as no gain over a probe of 0.95 can reach it.
    rule = policy_module.AutoRule(gain_per_decade=0.0, dense_gain=0.0)
    report = hybridize(model, (x, y), cutoff=rule, verbose=0, sign_pairs=False,
                       discriminant=0)
    first = report.evidence["layers"][0]
    assert first["before"] > 0.95 and first["after"] < 0.7
    assert report.cutoff == 0 and report.layers == [] and report.frozen == []
    _check_auto_evidence(report, rule)
    _assert_unchanged(model, snapshot)  # the tried layer was undone exactly


def test_auto_rejects_a_layer_unsolved_when_no_gain_can_reach_the_threshold(monkeypatch):
    # Linearly separable classes: the probe of the raw inputs is ~1, so even a perfect
    # probe after the Dense layer gains less than its threshold (+0.15 or more). The
    # decision stops there without solving it.
    rng = np.random.default_rng(2)
    y = np.arange(400) % 2
    x = (rng.normal(size=(400, 10)) + 4.0 * y[:, None]).astype("float32")
    model = _mlp(hidden=(8, 8), n_in=10, k=2)
    snapshot = _snapshot(model)
    solves = []
    real = decision_module.solve_layer
    monkeypatch.setattr(decision_module, "solve_layer",
                        lambda *a, **k: solves.append(a[2].name) or real(*a, **k))
    report = hybridize(model, (x, y), verbose=0)
    first = report.evidence["layers"][0]
    assert solves == [] and report.cutoff == 0
    assert first["before"] > 0.95 and first["after"] is None and first["gain"] is None
    assert first["explained_variance"] is None and not first["kept"]
    _check_auto_evidence(report)
    _assert_unchanged(model, snapshot)
    text = str(report)
    assert "no gain can reach" in text and "not solved" in text
    assert "no gain can reach the threshold" in report.next_not_taken
    # With a threshold a perfect probe could reach, the same layer is solved and probed.
    report = hybridize(_mlp(hidden=(8, 8), n_in=10, k=2), (x, y), verbose=0,
                       cutoff=policy_module.AutoRule(gain_per_decade=0.0, dense_gain=0.0))
    assert solves[0] == "m_d0" and report.evidence["layers"][0]["after"] is not None


@pytest.mark.parametrize("scripted, expected", [([0.5, 0.9, 0.3], 1), ([0.5, 0.9, 0.95], 2)])
def test_auto_undoes_a_rejected_layer_and_its_batchnorm_exactly(
    monkeypatch, subspace_classes, scripted, expected
):
    # Scripted probe results (before layer 1, after it, after layer 2): a clear gain for
    # layer 1, then a clear loss (or gain) for layer 2.
    x, y = _subspace_data(subspace_classes)
    results = iter(scripted)
    monkeypatch.setattr(decision_module, "loo_ridge_accuracy", lambda *a, **k: next(results))
    # Judge by the probe alone (8 units on 8 inputs would be lossless), threshold 0.
    monkeypatch.setattr(policy_module, "DEFAULT_RULE",
                        policy_module.AutoRule(0.0, 0.0, 0.0, 0.0, lossless_share=None))
    model = _mlp(hidden=(8, 8), bn=True)
    before = {l.name: [w.copy() for w in l.get_weights()] for l in model.layers}
    report = hybridize(model, (x, y), cutoff="auto", verbose=0)
    rows = report.evidence["layers"]
    assert report.cutoff == expected
    assert [rows[0]["before"]] + [row["after"] for row in rows] == scripted
    _check_auto_evidence(report)
    changed = {
        name
        for name, weights in before.items()
        if any(
            not np.array_equal(a, b) for a, b in zip(model.get_layer(name).get_weights(), weights)
        )
    }
    if expected == 1:
        assert changed == {"m_d0", "m_bn0"}  # m_d1 and m_bn1 were solved, then restored bit for bit
        assert report.frozen == ["m_d0"] and [l.name for l in report.layers] == ["m_d0"]
    else:  # every layer under the head solved: the head is started too (trainable)
        assert changed == {"m_d0", "m_bn0", "m_d1", "m_bn1", "m_out"}
        assert report.frozen == ["m_d0", "m_bn0", "m_d1"] and report.head["layer"] == "m_out"
    assert {l.name for l in model.layers if not l.trainable} == set(report.frozen)


# -------------------------------------------------------------------------- report
def test_report_says_the_decision_solved_convolutions_from_a_few_patches():
    # Its variance shares and probes are of a quick solve, not of the layer solved after.
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = (rng.normal(size=(300, 8, 8, 1)) + y[:, None, None, None]).astype("float32")
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu"),
                              L.Flatten(), L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), verbose=0)
    assert report.evidence["decision_patches"] == policy_module.DECISION_PATCHES
    assert (f"from {policy_module.DECISION_PATCHES} random patches per sample; the final "
            "solve reads more") in str(report)


def test_report_of_a_decision_on_dense_layers_mentions_no_patches():
    # A Dense layer on every step of a sequence is solved from all its rows (no patch
    # sampling), as a flat one is.
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = (rng.normal(size=(300, 6, 4)) + y[:, None, None]).astype("float32")
    model = keras.Sequential([keras.Input((6, 4)), L.Dense(4, activation="relu"),
                              L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), verbose=0)
    assert report.evidence["layers"][0]["kind"] == policy_module.PER_STEP_DENSE
    assert "auto decision on 300 samples," in str(report)
    assert "random patches" not in str(report)


def test_auto_warns_when_nothing_at_the_bottom_can_be_solved():
    tokens = np.random.default_rng(0).integers(0, 50, (200, 12)).astype("int32")
    labels = np.arange(200) % 3
    model = keras.Sequential([keras.Input((12,), dtype="int32"), L.Embedding(50, 8),
                              L.Conv1D(8, 3, activation="relu"), L.GlobalMaxPooling1D(),
                              L.Dense(3, activation="softmax")])
    with pytest.warns(UserWarning, match=r"hybridize solved nothing: Embedding '.*' is not "
                                         r"a layer kind class-PCA solves"):
        report = hybridize(model, (tokens, labels), verbose=0)
    assert report.cutoff == 0 and all(layer.trainable for layer in model.layers)
    assert str(report).startswith("HybridReport: nothing solved")
    model.layers[0].trainable = False  # a pretrained Embedding: passed, the rest decided
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hybridize(model, (tokens, labels), verbose=0)
    assert not [w for w in caught if "solved nothing" in str(w.message)]


def test_report_is_readable_and_json_serializable(subspace_classes, monkeypatch):
    monkeypatch.setattr(policy_module, "DEFAULT_RULE",
                        policy_module.AutoRule(lossless_share=None))
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=200, noise=0.3, seed=3)
    x, y = data.x.astype("float32"), data.y
    model = _mlp(hidden=(16, 16), bn=True)
    report = hybridize(model, (x, y), cutoff="auto", verbose=0)
    assert isinstance(report, HybridReport)
    text = str(report)
    assert f"{report.cutoff} of 2 solvable layer(s)" in text and "cutoff=auto" in text
    for solved in report.layers:
        assert solved.name in text
    assert "auto decision on 600 samples," in text and report.stopped_because in text
    assert "random patches" not in text  # Dense layers: the decision read whole rows
    assert f"gain {report.evidence['layers'][0]['gain']:+.3f}" in text
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["cutoff"] == report.cutoff
    assert as_dict["evidence"]["layers"] == report.evidence["layers"]
    assert [l["name"] for l in as_dict["layers"]] == [l.name for l in report.layers]
    assert 0.0 < as_dict["layers"][0]["explained_variance"] <= 1.0 + 1e-9

    fixed = hybridize(_mlp(hidden=(8, 8), name="f"), (x, y), cutoff=2, verbose=0)
    text = str(fixed)
    assert "2 of 2 solvable layer(s)" in text and "cutoff=fixed" in text
    assert "f_d0" in text and "f_d1" in text and "frozen: f_d0, f_d1" in text
    json.dumps(fixed.to_dict())
    assert str(HybridReport(cutoff=0, cutoff_mode="fixed")).startswith(
        "HybridReport: nothing solved: no layer can be solved at the bottom")
    # Read back from JSON (a tuning log): equal, with its SolvedLayer objects and text.
    for original in (report, fixed):
        again = HybridReport.from_dict(json.loads(json.dumps(original.to_dict())))
        assert again == original and str(again) == str(original)
    older = dict(fixed.to_dict(), layers=[{k: v for k, v in layer.items()
                                            if k != "classes_without_filters"}
                                           for layer in fixed.to_dict()["layers"]])
    assert HybridReport.from_dict(older).layers[0].classes_without_filters == []
    with pytest.raises(ValueError, match=r"does not know: \['speed'\]"):
        HybridReport.from_dict(dict(fixed.to_dict(), speed=1))
    with pytest.raises(ValueError, match=r"lacks the required fields \['cutoff'\]"):
        HybridReport.from_dict({"cutoff_mode": "fixed"})
    with pytest.raises(TypeError, match="`data` must be a dict"):
        HybridReport.from_dict(str(fixed))


def test_verbose_prints_progress(subspace_classes, capsys):
    x, y = _subspace_data(subspace_classes)
    hybridize(_mlp(hidden=(8, 8)), (x, y), cutoff=1, verbose=1)
    out = capsys.readouterr().out
    assert "Solving Dense 'm_d0' (1/1)" in out


def test_one_hot_labels_solve_like_integer_labels(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    by_int, by_one_hot = _mlp(hidden=(8,), name="i"), _mlp(hidden=(8,), name="o")
    hybridize(by_int, (x, y), cutoff=1, verbose=0)
    hybridize(by_one_hot, (x, np.eye(3, dtype="float32")[y]), cutoff=1, verbose=0)
    assert np.array_equal(
        np.asarray(by_int.layers[0].kernel), np.asarray(by_one_hot.layers[0].kernel)
    )
    with pytest.raises(ValueError, match="`y` holds label 3, out of range for n_classes=3"):
        hybridize(_mlp(hidden=(8,)), (x, np.where(y == 2, 3, y)), cutoff=1, verbose=0, n_classes=3)


def test_labels_as_a_python_list_solve_like_an_array_and_sample_weights_are_named(
        subspace_classes):
    x, y = _subspace_data(subspace_classes)
    by_array, by_list = _mlp(hidden=(8,), name="a"), _mlp(hidden=(8,), name="l")
    hybridize(by_array, (x, y), cutoff=1, verbose=0)
    hybridize(by_list, (x, y.tolist()), cutoff=1, verbose=0)
    assert np.array_equal(
        np.asarray(by_array.layers[0].kernel), np.asarray(by_list.layers[0].kernel)
    )
    weighted = _mlp(hidden=(8,), name="w")
    with pytest.warns(UserWarning, match="sample weights; class-PCA statistics ignore them"):
        hybridize(weighted, (x, y, np.linspace(0.1, 1, len(y))), cutoff=1, verbose=0)
    assert np.array_equal(
        np.asarray(by_array.layers[0].kernel), np.asarray(weighted.layers[0].kernel)
    )


def test_sample_weights_of_a_dataset_are_named_once_per_hybridize_call(subspace_classes):
    # Every pass over a dataset reads its weights (one per solved layer and per
    # BatchNormalization to adapt): the warning still comes once.
    x, y = _subspace_data(subspace_classes)
    weighted = tf.data.Dataset.from_tensor_slices(
        (x, y, np.linspace(0.1, 1, len(y)).astype("float32"))).batch(64)
    model = _mlp(hidden=(8, 8), name="w")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = hybridize(model, weighted, cutoff=2, verbose=0, warm_head=False)
    assert report.cutoff == 2
    named = [w for w in caught if "class-PCA statistics ignore them" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]


def test_batchnorm_before_the_first_solved_layer_is_adapted_and_frozen():
    # The solved Dense is fitted to what this BatchNorm outputs at solve time; if the
    # BatchNorm then trains (batch statistics), the solved layer's input changes.
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = (rng.normal(size=(300, 6)) * 5 + 3 + y[:, None]).astype("float32")
    model = keras.Sequential(
        [keras.Input((6,)), L.BatchNormalization(name="bn"), L.Dense(8, name="d"), L.Dense(3)]
    )
    hybridize(model, (x, y), cutoff=1, verbose=0)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), x.mean(axis=0), rtol=1e-4)
    assert not bn.trainable


def test_auto_stops_below_a_layer_the_data_cannot_solve(monkeypatch):
    # 12 samples per class cannot give a 36-unit Dense its 12 centered components per
    # class: auto must stop below it and say why; a fixed cutoff asking for it raises.
    rng = np.random.default_rng(0)
    y = np.arange(36) % 3
    x = (rng.normal(size=(36, 6)) + 2.0 * np.eye(6)[y]).astype("float32")

    def model():
        return keras.Sequential(
            [
                keras.Input((6,)),
                L.Dense(12, activation="relu"),
                L.Dense(36, activation="relu"),
                L.Dense(3),
            ]
        )

    # Accept every layer the probe sees, so that auto reaches the unsolvable one.
    monkeypatch.setattr(policy_module, "DEFAULT_RULE", policy_module.AutoRule(-1.0, 0.0, 0.0))
    auto = model()
    before = [np.array(w) for w in auto.layers[1].get_weights()]
    report = hybridize(auto, (x, y), cutoff="auto", verbose=0)
    assert report.cutoff == 1
    assert "the decision sample cannot solve it" in report.next_not_taken
    assert "has 12 sample(s) but must supply 12" in report.next_not_taken
    for w, w0 in zip(auto.layers[1].get_weights(), before):
        assert np.array_equal(w, w0)
    with pytest.raises(ValueError, match="has 12 sample"):
        hybridize(model(), (x, y), cutoff=2, verbose=0)


def test_freeze_kernel_trains_only_the_solved_biases(tmp_path):
    x, y = _images(n=240)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(4, 3, name="c"),
            L.Flatten(),
            L.Dense(8, activation="relu", name="d"),
            L.Dense(3, name="out"),
        ]
    )
    report = hybridize(model, (x, y), cutoff=2, freeze="kernel", verbose=0)
    assert report.frozen == ["c", "d"]
    kernels = {n: np.array(model.get_layer(n).kernel) for n in ("c", "d")}
    biases = {n: np.array(model.get_layer(n).bias) for n in ("c", "d")}
    trainable = {id(v) for v in model.trainable_variables}
    for name in ("c", "d"):
        layer = model.get_layer(name)
        assert layer.trainable and id(layer.bias) in trainable and id(layer.kernel) not in trainable
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for name in ("c", "d"):
        assert np.array_equal(np.array(model.get_layer(name).kernel), kernels[name])
        assert not np.array_equal(np.array(model.get_layer(name).bias), biases[name])

    # Variable-level flags are not part of a Keras layer's config: a reloaded model
    # trains every kernel until `freeze_solved_layers` freezes them again.
    path = str(tmp_path / "kernel_frozen.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert all(v.trainable for v in reloaded.get_layer("c").weights)
    assert reloaded.compiled  # saved compiled: freeze_solved_layers compiles it again
    assert keras_classpca.freeze_solved_layers(reloaded, 2, freeze="kernel") == ["c", "d"]
    kernels = {n: np.array(reloaded.get_layer(n).kernel) for n in ("c", "d")}
    reloaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for name in ("c", "d"):
        assert np.array_equal(np.array(reloaded.get_layer(name).kernel), kernels[name])
    with pytest.raises(ValueError, match="`freeze` must be True, False or 'kernel'"):
        hybridize(model, (x, y), cutoff=1, freeze="bias", verbose=0)


def test_label_free_mode_solves_each_layer_from_the_pca_of_its_input():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(400, 10)) * np.linspace(3.0, 0.5, 10)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((10,)),
            L.Dense(4, activation="relu", name="a"),
            L.Dense(3, name="b"),
            L.Dense(2, name="out"),
        ]
    )
    report = hybridize(model, x, cutoff=2, verbose=0)
    assert report.label_free and report.cutoff == 2 and "label-free" in str(report)
    # Layer a: the 4 leading covariance eigenvectors of x, i.e. ClassPCA of one class.
    expected = ClassPCA(4).fit(x.astype(np.float64), np.zeros(len(x), dtype=int))
    np.testing.assert_allclose(
        np.asarray(model.get_layer("a").kernel), expected.kernel_, rtol=1e-4, atol=1e-5
    )
    # Layer b: the PCA of a's (solved) output.
    h = np.asarray(keras.Model(model.inputs[0], model.get_layer("a").output)(x))
    expected_b = ClassPCA(3).fit(h.astype(np.float64), np.zeros(len(x), dtype=int))
    np.testing.assert_allclose(
        np.asarray(model.get_layer("b").kernel), expected_b.kernel_, rtol=1e-3, atol=1e-4
    )
    with pytest.raises(ValueError, match="`data` has no labels, and cutoff='auto'"):
        hybridize(model, x, verbose=0)
    layer = ClassPCADense(4)
    layer.adapt(x)
    np.testing.assert_allclose(np.asarray(layer.kernel), expected.kernel_, rtol=1e-4, atol=1e-5)


def test_class_pca_layer_solved_by_hybridize_is_adapted_without_a_pretrained_warning(blobs):
    # A ClassPCA layer is frozen from construction: not "pretrained weights" until
    # adapted. Solved by hybridize, it is adapted (the flag is saved with the weights).
    x, y = blobs
    model = keras.Sequential([keras.Input((x.shape[1],)), ClassPCADense(4, name="a"),
                              L.Dense(3, activation="softmax")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hybridize(model, (x, y), cutoff=1, verbose=0)
    assert not [w for w in caught if "frozen before the call" in str(w.message)]
    assert model.get_layer("a").is_adapted
    adapted = keras.Sequential([keras.Input((x.shape[1],)), ClassPCADense(4, name="a"),
                                L.Dense(3, activation="softmax")])
    adapted.get_layer("a").adapt((x, y))
    kernel = np.asarray(adapted.get_layer("a").kernel).copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hybridize(adapted, (x, y), cutoff=1, verbose=0)
    # Solved again (the same data: the same weights), and said so: not as pretrained.
    messages = [str(w.message) for w in caught]
    assert any("solves a again" in m and "earlier `adapt` is replaced" in m for m in messages)
    assert not [m for m in messages if "frozen before the call" in m]
    np.testing.assert_allclose(np.asarray(adapted.get_layer("a").kernel), kernel, atol=1e-5)


def test_hybridize_solves_a_class_pca_layer_with_its_own_options(blobs):
    """`ClassPCADense(6, scaling="whiten", center=False)` in a model: hybridize solves
    it as its adapt would (it used the defaults, and the config misstated the
    weights); options given to hybridize go on top and the config records them."""
    x, y = blobs
    own = dict(scaling="whiten", center=False)

    def model():
        return keras.Sequential([keras.Input((x.shape[1],)),
                                 ClassPCADense(6, name="a", **own),
                                 L.Dense(3, activation="softmax")])

    solved = model()
    hybridize(solved, (x, y), cutoff=1, samples=None, verbose=0)
    adapted = ClassPCADense(6, **own)
    adapted.adapt((x, y))
    np.testing.assert_allclose(np.asarray(solved.get_layer("a").kernel),
                               np.asarray(adapted.kernel), rtol=1e-5, atol=1e-6)
    assert solved.get_layer("a").get_config()["scaling"] == "whiten"
    overridden = model()
    hybridize(overridden, (x, y), cutoff=1, samples=None, verbose=0, scaling="unit")
    layer = overridden.get_layer("a")
    assert layer.get_config()["scaling"] == "unit" and layer.get_config()["center"] is False
    reference = ClassPCADense(6, scaling="unit", center=False)
    reference.adapt((x, y))
    np.testing.assert_allclose(np.asarray(layer.kernel), np.asarray(reference.kernel),
                               rtol=1e-5, atol=1e-6)


def test_re_solving_below_frozen_layers_a_reload_kept_warns_about_them(blobs, tmp_path):
    # The mark of an earlier solve is not saved: after a .keras reload, a lower cutoff
    # re-solves layer a below b, which stays frozen with weights fitted to a's old
    # output. The warning names b and the two ways out.
    x, y = blobs
    model = keras.Sequential([keras.Input((x.shape[1],)), L.Dense(6, activation="relu", name="a"),
                              L.Dense(5, activation="relu", name="b"),
                              L.Dense(3, activation="softmax")])
    hybridize(model, (x, y), cutoff=2, verbose=0)
    path = str(tmp_path / "solved.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    with pytest.warns(UserWarning, match=r"b stay\(s\) frozen above the 1 layer\(s\) solved "
                                         r"now.*layer.trainable = True"):
        hybridize(reloaded, (x[::2], y[::2]), cutoff=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:  # in memory: b is released
        warnings.simplefilter("always")
        hybridize(model, (x[::2], y[::2]), cutoff=1, verbose=0)
    assert not [w for w in caught if "stay(s) frozen" in str(w.message)]
    assert model.get_layer("b").trainable
    # cutoff=0 after the reload: both stay frozen (nothing marks them as solved); it
    # said nothing.
    again = keras.saving.load_model(path)
    with pytest.warns(UserWarning, match=r"a, b stay\(s\) frozen with cutoff=0 \(nothing "
                                         r"solved now\)") as caught:
        hybridize(again, (x, y), cutoff=0, verbose=0)
    assert any(record.filename == __file__ for record in caught)  # points at the call


def test_the_report_names_the_classes_no_filter_was_computed_for():
    x, y = _images()
    for filters, unserved in ((2, 1), (6, 0)):
        model = keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(filters, 3, name="c"),
                                  L.Flatten(), L.Dense(3, activation="softmax")])
        report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
        layer = report.layers[0]
        assert len(layer.classes_without_filters) == unserved
        served = set(_classes_given_filters(x, y, filters))
        assert served.isdisjoint(layer.classes_without_filters)
        assert served | set(layer.classes_without_filters) == {0, 1, 2}
        assert ("no filter of its own for class(es)" in str(report)) == bool(unserved)
        if unserved:  # 2 filters, 3 classes: fewer filters than classes
            assert "(fewer filters than classes, or directions other" in str(report)
    # A layer whose filters span its input serves every class, with or without filters
    # of its own (a duplicate direction is kept once): the report says nothing is lost.
    spanning = HybridReport(cutoff=1, cutoff_mode="fixed", candidates=["c"], layers=[
        SolvedLayer("c", "Conv2D", samples=9, rows=9, seconds=0.1, explained_variance=1.0,
                    n_components=16, classes_without_filters=[2, 3])])
    assert ("+ no filter of its own for class(es) 2, 3 (its filters span all of its "
            "input: nothing is lost)") in str(spanning)


def _classes_given_filters(x, y, filters):
    """The classes a ClassPCA of the 3x3 patches gives its filters to."""
    from keras_classpca.core.patches import extract_patches

    patches = extract_patches(x, (3, 3))
    rows = patches.reshape(-1, patches.shape[-1])
    labels = np.repeat(y, len(rows) // len(y))
    return ClassPCA(filters).fit(rows, labels).component_classes_.tolist()


def test_solving_under_a_trained_top_warns_unless_nothing_changed(blobs):
    x, y = blobs
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((x.shape[1],)), L.Dense(6, activation="relu", name="a"),
                              L.Dense(5, activation="relu", name="b"),
                              L.Dense(3, activation="softmax", name="out")])
    model.compile("adam", "sparse_categorical_crossentropy")
    with warnings.catch_warnings(record=True) as caught:  # untrained: no warning
        warnings.simplefilter("always")
        hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert not [w for w in caught if "trained before" in str(w.message)]
    model.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:  # the same solve: same weights
        warnings.simplefilter("always")
        hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert not [w for w in caught if "trained before" in str(w.message)]
    with pytest.warns(UserWarning, match=r"trained before \(\d+ optimizer steps\).*of 'a'\. "
                                         r"Its other trainable layers \('b', 'out'\) still hold"):
        hybridize(model, (x[::2], y[::2]), cutoff=1, samples=None, verbose=0)


class _InputsOnly(keras.utils.PyDataset):
    def __init__(self, x):
        super().__init__()
        self.x = x

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.x[index * 100 : (index + 1) * 100]


@pytest.mark.parametrize("source", ["dataset", "generator", "callable", "list", "pydataset"])
def test_label_free_adapt_streams_batches_of_inputs_alone(source):
    # As keras.layers.Normalization.adapt: batches of x alone are the label-free mode.
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(400, 10)) * np.linspace(3.0, 0.5, 10)).astype("float32")
    batches = [x[i : i + 100] for i in range(0, 400, 100)]
    data = {
        "dataset": lambda: tf.data.Dataset.from_tensor_slices(x).batch(64),
        "generator": lambda: (b for b in batches),
        "callable": lambda: lambda: iter(batches),
        "list": lambda: batches,
        "pydataset": lambda: _InputsOnly(x),
    }[source]()
    expected = ClassPCA(4).fit(x.astype(np.float64), np.zeros(len(x), dtype=int))
    layer = ClassPCADense(4)
    layer.adapt(data)
    np.testing.assert_allclose(np.asarray(layer.kernel), expected.kernel_, rtol=1e-4, atol=1e-5)
    if source == "dataset":  # hybridize reads a dataset's element_spec: label-free too
        model = keras.Sequential([keras.Input((10,)), L.Dense(4, activation="relu", name="a"),
                                  L.Dense(2, name="out")])
        report = hybridize(model, data, cutoff=1, verbose=0)
        assert report.label_free
        np.testing.assert_allclose(np.asarray(model.get_layer("a").kernel), expected.kernel_,
                                   rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------- solved_activation
def _chain(blobs_x):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((blobs_x.shape[1],)),
        L.Dense(6, activation="relu", name="a"),
        L.Dense(6, activation="relu", name="b"),
        L.Dense(3, activation="softmax", name="out"),
    ])


@pytest.mark.parametrize("after, paired", [
    ([], False),  # Dense(linear) -> Dense: a direction's negative would be a copy
    ([L.BatchNormalization(), L.ReLU()], True),  # a ReLU follows through the BN
    ([L.Activation("tanh")], False),  # odd: tanh(-z) = -tanh(z)
    ([L.Activation("gelu")], True),
])
def test_dense_rule_pairs_signs_only_where_a_rectifier_follows(blobs, after, paired):
    x, y = blobs  # 240 rows over 8 features, 4 units: the Dense rule applies
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), L.Dense(4, name="a"), *after,
                              L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    kernel = np.asarray(model.get_layer("a").kernel)
    assert report.layers[0].fisher_sign_pairs is True
    assert np.allclose(kernel[:, 1::2], -kernel[:, ::2], atol=1e-6) is paired
    if not paired:
        assert np.linalg.matrix_rank(kernel, tol=1e-4) == 4


def test_solved_activation_linear_makes_each_solved_layer_linear_before_the_next_solve(blobs):
    x, y = blobs
    model = _chain(x)
    report = hybridize(model, (x, y), cutoff=2, solved_activation="linear", verbose=0)
    a, b, out = (model.get_layer(n) for n in ("a", "b", "out"))
    assert a.activation is keras.activations.linear and b.activation is keras.activations.linear
    assert out.activation is keras.activations.softmax  # not solved: untouched
    assert [layer.replaced_activation for layer in report.layers] == ["relu", "relu"]
    assert str(report).count("+ activation replaced: relu") == 2  # the report says so
    # a: 240 rows over 8 features, the Dense rule's case: Fisher directions, and no sign
    # pairs (after the identity they would be copies); the default pairs its columns.
    def paired(kernel):
        kernel = np.asarray(kernel)
        return np.allclose(kernel[:, 0], -kernel[:, 1], atol=1e-6)

    assert report.layers[0].fisher_sign_pairs is True and not paired(a.kernel)
    # b's input is a's linear output (negative values pass), and b was solved from it.
    h = _layer_input(model, b, x)
    np.testing.assert_allclose(h, x @ np.asarray(a.kernel) + np.asarray(a.bias), rtol=1e-4,
                               atol=1e-4)
    assert (h < 0).mean() > 0.3
    np.testing.assert_allclose(np.asarray(b.kernel), ClassPCA(6).fit(h, y).kernel_, rtol=1e-4,
                               atol=1e-5)
    # The default keeps the activations (and solves b from ReLU outputs: other weights).
    plain = _chain(x)
    assert all(layer.replaced_activation is None
               for layer in hybridize(plain, (x, y), cutoff=2, verbose=0).layers)
    assert plain.get_layer("a").activation is keras.activations.relu
    assert paired(plain.get_layer("a").kernel)
    assert not np.allclose(np.asarray(plain.get_layer("b").kernel), np.asarray(b.kernel))


def test_solved_activation_is_saved_in_keras_files_and_used_by_a_traced_model(blobs, tmp_path):
    x, y = blobs
    model = _chain(x)
    before = model.predict(x, verbose=0)  # traces predict with the ReLU
    hybridize(model, (x, y), cutoff=1, solved_activation="linear", verbose=0)
    after = model.predict(x, verbose=0)
    a = model.get_layer("a")
    linear = x @ np.asarray(a.kernel) + np.asarray(a.bias)
    expected = keras.Sequential(model.layers[1:]).predict(linear, verbose=0)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(before, after)
    path = str(tmp_path / "linear.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("a").activation is keras.activations.linear
    assert np.max(np.abs(reloaded.predict(x, verbose=0) - after)) == 0


@pytest.mark.parametrize("value", ["no_such_activation", 3, ["linear"]])
def test_solved_activation_rejects_what_is_not_an_activation(blobs, value):
    x, y = blobs
    model = _chain(x)
    with pytest.raises(ValueError, match="`solved_activation` must be None .* received"):
        hybridize(model, (x, y), cutoff=1, solved_activation=value, verbose=0)
    assert model.get_layer("a").activation is keras.activations.relu


def test_a_failed_hybridize_puts_the_replaced_activations_back(blobs, monkeypatch):
    import keras_classpca.hybrid.builder as builder_module

    x, y = blobs
    model = _chain(x)
    real, calls = builder_module.solve_layer, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(builder_module, "solve_layer", fail_second)
    with pytest.raises(RuntimeError, match="interrupted"):
        hybridize(model, (x, y), cutoff=2, solved_activation="linear", verbose=0)
    assert model.get_layer("a").activation is keras.activations.relu
    assert model.get_layer("a").trainable


@pytest.mark.parametrize("kind", ["own", "relu_layer"])
def test_a_later_hybridize_puts_back_the_activations_it_no_longer_replaces(blobs, kind):
    x, y = blobs
    if kind == "own":
        model, holder = _chain(x), "b"
    else:  # a ReLU layer after the solved layer
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), L.Dense(6, name="a"), L.ReLU(name="act"),
                                  L.Dense(6, name="b"), L.ReLU(name="act_b"),
                                  L.Dense(3, activation="softmax", name="out")])
        holder = "act_b"

    def rectifies(name):
        layer = model.get_layer(name)
        if isinstance(layer, L.ReLU):
            return layer.negative_slope == 0.0
        return layer.activation is keras.activations.relu

    model.compile("adam", "sparse_categorical_crossentropy")
    hybridize(model, (x, y), cutoff=2, solved_activation="linear", verbose=0)
    assert not rectifies(holder)
    # A smaller cutoff releases b: its rectifier comes back with it (before, b trained
    # on as a linear layer, a ReLU network silently without its ReLU).
    with pytest.warns(UserWarning, match="trainable again.*b's activation put back"):
        report = hybridize(model, (x, y), cutoff=1, solved_activation="linear", verbose=0)
    assert rectifies(holder) and model.get_layer("b").trainable
    assert report.restored_activations == {"b": "relu"}
    assert "activations put back (an earlier hybridize replaced them): b (relu)" in str(report)
    # a: replaced again, and reported
    assert report.layers[0].replaced_activation == ("relu" if kind == "own" else "relu in 'act'")
    # The default (None) keeps each layer's own activation: the model's, not the last
    # call's replacement.
    report = hybridize(model, (x, y), cutoff=2, verbose=0)
    first = "a" if kind == "own" else "act"
    assert rectifies(first) and rectifies(holder)
    assert report.restored_activations == {"a": "relu"} and report.recompiled
    # The model trains the restored architecture.
    model.fit(x, y, epochs=1, verbose=0)


def test_the_solve_cache_serves_solves_with_a_solved_activation(blobs):
    # The entry was stored under the key of the graph after the activation was
    # replaced, and looked up under the graph before: it never hit.
    from keras_classpca import SolveCache

    x, y = blobs
    cache = SolveCache()
    first, second = _chain(x), _chain(x)
    hybridize(first, (x, y), cutoff=2, solved_activation="linear", solve_cache=cache,
              verbose=0)
    assert (cache.hits, cache.misses) == (0, 2)
    report = hybridize(second, (x, y), cutoff=2, solved_activation="linear",
                       solve_cache=cache, verbose=0)
    assert (cache.hits, cache.misses) == (2, 2)
    assert [layer.replaced_activation for layer in report.layers] == ["relu", "relu"]
    assert second.get_layer("b").activation is keras.activations.linear
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    hybridize(_chain(x), (x, y), cutoff=2, solve_cache=cache, verbose=0)  # the default
    assert cache.misses == 4  # is another solve


def test_an_activation_changed_by_hand_is_not_put_back(blobs):
    x, y = blobs
    model = _chain(x)
    hybridize(model, (x, y), cutoff=2, solved_activation="linear", verbose=0)
    model.get_layer("b").activation = keras.activations.tanh
    report = hybridize(model, (x, y), cutoff=1, solved_activation="linear", verbose=0)
    assert model.get_layer("b").activation is keras.activations.tanh
    assert report.restored_activations == {}


def _conv_bn_relu_net(kind="relu_layer"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    own = "relu" if kind == "both" else None  # Conv(relu) -> BN -> Activation(relu)
    x = L.Conv2D(4, 3, use_bias=False, activation=own, name="conv")(inputs)
    if kind == "relu_layer":
        x = L.ReLU(name="act")(L.BatchNormalization(name="bn")(x))
    elif kind == "both":
        x = L.Activation("relu", name="act")(L.BatchNormalization(name="bn")(x))
    else:
        x = L.Activation("relu", name="act")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="out")(x))


@pytest.mark.parametrize("kind", ["relu_layer", "activation_layer", "both"])
def test_solved_activation_replaces_the_activation_layer_after_a_solved_conv(kind, tmp_path):
    images, y = _images(n=120)
    model = _conv_bn_relu_net(kind)
    report = hybridize(model, (images, y), cutoff=1, solved_activation="linear", verbose=0)
    assert report.layers[0].replaced_activation == (
        "relu; relu in 'act'" if kind == "both" else "relu in 'act'")
    # The block is linear now: its output takes negative values.
    block = keras.Model(model.inputs[0], model.get_layer("act").output)
    out = np.asarray(block.predict(images, verbose=0))
    assert (out < 0).mean() > 0.2
    path = str(tmp_path / "block.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    difference = reloaded.predict(images, verbose=0) - model.predict(images, verbose=0)
    assert np.max(np.abs(difference)) == 0


def test_the_report_names_a_capped_relu_it_replaced_with_its_settings():
    images, y = _images(n=120)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    x = L.ReLU(max_value=6.0, name="act")(L.Conv2D(4, 3, padding="same", name="c")(inputs))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.Flatten()(x)))
    report = hybridize(model, (images, y), cutoff=1, solved_activation="linear", verbose=0)
    assert report.layers[0].replaced_activation == "relu(max_value=6.0) in 'act'"  # was "relu"


def test_an_activation_after_a_merge_is_not_replaced():
    images, y = _images(n=120)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="b")(inputs)
    merged = L.ReLU(name="act")(L.Add()([a, b]))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.Flatten()(merged)))
    report = hybridize(model, (images, y), cutoff=2, solved_activation="linear", verbose=0)
    assert [layer.replaced_activation for layer in report.layers] == [None, None]
    assert model.get_layer("act").negative_slope == 0.0


def test_a_failed_hybridize_puts_a_replaced_relu_layer_back(monkeypatch):
    import keras_classpca.hybrid.freezing as freezing_module

    images, y = _images(n=120)
    model = _conv_bn_relu_net("relu_layer")
    # The recompile after the freeze fails: the last step of hybridize.
    monkeypatch.setattr(freezing_module, "compile_like",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("interrupted")))
    model.compile("adam", "sparse_categorical_crossentropy")  # hybridize recompiles
    with pytest.raises(RuntimeError, match="interrupted"):
        hybridize(model, (images, y), cutoff=1, solved_activation="linear", verbose=0)
    act = model.get_layer("act")
    assert (act.negative_slope, act.max_value, act.threshold) == (0.0, None, 0.0)


def test_solving_layers_the_user_froze_warns_but_solving_again_does_not(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8,), name="p")
    model.layers[0].trainable = False  # e.g. pretrained weights
    with pytest.warns(UserWarning, match="replaces the weights .* of p_d0, which were frozen"):
        hybridize(model, (x, y), cutoff=1, verbose=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hybridize(model, (x, y), cutoff=1, verbose=0)  # frozen by hybridize: no warning
        hybridize(_mlp(hidden=(8,), name="q"), (x, y), cutoff=1, verbose=0)


@pytest.mark.parametrize("first, then", [(True, False), ("kernel", False), (True, "kernel"),
                                         (False, True), ("kernel", True)])
def test_a_later_call_freezes_the_solved_layers_as_its_own_freeze_says(subspace_classes,
                                                                       first, then):
    # `freeze=False` after `freeze=True` left the layers frozen (fine-tuning nothing),
    # and `"kernel"` after `True` kept the biases frozen, silently.
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8, 8), name="f")
    hybridize(model, (x, y), cutoff=2, freeze=first, verbose=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    report = hybridize(model, (x, y), cutoff=2, freeze=then, verbose=0)
    fresh = _mlp(hidden=(8, 8), name="g")
    hybridize(fresh, (x, y), cutoff=2, freeze=then, verbose=0)

    def state(m):
        return [(layer.trainable, [v.trainable for v in layer.weights])
                for layer in m.layers]

    assert state(model) == state(fresh)
    assert report.recompiled  # the compiled model trains what the new freeze says
    assert len(model.trainable_weights) == len(fresh.trainable_weights)


def test_a_class_pca_layer_keeps_its_own_trainable_flag_when_freeze_changes(
        subspace_classes):
    # As on a first call with freeze=False: frozen from construction, it stays so.
    from keras_classpca import ClassPCADense

    x, y = _subspace_data(subspace_classes)
    model = keras.Sequential([keras.Input((x.shape[1],)), ClassPCADense(6, name="c"),
                              L.Dense(3, activation="softmax")])
    hybridize(model, (x, y), cutoff=1, verbose=0)
    hybridize(model, (x, y), cutoff=1, freeze=False, verbose=0)
    assert not model.get_layer("c").trainable


def test_a_layer_the_user_froze_stays_frozen_with_freeze_false(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8,), name="u")
    model.layers[0].trainable = False  # pretrained: solved with a warning, not released
    with pytest.warns(UserWarning, match="which were frozen"):
        hybridize(model, (x, y), cutoff=1, freeze=False, verbose=0)
    assert not model.layers[0].trainable


def test_the_report_table_fits_long_layer_names(subspace_classes):
    x, y = _subspace_data(subspace_classes)
    model = _mlp(hidden=(8,), name="a_name_longer_than_the_default_column")
    text = str(hybridize(model, (x, y), cutoff=1, verbose=0))
    row = next(line for line in text.splitlines() if "_d0" in line and "Dense" in line)
    assert "a_name_longer_than_the_default_column_d0  Dense" in row


@pytest.mark.parametrize("cutoff, freeze, error, match", [
    (9, True, ValueError, r"cutoff=9 but only 2 layer\(s\) of this model can be solved"),
    (-3, True, ValueError, "`cutoff` must be 'auto', an `AutoRule` or a non-negative"),
    (1.5, True, ValueError, "`cutoff` must be"),
    ("auto", True, ValueError, "the number of solved layers .* not 'auto'"),
    (1, "bias", ValueError, "`freeze` must be True, False or 'kernel'"),
])
def test_freeze_solved_layers_checks_its_arguments_as_hybridize_does(blobs, cutoff, freeze,
                                                                      error, match):
    # It froze min(cutoff, solvable) layers for cutoff=9, treated freeze="bias" as
    # True, returned [] for a negative cutoff and failed inside for "auto" and 1.5.
    x, _ = blobs
    model = keras.Sequential([keras.Input((x.shape[1],)), L.Dense(6, name="a"),
                              L.Dense(5, name="b"), L.Dense(3, name="head")])
    with pytest.raises(error, match=match):
        keras_classpca.freeze_solved_layers(model, cutoff, freeze=freeze)
    assert all(layer.trainable for layer in model.layers)  # nothing changed
    assert keras_classpca.freeze_solved_layers(model, 2) == ["a", "b"]


def test_inputs_given_as_fit_takes_them_named_or_in_a_list(blobs):
    # `([x], y)` was refused ("must yield (x, y) pairs"), `({"wrong": x}, y)` solved
    # as if the key named the input; `fit` takes the first and refuses the second.
    x, y = blobs

    def model(name):
        inputs = keras.Input((x.shape[1],), name="image")
        hidden = L.Dense(5, activation="relu", name=f"{name}_hidden")(inputs)
        return keras.Model(inputs, L.Dense(3, activation="softmax")(hidden))

    kernels = []
    for name, data in (("plain", (x, y)), ("list", ([x], y)), ("tuple", ((x,), y)),
                       ("named", ({"image": x}, y))):
        solved = model(name)
        hybridize(solved, data, cutoff=1, verbose=0)
        kernels.append(np.asarray(solved.get_layer(f"{name}_hidden").kernel))
    for kernel in kernels[1:]:
        np.testing.assert_array_equal(kernel, kernels[0])
    with pytest.raises(ValueError, match="holds the input 'wrong', but the model's input "
                                         "is named 'image'"):
        hybridize(model("wrong"), ({"wrong": x}, y), cutoff=1, verbose=0)
    # a dataset of the same dicts: named alike (`fit` would refuse it too), and the
    # right name solves as the arrays do
    with pytest.raises(ValueError, match="holds the input 'wrong', but the model's input "
                                         "is named 'image'"):
        hybridize(model("wrong"), tf.data.Dataset.from_tensor_slices(({"wrong": x}, y))
                  .batch(32), cutoff=1, verbose=0)
    solved = model("dataset")
    hybridize(solved, tf.data.Dataset.from_tensor_slices(({"image": x}, y)).batch(32),
              cutoff=1, verbose=0)
    np.testing.assert_allclose(np.asarray(solved.get_layer("dataset_hidden").kernel),
                               kernels[0], rtol=1e-5, atol=1e-6)


def test_an_overflow_below_a_layer_is_not_blamed_on_the_data(blobs):
    # A float16 layer below overflowed to inf; the error said "`x` contains ... NaN or
    # infinite values", pointing at finite user data.
    x, y = blobs
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              L.Dense(6, activation="relu", name="a"),
                              L.Rescaling(1e6, dtype="float16", name="loud"),
                              L.Dense(5, activation="relu", name="b"),
                              L.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match=r"Solving Dense 'b' \(2/2\): the layer's input, "
                                         r"computed by the layers below it from finite"):
        hybridize(model, (x, y), cutoff=2, samples=None, verbose=0)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN") as error:
        hybridize(keras.models.clone_model(model), (bad, y), cutoff=2, verbose=0)
    assert "layers below it from finite" not in str(error.value)  # the data's own NaN


def test_a_solve_cache_written_by_another_solver_version_is_not_served(blobs, tmp_path,
                                                                        monkeypatch):
    # A release that solves differently (e.g. which class keeps a shared direction)
    # found the entries an older one wrote on disk and served its weights.
    from keras_classpca import SolveCache
    from keras_classpca.hybrid import cache as cache_module

    x, y = blobs

    def solve():
        model = keras.Sequential([keras.Input((x.shape[1],)), L.Dense(5, name="a"),
                                  L.Dense(3, activation="softmax")])
        cache = SolveCache(str(tmp_path))
        hybridize(model, (x, y), cutoff=1, solve_cache=cache, verbose=0)
        return cache

    assert solve().misses == 1 and solve().hits == 1  # same version: served
    monkeypatch.setattr(cache_module, "SOLVER_VERSION", cache_module.SOLVER_VERSION + 1)
    monkeypatch.setattr("keras_classpca.hybrid.builder.SOLVER_VERSION",
                        cache_module.SOLVER_VERSION)
    newer = solve()
    assert newer.hits == 0 and newer.misses == 1


# ------------------------------------------------------------- TensorFlow tracing
@pytest.mark.tensorflow_backend
def test_short_passes_trace_no_predict_function(monkeypatch):
    # Every probe and solve runs a new feature model; traced (predict_on_batch) they
    # cost 10-50 ms each and, a few solves in, TensorFlow warns "N out of the last M
    # calls triggered tf.function retracing". A model's first batches run eagerly.
    from keras_classpca.hybrid import graph

    traced = []
    original = keras.Model.predict_on_batch
    monkeypatch.setattr(keras.Model, "predict_on_batch",
                        lambda model, x: traced.append(len(x)) or original(model, x))
    x, y = _images(n=300)
    model = keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(4, 3, activation="relu"),
                              L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(3)])
    report = hybridize(model, (x, y), verbose=0, batch_size=64)  # passes of 2-5 batches
    assert report.evidence["layers"] and traced == []
    # a pass longer than EAGER_BATCHES traces once and runs its remaining batches so
    eager = graph.EAGER_BATCHES
    passes = hybridize(_mlp(hidden=(8,), name="long"), (*_subspace_data_n(eager + 3),),
                       cutoff=1, batch_size=10, samples=None, verbose=0, warm_head=False)
    assert passes.layers[0].samples == (eager + 3) * 10 and traced == [10, 10, 10]


@pytest.mark.tensorflow_backend
def test_batches_of_varying_shapes_trace_no_predict_function(monkeypatch):
    # Sequences padded per batch: every new length would trace the predict function
    # again (TensorFlow's retracing warning, a few models in). Such a model runs
    # eagerly throughout; its features are those of a traced call.
    from keras_classpca.hybrid import graph

    traced = []
    original = keras.Model.predict_on_batch
    monkeypatch.setattr(keras.Model, "predict_on_batch",
                        lambda model, x: traced.append(x.shape) or original(model, x))
    rng = np.random.default_rng(0)
    batches = []
    for b in range(graph.EAGER_BATCHES + 6):
        y = np.arange(16) % 2
        x = rng.normal(size=(16, 6 + b % 3, 3)).astype("float32")
        x[:, :, 0] += 2.0 * y[:, None]
        batches.append((x, y))

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((None, 3)), L.Conv1D(4, 2, activation="relu"),
                                 L.GlobalAveragePooling1D(), L.Dense(2, activation="softmax")])

    varying = model()
    report = hybridize(varying, lambda: iter(batches), cutoff=1, samples=None, verbose=0)
    assert report.layers[0].samples == 16 * len(batches) and report.head is not None
    assert traced == []
    # the same layer solved from the same batches, every call traced: the same kernel
    traced_model = model()
    monkeypatch.setattr(graph, "predict_on_batch", lambda m, x: m.predict_on_batch(x))
    hybridize(traced_model, lambda: iter(batches), cutoff=1, samples=None, verbose=0)
    assert len(traced) > graph.EAGER_BATCHES
    for a, b in zip(varying.get_weights(), traced_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _subspace_data_n(batches, size=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(batches * size) % 3
    return (rng.normal(size=(len(y), 12)) + np.eye(3, 12)[y]).astype("float32"), y


def test_auto_cutoff_solves_a_class_pca_layer_the_model_holds_and_a_fixed_one_warns():
    # A ClassPCA* layer is frozen from construction: left below the cutoff it would
    # keep random weights. "auto" reaches it whatever the probe says; a fixed cutoff
    # below it warns.
    from keras_classpca import ClassPCADense

    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    x = (rng.normal(size=(600, 12)) + 3.0 * np.eye(3, 12)[y]).astype("float32")

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((12,)), L.Dense(16, activation="relu", name="plain"),
            ClassPCADense(6, activation="relu", name="pca"),
            L.Dense(3, activation="softmax")])

    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing left unadapted: no warning
        report = hybridize(m, (x, y), verbose=0)
    assert report.cutoff == 2 and m.get_layer("pca").is_adapted
    # the rule alone rejects the first Dense layer (separable inputs: nothing to gain)
    assert report.evidence["class_pca_layer"] == dict(layer="pca", cutoff=2, rule_cutoff=0)
    assert "pca is a ClassPCA layer: solved, with every layer below it" in str(report)
    m = model()
    with pytest.warns(UserWarning, match="hybridize: ClassPCADense 'pca' was never adapted"):
        report = hybridize(m, (x, y), cutoff=1, verbose=0)
    assert report.cutoff == 1 and not m.get_layer("pca").is_adapted


def test_classes_missing_from_a_drawn_subset_are_blamed_on_the_subset():
    # All three classes are in `data`; a small `samples` draw can miss one. The
    # warning must say so, not that `data` lacks the class.
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(97, int), 2, 2, 2]
    x = (rng.normal(size=(300, 6)) + np.eye(3, 6)[y]).astype("float32")
    model = keras.Sequential([keras.Input((6,)), L.Dense(2, activation="relu"),
                              L.Dense(3, activation="softmax")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hybridize(model, (x, y), cutoff=1, samples=20, verbose=0, seed=0)
    messages = [str(w.message) for w in caught if "classes the model predicts" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("The labels of the 20 samples drawn from `data` (`samples`)")
