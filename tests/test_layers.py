"""`ClassPCADense` / `ClassPCAConv2D`: adapt over every input type, equality with
`ClassPCA` on the layer's own inputs, scaling, saving, configs and bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ArrayPyDataset

from keras_classpca import ClassPCA, ClassPCAConv2D, ClassPCADense, ClassPCAInitializer
from keras_classpca.core.patches import extract_patches


def _np(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _images(n=48, hw=(8, 8), channels=1, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n,) + hw + (channels,))
    x[y == 1, : hw[0] // 2] += 1.5
    x[y == 2, :, : hw[1] // 2] -= 1.0
    return x.astype("float32"), y.astype("int64")


# ---------------------------------------------------------------- equality with ClassPCA
def test_dense_adapt_equals_class_pca(blobs, dense_reference):
    x, y = blobs
    layer = ClassPCADense(6, activation="relu")
    assert not layer.is_adapted
    layer.adapt((x, y), batch_size=50)
    # 8 features, 6 units, >= 80 rows: the Dense rule adds Fisher directions, sign pairs
    reference = dense_reference(6, x, y)
    assert reference.sign_pairs and layer.sign_pairs is None  # the rule decided
    # Without a rectifier a direction's negative is a copy: Fisher directions, no pairs.
    linear = ClassPCADense(6)
    linear.adapt((x, y), batch_size=50)
    linear_reference = dense_reference(6, x, y, rectified=False)
    assert not linear_reference.sign_pairs and linear_reference.discriminant == "auto"
    np.testing.assert_allclose(_np(linear.kernel), linear_reference.kernel_, rtol=1e-5,
                               atol=1e-6)
    assert np.linalg.matrix_rank(_np(linear.kernel), tol=1e-4) == 6  # no column repeats
    # batches of 50 against one pass: the same sums up to float32 round-off
    np.testing.assert_allclose(_np(layer.kernel), reference.kernel_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(layer.bias), reference.bias_, rtol=1e-5, atol=1e-6)
    assert layer.is_adapted and not layer.trainable
    np.testing.assert_allclose(_np(layer(x)), np.maximum(reference.transform(x), 0.0),
                               rtol=1e-5, atol=1e-5)
    plain = ClassPCADense(6, sign_pairs=False)  # an explicit option: no rule
    plain.adapt((x, y), batch_size=50)
    reference = ClassPCA(6, sign_pairs=False).fit(x, y, batch_size=50)
    np.testing.assert_array_equal(_np(plain.kernel), reference.kernel_.astype("float32"))


def test_dense_on_sequence_input_uses_every_position():
    # A Dense on (batch, steps, features) sees every step as a row, labelled by sample.
    rng = np.random.default_rng(5)
    y = np.arange(60) % 3
    x = (rng.normal(size=(60, 4, 5)) + y[:, None, None] * np.eye(5)[None, :4]).astype("float32")
    layer = ClassPCADense(6, n_classes=3)
    layer.adapt((x, y))
    reference = ClassPCA(6, n_classes=3).fit(x.reshape(-1, 5), np.repeat(y, 4))
    np.testing.assert_array_equal(_np(layer.kernel), reference.kernel_.astype("float32"))
    np.testing.assert_allclose(
        _np(layer(x)), reference.transform(x.reshape(-1, 5)).reshape(60, 4, 6), rtol=1e-5, atol=1e-5
    )


def test_conv_adapt_equals_class_pca_on_patches():
    x, y = _images(channels=2)
    layer = ClassPCAConv2D(6, 3, padding="same", strides=2, activation="relu")
    layer.adapt((x, y), batch_size=16)
    patches = extract_patches(x, 3, 2, "same")
    reference = ClassPCA(6).fit(patches.reshape(-1, 18), np.repeat(y, 16))
    np.testing.assert_allclose(
        _np(layer.kernel).reshape(18, 6), reference.kernel_, rtol=1e-5, atol=1e-6
    )
    expected = np.maximum(reference.transform(patches.reshape(-1, 18)), 0).reshape(48, 4, 4, 6)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-4)


def _opposite_pairs(kernel):
    unit = kernel / np.linalg.norm(kernel, axis=0)
    return int(np.sum(np.triu(unit.T @ unit < -0.999)))


def test_spare_sign_pairs_reach_the_conv_layer_the_initializer_and_hybridize():
    """16 filters over 3x3x1 patches (d = 9) with `sign_pairs="spare"`: the 7 filters
    beyond the features are negatives of the leading directions, from every entry
    point. It is the default of a convolution a rectifier reads directly; plain
    class-PCA without one, with BatchNormalization between, or with sign_pairs=False."""
    from keras_classpca import hybridize

    x, y = _images()
    patches = extract_patches(x, 3, 1, "valid").reshape(-1, 9)
    spare = ClassPCA(16, sign_pairs="spare").fit(patches, np.repeat(y, 36)).kernel_
    assert _opposite_pairs(spare) == 7
    layer = ClassPCAConv2D(16, 3, sign_pairs="spare")
    layer.adapt((x, y))
    np.testing.assert_allclose(_np(layer.kernel).reshape(9, 16), spare, rtol=1e-5, atol=1e-6)
    assert ClassPCAConv2D.from_config(layer.get_config()).sign_pairs == "spare"
    initializer = ClassPCAInitializer.from_data(x, y, kernel_size=3, sign_pairs="spare")
    np.testing.assert_allclose(_np(initializer((3, 3, 1, 16))).reshape(9, 16), spare,
                               rtol=1e-5, atol=1e-6)

    def solved(**options):
        inputs = keras.Input((8, 8, 1))
        hidden = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(hidden)))
        hybridize(model, (x, y), cutoff=1, samples=None, verbose=0, **options)
        return _np(model.layers[1].kernel).reshape(9, 16)

    np.testing.assert_allclose(solved(sign_pairs="spare"), spare, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solved(), spare, rtol=1e-5, atol=1e-6)  # the default
    assert _opposite_pairs(solved(sign_pairs=False)) == 0

    def solved_through(*after):
        inputs = keras.Input((8, 8, 1))
        hidden = keras.layers.Conv2D(16, 3)(inputs)
        for layer in after:
            hidden = layer(hidden)
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(hidden)))
        report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
        return _np(model.layers[1].kernel).reshape(9, 16), report

    kernel, report = solved_through(keras.layers.ReLU(6.0))  # a ReLU layer reads it
    np.testing.assert_allclose(kernel, spare, rtol=1e-5, atol=1e-6)
    assert report.layers[0].spare_filters == 7 and "+ 7 spare filters" in str(report)
    for after in ((), (keras.layers.BatchNormalization(), keras.layers.ReLU())):
        kernel, report = solved_through(*after)
        assert _opposite_pairs(kernel) == 0 and report.layers[0].spare_filters == 0
    relu_layer = ClassPCAConv2D(16, 3, activation="relu")
    relu_layer.adapt((x, y))
    np.testing.assert_allclose(_np(relu_layer.kernel).reshape(9, 16), spare, rtol=1e-5,
                               atol=1e-6)
    assert relu_layer.sign_pairs is None  # decided by the rule, as ClassPCADense's
    plain_layer = ClassPCAConv2D(16, 3)
    plain_layer.adapt((x, y))
    assert _opposite_pairs(_np(plain_layer.kernel).reshape(9, 16)) == 0
    relu_init = ClassPCAInitializer.from_data(x, y, kernel_size=3, activation="relu")
    np.testing.assert_allclose(_np(relu_init((3, 3, 1, 16))).reshape(9, 16), spare,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`sign_pairs` must be True, False or 'spare'"):
        ClassPCAConv2D(16, 3, sign_pairs="half")


def test_layer_inside_a_model_adapts_on_its_actual_inputs():
    # The second solved layer is adapted on the first one's outputs, as in the recipe.
    x, y = _images()
    conv = ClassPCAConv2D(6, 3)
    conv.adapt((x, y))
    features = _np(keras.layers.Flatten()(conv(x)))
    dense = ClassPCADense(6)
    dense.adapt((features, y))
    reference = ClassPCA(6).fit(features, y)
    np.testing.assert_array_equal(_np(dense.kernel), reference.kernel_.astype("float32"))


# ---------------------------------------------------------------- input types
def _sources(x, y, batch):
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    return {
        "numpy": (x, y),
        "tensors": (tf.constant(x), tf.constant(y)),
        "one-hot": (x, np.eye(3, dtype="float32")[y]),
        "dataset-batched": tf.data.Dataset.from_tensor_slices((x, y)).batch(batch),
        "dataset-unbatched": tf.data.Dataset.from_tensor_slices((x, y)),
        "dataset-one-hot": tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y])).batch(batch),
        "dataset-unbatched-one-hot": tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y])),
        "pydataset": ArrayPyDataset(x, y, batch),
        "generator": (b for b in batches),
        "list": batches,
    }


@pytest.mark.parametrize("source", list(_sources(np.zeros((3, 1)), np.zeros(3, int), 1)))
@pytest.mark.parametrize("layer_type", ["dense", "conv"])
def test_adapt_input_types_give_equal_weights(source, layer_type, blobs):
    if layer_type == "dense":
        x, y = blobs
        make = lambda: ClassPCADense(6)  # noqa: E731
    else:
        x, y = _images()
        make = lambda: ClassPCAConv2D(6, 3)  # noqa: E731
    reference = make()
    reference.adapt((x, y), batch_size=32)
    layer = make()
    layer.adapt(_sources(x, y, 32)[source], batch_size=32)
    assert layer.is_adapted
    np.testing.assert_array_equal(
        layer.class_pca_.n_samples_seen_, reference.class_pca_.n_samples_seen_
    )
    np.testing.assert_array_equal(_np(layer.kernel), _np(reference.kernel))
    np.testing.assert_array_equal(_np(layer.bias), _np(reference.bias))


@pytest.fixture(scope="module")
def mock_mnist():
    """The real TFDS `mnist` pipeline on mock examples (no download, works offline)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        yield tfds


