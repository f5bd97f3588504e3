"""`hybridize(warm_head=True)`: the head above a fully solved prefix starts as the
least-squares classifier of the solved features."""

import keras
import numpy as np
import pytest

from keras_classpca import HybridReport, hybridize
from keras_classpca.hybrid import head as head_module

L = keras.layers


def _data(n=600, k=3, d=12, seed=0):
    """Classes drawn around orthogonal means: separable by a linear map of the data."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, d)) + 3.0 * np.eye(k, d)[y]
    return x.astype("float32"), y


def _model(head_units=3, activation="softmax", hidden=8, use_bias=True, seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((12,)), L.Dense(hidden, activation="relu", name="hid"),
                             L.Dense(head_units, activation=activation, use_bias=use_bias,
                                     name="head")])


def _features(model, x):
    return keras.Model(model.inputs, model.get_layer("head").input).predict(x, verbose=0)


def test_head_above_solved_layers_is_the_ridge_classifier_scaled(tmp_path):
    x, y = _data()
    model = _model()
    report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert report.head["layer"] == "head" and report.head["samples"] == len(x)
    # the closed form on the solved features: ridge on centred one-hot targets, with
    # the penalty the report names (relative to the mean feature variance)
    f = _features(model, x).astype(np.float64)
    centred = f - f.mean(axis=0)
    targets = np.eye(3)[y] - 1 / 3
    gram = centred.T @ centred
    penalty = report.head["penalty"] * np.trace(gram) / gram.shape[0]
    kernel_expected = np.linalg.solve(gram + penalty * np.eye(len(gram)), centred.T @ targets)
    bias_expected = targets.mean(axis=0) - f.mean(axis=0) @ kernel_expected
    kernel, bias = model.get_layer("head").get_weights()
    temperature = report.head["temperature"]
    np.testing.assert_allclose(kernel, kernel_expected * temperature, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, bias_expected * temperature, rtol=1e-4, atol=1e-5)
    # before any training, the model classifies as well as the report says
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
    assert accuracy > 0.9 and report.head["loo_accuracy"] > 0.9
    assert report.head["penalty"] in head_module.PENALTIES
    assert model.get_layer("head").trainable  # started, not frozen
    assert "head head started as the least-squares classifier" in str(report)
    assert HybridReport.from_dict(report.to_dict()) == report


def _brute_force_held_out(features, labels, n_outputs, penalty):
    """Each row scored by the ridge (unpenalised bias) fitted on all the other rows."""
    held_out = []
    for i in range(len(features)):
        rest = np.arange(len(features)) != i
        f, t = features[rest], np.eye(n_outputs)[labels[rest]] - 1 / n_outputs
        mean, target_mean = f.mean(axis=0), t.mean(axis=0)
        kernel = np.linalg.solve((f - mean).T @ (f - mean) + penalty * np.eye(f.shape[1]),
                                 (f - mean).T @ (t - target_mean))
        held_out.append((features[i] - mean) @ kernel + target_mean)
    return np.array(held_out)


def test_penalty_and_temperature_are_those_of_least_leave_one_out_cross_entropy():
    # Wider features than samples: a fixed small penalty would fit the labels exactly
    # (training accuracy 1, a huge temperature). The leave-one-out identity scores
    # every row as if held out; checked against refitting without it.
    rng = np.random.default_rng(0)
    labels = np.arange(80) % 3
    features = rng.normal(size=(80, 120)) + 0.8 * np.eye(3, 120)[labels]
    statistics = head_module._HeadStatistics(3)
    for start in range(0, 80, 32):
        statistics(features[start:start + 32], labels[start:start + 32], None)
    kernel, bias, details = statistics.solve()
    centred = features - features.mean(axis=0)
    scale = np.trace(centred.T @ centred) / features.shape[1]
    held_out = _brute_force_held_out(features, labels, 3, details["penalty"] * scale)
    assert details["loo_accuracy"] == np.mean(np.argmax(held_out, axis=1) == labels)
    assert details["penalty"] > head_module.PENALTIES[0]  # not the interpolating one

    def loss(logits):
        shifted = logits - logits.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(80), labels])

    chosen = loss(details["temperature"] * held_out)
    assert all(chosen <= loss(t * held_out) + 1e-9 for t in head_module.TEMPERATURES)
    for penalty in head_module.PENALTIES[::3]:  # and no other penalty does better
        other = _brute_force_held_out(features, labels, 3, penalty * scale)
        assert chosen <= min(loss(t * other) for t in head_module.TEMPERATURES) + 1e-9
    # the start's logits on the data: the scaled ridge fit
    targets = np.eye(3)[labels] - 1 / 3
    expected = (centred @ np.linalg.solve(
        centred.T @ centred + details["penalty"] * scale * np.eye(120), centred.T @ targets)
        + targets.mean(axis=0)) * details["temperature"]
    np.testing.assert_allclose(features @ kernel + bias, expected, rtol=1e-6, atol=1e-6)


def test_head_keeps_its_weights_when_not_every_layer_below_is_solved_or_asked_not_to():
    x, y = _data()
    for cutoff, warm in ((1, False), (1, True)):
        model = keras.Sequential([keras.Input((12,)), L.Dense(8, activation="relu"),
                                  L.Dense(8, activation="relu"), L.Dense(3, name="head")])
        before = model.get_layer("head").get_weights()
        report = hybridize(model, (x, y), cutoff=cutoff, verbose=0, warm_head=warm)
        assert report.head is None
        for a, b in zip(before, model.get_layer("head").get_weights()):
            np.testing.assert_array_equal(a, b)
    model = _model()
    before = model.get_layer("head").get_weights()
    assert hybridize(model, (x, y), cutoff=1, verbose=0, warm_head=False).head is None
    np.testing.assert_array_equal(before[0], model.get_layer("head").get_weights()[0])
    # a one-shot iterator is read once, by the solve: no pass is left for the head
    model = _model()
    one_shot = ((x[s:s + 100], y[s:s + 100]) for s in range(0, len(x), 100))
    report = hybridize(model, one_shot, cutoff=1, verbose=0)
    assert report.cutoff == 1 and report.head is None and "one-shot" in report.head_not_started
    np.testing.assert_array_equal(before[0], model.get_layer("head").get_weights()[0])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_heads_it_cannot_start_are_left_as_they_are(activation):
    from keras_classpca.hybrid.planner import plan_model

    x, y = _data()
    model = _model(3, activation)
    assert "activation" in head_module.head_refusal(plan_model(model), 1, 3)
    before = model.get_layer("head").get_weights()[0]
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert report.head is None and f"activation {activation!r}" in report.head_not_started
    assert f"head not started: {report.head_not_started}" in str(report)
    np.testing.assert_array_equal(before, model.get_layer("head").get_weights()[0])
    plan = plan_model(_model(3, "softmax"))
    assert head_module.head_refusal(plan, 1, 3) is None
    assert "3 units for 4 classes" in head_module.head_refusal(plan, 1, 4)
    assert "below the head are left to training" in head_module.head_refusal(plan, 0, 3)
    from keras_classpca import ClassPCADense

    adaptable = keras.Sequential([keras.Input((12,)), L.Dense(8, activation="relu"),
                                  ClassPCADense(3, name="pca_head")])
    assert "ClassPCADense" in head_module.head_refusal(plan_model(adaptable), 1, 3)


def test_a_sigmoid_unit_and_a_head_without_bias_are_started():
    x, y = _data(k=2)
    model = _model(1, "sigmoid")
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    predicted = model.predict(x, verbose=0)[:, 0] > 0.5
    assert report.head is not None and np.mean(predicted == (y == 1)) > 0.95
    x, y = _data()
    model = _model(use_bias=False)
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert len(model.get_layer("head").get_weights()) == 1
    assert np.mean(np.argmax(model.predict(x, verbose=0), 1) == y) > 0.9


def test_streamed_data_start_the_head_as_arrays_do():
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    by_arrays, by_dataset = _model(), _model()
    hybridize(by_arrays, (x, y), cutoff=1, samples=None, verbose=0, batch_size=100)
    hybridize(by_dataset, tf.data.Dataset.from_tensor_slices((x, y)).batch(100), cutoff=1,
              samples=None, verbose=0)
    for a, b in zip(by_arrays.get_weights(), by_dataset.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_warm_head_must_be_a_bool():
    x, y = _data()
    with pytest.raises(TypeError, match="`warm_head` must be True or False"):
        hybridize(_model(), (x, y), cutoff=1, verbose=0, warm_head="yes")


def test_kept_rows_are_a_uniform_sample_of_data_ordered_by_class():
    # 10 classes of 1,000 rows each, in class order: the first 2,048 rows would hold
    # three classes only.
    labels = np.repeat(np.arange(10), 1000)
    rows = np.arange(10_000, dtype=np.float64)[:, None]  # a row is its own index
    kept = head_module._KeptRows(2048, seed=0)
    for start in range(0, 10_000, 128):
        kept.add(rows[start:start + 128], labels[start:start + 128])
    assert kept.seen == 10_000 and len(kept.rows) == 2048
    index = kept.rows[:, 0].astype(int)
    assert len(np.unique(index)) == 2048  # each row kept at most once, with its label
    np.testing.assert_array_equal(kept.labels, labels[index])
    counts = np.bincount(kept.labels, minlength=10)  # binomial, sd about 12
    assert counts.min() > 150 and counts.max() < 260
    assert abs(np.mean(index) - 5000) < 300  # early and late rows alike
    # a stream shorter than the sample is kept whole, in order
    short = head_module._KeptRows(2048)
    short.add(rows[:100], labels[:100])
    short.add(rows[100:300], labels[100:300])
    np.testing.assert_array_equal(short.rows[:, 0], np.arange(300))


@pytest.mark.parametrize("n, d, outputs, bias", [(80, 120, 3, True), (300, 20, 3, True),
                                                  (300, 20, 3, False), (90, 150, 1, True)])
def test_wide_heads_solved_in_the_dual_equal_the_gram_matrix_solve(n, d, outputs, bias):
    # With every row kept, the kernel matrix's eigen-solve (features wider than
    # MAX_FEATURES) must give the classifier of the Gram matrix's, to rounding.
    rng = np.random.default_rng(1)
    labels = np.arange(n) % max(outputs, 2)
    features = rng.normal(size=(n, d)) + 0.8 * np.eye(max(outputs, 2), d)[labels]
    results = []
    for dual in (False, True):
        statistics = head_module._HeadStatistics(outputs, bias=bias, dual=dual)
        for start in range(0, n, 32):
            statistics(features[start:start + 32], labels[start:start + 32], None)
        results.append(statistics.solve())
    (kernel, bias_value, details), (dual_kernel, dual_bias, dual_details) = results
    assert dual_details == details and details["fitted_on"] == n
    np.testing.assert_allclose(dual_kernel, kernel, rtol=1e-6, atol=1e-8)
    if bias:
        np.testing.assert_allclose(dual_bias, bias_value, rtol=1e-6, atol=1e-8)
    else:
        assert dual_bias is None and bias_value is None
    assert statistics.gram is None  # the dual keeps no d x d matrix


def test_head_on_wide_features_is_fitted_on_a_sample_of_the_rows(monkeypatch):
    monkeypatch.setattr(head_module, "MAX_FEATURES", 6)  # the head reads 8: dual
    monkeypatch.setattr(head_module, "KEPT_ROWS", 200)
    x, y = _data()
    model = _model()
    report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert report.head["samples"] == 600 and report.head["fitted_on"] == 200
    assert "(fitted on 200 of 600 samples" in str(report)
    assert np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y) > 0.9
    assert HybridReport.from_dict(report.to_dict()) == report
    # wider than the kept rows may hold: left alone, and the report says why
    monkeypatch.setattr(head_module, "MAX_DUAL_FEATURES", 6)
    model = _model()
    before = model.get_layer("head").get_weights()[0]
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert report.head is None and "reads 8 features (at most 6" in report.head_not_started
    np.testing.assert_array_equal(before, model.get_layer("head").get_weights()[0])


def test_a_constraint_that_would_move_the_start_leaves_the_head_alone():
    # Training projects a constrained head after every step: a NonNeg head set to a
    # least-squares start (half its weights negative) would lose them at the first one.
    x, y = _data()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((12,)), L.Dense(8, activation="relu"),
        L.Dense(3, activation="softmax", name="head",
                kernel_constraint=keras.constraints.NonNeg())])
    before = model.get_layer("head").get_weights()
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert report.head is None
    assert "kernel constraint (NonNeg) would change the least-squares start" in (
        report.head_not_started)
    for a, b in zip(before, model.get_layer("head").get_weights()):
        np.testing.assert_array_equal(a, b)
    # a constraint the start satisfies does not stop it
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((12,)), L.Dense(8, activation="relu"),
        L.Dense(3, activation="softmax", name="head",
                kernel_constraint=keras.constraints.MaxNorm(1e6, axis=0))])
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    assert report.head is not None and report.head_not_started is None
    assert np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y) > 0.9
