"""HybridHyperModel: search space, every KerasTuner tuner, prefix cache hits and
invalidation, resume after an interrupt, Hyperband continuation, a known best cutoff."""

import os

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import BACKEND

from keras_classpca import hybridize
from keras_classpca import tuner as tuner_module
from keras_classpca.core.class_pca import SCALINGS
from keras_classpca.hybrid import training
from keras_classpca.tuner import SOLVE_SECONDS, TRIAL_SECONDS, HybridHyperModel, solved_layers

L = keras.layers
FIT = dict(epochs=1, batch_size=64, verbose=0)


# ----------------------------------------------------------------------------- helpers
def _data(n=240, d=12, classes=3, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + 2.0 * np.eye(classes, d)[y] + shift
    return x.astype("float32"), y.astype("int64")


def _builder(first=8, second=8, batchnorm=False, lr_choices=None, input_batchnorm=False):
    """build_model(hp): [BN] Dense(first) [BN] Dense(second) Dense(3); 2 solvable layers."""

    def build_model(hp):
        layers = [keras.Input((12,))] + ([L.BatchNormalization()] if input_batchnorm else [])
        layers.append(L.Dense(first, activation="relu"))
        if batchnorm:
            layers.append(L.BatchNormalization())
        layers += [L.Dense(second, activation="relu"), L.Dense(3, activation="softmax")]
        model = keras.Sequential(layers)
        lr = hp.Choice("lr", lr_choices) if lr_choices else 1e-2
        # Eager steps: tiny data, no tf.function tracing per trial (keeps the tests fast).
        model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                      metrics=["accuracy"], run_eagerly=True)
        return model

    return build_model


def _hp(**values):
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        hp.values[name] = value
    return hp


def _completed(tuner):
    return [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]


# ----------------------------------------------------------------------------- search space
def test_build_registers_cutoff_and_options_next_to_user_hyperparameters():
    hypermodel = HybridHyperModel(_builder(lr_choices=[1e-2, 1e-3]), _data())
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert isinstance(model, keras.Model)
    assert [p.name for p in hp.space] == ["lr", "cutoff", "center", "scaling", "allocation"]
    cutoff = hp.space[1]
    assert (cutoff.min_value, cutoff.max_value) == (0, 2)  # two solvable Dense layers
    # The options are conditional on cutoff >= 1 and default to hybridize's defaults.
    hp.values["cutoff"] = 0
    assert not hp.is_active("scaling")
    hp.values["cutoff"] = 2
    assert hp.is_active("scaling")
    assert [p.default for p in hp.space[2:]] == [True, "standardize", "equal"]

    fixed = HybridHyperModel(_builder(), _data(), max_cutoff=1,
                             search_options={"variance_share": [0.9, 0.99]}, center=False)
    hp = keras_tuner.HyperParameters()
    fixed.build(hp)
    assert [p.name for p in hp.space] == ["cutoff", "variance_share"]
    assert hp.space[0].max_value == 1
    assert fixed.hybridize_options["center"] is False


def test_options_of_mixed_types_are_searched_by_their_labels(monkeypatch):
    space = {"sign_pairs": [False, True, "spare"], "dedup_threshold": [None, 0.5],
             "discriminant": [0, "auto"]}
    hypermodel = HybridHyperModel(_builder(), _data(), max_cutoff=1, search_options=space)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert [p.name for p in hp.space] == ["cutoff"] + list(space)
    assert hp.space[1].values == ["False", "True", "spare"]
    received = {}

    class _Stop(Exception):
        pass

    def capture(model, data, cutoff, **options):
        received.update(options)
        raise _Stop

    monkeypatch.setattr(tuner_module, "hybridize", capture)
    hp.values.update(cutoff=1, sign_pairs="spare", dedup_threshold="None", discriminant="0")
    with pytest.raises(_Stop):
        hypermodel.fit(hp, model, *_data(), epochs=1, verbose=0)
    assert (received["sign_pairs"], received["dedup_threshold"], received["discriminant"]) == (
        "spare", None, 0)
    with pytest.raises(ValueError, match="same text"):
        tuner_module._labelled("option", [1, "1"])