def test_adapt_on_tfds_mnist(mock_mnist):
    ds = mock_mnist.load("mnist", split="train", as_supervised=True)
    assert ds.element_spec[0].shape == (28, 28, 1) and ds.element_spec[1].shape == ()
    images, labels = (np.stack(a) for a in zip(*ds.as_numpy_iterator()))
    assert images.dtype == np.uint8 and len(images) == 40

    from_tfds = ClassPCAConv2D(10, 3, patches_per_image=50)
    from_tfds.adapt(ds, batch_size=16)
    batched = ClassPCAConv2D(10, 3, patches_per_image=50)
    batched.adapt(ds.batch(16))
    from_numpy = ClassPCAConv2D(10, 3, patches_per_image=50)
    from_numpy.adapt((images, labels), batch_size=16)
    assert from_tfds.is_adapted
    np.testing.assert_array_equal(
        from_tfds.class_pca_.n_samples_seen_, np.bincount(labels)[np.unique(labels)] * 50
    )
    one_hot = ClassPCAConv2D(10, 3, patches_per_image=50)
    one_hot.adapt(ds.map(lambda image, label: (image, tf.one_hot(label, 10))), batch_size=16)
    for other in (batched, from_numpy, one_hot):
        np.testing.assert_array_equal(_np(from_tfds.kernel), _np(other.kernel))
    # steps on an unbatched TFDS split counts batches of `batch_size`.
    two = ClassPCAConv2D(10, 3, patches_per_image=50)
    two.adapt(ds, batch_size=16, steps=2)
    assert two.class_pca_.n_samples_seen_.sum() == 32 * 50


