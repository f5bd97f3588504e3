"""`hybridize(initialize_above=True)`: the layers above the cutoff are solved too, as
the start of the layers that train."""

import keras
import numpy as np
import pytest

from keras_classpca import HybridReport, SolveCache, hybridize

L = keras.layers


def _images(n=600, k=3, seed=0):
    """8×8 images whose class lights one of three pixels: conv filters can see it."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    x[np.arange(n), 2 + y, 2 + y, 0] += 4.0
    return x, y


def _convnet(seed=1, compiled=False, c2_initializer="glorot_uniform"):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(6, 3, activation="relu", name="c1"),
        L.Conv2D(8, 3, activation="relu", name="c2", kernel_initializer=c2_initializer),
        L.Flatten(),
        L.Dense(3, activation="softmax", name="head"),
    ])
    if compiled:
        model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _weights(model, name):
    return model.get_layer(name).get_weights()


def _assert_rescaled(solved, started):
    """`started` (kernel, bias) holds the filters of `solved`, each times a positive
    factor (its bias too)."""
    filters = solved[0].shape[-1]
    kernel, start = solved[0].reshape(-1, filters), started[0].reshape(-1, filters)
    factors = np.linalg.norm(start, axis=0) / np.linalg.norm(kernel, axis=0)
    assert np.all(factors > 0)
    np.testing.assert_allclose(start, kernel * factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(started[1], solved[1] * factors, rtol=1e-5, atol=1e-6)


def _full_and_started(x, y, cutoff):
    """A full solve of `_convnet` and one started above `cutoff`, and the latter's
    report."""
    full = _convnet()
    hybridize(full, (x, y), cutoff=2, verbose=0)
    model = _convnet()
    report = hybridize(model, (x, y), cutoff=cutoff, initialize_above=True, verbose=0)
    return full, model, report


def test_layers_above_the_cutoff_start_from_the_full_solve_and_train():
    x, y = _images()
    full, model, report = _full_and_started(x, y, cutoff=1)
    # the frozen layer as a plain solve; the layer above with the full solve's filters
    # (same data, seed and order of solves), each rescaled by a positive factor
    for a, b in zip(_weights(full, "c1"), _weights(model, "c1")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    _assert_rescaled(_weights(full, "c2"), _weights(model, "c2"))
    # ... with only the bottom `cutoff` layers frozen
    assert [layer.trainable for layer in model.layers] == [False, True, True, True]
    assert report.cutoff == 1 and report.frozen == ["c1"] and report.initialized == ["c2"]
    assert [layer.name for layer in report.layers] == ["c1", "c2"]
    assert report.head is not None and report.next_not_taken is None
    text = str(report)
    assert "1 of 2 solvable layer(s) solved and frozen, 1 above solved as a start" in text
    assert "solved as a start, trainable: c2" in text
    assert HybridReport.from_dict(report.to_dict()) == report
    # the start classifies before any training; fit trains c2 and the head, not c1
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
    assert accuracy > 0.9
    c1, c2 = _weights(model, "c1")[0], _weights(model, "c2")[0]
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    np.testing.assert_array_equal(c1, _weights(model, "c1")[0])
    assert not np.allclose(c2, _weights(model, "c2")[0])


def test_cutoff_zero_starts_every_layer_from_its_solution_and_freezes_none():
    x, y = _images()
    full, model, report = _full_and_started(x, y, cutoff=0)
    assert report.cutoff == 0 and report.frozen == [] and report.initialized == ["c1", "c2"]
    assert all(layer.trainable for layer in model.layers)
    # c1 as solved, at its initializer's scale (c2 is solved from those outputs)
    _assert_rescaled(_weights(full, "c1"), _weights(model, "c1"))
    # without the option cutoff 0 leaves the model as it was
    untouched = _convnet()
    before = _weights(untouched, "c1")[0]
    assert hybridize(untouched, (x, y), cutoff=0, verbose=0).layers == []
    np.testing.assert_array_equal(before, _weights(untouched, "c1")[0])


def test_later_calls_freeze_and_release_as_their_own_cutoff_says():
    x, y = _images()
    model = _convnet(compiled=True)
    report = hybridize(model, (x, y), cutoff=2, verbose=0)
    assert not model.get_layer("c2").trainable
    # a compiled model is compiled again: c2, frozen before, trains now
    report = hybridize(model, (x, y), cutoff=1, initialize_above=True, verbose=0)
    assert report.recompiled and model.get_layer("c2").trainable
    assert not model.get_layer("c1").trainable
    trainable = {id(v) for v in model.trainable_variables}
    assert all(id(v) in trainable for v in model.get_layer("c2").weights)
    assert not any(id(v) in trainable for v in model.get_layer("c1").weights)
    report = hybridize(model, (x, y), cutoff=2, verbose=0)
    assert report.initialized == [] and not model.get_layer("c2").trainable


def test_the_start_ends_below_a_layer_too_wide_for_the_classes():
    # 3 classes over 2 features give a Dense layer at most 3·2·2 + 2 = 14 directions:
    # Dense(40) above is left to its initializer, without an error.
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = (rng.normal(size=(300, 2)) + 3.0 * np.eye(3, 2)[y]).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), L.Dense(2, activation="relu", name="d1"),
                              L.Dense(40, activation="relu", name="wide"),
                              L.Dense(3, activation="softmax", name="head")])
    before = _weights(model, "wide")[0]
    report = hybridize(model, (x, y), cutoff=1, initialize_above=True, verbose=0)
    assert report.cutoff == 1 and report.initialized == [] and report.head is None
    np.testing.assert_array_equal(before, _weights(model, "wide")[0])
    assert model.get_layer("wide").trainable and not model.get_layer("d1").trainable


def test_auto_cutoff_with_the_start_above():
    x, y = _images()
    model = _convnet()
    report = hybridize(model, (x, y), initialize_above=True, verbose=0)
    assert report.cutoff_mode == "auto"
    # every solvable layer is solved; the decision's cutoff says which are frozen
    assert len(report.layers) == 2 and report.initialized == ["c1", "c2"][report.cutoff:]
    assert [model.get_layer(n).trainable for n in ("c1", "c2")] == [
        j >= report.cutoff for j in range(2)]


def test_bad_initialize_above_is_refused():
    x, y = _images(n=60)
    with pytest.raises(TypeError, match="`initialize_above` must be True or False"):
        hybridize(_convnet(), (x, y), cutoff=1, initialize_above="yes", verbose=0)
    with pytest.raises(ValueError, match="cannot be combined with `solved_activation`"):
        hybridize(_convnet(), (x, y), cutoff=1, initialize_above=True,
                  solved_activation="linear", verbose=0)


def test_the_head_above_layers_that_train_is_not_sharpened():
    x, y = _images()
    frozen = _convnet()
    sharp = hybridize(frozen, (x, y), cutoff=2, verbose=0).head
    started = _convnet()
    plain = hybridize(started, (x, y), cutoff=1, initialize_above=True, verbose=0).head
    # a fully frozen prefix gets the temperature of least leave-one-out cross-entropy;
    # above layers that train the start stays the ridge classifier (temperature 1),
    # which classifies as well but less confidently
    assert sharp["temperature"] > 1.0 and plain["temperature"] == 1.0
    confidence = {}
    for name, model in (("sharp", frozen), ("plain", started)):
        p = model.predict(x, verbose=0)
        assert np.mean(np.argmax(p, axis=1) == y) > 0.9
        confidence[name] = np.mean(np.max(p, axis=1))
    assert confidence["plain"] < confidence["sharp"] - 0.1


def _pre_activation(model, name, x):
    """The outputs of layer `name` before its activation."""
    layer = model.get_layer(name)
    inputs = keras.Model(model.inputs, layer.input).predict(x, verbose=0)
    return keras.ops.convert_to_numpy(layer.convolution_op(inputs, layer.kernel) + layer.bias)


def test_a_started_layer_has_its_initializers_output_scale():
    # Whitened class-PCA filters give every unit a deviation of 1, whatever the scale
    # the user's initializer (and learning rate) expect; a start keeps that scale.
    x, y = _images()
    for scale in (0.05, 1.0):
        model = _convnet(seed=3, c2_initializer=keras.initializers.RandomNormal(stddev=scale))
        hybridize(model, (x, y), cutoff=1, initialize_above=True, samples=None, verbose=0)
        inputs = keras.Model(model.inputs, model.get_layer("c2").input).predict(x, verbose=0)
        patches = np.stack([inputs[:, i:i + 3, j:j + 3, :].reshape(len(x), -1)
                            for i in range(4) for j in range(4)])
        expected = scale * np.sqrt(np.mean(np.sum(patches.astype(np.float64) ** 2, axis=-1)))
        outputs = _pre_activation(model, "c2", x)
        deviations = outputs.reshape(-1, 8).std(axis=0)
        np.testing.assert_allclose(deviations, expected, rtol=0.05)


def test_a_cached_plain_solve_is_not_served_as_a_start():
    x, y = _images()
    cache = SolveCache()
    plain = _convnet()
    hybridize(plain, (x, y), cutoff=2, solve_cache=cache, verbose=0)
    started = _convnet()
    hybridize(started, (x, y), cutoff=1, initialize_above=True, solve_cache=cache, verbose=0)
    assert cache.hits == 1  # the frozen layer; the start above is solved anew
    assert not np.allclose(_weights(plain, "c2")[0], _weights(started, "c2")[0])
    again = _convnet()
    hybridize(again, (x, y), cutoff=1, initialize_above=True, solve_cache=cache, verbose=0)
    assert cache.hits == 3
    np.testing.assert_array_equal(_weights(started, "c2")[0], _weights(again, "c2")[0])


def test_a_start_at_another_initializers_scale_is_solved_anew():
    # Plain keys leave initializers out (they cannot change a solve); a start's scale
    # is its initializer's, so its key holds it.
    x, y = _images()
    cache = SolveCache()
    deviations = []
    for stddev in (0.05, 0.5):
        model = _convnet(c2_initializer=keras.initializers.RandomNormal(stddev=stddev))
        hybridize(model, (x, y), cutoff=1, initialize_above=True, solve_cache=cache,
                  verbose=0)
        deviations.append(_pre_activation(model, "c2", x).std())
    assert cache.hits == 1  # c1 only
    np.testing.assert_allclose(deviations[1] / deviations[0], 10.0, rtol=0.05)