def test_options_the_user_fixes_in_the_tuners_hyperparameters_are_kept(tmp_path, monkeypatch):
    # `keras_tuner.RandomSearch(..., hyperparameters=hps)` with `hps.Fixed("scaling",
    # "whiten")`: every trial that solves something uses "whiten", and the labelled
    # option (`sign_pairs`) fixed by its value reaches hybridize as that value.
    received = []
    real_hybridize = tuner_module.hybridize

    def capture(model, data, cutoff, **options):
        if cutoff:  # (not the check of the data at the first build, which solves nothing)
            received.append((cutoff, options.get("scaling"), options.get("sign_pairs")))
        return real_hybridize(model, data, cutoff, **options)

    monkeypatch.setattr(tuner_module, "hybridize", capture)
    hps = keras_tuner.HyperParameters()
    hps.Fixed("scaling", "whiten")
    hps.Fixed("sign_pairs", "spare")
    hypermodel = HybridHyperModel(_builder(), _data(), cache=False,
                                  search_options={"scaling": list(SCALINGS),
                                                  "sign_pairs": [False, True, "spare"]})
    tuner = keras_tuner.RandomSearch(hypermodel, objective="accuracy", max_trials=6, seed=5,
                                     hyperparameters=hps, directory=tmp_path)
    tuner.search(*_data(), **FIT)
    assert received and all(r[1:] == ("whiten", "spare") for r in received)


@pytest.mark.parametrize("declare", [
    lambda hp: hp.Float("cutoff", 0.1, 0.5),  # e.g. a dropout rate, named like the cutoff
    lambda hp: hp.Int("cutoff", 3, 4),  # e.g. a layer count: would become the cutoff
    lambda hp: hp.Choice("cutoff", [1, 2]),
])
def test_a_build_function_hyperparameter_named_cutoff_is_refused_clearly(declare):
    def build_model(hp):
        model = _builder()(hp)
        declare(hp)
        return model

    with pytest.raises(ValueError, match="registers its own hyperparameter 'cutoff'.*rename"):
        HybridHyperModel(build_model, _data()).build(keras_tuner.HyperParameters())


def test_the_cutoff_may_be_fixed_or_narrowed_outside_the_search():
    def fixing(hp):
        hp.Fixed("cutoff", 1)  # fixing the solve cutoff in the build function is fine
        return _builder()(hp)

    HybridHyperModel(fixing, _data()).build(keras_tuner.HyperParameters())
    fixed = keras_tuner.HyperParameters()
    fixed.Fixed("cutoff", 1)  # and so is fixing (or narrowing) it in the tuner's hps
    HybridHyperModel(_builder(), _data()).build(fixed)
    narrowed = keras_tuner.HyperParameters()
    narrowed.Int("cutoff", 1, 1)
    model = HybridHyperModel(_builder(), _data()).build(narrowed)
    assert narrowed.get("cutoff") == 1 and isinstance(model, keras.Model)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_multi_input_model_is_searched_with_its_prefix_cache(tmp_path, as_dict):
    x, y = _data()
    meta = x[:, :5] + 1.0

    def two_inputs(hp):
        first, second = keras.Input((12,), name="first"), keras.Input((5,), name="second")
        merged = L.Concatenate()([L.Dense(4, activation="relu", name="a")(first),
                                  L.Dense(4, name="b")(second)])
        model = keras.Model([first, second], L.Dense(3, activation="softmax")(merged))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                      run_eagerly=True)
        return model

    inputs = {"first": x, "second": meta} if as_dict else [x, meta]
    hypermodel = HybridHyperModel(two_inputs, (inputs, y), search_options=False)
    tuner = keras_tuner.GridSearch(hypermodel, objective="accuracy", max_trials=3,
                                   directory=tmp_path, project_name="two")
    tuner.search(inputs, y, **FIT)
    trials = sorted(_completed(tuner), key=lambda t: t.hyperparameters.get("cutoff"))
    assert [t.hyperparameters.get("cutoff") for t in trials] == [0, 1, 2]
    # cutoff 2 reuses cutoff 1's solve of "a" from the cache and solves "b" only.
    assert (hypermodel.solve_cache.hits, hypermodel.solve_cache.misses) == (1, 2)
    assert [layer.name for layer in hypermodel.last_report.layers] == ["a", "b"]
    # The best model reloads with the prefix its trial solved frozen.
    best, best_hp = tuner.get_best_models(1)[0], tuner.get_best_hyperparameters(1)[0]
    frozen = [name for name in ("a", "b") if not best.get_layer(name).trainable]
    assert frozen == ["a", "b"][:best_hp.get("cutoff")]


def test_constructor_errors():
    with pytest.raises(TypeError, match="Unknown option"):
        HybridHyperModel(_builder(), _data(), centre=True)
    with pytest.raises(ValueError, match="Cannot search"):
        HybridHyperModel(_builder(), _data(), search_options={"n_classes": [3]})
    with pytest.raises(ValueError, match="max_cutoff"):
        HybridHyperModel(_builder(), _data(), max_cutoff=-1)
    with pytest.raises(ValueError, match="data_fingerprint"):
        HybridHyperModel(_builder(), lambda: iter([_data()]))
    HybridHyperModel(_builder(), lambda: iter([_data()]), data_fingerprint="v1")
    HybridHyperModel(_builder(), lambda: iter([_data()]), cache=False)
    with pytest.raises(ValueError, match="`solved_activation` must be None"):
        HybridHyperModel(_builder(), _data(), solved_activation="no_such_activation")