def test_steps_and_batch_size_honoured(blobs):
    x, y = blobs
    limited = ClassPCADense(6)
    limited.adapt((x, y), batch_size=30, steps=3)
    np.testing.assert_array_equal(limited.class_pca_.n_samples_seen_, np.bincount(y[:90]))
    first_90 = ClassPCADense(6)
    first_90.adapt((x[:90], y[:90]), batch_size=30)
    np.testing.assert_array_equal(_np(limited.kernel), _np(first_90.kernel))

    pulled = []

    def generator():
        for i in range(0, len(x), 40):
            pulled.append(i)
            yield x[i : i + 40], y[i : i + 40]

    from_generator = ClassPCADense(6)
    from_generator.adapt(generator(), steps=2)
    assert pulled == [0, 40]
    assert from_generator.class_pca_.n_samples_seen_.sum() == 80


# ---------------------------------------------------------------- scaling
@pytest.mark.parametrize("layer_type", ["dense", "conv"])
def test_standardize_outputs_zero_mean_unit_variance(blobs, layer_type):
    if layer_type == "dense":
        x, y = blobs
        layer = ClassPCADense(6)
    else:
        x, y = _images(channels=2)
        layer = ClassPCAConv2D(6, 3)
    layer.adapt((x, y))
    out = _np(layer(x)).reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-4)


