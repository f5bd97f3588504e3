"""Tests of keras_classpca.diagnostics.AlignmentMonitor (Ji & Telgarsky alignment)."""

import keras
import numpy as np
import pytest

from keras_classpca.diagnostics import AlignmentMonitor
from keras_classpca.diagnostics.alignment_monitor import layer_alignment, spectral_frobenius_ratio


def unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def test_rank_one_aligned_kernels_give_one():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=d) for d in (5, 4, 3))
    k1 = np.outer(a, b)  # Dense kernel (in=5, out=4): W1 = k1.T = b a^T, u1 = b
    k2 = np.outer(b, c)  # (in=4, out=3): W2 = c b^T, v2 = b
    assert spectral_frobenius_ratio(k1) == pytest.approx(1.0, abs=1e-12)
    assert spectral_frobenius_ratio(k2) == pytest.approx(1.0, abs=1e-12)
    assert layer_alignment(k1, k2) == pytest.approx(1.0, abs=1e-12)


def test_alignment_uses_the_shared_side():
    # All dimensions equal so that a wrong orientation would still run: the output
    # side of k1 is e0 and the input side of k2 is e0 (aligned), while the other
    # sides are e1 and e2.  Mixing sides up would give 0 instead of 1.
    e = np.eye(4)
    k1 = np.outer(e[1], e[0])
    k2 = np.outer(e[0], e[2])
    assert layer_alignment(k1, k2) == pytest.approx(1.0)
    assert layer_alignment(k1.T, k2.T) == pytest.approx(0.0)
    # misaligned: the next layer reads an orthogonal direction
    assert layer_alignment(k1, np.outer(e[3], e[2])) == pytest.approx(0.0)
    # partially aligned: |cos 60 deg|
    k3 = np.outer(unit([0.5, np.sqrt(3) / 2, 0, 0]), e[2])
    assert layer_alignment(k1, k3) == pytest.approx(0.5)


def test_ratio_of_full_rank_matrices():
    assert spectral_frobenius_ratio(np.eye(9)) == pytest.approx(1 / 3)
    assert spectral_frobenius_ratio(np.diag([3.0, 4.0])) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="kernel"):
        spectral_frobenius_ratio(np.ones(3))
    with pytest.raises(ValueError, match="next_kernel"):
        layer_alignment(np.ones((2, 3)), np.ones((4, 2)))


def linear_net(depth, width, d, std, seed=0):
    layers = [keras.Input((d,))]
    for i in range(depth):
        units = width if i < depth - 1 else 1
        # a fresh seeded initializer per layer (a shared one repeats the same matrix)
        init = keras.initializers.RandomNormal(stddev=std, seed=seed + i)
        layers.append(keras.layers.Dense(units, use_bias=False, kernel_initializer=init,
                                         name=f"W{i + 1}"))
    return keras.Sequential(layers)


def separable_data(n=100, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = unit(rng.normal(size=d))
    margin = x @ w
    keep = np.abs(margin) > 0.3
    return x[keep].astype("float32"), (margin[keep] > 0).astype("float32")


def test_monitor_records_and_validates():
    model = linear_net(3, 4, 4, 0.5)
    model.compile("sgd", "mse")
    monitor = AlignmentMonitor(every=2, log=True)
    hist = model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=4, verbose=0, callbacks=[monitor])
    assert monitor.epochs == [-1, 1, 3]
    assert list(monitor.ratios) == ["W1", "W2", "W3"]
    assert list(monitor.alignments) == ["W1->W2", "W2->W3"]
    assert monitor.ratios["W3"] == pytest.approx([1.0, 1.0, 1.0])  # a (4, 1) kernel
    ratios, aligns = monitor.measure()
    w1 = model.get_layer("W1").get_weights()[0]
    assert ratios["W1"] == pytest.approx(spectral_frobenius_ratio(w1))
    assert all(0 <= v <= 1 + 1e-9 for v in aligns.values())
    # Every History list as long as the loss's (it was ragged: 2 entries against 4),
    # NaN where nothing was recorded.
    for key in ("min_alignment", "min_spectral_ratio"):
        values = hist.history[key]
        assert len(values) == len(hist.history["loss"]) == 4
        assert np.isnan(values[0]) and np.isnan(values[2])
    assert hist.history["min_alignment"][1] == pytest.approx(min(
        monitor.alignments[pair][1] for pair in monitor.alignments))

    with pytest.raises(ValueError, match="every"):
        AlignmentMonitor(every=0)
    bad = AlignmentMonitor(layers=["W1", "nope"])
    with pytest.raises(ValueError, match="nope"):
        model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=1, verbose=0, callbacks=[bad])
    funnel = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="a"),
                               keras.layers.Dense(3, name="b"), keras.layers.Dense(1, name="c")])
    funnel.compile("sgd", "mse")
    skip = AlignmentMonitor(layers=["a", "c"])  # 5 outputs cannot feed 3 inputs
    with pytest.raises(ValueError, match="consecutive"):
        funnel.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=1, verbose=0, callbacks=[skip])
    no_dense = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])
    no_dense.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no Dense"):
        no_dense.fit(np.ones((8, 4)), np.ones((8, 4)), epochs=1, verbose=0,
                     callbacks=[AlignmentMonitor()])


