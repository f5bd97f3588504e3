"""The default path `hybridize(model, data)`: `samples="auto"` and the "auto" decision."""

import keras
import numpy as np
import pytest

import keras_classpca.core.convergence as convergence_module
from keras_classpca import hybridize
from keras_classpca.core.subspace import subspace_overlap
from keras_classpca.hybrid.decision import probe_points
from keras_classpca.hybrid.planner import plan_model
from keras_classpca.hybrid.policy import DECISION_SAMPLES, AutoRule

L = keras.layers


def _mlp(n_in=12, hidden=8, k=3, name="m"):
    return keras.Sequential([keras.Input((n_in,)), L.Dense(hidden, activation="relu",
                                                           name=f"{name}_d0"),
                             L.Dense(k, name=f"{name}_out")])


def test_samples_auto_stops_early_on_plenty_of_data_and_matches_all_of_it(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=6000, noise=0.2, seed=4)
    x, y = data.x.astype("float32"), data.y  # sorted by class: the order must not matter
    model = _mlp()
    plain = dict(sign_pairs=False, discriminant=0)  # class-PCA planes, checked below
    report = hybridize(model, (x, y), cutoff=1, verbose=0, **plain)
    solved = report.layers[0]
    assert solved.converged and solved.samples < len(x) // 4
    assert [seen for seen, _ in solved.sample_checks][0] >= 1024
    assert solved.sample_checks[-1][1] < convergence_module.DEFAULT_TOLERANCE
    reference = _mlp(name="all")
    everything = hybridize(reference, (x, y), cutoff=1, samples=None, verbose=0, **plain)
    assert everything.layers[0].samples == len(x) and everything.layers[0].converged is None
    # Both spans hold every class's true plane (the extra 2 filters fit noise).
    for kernel in (model.get_layer("m_d0").kernel, reference.get_layer("all_d0").kernel):
        for basis in data.bases:
            assert subspace_overlap(basis, np.asarray(kernel)) > 0.99


def test_samples_auto_stops_at_the_same_check_point_whatever_the_batch_size(subspace_classes):
    """Batches are cut at the check points: 1,024, 2,048, ... samples, not the end of
    the batch that crosses one (a batch of 1,000 compared 2,000 with 3,000 samples)."""
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=3000, noise=0.3, seed=4)
    x, y = data.x.astype("float32"), data.y
    kernels, reports = [], []
    for batch_size in (100, 256, 1000, 3000):
        model = _mlp(name=f"b{batch_size}")
        reports.append(hybridize(model, (x, y), cutoff=1, batch_size=batch_size, verbose=0))
        kernels.append(np.asarray(model.layers[0].kernel))
    first = reports[0].layers[0]
    assert first.converged and first.samples in (2048, 4096, 8192)
    for report, kernel in zip(reports[1:], kernels[1:]):
        assert report.layers[0].samples == first.samples
        assert [seen for seen, _ in report.layers[0].sample_checks] == [
            seen for seen, _ in first.sample_checks]
        # the same samples: equal to the round-off of chunked float32 products
        np.testing.assert_allclose(kernel, kernels[0], atol=1e-4)


def test_samples_auto_reads_everything_when_it_does_not_settle(monkeypatch, subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=1000, noise=0.2, seed=4)
    x, y = data.x.astype("float32"), data.y
    monkeypatch.setattr(convergence_module, "DEFAULT_TOLERANCE", 1e-12)
    monkeypatch.setattr(convergence_module, "DEFAULT_FIRST", 256)
    report = hybridize(_mlp(), (x, y), cutoff=1, verbose=0)
    assert report.layers[0].samples == len(x) and report.layers[0].converged is False
    assert len(report.layers[0].sample_checks) >= 2