@pytest.mark.parametrize("layer_type", ["dense", "conv"])
def test_unit_scaling_orthonormal_within_each_class_block(blobs, layer_type):
    if layer_type == "dense":
        x, y = blobs
        layer = ClassPCADense(6, scaling="unit", offset="zero", sign_pairs=False)
    else:
        x, y = _images(channels=2)
        layer = ClassPCAConv2D(6, 3, scaling="unit", offset="zero")
    layer.adapt((x, y))
    kernel = _np(layer.kernel).reshape(-1, 6).astype(np.float64)
    classes = layer.class_pca_.component_classes_
    for label in range(3):
        block = kernel[:, classes == label]
        assert block.shape[1] == 2
        np.testing.assert_allclose(block.T @ block, np.eye(2), atol=1e-6)
    np.testing.assert_array_equal(_np(layer.bias), np.zeros(6))


def test_readapt_replaces_weights(blobs, dense_reference):
    x, y = blobs
    layer = ClassPCADense(6)
    layer.adapt((x, y))
    layer.adapt((x[:120], y[:120]))
    reference = dense_reference(6, x[:120], y[:120], rectified=False)
    np.testing.assert_array_equal(_np(layer.kernel), reference.kernel_.astype("float32"))


# ---------------------------------------------------------------- saving and configs
def _solved_model(x, y):
    conv = ClassPCAConv2D(6, 3, n_classes=3, activation="relu", name="pca_conv")
    conv.adapt((x, y))
    features = _np(keras.layers.Flatten()(conv(x)))
    dense = ClassPCADense(6, activation="relu", trainable=True, center=False, name="pca_dense")
    dense.adapt((features, y))
    hidden = _np(dense(features))
    init = ClassPCAInitializer.from_data(hidden, y, n_components=3, scaling="unit")
    head = keras.layers.Dense(
        3, kernel_initializer=init, bias_initializer=init.bias_initializer(), name="head"
    )
    unadapted = ClassPCADense(3, name="unadapted")
    inputs = keras.Input(x.shape[1:])
    flat = keras.layers.Flatten()(conv(inputs))
    hidden = dense(flat)
    outputs = keras.layers.Softmax()(keras.layers.Add()([head(hidden), unadapted(hidden)]))
    return keras.Model(inputs, outputs)


def test_keras_round_trip_and_continue_fit(tmp_path):
    x, y = _images()
    model = _solved_model(x, y)
    before = model.predict(x, verbose=0)
    path = tmp_path / "solved.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True, no custom_objects
    after = loaded.predict(x, verbose=0)
    assert float(np.max(np.abs(after - before))) == 0.0
    for name, adapted, trainable in [
        ("pca_conv", True, False),
        ("pca_dense", True, True),
        ("unadapted", False, False),
    ]:
        layer = loaded.get_layer(name)
        assert type(layer) is type(model.get_layer(name))
        assert layer.is_adapted is adapted and layer.trainable is trainable
        assert layer.get_config() == model.get_layer(name).get_config()
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(_np(a), _np(b))
    assert isinstance(loaded.get_layer("head").kernel_initializer, ClassPCAInitializer)

    # The reloaded model trains: frozen layers stay put, the rest moves.
    conv_kernel = _np(loaded.get_layer("pca_conv").kernel).copy()
    head_kernel = _np(loaded.get_layer("head").kernel).copy()
    loaded.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    history = loaded.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    np.testing.assert_array_equal(_np(loaded.get_layer("pca_conv").kernel), conv_kernel)
    assert not np.array_equal(_np(loaded.get_layer("head").kernel), head_kernel)