@pytest.mark.parametrize("max_cutoff", [1.5, 2.0, True, "2", -1])
def test_a_max_cutoff_that_is_no_non_negative_integer_is_refused_at_construction(max_cutoff):
    with pytest.raises(ValueError, match=r"`max_cutoff` must be a non-negative integer or "
                                         rf"None; received {max_cutoff!r}"):
        HybridHyperModel(_builder(), _data(), max_cutoff=max_cutoff)


def test_a_max_cutoff_above_the_solvable_layers_is_refused_before_any_trial(tmp_path):
    def one_solvable(hp):  # Dense(8) is solvable; Dense(3), the head, is always trained
        model = keras.Sequential([keras.Input((12,)), L.Dense(8, activation="relu"),
                                  L.Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    message = (r"`max_cutoff=5` exceeds the layers this model can solve: the model "
               r"`build_model\(hp\)` returns has 1 solvable layer\(s\) \(dense\w*\); the "
               r"prefix ends because Dense 'dense\w*' is the model's last layer with "
               r"weights \(always trained\)\. Pass `max_cutoff` <= 1")
    hypermodel = HybridHyperModel(one_solvable, _data(), max_cutoff=5, search_options=False)
    hp = keras_tuner.HyperParameters()
    with pytest.raises(ValueError, match=message):
        hypermodel.build(hp)
    assert not hp.space  # refused, not clipped to a range of 0..1
    # A tuner builds the model when constructed: the search never starts.
    with pytest.raises(ValueError, match=message):
        keras_tuner.RandomSearch(hypermodel, objective="accuracy", max_trials=1,
                                 directory=tmp_path)
    # Every solvable layer is fine.
    hp = keras_tuner.HyperParameters()
    HybridHyperModel(one_solvable, _data(), max_cutoff=1, search_options=False).build(hp)
    assert hp.space[0].max_value == 1


def test_an_uncompiled_model_is_refused_when_the_tuner_builds_its_first_model(tmp_path):
    def uncompiled(hp):
        return keras.Sequential([keras.Input((12,)), L.Dense(8, activation="relu"),
                                 L.Dense(3, activation="softmax")])

    message = r"`build_model\(hp\)` must return a compiled model"
    with pytest.raises(ValueError, match=message):
        HybridHyperModel(uncompiled, _data(), search_options=False).build(_hp())
    # Before any trial (each failed inside the tuner until the search gave up).
    with pytest.raises(ValueError, match=message):
        keras_tuner.RandomSearch(HybridHyperModel(uncompiled, _data(), search_options=False),
                                 objective="accuracy", max_trials=1, directory=tmp_path)


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x, y + 0.5), r"`y` must hold integer class labels"),
    (lambda x, y: (x[:, :10], y), r"`data` holds samples of shape \(10,\), but the model's "
                                  r"input has shape \(12,\)"),
    (lambda x, y: (x, y + 3), r"`y` holds the label 5, but the model's head predicts 3 "
                              r"classes"),
])
def test_array_data_no_trial_could_solve_from_is_refused_before_any_trial(tmp_path, bad,
                                                                          match):
    # Each trial failed inside the tuner with this error until the search gave up.
    hypermodel = HybridHyperModel(_builder(), bad(*_data()), search_options=False)
    with pytest.raises(ValueError, match=match):
        keras_tuner.RandomSearch(hypermodel, objective="accuracy", max_trials=1,
                                 directory=tmp_path)
    # The check solves nothing: the model it built is as the build function left it.
    hypermodel.data = _data()
    keras.utils.set_random_seed(0)
    model = hypermodel.build(keras_tuner.HyperParameters())
    keras.utils.set_random_seed(0)
    fresh = _builder()(keras_tuner.HyperParameters())
    assert all(layer.trainable for layer in model.layers)
    for checked, built in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(checked, built)


def test_the_tuners_own_compile_arguments_replace_the_build_functions(tmp_path):
    # (as the error above says: they reach the trial's training through the recompile)
    class Optimizers(keras.callbacks.Callback):
        seen = []

        def on_train_begin(self, logs=None):
            self.seen.append(type(self.model.optimizer).__name__)

    x, y = _data()
    tuner = keras_tuner.RandomSearch(
        HybridHyperModel(_builder(), (x, y), search_options=False, seed=0),
        objective="loss", max_trials=1, directory=tmp_path,
        hyperparameters=_hp(cutoff=1), optimizer=keras.optimizers.SGD(0.01),
        loss="sparse_categorical_crossentropy")
    tuner.search(x, y, callbacks=[Optimizers()], **FIT)
    assert len(_completed(tuner)) == 1 and Optimizers.seen == ["SGD"]  # built with Adam