def test_samples_auto_batchnorm_after_a_layer_reads_as_many_samples(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=6000, noise=0.2, seed=4)
    x, y = data.x.astype("float32"), data.y
    model = keras.Sequential([keras.Input((12,)), L.Dense(8, name="d"),
                              L.BatchNormalization(name="bn"), L.ReLU(), L.Dense(3, name="o")])
    report = hybridize(model, (x, y), cutoff=1, verbose=0)
    used = report.layers[0].samples
    assert used < len(x) and report.layers[0].adapted_batchnorms == ["bn"]
    # The moments are those of the first `used` samples of the shuffled order.
    order = np.random.default_rng(0).permutation(len(x))[:used]
    h = np.asarray(model.get_layer("d")(x[order]))
    np.testing.assert_allclose(np.asarray(model.get_layer("bn").moving_mean), h.mean(axis=0),
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("samples", ["all", 0, -3, 2.5, True])
def test_samples_must_be_auto_none_or_a_positive_int(samples, blobs):
    with pytest.raises(ValueError, match=r'`samples` must be a positive integer or None or "auto"'):
        hybridize(_mlp(n_in=8), blobs, cutoff=1, samples=samples, verbose=0)


def test_probe_points_look_past_a_shortcut_that_reads_the_same_tensor():
    inputs = keras.Input((8, 8, 1))
    stem = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    branch = L.Conv2D(8, 3, padding="same", activation="relu", name="branch_a")(stem)
    branch = L.Conv2D(8, 3, padding="same", name="branch_b")(branch)
    shortcut = L.Conv2D(8, 1, name="projection")(stem)
    merged = L.ReLU()(L.Add()([branch, shortcut]))
    outputs = L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(8, 3, name="after")(merged)))
    plan = plan_model(keras.Model(inputs, outputs))
    points = dict(zip(plan.names, probe_points(plan)))
    steps = {step.name: step for step in plan.steps}
    # branch_a is judged on its own output (branch_b's input), not on the projection's
    # input, which is the tensor branch_a reads itself.
    assert points["branch_a"][0] is steps["branch_b"].input
    assert points["projection"][0] is not steps["projection"].input
    assert points["stem"][0] is steps["branch_a"].input


def test_auto_decides_on_at_most_the_decision_sample_and_restores_the_rest(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=1200, noise=0.3, seed=3)
    x, y = data.x.astype("float32"), data.y
    model = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu", name="a"),
                              L.Dense(16, activation="relu", name="b"), L.Dense(3, name="o")])
    before = model.get_layer("b").get_weights()
    report = hybridize(model, (x, y), verbose=0)
    evidence = report.evidence
    assert evidence["decision_samples"] == DECISION_SAMPLES
    assert evidence["samples_per_class"] == pytest.approx(len(x) / 3)
    assert report.cutoff >= 1 and evidence["layers"][0]["kept"]
    if report.cutoff == 1:  # the decision solved b on its sample, then put it back
        for w, w0 in zip(model.get_layer("b").get_weights(), before):
            assert np.array_equal(w, w0)
    # The kept layer is then solved from the data as with a fixed cutoff.
    fixed = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu", name="fa"),
                              L.Dense(16, activation="relu", name="fb"), L.Dense(3)])
    hybridize(fixed, (x, y), cutoff=1, verbose=0)
    np.testing.assert_allclose(np.asarray(model.get_layer("a").kernel),
                               np.asarray(fixed.get_layer("fa").kernel), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arguments, error, match", [
    ({"base_gain": "0.1"}, TypeError, "`base_gain` must be a finite number"),
    ({"gain_per_decade": float("nan")}, TypeError, "`gain_per_decade` must be a finite"),
    ({"dense_gain": True}, TypeError, "`dense_gain`"),
    ({"lossless_share": 1.5}, ValueError, r"`lossless_share` must be a share .* \(0, 1\]"),
    ({"lossless_share": 0.0}, ValueError, "`lossless_share`"),
])
def test_a_rule_with_a_wrong_number_is_refused_when_made(arguments, error, match):
    # It failed deep inside the decision, or kept every layer (a share above 1 is
    # never reached, 0 always), without saying why.
    with pytest.raises(error, match=match):
        AutoRule(**arguments)
    assert AutoRule(base_gain=np.float32(0.1), lossless_share=None).base_gain == np.float32(0.1)


def test_the_rule_keeps_more_layers_on_less_data_and_lower_down():
    rule = AutoRule()
    assert rule.threshold(60) < rule.threshold(600) < rule.threshold(6000)
    gain = (rule.threshold(60) + rule.threshold(6000)) / 2
    assert rule.keep(gain, 60) and not rule.keep(gain, 6000)
    deeper = AutoRule(gain_per_layer=0.01)
    assert deeper.threshold(600, position=0) < deeper.threshold(600, position=1)
    assert rule.threshold(600, kind="Conv2D") < rule.threshold(600, kind="Dense")
    # a layer that keeps (almost) all of its input's variance is kept whatever the gain
    assert rule.keep(-0.5, 6000, kind="Conv2D", explained_variance=0.995)
    assert not rule.keep(-0.5, 6000, kind="Dense", explained_variance=0.995)  # probed
    assert not AutoRule(lossless_share=None).keep(-0.5, 6000, explained_variance=1.0)


def test_a_class_pca_option_reaches_the_decision_and_the_solve(subspace_classes,
                                                               dense_reference):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=300, noise=0.3, seed=3)
    x, y = data.x.astype("float32"), data.y
    model = _mlp(hidden=6)
    report = hybridize(model, (x, y), verbose=0, center=False, scaling="unit", offset="zero")
    if report.cutoff:
        expected = dense_reference(6, x, y, center=False, scaling="unit",
                                   offset="zero").kernel_
        assert subspace_overlap(np.asarray(model.get_layer("m_d0").kernel), expected) > 0.999