@pytest.mark.parametrize(
    "make, data",
    [
        (lambda: ClassPCADense(6, use_bias=False), lambda x: x.reshape(len(x), -1)),
        (
            lambda: ClassPCAConv2D(6, 3, data_format="channels_first", padding="same"),
            lambda x: np.moveaxis(x, -1, 1),
        ),
    ],
    ids=["dense-no-bias", "conv-channels-first"],
)
def test_keras_round_trip_variants(tmp_path, make, data):
    x, y = _images(channels=2)
    x = data(x)
    layer = make()
    layer.adapt((x, y))
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    model.save(tmp_path / "v.keras")
    loaded = keras.saving.load_model(tmp_path / "v.keras")
    assert loaded.layers[0].is_adapted and not loaded.layers[0].trainable
    assert float(np.max(np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0)))) == 0.0


@pytest.mark.parametrize("layer_type", ["dense", "conv"])
def test_layer_config_round_trip(layer_type):
    options = dict(
        n_classes=4,
        center=False,
        allocation="adaptive",
        scaling="whiten",
        offset="zero",
        variance_share=0.9,
        dedup_threshold=None,
        activation="relu",
        trainable=True,
        name="l",
    )
    if layer_type == "dense":
        layer = ClassPCADense(8, **options)
    else:
        layer = ClassPCAConv2D(
            8,
            (3, 2),
            strides=2,
            padding="same",
            patches_per_image=7,
            seed=3,
            data_format="channels_first",
            **options,
        )
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    for name in (
        "n_classes",
        "center",
        "allocation",
        "scaling",
        "offset",
        "variance_share",
        "dedup_threshold",
    ):
        assert getattr(clone, name) == options[name]
    assert clone.trainable is True and not clone.is_adapted
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_classpca>{type(layer).__name__}"
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(layer) and revived.get_config() == config


def test_adapted_flag_survives_weight_file_round_trip(tmp_path, blobs):
    x, y = blobs
    layer = ClassPCADense(6)
    layer.adapt((x, y))
    model = keras.Sequential([keras.Input((8,)), layer])
    model.save_weights(tmp_path / "w.weights.h5")
    twin = keras.Sequential([keras.Input((8,)), ClassPCADense(6)])
    assert not twin.layers[0].is_adapted
    twin.load_weights(tmp_path / "w.weights.h5")
    assert twin.layers[0].is_adapted
    np.testing.assert_array_equal(_np(twin.layers[0].kernel), _np(layer.kernel))


# ---------------------------------------------------------------- bad input changes nothing
def _snapshot(layer):
    return (
        layer.built,
        layer.is_adapted,
        layer.class_pca_,
        None if layer.class_pca_ is None else layer.class_pca_.n_samples_seen_.copy(),
        [_np(w).copy() for w in layer.weights],
    )


def _assert_unchanged(layer, snapshot):
    built, adapted, class_pca, seen, weights = snapshot
    assert layer.built == built  # a failed adapt does not build a fresh layer
    assert layer.is_adapted == adapted
    assert layer.class_pca_ is class_pca
    if seen is not None:
        np.testing.assert_array_equal(layer.class_pca_.n_samples_seen_, seen)
    for before, after in zip(weights, layer.weights):
        np.testing.assert_array_equal(before, _np(after))


@pytest.fixture(params=["fresh", "adapted"])
def dense_layer(request, blobs):
    layer = ClassPCADense(6, n_classes=3, sign_pairs=False)  # plain: 2 filters per class
    if request.param == "adapted":
        layer.adapt(blobs)
    return layer


def _nan_x(x, y):
    x = x.copy()
    x[3, 1] = np.nan
    return x, y


def _inf_in_last_batch(x, y):
    x = x.copy()
    x[-1, 0] = np.inf
    return iter([(x[i : i + 50], y[i : i + 50]) for i in range(0, len(x), 50)])


def _too_few_in_class_1(x, y):
    keep = np.concatenate([np.flatnonzero(y != 1), np.flatnonzero(y == 1)[:2]])
    return x[keep], y[keep]