def test_a_fixed_solved_activation_reaches_every_trial_solve(tmp_path):
    hypermodel = HybridHyperModel(_builder(), _data(), search_options=False,
                                  solved_activation="linear")
    model = hypermodel.build(_hp(cutoff=2))
    hypermodel.fit(_hp(cutoff=2), model, *_data(), **FIT)
    assert [layer.replaced_activation for layer in hypermodel.last_report.layers] == [
        "relu", "relu"]
    assert all(model.get_layer(name).activation is keras.activations.linear
               for name in solved_layers(model, 2))
    assert model.layers[-1].activation is keras.activations.softmax


@pytest.mark.parametrize("freeze", [False, "kernel"])
def test_freeze_reaches_every_trial_as_in_hybridize(freeze):
    # `freeze=False` (the fine-tune mode) and "kernel" were refused as unknown options.
    hypermodel = HybridHyperModel(_builder(), _data(), search_options=False, freeze=freeze)
    model = hypermodel.build(_hp(cutoff=2))
    hypermodel.fit(_hp(cutoff=2), model, *_data(), **FIT)
    assert len(hypermodel.last_report.layers) == 2
    reference = _builder()(_hp())
    hybridize(reference, _data(), 2, verbose=0, freeze=freeze)  # the solve, untrained
    for name, solved in zip(solved_layers(model, 2), solved_layers(reference, 2)):
        layer, kernel = model.get_layer(name), np.array(reference.get_layer(solved).kernel)
        assert layer.trainable and layer.kernel.trainable is (freeze is False)
        # trained on from the solve (False), or kept as solved ("kernel")
        assert np.array_equal(np.array(layer.kernel), kernel) is (freeze == "kernel")


def test_best_models_reload_as_their_trials_trained_them(tmp_path):
    # KerasTuner rebuilds a trial's model with `build` and loads its checkpoint: the
    # solved layers must come back frozen and with the trial's activations, or further
    # training moves them and predictions differ from what the trial scored.
    validation = _data(seed=1)
    hypermodel = HybridHyperModel(_builder(), _data(), search_options=False,
                                  solved_activation="linear")
    tuner = keras_tuner.GridSearch(hypermodel, objective="val_accuracy", max_trials=3,
                                   directory=tmp_path, project_name="reload")
    tuner.search(*_data(), validation_data=validation, **FIT)
    trials = _completed(tuner)
    assert sorted(t.hyperparameters.get("cutoff") for t in trials) == [0, 1, 2]
    for trial in trials:
        cutoff = trial.hyperparameters.get("cutoff")
        model = tuner.load_model(trial)
        solved = solved_layers(model, cutoff)
        assert len(solved) == cutoff
        for layer in model.layers:
            assert layer.trainable == (layer.name not in solved)
            if layer.name in solved:
                assert layer.activation is keras.activations.linear
        accuracy = model.evaluate(*validation, verbose=0, return_dict=True)["accuracy"]
        assert accuracy == pytest.approx(trial.score, abs=1e-6)
        before = [w.copy() for name in solved for w in model.get_layer(name).get_weights()]
        model.fit(*_data(seed=2), epochs=1, verbose=0)
        after = [w for name in solved for w in model.get_layer(name).get_weights()]
        for old, new in zip(before, after):
            np.testing.assert_array_equal(old, new)
    # A built trial model solved by its fit reports the activation it replaced.
    model = hypermodel.build(_hp(cutoff=1))
    hypermodel.fit(_hp(cutoff=1), model, *_data(), **FIT)
    assert [layer.replaced_activation for layer in hypermodel.last_report.layers] == ["relu"]


# ----------------------------------------------------------------------------- tuners
def test_grid_search_shares_prefixes_through_the_cache_on_disk(tmp_path):
    hypermodel = HybridHyperModel(_builder(), _data(), search_options=False)
    tuner = keras_tuner.GridSearch(hypermodel, objective="val_accuracy", max_trials=3,
                                   directory=tmp_path, project_name="grid")
    tuner.search(*_data(), validation_data=_data(seed=1), **FIT)
    trials = sorted(_completed(tuner), key=lambda t: t.hyperparameters.get("cutoff"))
    assert [t.hyperparameters.get("cutoff") for t in trials] == [0, 1, 2]
    # cutoff 1 solves layer 1; cutoff 2 reuses it and solves layer 2 only.
    cache = hypermodel.solve_cache
    assert (cache.hits, cache.misses) == (1, 2)
    assert cache.directory == os.path.join(str(tmp_path), "grid", "solve_cache")
    assert len([f for f in os.listdir(cache.directory) if f.endswith(".npz")]) == 2
    assert trials[0].metrics.get_best_value(SOLVE_SECONDS) == 0.0
    for trial in trials:
        seconds = trial.metrics.get_best_value(TRIAL_SECONDS)
        assert seconds >= trial.metrics.get_best_value(SOLVE_SECONDS)
        assert 0.0 <= trial.score <= 1.0  # val_accuracy still drives the search