def test_a_lossless_convolution_is_kept_without_a_probe_a_wide_dense_layer_is_probed(
        subspace_classes):
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    ramp = np.linspace(-1, 1, 8)[None, :, None, None]
    x = (rng.normal(size=(300, 8, 8, 1)) + 0.5 * y[:, None, None, None] * ramp)
    conv = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(12, 3, activation="relu"),
                             L.Flatten(), L.Dense(3, activation="softmax")])
    report = hybridize(conv, (x.astype("float32"), y), verbose=0)
    first = report.evidence["layers"][0]  # 12 filters on 9-value patches: all variance
    assert first["kept"] and first["gain"] is None and first["explained_variance"] > 0.99
    assert "not probed" in str(report) and report.cutoff == 1
    # A Dense layer wider than its input spans it too, but its class directions can be
    # nearly parallel: it is probed and kept on its gain only.
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=300, noise=0.3, seed=3)
    report = hybridize(_mlp(hidden=16), (data.x.astype("float32"), data.y), verbose=0)
    first = report.evidence["layers"][0]
    assert first["explained_variance"] > 0.99 and first["gain"] is not None
    assert first["kept"] == (first["gain"] >= first["threshold"])


def _steps_data():
    """300 sequences of 10 steps of 6 features, 3 classes shifting every step."""
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = rng.normal(size=(300, 10, 6)) + 0.5 * y[:, None, None] * np.linspace(-1, 1, 6)
    return x.astype("float32"), y


def test_a_dense_layer_on_every_step_is_judged_as_a_pointwise_convolution():
    # A token projection wider than a step's features keeps all of their variance: it
    # is kept as lossless, without the flat Dense rule's probe and extra gain.
    x, y = _steps_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 6)), L.Dense(12, activation="relu"),
                              L.Conv1D(8, 3, activation="relu"), L.GlobalAveragePooling1D(),
                              L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), verbose=0)
    first = report.evidence["layers"][0]
    assert first["kind"] == "Dense per step" and first["kept"] and first["gain"] is None
    assert first["explained_variance"] > 0.99 and report.cutoff >= 1
    rule = AutoRule()
    assert rule.threshold(600, "Dense per step") == rule.threshold(600, "Conv1D")
    assert rule.may_be_lossless("Dense per step") and not rule.may_be_lossless("Dense")


def test_only_a_first_layer_is_kept_as_lossless():
    # A second spanning per-step Dense layer was kept as lossless too (two stacked
    # Dense(64) under attention pooling then trained 8-9 points below SGD): above a
    # solved layer the probe compares with solved features, and decides.
    x, y = _steps_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 6)), L.Dense(12, activation="relu"),
                              L.Dense(12, activation="relu"), L.GlobalAveragePooling1D(),
                              L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), verbose=0)
    first, second = report.evidence["layers"][:2]
    assert first["first"] and first["kept"] and first["gain"] is None  # lossless
    assert not second["first"] and second["before"] is not None  # probed
    assert second["kept"] == (second["gain"] is not None
                              and second["gain"] >= second["threshold"])
    assert report.cutoff == 1 + second["kept"]
    rule = AutoRule()
    assert rule.lossless(1.0, "Conv2D") and not rule.lossless(1.0, "Conv2D", first=False)
    assert not rule.may_be_lossless("Dense per step", first=False)
    assert "for a first layer" in report.evidence["rule"]


def _sorted_stream(x, y, batch=100):
    """A callable returning a fresh generator of `(x, y)` batches in class order, as a
    dataset read without shuffling (`image_dataset_from_directory(shuffle=False)`)."""
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    return lambda: ((x[s:s + batch], y[s:s + batch]) for s in range(0, len(x), batch))


def _softmax_mlp(name):
    return keras.Sequential([keras.Input((12,)), L.Dense(6, name=f"{name}_d0"),
                             L.Dense(3, activation="softmax", name=f"{name}_out")])


def test_samples_auto_reads_a_class_sorted_stream_until_every_class_arrived(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=3000, noise=0.2, seed=4)
    x, y = data.x.astype("float32"), data.y
    plain = dict(sign_pairs=False, discriminant=0)
    model = _softmax_mlp("m")  # its softmax output says: 3 classes
    report = hybridize(model, _sorted_stream(x, y), cutoff=1, verbose=0, **plain)
    assert report.layers[0].samples > 6000  # the last class starts at 6,000
    for basis in data.bases:  # every class's plane is in the solved span
        assert subspace_overlap(basis, np.asarray(model.get_layer("m_d0").kernel)) > 0.99