BAD_DENSE_DATA = {
    "nan": (_nan_x, ValueError, r"`x` contains 1 NaN or infinite"),
    "inf-later-batch": (_inf_in_last_batch, ValueError, r"`x` contains 1 NaN or infinite"),
    "rank-1": (
        lambda x, y: (x[:, 0], y),
        ValueError,
        r"`x` for ClassPCADense .* must be at least 2-D",
    ),
    "length": (lambda x, y: (x, y[:-1]), ValueError, r"`x` and `y` must have the same number"),
    "negative-label": (lambda x, y: (x, y - 1), ValueError, r"`y` holds negative labels"),
    "non-integer-label": (lambda x, y: (x, y + 0.25), ValueError, r"`y` must hold integer"),
    "label-out-of-range": (
        lambda x, y: (x, y * 2),
        ValueError,
        r"`y` holds label 4, out of range for n_classes=3",
    ),
    "string-x": (lambda x, y: (x.astype(str), y), TypeError, r"`x` must be numeric"),
    "empty-arrays": (lambda x, y: (x[:0], y[:0]), ValueError, r"`data` is empty"),
    "empty-generator": (lambda x, y: iter([]), ValueError, r"`data` is empty"),
    "too-few-in-class": (
        _too_few_in_class_1,
        ValueError,
        r"Class 1 has 2 sample\(s\) but must supply 2",
    ),
    # x alone is the label-free mode; an x with no sample is an error
    "label-free-empty": (lambda x, y: x[:0], ValueError, r"`x` must hold at least one sample"),
    "dataset-no-labels": (  # label-free, but the layer was made for 3 classes
        lambda x, y: tf.data.Dataset.from_tensor_slices(x).batch(8),
        ValueError,
        r"inputs alone, which solve the layer label-free .* n_classes=3",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DENSE_DATA))
def test_dense_bad_data_rejected_without_state_change(dense_layer, blobs, case):
    make, error, match = BAD_DENSE_DATA[case]
    snapshot = _snapshot(dense_layer)
    with pytest.raises(error, match=match):
        dense_layer.adapt(make(*blobs))
    _assert_unchanged(dense_layer, snapshot)


def test_dense_wrong_feature_count_rejected(blobs):
    x, y = blobs
    layer = ClassPCADense(6)
    layer.adapt((x, y))
    snapshot = _snapshot(layer)
    with pytest.raises(ValueError, match=r"`x` has 5 features but ClassPCADense .* expects 8"):
        layer.adapt((x[:, :5], y))
    _assert_unchanged(layer, snapshot)


def test_too_many_units_for_the_data_rejected(blobs):
    x, y = blobs
    layer = ClassPCADense(25)
    with pytest.raises(
        ValueError, match=r"n_components=25 exceeds what 3 classes x 8 features can give"
    ):
        layer.adapt((x, y))
    assert not layer.is_adapted


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x, y: (x[..., 0], y), r"`x` for ClassPCAConv2D .* must be 4-D"),
        (
            lambda x, y: (np.concatenate([x, x], axis=-1), y),
            r"`x` has 2 channels but ClassPCAConv2D .* expects 1",
        ),
        (lambda x, y: (x, y[:10]), r"`x` and `y` must have the same number"),
    ],
    ids=["rank", "channels", "length"],
)
def test_conv_bad_input_rejected_without_state_change(bad, match):
    x, y = _images()
    layer = ClassPCAConv2D(6, 3)
    layer.adapt((x, y))
    snapshot = _snapshot(layer)
    with pytest.raises(ValueError, match=match):
        layer.adapt(bad(x, y))
    _assert_unchanged(layer, snapshot)


def test_conv_image_smaller_than_kernel_rejected():
    x, y = _images(hw=(2, 2))
    layer = ClassPCAConv2D(3, 3)
    with pytest.raises(
        ValueError, match=r"Inputs of spatial size \(2, 2\) are smaller than the dilated kernel"
    ):
        layer.adapt((x, y))
    assert not layer.is_adapted and not layer.built