def test_random_and_bayesian_search_with_options(tmp_path):
    # (BayesianOptimization: the second trial comes from its Gaussian process.)
    for tuner_class, extra in ((keras_tuner.RandomSearch, {}),
                               (keras_tuner.BayesianOptimization, {"num_initial_points": 1})):
        hypermodel = HybridHyperModel(_builder(lr_choices=[1e-2, 3e-3]), _data())
        tuner = tuner_class(hypermodel, objective="accuracy", max_trials=2, seed=3,
                            directory=tmp_path, project_name=tuner_class.__name__, **extra)
        tuner.search(*_data(), **FIT)
        trials = _completed(tuner)
        assert len(trials) == 2
        for trial in trials:
            values = trial.hyperparameters.values
            assert "lr" in values and "cutoff" in values
            if values["cutoff"] >= 1:
                assert values["scaling"] in ("standardize", "unit", "whiten")
        best = tuner.get_best_models(1)[0]
        assert isinstance(best, keras.Model)


def test_hyperband_continues_trials_without_solving_again(tmp_path):
    hypermodel = HybridHyperModel(_builder(batchnorm=True), _data(), search_options=False)
    tuner = keras_tuner.Hyperband(hypermodel, objective="accuracy", max_epochs=2, factor=2,
                                  hyperband_iterations=1, seed=1, directory=tmp_path)
    tuner.search(*_data(), batch_size=64, verbose=0)
    trials = _completed(tuner)
    continued = [t for t in trials if "tuner/trial_id" in t.hyperparameters.values]
    assert continued and len(trials) >= 3
    for trial in continued:
        assert trial.metrics.get_best_value(SOLVE_SECONDS) == 0.0


def test_hyperband_continuation_keeps_the_checkpoint_and_refreezes(tmp_path):
    x, y = _data()
    hypermodel = HybridHyperModel(_builder(batchnorm=True), (x, y), search_options=False,
                                  cache_dir=tmp_path / "cache")
    hp = keras_tuner.HyperParameters()
    first = hypermodel.build(hp)
    hp.values["cutoff"] = 1
    hypermodel.fit(hp, first, x, y, **FIT)
    assert [l.trainable for l in first.layers] == [False, True, True, True]
    checkpoint = str(tmp_path / "trial.weights.h5")
    first.save_weights(checkpoint)
    counts = (hypermodel.solve_cache.hits, hypermodel.solve_cache.misses)

    keras.backend.clear_session()
    continued_hp = hp.copy()
    continued_hp.values.update({"tuner/trial_id": "0000", "tuner/initial_epoch": 1})
    model = hypermodel.build(continued_hp)
    model.load_weights(checkpoint)
    loaded = [w.copy() for w in model.get_weights()]
    seen = {}

    class Capture(keras.callbacks.Callback):
        tuner = object()  # as KerasTuner's own trial callback holds the tuner

        def on_train_begin(self, logs=None):
            seen["weights"] = [w.copy() for w in self.model.get_weights()]

    # Hyperband passes the trial's `tuner/initial_epoch` to fit, with its callbacks.
    history = hypermodel.fit(continued_hp, model, x, y, callbacks=[Capture()],
                             initial_epoch=1, epochs=2, batch_size=64, verbose=0)
    # Nothing solved again: the trained BatchNormalization statistics after the solved
    # layer and the top start from the checkpoint.
    for before, start in zip(loaded, seen["weights"]):
        np.testing.assert_array_equal(before, start)
    assert (hypermodel.solve_cache.hits, hypermodel.solve_cache.misses) == counts
    assert [l.trainable for l in model.layers] == [False, True, True, True]
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], loaded[0])
    assert history.history[SOLVE_SECONDS] == [0.0]

    # The same hyperparameters retrained by hand on a fresh model (KerasTuner's
    # `hypermodel.fit(best_hp, hypermodel.build(best_hp), ...)`, no initial_epoch):
    # solved, not left at its random initial weights behind a freeze.
    keras.backend.clear_session()
    fresh = hypermodel.build(continued_hp)
    initial = fresh.layers[0].get_weights()[0].copy()
    history = hypermodel.fit(continued_hp, fresh, x, y, **FIT)
    assert not np.array_equal(fresh.layers[0].get_weights()[0], initial)
    np.testing.assert_allclose(fresh.layers[0].get_weights()[0],
                               first.layers[0].get_weights()[0], atol=1e-6)
    assert [l.trainable for l in fresh.layers] == [False, True, True, True]