def test_the_auto_decision_sample_of_a_class_sorted_stream_holds_every_class(
        subspace_classes):
    from keras_classpca.hybrid.passes import DataPasses

    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=1000, noise=0.2, seed=4)
    passes = DataPasses(_sorted_stream(data.x, data.y), "auto", 64, 0, None)
    x, labels = passes.head(500, expected_classes=3)
    assert len(x) == len(labels) == 500 and passes.seen == 3000
    counts = np.bincount(labels, minlength=3)
    assert counts.min() > 100  # a random subset of the pass, not its head (all class 0)
    rows = {tuple(row) for row in np.round(data.x, 6)}
    assert all(tuple(row) in rows for row in np.round(x, 6))  # real samples, each once
    assert len({tuple(row) for row in np.round(x, 6)}) == 500
    # The head is kept when it already holds every class.
    passes = DataPasses(_sorted_stream(data.x, data.y), "auto", 64, 0, None)
    assert set(passes.head(500, expected_classes=1)[1]) == {0}


def test_the_auto_rule_counts_the_samples_of_a_dataset_that_knows_its_length(
        subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=1000, noise=0.2, seed=4)
    x, y = data.x.astype("float32"), data.y

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 30

        def __getitem__(self, index):
            return x[index * 100:(index + 1) * 100], y[index * 100:(index + 1) * 100]

    from_arrays = hybridize(_softmax_mlp("a"), (x, y), verbose=0).evidence
    from_batches = hybridize(_softmax_mlp("b"), Batches(), verbose=0).evidence
    assert from_batches["samples_per_class"] == from_arrays["samples_per_class"] == 1000


def test_a_fixed_sample_count_that_misses_classes_of_a_sorted_stream_warns(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=600, noise=0.2, seed=4)
    x, y = data.x.astype("float32"), data.y
    with pytest.warns(UserWarning, match="first 500 samples of `data` hold 1 of the 3 classes"):
        hybridize(_softmax_mlp("f"), _sorted_stream(x, y), cutoff=1, samples=500, verbose=0)
    import warnings

    with warnings.catch_warnings():  # a shuffled stream holds them all: no warning
        warnings.simplefilter("error", UserWarning)
        order = np.random.default_rng(0).permutation(len(y))
        hybridize(_softmax_mlp("g"), (x[order], y[order]), cutoff=1, samples=500, verbose=0,
                  sign_pairs=False, discriminant=0)
        shuffled = _sorted_stream(x[order], np.zeros_like(y))  # one "class": keeps the order
        hybridize(_softmax_mlp("h"), lambda: ((xb, y[order][i * 100:(i + 1) * 100])
                                              for i, (xb, _) in enumerate(shuffled())),
                  cutoff=1, samples=500, verbose=0, sign_pairs=False, discriminant=0)


def test_seed_none_draws_one_seed_for_everything_and_reports_it(subspace_classes):
    """`seed=None`: a fresh seed per call, used by the sampling and the decision alike,
    so `report.seed` reproduces the call; a solve cache does not hand back another
    call's random draw."""
    from keras_classpca import SolveCache

    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=1500, noise=0.3, seed=4)
    x, y = data.x.astype("float32"), data.y
    cache = SolveCache()
    kernels, seeds = [], []
    for name in ("a", "b"):
        model = _mlp(name=name)
        report = hybridize(model, (x, y), cutoff=1, seed=None, samples=1000,
                           solve_cache=cache, verbose=0)
        seeds.append(report.seed)
        kernels.append(np.asarray(model.layers[0].kernel))
    assert seeds[0] != seeds[1] and all(isinstance(seed, int) for seed in seeds)
    assert cache.hits == 0
    assert not np.allclose(kernels[0], kernels[1])  # other samples
    again = _mlp(name="again")
    report = hybridize(again, (x, y), cutoff=1, seed=seeds[0], samples=1000, verbose=0)
    assert report.seed == seeds[0] and report.to_dict()["seed"] == seeds[0]
    np.testing.assert_array_equal(np.asarray(again.layers[0].kernel), kernels[0])
    assert hybridize(_mlp(name="d"), (x, y), cutoff=1, verbose=0).seed == 0  # the default


def test_batch_size_none_and_verbose_auto_mean_the_defaults_as_in_fit(blobs, capsys):
    # batch_size=None passed validation ("a positive integer or None"), then failed
    # with a TypeError; verbose="auto" (fit's default) was refused.
    x, y = blobs
    reference = _mlp(n_in=8, name="ref")
    hybridize(reference, (x, y), cutoff=1, verbose=0)
    model = _mlp(n_in=8, name="none")
    hybridize(model, (x, y), cutoff=1, batch_size=None, verbose="auto")
    assert "Solving Dense 'none_d0'" in capsys.readouterr().out  # a progress bar
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel),
                                  np.asarray(reference.layers[0].kernel))
