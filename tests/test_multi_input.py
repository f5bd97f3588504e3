"""Models with several inputs: `hybridize` packs them into one array to solve.

Each branch's layers must come out exactly as if that branch were a model of its own,
whatever form the data takes (tuple, list or dict of inputs, tf.data, generators).
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_classpca import fit_progressive, hybridize
from keras_classpca.core.data_adapter import is_xy_pair, iter_batches
from keras_classpca.hybrid.inputs import InputPacking

L = keras.layers
N, CLASSES = 360, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(CLASSES), N // CLASSES)
    rng.shuffle(y)
    image = rng.normal(size=(N, 8, 8, 1)).astype("float32")
    image[:, 2:5, 2:5, 0] += y[:, None, None]  # a class-dependent blob
    meta = rng.normal(size=(N, 5)).astype("float32")
    meta[np.arange(N), y] += 2.0
    tokens = rng.integers(0, 8, size=(N, 3)).astype("int32")
    tokens[:, 0] = y  # the first token names the class
    return image, meta, tokens, y


def _image_branch(image_input):
    h = L.Conv2D(4, 3, activation="relu", name="conv")(image_input)
    return L.GlobalAveragePooling2D()(h)


def _meta_branch(meta_input):
    return L.Dense(4, activation="relu", name="meta_dense")(meta_input)


def _two_inputs():
    image, meta = keras.Input((8, 8, 1), name="image"), keras.Input((5,), name="meta")
    merged = L.Concatenate(name="merge")([_image_branch(image), _meta_branch(meta)])
    hidden = L.Dense(8, activation="relu", name="joint")(merged)
    return keras.Model([image, meta], L.Dense(CLASSES, activation="softmax", name="head")(hidden))


def _names(report):
    return [layer.name for layer in report.layers]


def _kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def _alone(branch, shape, name, data, **kwargs):
    """The kernel of layer `name` solved in a model made of `branch` alone."""
    inputs = keras.Input(shape)
    hidden = L.Flatten()(branch(inputs))
    model = keras.Model(inputs, L.Dense(CLASSES, activation="softmax")(hidden))
    hybridize(model, data, cutoff=1, samples=None, verbose=0, **kwargs)
    return _kernel(model, name)


def test_each_branch_is_solved_as_if_it_were_alone_and_the_merge_from_both():
    image, meta, _, y = _data()
    model = _two_inputs()
    report = hybridize(model, ((image, meta), y), cutoff=3, samples=None, verbose=0)
    assert _names(report) == ["conv", "meta_dense", "joint"]
    np.testing.assert_allclose(_kernel(model, "conv"),
                               _alone(_image_branch, (8, 8, 1), "conv", (image, y)), atol=1e-5)
    np.testing.assert_allclose(_kernel(model, "meta_dense"),
                               _alone(_meta_branch, (5,), "meta_dense", (meta, y)), atol=1e-5)
    # The layer after the merge: solved from both branches' solved outputs.
    merged = keras.Model(model.inputs, model.get_layer("merge").output).predict(
        [image, meta], verbose=0)
    joint_alone = _alone(lambda t: L.Dense(8, activation="relu", name="joint")(t),
                         (merged.shape[1],), "joint", (merged, y))
    np.testing.assert_allclose(_kernel(model, "joint"), joint_alone, atol=1e-4)
    assert not any(model.get_layer(name).trainable for name in _names(report))
    assert model.get_layer("head").trainable


def _data_forms(image, meta, y):
    forms = {
        "tuple": ((image, meta), y),
        "list": ([image, meta], y),
        "dict": ({"meta": meta, "image": image}, y),
        "generator": lambda: (((image[i:i + 100], meta[i:i + 100]), y[i:i + 100])
                              for i in range(0, N, 100)),
    }
    if BACKEND == "tensorflow":
        import tensorflow as tf

        forms["tf.data batched"] = tf.data.Dataset.from_tensor_slices(
            ({"image": image, "meta": meta}, y)).batch(64)
        forms["tf.data unbatched"] = tf.data.Dataset.from_tensor_slices(((image, meta), y))
    return forms


def test_every_form_of_multi_input_data_solves_the_same_layers():
    image, meta, _, y = _data()
    reference = _two_inputs()
    hybridize(reference, ((image, meta), y), cutoff=3, samples=None, verbose=0)
    for form, data in _data_forms(image, meta, y).items():
        model = _two_inputs()
        hybridize(model, data, cutoff=3, samples=None, verbose=0)
        for name in ("conv", "meta_dense", "joint"):
            np.testing.assert_allclose(_kernel(model, name), _kernel(reference, name),
                                       atol=1e-4, err_msg=f"{form}: {name}")


def test_integer_inputs_are_packed_and_cast_back_exactly():
    # Token ids ride in the float rows and are cast back to int before the layers:
    # one-hot encodings of them must be what the model computes from the ints.
    _, meta, tokens, y = _data()
    token_input, meta_input = keras.Input((3,), dtype="int32", name="tokens"), keras.Input(
        (5,), name="meta")
    encoded = L.CategoryEncoding(num_tokens=8, output_mode="multi_hot")(token_input)
    hidden = L.Concatenate()([L.Dense(4, name="tok_dense")(encoded), _meta_branch(meta_input)])
    model = keras.Model([token_input, meta_input], L.Dense(CLASSES, activation="softmax")(hidden))
    report = hybridize(model, ((tokens, meta), y), cutoff=2, samples=None, verbose=0)
    assert _names(report) == ["tok_dense", "meta_dense"]
    alone = _alone(lambda t: L.Dense(4, name="tok_dense")(
        L.CategoryEncoding(num_tokens=8, output_mode="multi_hot")(t)), (3,), "tok_dense",
        (tokens, y))
    np.testing.assert_allclose(_kernel(model, "tok_dense"), alone, atol=1e-5)
    with pytest.raises(ValueError, match=r"'tokens' holds integers up to 1677722\d, which a"):
        hybridize(model, ((tokens + 2**24, meta), y), cutoff=1, verbose=0)


def test_auto_cutoff_trains_saves_and_reloads(tmp_path):
    image, meta, _, y = _data()
    model = _two_inputs()
    report = hybridize(model, ({"image": image, "meta": meta}, y), verbose=0)
    assert report.cutoff_mode == "auto" and report.evidence["layers"]
    if report.cutoff == 0:  # the probe's call: make sure something is frozen below
        report = hybridize(model, ((image, meta), y), cutoff=2, verbose=0)
    frozen = {name: _kernel(model, name) for name in _names(report)}
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit((image, meta), y, epochs=1, batch_size=64, verbose=0)
    for name, kernel in frozen.items():
        np.testing.assert_array_equal(_kernel(model, name), kernel)
    path = tmp_path / "two_inputs.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.predict([image, meta], verbose=0),
                                  model.predict([image, meta], verbose=0))


@pytest.mark.parametrize("data, message", [
    (lambda i, m, y: ({"image": i, "metadata": m}, y),
     r"keys \['image', 'metadata'\], but the model's inputs are named \['image', 'meta'\]"),
    (lambda i, m, y: ((i, m, m), y), r"2 inputs \(image, meta\).*received a tuple of 3"),
    (lambda i, m, y: ((i, m[:10]), y), r"holds 10, 'image' 360"),
    (lambda i, m, y: ((i[..., 0], m), y), r"'image' must have shape \(n,\) \+ \(8, 8, 1\)"),
    (lambda i, m, y: (i, y), r"2 inputs \(image, meta\).*received one ndarray"),
    (lambda i, m, y: (i, m), r"received one ndarray of shape \(360, 8, 8, 1\) \(if `data` "
     r"was `\(x_1, x_2\)`, the second array was read as the labels"),
    (lambda i, m, y: i, r"2 inputs \(image, meta\) and `data` is one array without labels"),
])
def test_multi_input_data_that_does_not_fit_is_refused_by_name(data, message):
    image, meta, _, y = _data()
    model = _two_inputs()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=message):
        hybridize(model, data(image, meta, y), cutoff=2, verbose=0)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def _sequence_model(steps=None):
    sequence, meta = keras.Input((steps, 5), name="steps"), keras.Input((5,), name="meta")
    pooled = L.GlobalAveragePooling1D()(L.Dense(3, name="per_step")(sequence))
    merged = L.Concatenate()([pooled, _meta_branch(meta)])
    return keras.Model([sequence, meta], L.Dense(CLASSES, activation="softmax")(merged))


def test_an_input_of_unknown_length_takes_the_length_of_its_data():
    # `Input((None, 5))` fed arrays of 6 steps: packed as 6 steps, solved as if declared so.
    _, meta, _, y = _data()
    steps = np.random.default_rng(1).normal(size=(N, 6, 5)).astype("float32")
    steps[np.arange(N), :, y] += 1.5
    reference = _sequence_model(6)
    hybridize(reference, ((steps, meta), y), cutoff=2, samples=None, verbose=0)
    forms = [((steps, meta), y),
             lambda: (((steps[i:i + 90], meta[i:i + 90]), y[i:i + 90]) for i in range(0, N, 90))]
    for data in forms:
        model = _sequence_model()
        report = hybridize(model, data, cutoff=2, samples=None, verbose=0)
        assert _names(report) == ["per_step", "meta_dense"]
        for name in ("per_step", "meta_dense"):
            np.testing.assert_allclose(_kernel(model, name), _kernel(reference, name),
                                       atol=1e-5)


def test_batches_of_another_length_are_refused_with_the_way_out():
    _, meta, _, y = _data()
    lengths = (6, 6, 7)

    def batches():
        for i, length in enumerate(lengths):
            rows = slice(100 * i, 100 * i + 100)
            yield (np.ones((100, length, 5), "float32"), meta[rows]), y[rows]

    model = _sequence_model()
    with pytest.raises(ValueError, match=r"input 'steps' \(declared \(n,\) \+ \(None, 5\)\) "
                                         r"came with samples of shape \(7, 5\) after \(6, 5\)"
                                         r".*Pad its batches to one length"):
        hybridize(model, batches, cutoff=1, samples=None, verbose=0)


def test_fit_progressive_trains_a_multi_input_model():
    image, meta, _, y = _data()
    model = _two_inputs()
    model.compile("adam", "sparse_categorical_crossentropy")
    history = fit_progressive(model, (image, meta), y, epochs=3, settle=[1, 2], snap=True,
                              batch_size=64, verbose=0)
    assert history.progressive.frozen_at["conv"] == 1
    assert history.progressive.snapped["conv"]
    assert not model.get_layer("conv").trainable


@pytest.mark.backend_independent
def test_the_inputs_of_a_multi_input_model_read_as_one_sample_of_x():
    x1, x2, y = np.zeros((4, 3)), np.ones((4, 2)), np.arange(4)
    assert is_xy_pair(((x1, x2), y)) and is_xy_pair(([x1, x2], y))
    assert is_xy_pair(((x1, x2), [0, 1, 0, 1]))  # labels as a list, as `fit` takes them
    # a list of two (x, y) batches is not a pair
    assert not is_xy_pair([(x1, y), (x1, y)])


def test_packing_round_trips_each_input():
    image = keras.Input((2, 3), name="image")
    ids = keras.Input((4,), dtype="int32", name="ids")
    model = keras.Model([image, ids], L.Concatenate()([L.Flatten()(image),
                                                       keras.ops.cast(ids, "float32")]))
    packing = InputPacking(model)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 2, 3)).astype("float32"), rng.integers(0, 100, (5, 4)))
    rows = packing.pack(x)
    assert rows.shape == (5, 10) and rows.dtype == np.float32
    unpacked = [keras.ops.convert_to_numpy(t) for t in packing.unpack(
        keras.ops.convert_to_tensor(rows))]
    np.testing.assert_array_equal(unpacked[0], x[0])
    np.testing.assert_array_equal(unpacked[1], x[1])
    assert unpacked[1].dtype == np.int32
    batches = list(iter_batches(({"ids": x[1], "image": x[0]}, np.arange(5)), batch_size=2,
                                inputs=packing))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), rows)


@pytest.mark.tensorflow_backend
def test_a_strategy_solves_a_multi_input_model_as_one_process_does():
    import tensorflow as tf

    image, meta, _, y = _data()
    reference = _two_inputs()
    hybridize(reference, ((image, meta), y), cutoff=3, samples=None, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _two_inputs()
    hybridize(model, ((image, meta), y), cutoff=3, samples=None, verbose=0,
              strategy=strategy)
    for name in ("conv", "meta_dense", "joint"):
        np.testing.assert_allclose(_kernel(model, name), _kernel(reference, name), atol=1e-4)


def test_timescale_monitor_measures_the_layers_of_a_multi_input_model():
    from keras_classpca.diagnostics import TimescaleMonitor

    image, meta, _, y = _data()
    for x in ((image, meta), {"meta": meta, "image": image}):
        model = _two_inputs()
        model.compile("adam", "sparse_categorical_crossentropy")
        monitor = TimescaleMonitor((x, y), samples=120, layers=["conv", "meta_dense", "joint"])
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
        assert monitor.history["epochs"] == [0, 1, 2]
        layers = monitor.history["layers"]
        assert layers["conv"]["input_dim"] == 9 and layers["meta_dense"]["input_dim"] == 5
        assert all(0.0 <= value <= 1.0 for value in layers["joint"]["overlap"])
    with pytest.raises(ValueError, match=r"same length"):
        TimescaleMonitor(((image, meta[:10]), y))


def test_a_backbone_nested_in_one_branch_is_solved_and_monitored():
    from keras_classpca.diagnostics import TimescaleMonitor

    image, meta, _, y = _data()
    backbone = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu",
                                                                  name="conv"),
                                 L.GlobalAveragePooling2D()], name="backbone")
    image_input, meta_input = keras.Input((8, 8, 1), name="image"), keras.Input((5,),
                                                                               name="meta")
    merged = L.Concatenate()([backbone(image_input), _meta_branch(meta_input)])
    model = keras.Model([image_input, meta_input],
                        L.Dense(CLASSES, activation="softmax")(merged))
    report = hybridize(model, ((image, meta), y), cutoff=2, samples=None, verbose=0)
    assert _names(report) == ["conv", "meta_dense"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone.get_layer("conv").kernel),
        _alone(_image_branch, (8, 8, 1), "conv", (image, y)), atol=1e-5)
    model.compile("adam", "sparse_categorical_crossentropy")
    monitor = TimescaleMonitor(((image, meta), y), samples=120,
                               layers=[backbone.get_layer("conv"), "meta_dense"])
    model.fit((image, meta), y, epochs=1, batch_size=64, verbose=0, callbacks=[monitor])
    assert monitor.history["layers"]["conv"]["input_dim"] == 9


def _reads(which, shape_b=(5,)):
    """Dense 'd' reads input `which` of two ("a" of shape (5,), "b" of `shape_b`)."""
    a, b = keras.Input((5,), name="a"), keras.Input(shape_b, name="b")
    source, other = (a, b) if which == "a" else (b, a)
    merged = L.Concatenate()([L.Dense(4, activation="relu", name="d")(source),
                              L.Flatten()(other)])
    return keras.Model([a, b], L.Dense(CLASSES, activation="softmax")(merged))


@pytest.mark.parametrize("shape_b", [(5,), (4,)])
def test_the_solve_cache_tells_which_input_a_layer_reads(shape_b):
    from keras_classpca import SolveCache

    rng = np.random.default_rng(0)
    _, _, _, y = _data()
    xa = rng.normal(size=(N, 5)).astype("float32") + np.eye(CLASSES, 5)[y]
    xb = rng.normal(size=(N,) + shape_b).astype("float32") - np.eye(CLASSES, shape_b[0])[y]
    cache = SolveCache()
    hybridize(_reads("a", shape_b), ((xa, xb), y), cutoff=1, samples=None, solve_cache=cache,
              verbose=0)
    model = _reads("b", shape_b)
    hybridize(model, ((xa, xb), y), cutoff=1, samples=None, solve_cache=cache, verbose=0)
    assert (cache.hits, cache.misses) == (0, 2)  # another input: another solve
    fresh = _reads("b", shape_b)
    hybridize(fresh, ((xa, xb), y), cutoff=1, samples=None, verbose=0)
    np.testing.assert_array_equal(_kernel(model, "d"), _kernel(fresh, "d"))
    again = _reads("b", shape_b)  # the same model again: a hit, the same weights
    hybridize(again, ((xa, xb), y), cutoff=1, samples=None, solve_cache=cache, verbose=0)
    assert cache.hits == 1
    np.testing.assert_array_equal(_kernel(again, "d"), _kernel(fresh, "d"))


def test_a_nested_model_with_two_inputs_is_solved_inside():
    image, meta, _, y = _data()
    inner_image, inner_meta = keras.Input((8, 8, 1)), keras.Input((5,))
    inner = keras.Model([inner_image, inner_meta], L.Concatenate()(
        [_image_branch(inner_image), _meta_branch(inner_meta)]), name="towers")
    image_input, meta_input = keras.Input((8, 8, 1), name="image"), keras.Input((5,),
                                                                               name="meta")
    model = keras.Model([image_input, meta_input], L.Dense(CLASSES, activation="softmax")(
        inner([image_input, meta_input])))
    report = hybridize(model, ((image, meta), y), cutoff=2, samples=None, verbose=0)
    assert _names(report) == ["conv", "meta_dense"]
    np.testing.assert_allclose(_kernel(inner, "conv"),
                               _alone(_image_branch, (8, 8, 1), "conv", (image, y)), atol=1e-5)
    np.testing.assert_allclose(_kernel(inner, "meta_dense"),
                               _alone(_meta_branch, (5,), "meta_dense", (meta, y)), atol=1e-5)


def test_a_probe_of_several_inputs_and_labels_of_several_heads():
    from keras_classpca import SettleOnChange

    image, meta, _, y = _data()
    model = _two_inputs()
    model.compile("adam", "sparse_categorical_crossentropy")
    for probe in ([image[:60], meta[:60]], {"image": image[:60], "meta": meta[:60]}):
        settle = SettleOnChange(measure="output", probe=probe, threshold=0.5)
        history = fit_progressive(model, (image, meta), y, epochs=2, settle=settle,
                                  batch_size=64, verbose=0)
        assert all(len(c) >= 1 for c in history.progressive.changes.values())
    with pytest.raises(ValueError, match=r"one label per sample: pass the labels of the head"):
        hybridize(_two_inputs(), ((image, meta), [y, y]), cutoff=1, verbose=0)


@pytest.mark.tensorflow_backend
def test_a_dataset_of_single_samples_with_a_scalar_input_is_batched():
    import tensorflow as tf

    _, meta, _, y = _data()
    age = (y * 10.0 + np.random.default_rng(0).normal(size=N)).astype("float32")
    age_input, meta_input = keras.Input((), name="age"), keras.Input((5,), name="meta")
    merged = L.Concatenate()([L.Reshape((1,))(age_input), _meta_branch(meta_input)])
    model = keras.Model({"age": age_input, "meta": meta_input},
                        L.Dense(CLASSES, activation="softmax")(merged))
    one_hot = np.eye(CLASSES, dtype="float32")[y]
    dataset = tf.data.Dataset.from_tensor_slices(({"age": age, "meta": meta}, one_hot))
    report = hybridize(model, dataset, cutoff=1, samples=None, verbose=0)
    assert report.layers[0].samples == N
    np.testing.assert_allclose(_kernel(model, "meta_dense"),
                               _alone(_meta_branch, (5,), "meta_dense", (meta, y)), atol=1e-5)


def test_the_monitor_packs_nothing_it_does_not_need():
    # Ids too large for a float32 row, on a branch the monitored layer does not read:
    # the plain path reads the inputs as they are.
    from keras_classpca.diagnostics import TimescaleMonitor

    _, meta, _, y = _data()
    ids = np.random.default_rng(0).integers(2**25, 2**31 - 1, size=(N, 1)).astype("int32")
    id_input, meta_input = keras.Input((1,), dtype="int32", name="ids"), keras.Input(
        (5,), name="meta")
    scaled = L.Rescaling(2.0**-31)(id_input)
    merged = L.Concatenate()([scaled, _meta_branch(meta_input)])
    model = keras.Model([id_input, meta_input], L.Dense(CLASSES, activation="softmax")(merged))
    model.compile("adam", "sparse_categorical_crossentropy")
    monitor = TimescaleMonitor(((ids, meta), y), samples=120, layers=["meta_dense"])
    model.fit((ids, meta), y, epochs=1, batch_size=64, verbose=0, callbacks=[monitor])
    assert monitor.history["layers"]["meta_dense"]["input_dim"] == 5