def test_solved_layers_match_what_hybridize_freezes():
    x, y = _data()
    for input_batchnorm in (False, True):
        for cutoff in (0, 1, 2):
            build_model = _builder(batchnorm=True, input_batchnorm=input_batchnorm)
            model = build_model(keras_tuner.HyperParameters())
            report = hybridize(model, (x, y), cutoff, verbose=0)
            assert solved_layers(model, cutoff) == report.frozen


class _Interrupt(keras.callbacks.Callback):
    calls = 0  # class-level: KerasTuner deep-copies callbacks for every trial

    def on_train_begin(self, logs=None):
        type(self).calls += 1
        if type(self).calls == 2:
            raise KeyboardInterrupt


def test_resume_after_interrupt_keeps_trials_and_cache(tmp_path):
    # (RandomSearch: KerasTuner 1.4.8's GridSearchOracle does not persist its grid
    # position and cannot resume after an interrupted trial.)
    def make_tuner(overwrite):
        hypermodel = HybridHyperModel(_builder(lr_choices=[1e-2, 3e-3, 1e-3]), _data(),
                                      search_options=False)
        fixed = keras_tuner.HyperParameters()
        fixed.Fixed("cutoff", 1)  # the tuner's own override of our hyperparameter
        tuner = keras_tuner.RandomSearch(hypermodel, objective="accuracy", max_trials=3,
                                         seed=0, hyperparameters=fixed, directory=tmp_path,
                                         project_name="resume", overwrite=overwrite)
        return hypermodel, tuner

    hypermodel, tuner = make_tuner(overwrite=True)
    _Interrupt.calls = 0
    with pytest.raises(KeyboardInterrupt):
        tuner.search(*_data(), callbacks=[_Interrupt()], **FIT)
    finished = {t.trial_id: t.score for t in _completed(tuner)}
    assert len(finished) == 1
    # The interrupted trial had solved (a hit) before its training was interrupted.
    assert (hypermodel.solve_cache.hits, hypermodel.solve_cache.misses) == (1, 1)

    hypermodel, tuner = make_tuner(overwrite=False)
    tuner.search(*_data(), **FIT)
    trials = _completed(tuner)
    assert len(trials) == 3  # the finished trial kept, the interrupted one rerun
    assert {t.trial_id: t.score for t in trials if t.trial_id in finished} == finished
    assert sorted(t.hyperparameters.get("lr") for t in trials) == [1e-3, 3e-3, 1e-2]
    assert all(t.hyperparameters.get("cutoff") == 1 for t in trials)
    # A new HybridHyperModel (as in a new process): the solved layer comes from disk.
    assert (hypermodel.solve_cache.hits, hypermodel.solve_cache.misses) == (2, 0)


# ----------------------------------------------------------------------------- invalidation
def test_cache_is_invalidated_by_data_options_and_architecture(tmp_path):
    x, y = _data()
    hp = _hp(cutoff=1)

    def run(build_model=_builder(), data=(x, y), **options):
        # A new HybridHyperModel each time: lookups go to the files on disk.
        hypermodel = HybridHyperModel(build_model, data, search_options=False,
                                      cache_dir=tmp_path / "cache", **options)
        model = build_model(hp)
        hypermodel.fit(hp, model, x, y, epochs=0, verbose=0)
        return hypermodel.solve_cache.hits, hypermodel.solve_cache.misses

    assert run() == (0, 1)
    assert run() == (1, 0)  # same data, options and prefix
    assert run(data=(x + 1e-3, y)) == (0, 1)  # other data
    assert run(data=(x, (y + 1) % 3)) == (0, 1)  # other labels
    assert run(center=False) == (0, 1)  # other class-PCA option
    assert run(samples=200) == (0, 1)  # other sampling
    assert run(build_model=_builder(first=6)) == (0, 1)  # other prefix architecture
    assert run(build_model=_builder(second=16)) == (1, 0)  # only the trained top differs
    assert run(build_model=_builder(lr_choices=[3e-3])) == (1, 0)  # only the optimizer