def test_default_pairs_follow_the_graph():
    # Every Dense layer is measured; pairs only where one feeds the next (through
    # layers without weights) with matching widths: no product W_c W_b across the
    # Flatten, none between parallel branches of equal width.
    L = keras.layers
    seq = keras.Sequential([keras.Input((5, 4)), L.Dense(6, name="a"), L.ReLU(),
                            L.Dense(3, name="b"), L.Flatten(), L.Dense(2, name="c")])
    seq.compile("sgd", "mse")
    monitor = AlignmentMonitor()
    seq.fit(np.ones((8, 5, 4)), np.ones((8, 2)), epochs=1, verbose=0, callbacks=[monitor])
    assert list(monitor.ratios) == ["a", "b", "c"]
    assert list(monitor.alignments) == ["a->b"]
    inputs = keras.Input((4,))
    left, right = L.Dense(4, name="left")(inputs), L.Dense(4, name="right")(inputs)
    joined = L.Dense(1, name="out")(L.Dropout(0.1)(L.Add()([left, right])))
    branches = keras.Model(inputs, L.Dense(1, name="head")(L.Dense(4, name="mid")(joined)))
    monitor = AlignmentMonitor()
    monitor.set_model(branches)
    assert list(monitor.measure()[1]) == ["out->mid", "mid->head"]  # not left/right->out


def test_gradient_descent_aligns_deep_linear_network():
    # Ji & Telgarsky in miniature: logistic loss, separable data, full-batch GD.
    keras.utils.set_random_seed(0)
    x, y = separable_data()
    model = linear_net(depth=3, width=6, d=6, std=0.05)
    model.compile(keras.optimizers.SGD(0.2), keras.losses.BinaryCrossentropy(from_logits=True))
    monitor = AlignmentMonitor(every=1)
    steps = 150  # full-batch steps per epoch: the data tiled, not shuffled
    model.fit(np.tile(x, (steps, 1)), np.tile(y, steps), batch_size=len(x), shuffle=False,
              epochs=4, verbose=0, callbacks=[monitor])
    for name in ("W1", "W2"):
        assert monitor.ratios[name][0] < 0.8  # random init: far from rank one
        assert monitor.ratios[name][-1] > 0.95
    for pair, values in monitor.alignments.items():
        assert values[0] < 0.9, pair
        assert values[-1] > 0.99, pair


def test_an_unbuilt_model_gets_a_clear_error_where_fit_has_not_built_it():
    # TensorFlow's fit builds a Sequential without `keras.Input` at its first step,
    # after `on_train_begin`; JAX and torch build it before. Either a clear error or
    # a measured run, never an AttributeError from inside the monitor.
    model = keras.Sequential([keras.layers.Dense(8, name="h"), keras.layers.Dense(3, name="o")])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    monitor = AlignmentMonitor()
    try:
        model.fit(x, np.zeros((16, 3)), epochs=1, verbose=0, callbacks=[monitor])
    except ValueError as error:
        assert "the model is not built: give it a `keras.Input`" in str(error)
    else:
        assert list(monitor.alignments) == ["h->o"]