def test_layers_take_their_keras_parents_positional_arguments(blobs):
    # `keras.layers.Dense(6, "relu")` works; ClassPCADense(6, "relu") raised a
    # TypeError, as did the convolutions with strides and padding given in place.
    from keras_classpca import ClassPCADepthwiseConv2D, ClassPCASeparableConv2D

    pairs = [
        (ClassPCADense(6, "relu", False), keras.layers.Dense(6, "relu", False)),
        (ClassPCAConv2D(8, 3, 2, "same"), keras.layers.Conv2D(8, 3, 2, "same")),
        (ClassPCADepthwiseConv2D(3, 1, "same", 2),
         keras.layers.DepthwiseConv2D(3, 1, "same", 2)),
        (ClassPCASeparableConv2D(8, 3, 2, "same"), keras.layers.SeparableConv2D(8, 3, 2, "same")),
    ]
    for ours, keras_layer in pairs:
        config, expected = ours.get_config(), keras_layer.get_config()
        for key in expected:
            if key not in ("name", "trainable"):
                assert config[key] == expected[key], (type(ours).__name__, key)
        assert not ours.trainable  # still frozen by default
    x, y = blobs
    dense = ClassPCADense(4, "relu")
    dense.adapt((x, y))
    assert dense.is_adapted and dense.get_config()["activation"] == "relu"


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ClassPCADense(4, allocation="greedy"), ValueError, "`allocation`"),
        (lambda: ClassPCADense(4, scaling="l2"), ValueError, "`scaling`"),
        (lambda: ClassPCADense(4, offset="mean"), ValueError, "`offset`"),
        (lambda: ClassPCADense(4, center=1), TypeError, "`center`"),
        (lambda: ClassPCADense(4, variance_share=2.0), ValueError, "`variance_share`"),
        (lambda: ClassPCADense(4, n_classes=-1), ValueError, "`n_classes`"),
        (lambda: ClassPCAConv2D(4, 3, dedup_threshold=1.5), ValueError, "`dedup_threshold`"),
        (lambda: ClassPCAConv2D(4, 3, patches_per_image=0), ValueError, "`patches_per_image`"),
        (lambda: ClassPCAConv2D(4, 3, patches_per_image=2.5), ValueError, "`patches_per_image`"),
        # (failed inside adapt, in NumPy's words)
        (lambda: ClassPCAConv2D(4, 3, seed="a"), ValueError, "`seed` must be a non-negative"),
        (lambda: ClassPCAConv2D(4, 3, seed=-1), ValueError, "`seed` must be a non-negative"),
        # grouped convolutions are solved per group; Keras checks the group count
        (lambda: ClassPCAConv2D(4, 3, groups=3), ValueError, "divisible by the number of groups"),
    ],
)
def test_bad_layer_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "kwargs, match", [({"batch_size": 0}, "`batch_size`"), ({"steps": -1}, "`steps`")]
)
def test_bad_adapt_options(blobs, kwargs, match):
    layer = ClassPCADense(6)
    layer.adapt(blobs)
    snapshot = _snapshot(layer)
    with pytest.raises(ValueError, match=match):
        layer.adapt(blobs, **kwargs)
    _assert_unchanged(layer, snapshot)


def test_more_filters_than_patch_values_warns_only_when_asked_directly():
    # 16 filters over 3x3x1 patches (d = 9): the model's shape when a layer is solved
    # (no warning); a warning when ClassPCA itself is asked for 16 of 9 features.
    import warnings

    from keras_classpca.core.class_pca import OvercompleteWarning

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6, 6, 1)).astype("float32")
    y = np.arange(60) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", OvercompleteWarning)
        ClassPCAConv2D(16, 3).adapt((x, y))
        init = ClassPCAInitializer.from_data(x, y, kernel_size=3)
        keras.layers.Conv2D(16, 3, kernel_initializer=init).build((None, 6, 6, 1))
    with pytest.warns(OvercompleteWarning, match="n_components=16 exceeds the 9 input"):
        ClassPCA(16).fit(x[:, :3, :3].reshape(60, 9), y)


@pytest.mark.parametrize("dtype", ["float16", "mixed_float16"])
def test_adapted_weights_beyond_float16_are_refused_and_the_layer_left_as_it_was(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 8)) * 1e-5).astype("float32")
    y = np.arange(600) % 2
    layer = ClassPCADense(8, dtype=dtype, discriminant=0, sign_pairs=False)
    layer.build((None, 8))
    before = [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]
    with pytest.raises(ValueError, match="beyond the largest float16 value 65504"):
        layer.adapt((x, y))
    assert not layer.is_adapted
    for old, new in zip(before, layer.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