# ----------------------------------------------------------------------------- known answer
def test_grid_search_finds_the_cutoff_known_by_construction(tmp_path):
    """The class signal lies in a low-variance direction: class-PCA of the 2-unit
    bottleneck keeps the high-variance nuisance directions (cutoff 1 is at chance),
    while a trained bottleneck finds the signal (cutoff 0 is near perfect). 300 rows
    over 36 features: under the Dense rule's 10 rows per feature, so no Fisher
    direction is mixed in (it would find the signal)."""
    rng = np.random.default_rng(0)
    n, d = 400, 36
    y = rng.integers(0, 2, n)
    x = np.zeros((n, d), "float32")
    x[:, 0] = np.where(y == 1, 1.0, -1.0) + 0.1 * rng.normal(size=n)
    x[:, 1:] = rng.normal(size=(n, d - 1)) * np.linspace(3.0, 1.2, d - 1)

    def build_model(hp):
        model = keras.Sequential([keras.Input((d,)), L.Dense(2), L.Dense(2, activation="softmax")])
        # 120 steps a trial: under JAX a jitted step (compiled once per trial) beats eager
        # steps, which dispatch every op on its own (0.1 s a step).
        model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy",
                      metrics=["accuracy"], run_eagerly=BACKEND != "jax")
        return model

    hypermodel = HybridHyperModel(build_model, (x[:300], y[:300]), search_options=False)
    tuner = keras_tuner.GridSearch(hypermodel, objective="val_accuracy", directory=tmp_path)
    tuner.search(x[:300], y[:300], validation_data=(x[300:], y[300:]), epochs=12,
                 batch_size=32, verbose=0)
    scores = {t.hyperparameters.get("cutoff"): t.score for t in _completed(tuner)}
    assert scores[1] < 0.7 < 0.9 < scores[0]
    assert tuner.get_best_hyperparameters(1)[0].get("cutoff") == 0


def test_trials_with_the_same_prefix_share_its_outputs(tmp_path, monkeypatch):
    # Cache whenever possible, so the counts below do not depend on timings.
    monkeypatch.setattr(training, "cache_ratio", lambda *args: 0.1)
    x, y = _data()
    validation = _data(seed=1)
    hypermodel = HybridHyperModel(_builder(lr_choices=[1e-2, 3e-3]), (x, y),
                                  search_options=False)
    tuner = keras_tuner.GridSearch(hypermodel, objective="val_accuracy", max_trials=6,
                                   directory=tmp_path, project_name="shared")
    tuner.search(x, y, validation_data=validation, **FIT)
    trials = _completed(tuner)
    assert sorted((t.hyperparameters.get("cutoff"), t.hyperparameters.get("lr"))
                  for t in trials) == [(c, lr) for c in (0, 1, 2) for lr in (3e-3, 1e-2)]
    # Cutoffs 1 and 2: the first learning rate computes the training and validation
    # outputs of the prefix, the second trains on them.
    outputs = hypermodel.output_cache
    assert (outputs.misses, outputs.hits, len(outputs)) == (4, 4, 4)
    # KerasTuner's checkpoint saved the whole model during the cached training: the
    # best model reloads with the top that trial trained.
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = tuner.get_best_models(1)[0]
    accuracy = best.evaluate(*validation, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(best_trial.score, abs=1e-6)


def test_without_the_cache_trials_train_with_plain_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(tuner_module, "fit_top", None)  # would raise if called
    hypermodel = HybridHyperModel(_builder(), _data(), search_options=False, cache=False)
    assert hypermodel.output_cache is None
    hp = _hp(cutoff=1)
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model, *_data(), **FIT)
    assert len(history.history["loss"]) == 1


def _squeeze_excitation_builder(expand_activation="sigmoid"):
    def build_model(hp):
        inputs = keras.Input((8, 8, 3))
        hidden = L.Conv2D(96, 3, padding="same", activation="swish")(inputs)
        squeeze = L.Reshape((1, 1, 96))(L.GlobalAveragePooling2D()(hidden))
        scale = L.Conv2D(96, 1, activation=expand_activation)(
            L.Conv2D(12, 1, activation="swish")(squeeze))
        hidden = L.Conv2D(8, 1)(L.Multiply()([hidden, scale]))
        model = keras.Model(inputs, L.Dense(5, activation="softmax")(L.Flatten()(hidden)))
        model.compile("adam", "sparse_categorical_crossentropy")
        return model

    return build_model


def test_the_cutoff_is_searched_only_up_to_a_layer_too_wide_for_the_classes():
    # A squeeze-and-excitation expand layer (96 filters over 12 values; 5 classes give
    # 60 directions): every trial with a cutoff through it would fail.
    build_model = _squeeze_excitation_builder()
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(100, 8, 8, 3)).astype("float32"), rng.integers(0, 5, 100))
    hp = keras_tuner.HyperParameters()
    HybridHyperModel(build_model, data, search_options=False).build(hp)
    assert hp.space[0].name == "cutoff" and hp.space[0].max_value == 2

    # An explicit max_cutoff through that layer (3 layers are planned) fails in every
    # trial above 2: refused when the tuner builds its first model, not trial by trial.
    with pytest.raises(ValueError, match=r"`max_cutoff=3` reaches Conv2D 'conv2d\w*': "
                                         r"96 filters over 12 input features.*every trial "
                                         r"with a cutoff above 2 would fail\. Pass "
                                         r"`max_cutoff` <= 2"):
        HybridHyperModel(build_model, data, max_cutoff=3, search_options=False).build(
            keras_tuner.HyperParameters())
    HybridHyperModel(build_model, data, max_cutoff=2, search_options=False).build(
        keras_tuner.HyperParameters())
    # Sign pairs double the directions (120 >= 96): a search that tries them may go on.
    hp = keras_tuner.HyperParameters()
    HybridHyperModel(build_model, data, max_cutoff=3,
                     search_options={"sign_pairs": [False, True]}).build(hp)
    assert hp.get("cutoff") == 0 and hp.space[0].max_value == 3


@pytest.mark.parametrize("solved_activation, searched", [(None, 4), ("linear", 2)])
def test_a_rectified_layer_s_spare_filters_count_in_the_searched_cutoffs(
        solved_activation, searched):
    # Read by a ReLU, the expand layer gets spare filters by default (48 directions and
    # their negatives): every cutoff is searched. Replaced by the identity it would get
    # plain filters, and the search stops below it.
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(100, 8, 8, 3)).astype("float32"), rng.integers(0, 5, 100))
    hp = keras_tuner.HyperParameters()
    HybridHyperModel(_squeeze_excitation_builder("relu"), data, search_options=False,
                     solved_activation=solved_activation).build(hp)
    assert hp.space[0].max_value == searched


def test_retraining_a_continued_trial_by_hand_solves_the_fresh_model():
    # `best_hp` of a Hyperband trial that continued another holds "tuner/trial_id";
    # refitting it by hand with its `initial_epoch` (no tuner callback) must solve the
    # fresh model, not only freeze its random layers.
    x, y = _data()
    hypermodel = HybridHyperModel(_builder(), (x, y), search_options=False, seed=0)
    hp = _hp(cutoff=1, **{"tuner/trial_id": "0001"})
    model = hypermodel.build(hp)
    initial = model.layers[0].get_weights()[0].copy()
    hypermodel.fit(hp, model, x, y, epochs=2, initial_epoch=1, verbose=0)
    assert not model.layers[0].trainable
    assert not np.allclose(model.layers[0].get_weights()[0], initial)


def test_new_data_given_to_the_hypermodel_is_not_served_the_old_datas_solves():
    x, y = _data()
    x2, y2 = _data(seed=5, shift=1.0)
    hypermodel = HybridHyperModel(_builder(), (x, y), search_options=False, seed=0)
    hp = _hp(cutoff=1)
    hypermodel.fit(hp, hypermodel.build(hp), x, y, epochs=1, verbose=0)
    hypermodel.data = (x2, y2)
    model = hypermodel.build(hp)
    hypermodel.fit(hp, model, x2, y2, epochs=1, verbose=0)
    fresh = _builder()(hp)
    hybridize(fresh, (x2, y2), cutoff=1, verbose=0, seed=0)
    np.testing.assert_allclose(model.layers[0].get_weights()[0],
                               fresh.layers[0].get_weights()[0], atol=1e-6)


def test_a_named_input_dict_is_arrays_to_the_solve_cache():
    # `({"name": x}, y)` is arrays as `fit` reads them: no `data_fingerprint` needed,
    # and its fingerprint is that of `(x, y)`.
    x, y = _data()
    named = HybridHyperModel(_builder(), ({"features": x}, y), search_options=False)
    plain = HybridHyperModel(_builder(), (x, y), search_options=False)
    assert named._data_fingerprint() == plain._data_fingerprint()


@pytest.mark.parametrize("cutoff", [0, 1])
def test_initialize_above_starts_every_trials_layers_above_its_cutoff(cutoff):
    hypermodel = HybridHyperModel(_builder(), _data(), search_options=False,
                                  initialize_above=True)
    model = hypermodel.build(_hp(cutoff=cutoff))
    before = [layer.get_weights()[0] for layer in model.layers]
    hypermodel.fit(_hp(cutoff=cutoff), model, *_data(), epochs=1, batch_size=64, verbose=0)
    report = hypermodel.last_report
    assert report.cutoff == cutoff and len(report.layers) == 2
    assert report.initialized == [layer.name for layer in model.layers[cutoff:2]]
    assert [layer.trainable for layer in model.layers[:2]] == [j >= cutoff for j in range(2)]
    # every layer moved: the frozen ones solved, the others solved and trained
    assert all(not np.array_equal(b, layer.get_weights()[0])
               for b, layer in zip(before, model.layers))
