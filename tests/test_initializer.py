"""`ClassPCAInitializer`: values equal `ClassPCA`, Dense and Conv2D, configs, errors."""

import json
import warnings

import keras
import numpy as np
import pytest
from conftest import backend_has_float64

from keras_classpca import ClassPCA, ClassPCAInitializer
from keras_classpca.core.patches import extract_patches


def _np(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _images(n=36, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 7, 7, 2))
    x[y == 1, :3] += 1.0
    return x.astype("float32"), y


def _stats(init):
    pca = init.class_pca
    return pca.n_samples_seen_.copy(), pca.covariance_.copy()


def _assert_stats_unchanged(init, before):
    after = _stats(init)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_dense_kernel_and_bias_equal_class_pca(blobs):
    x, y = blobs
    pca = ClassPCA(center=False, scaling="whiten").fit(x, y)
    init = ClassPCAInitializer(pca)
    layer = keras.layers.Dense(6, kernel_initializer=init, bias_initializer=init.bias_initializer())
    layer.build((None, 8))
    solution = ClassPCA(6, center=False, scaling="whiten").fit(x, y)
    np.testing.assert_array_equal(_np(layer.kernel), solution.kernel_.astype("float32"))
    np.testing.assert_array_equal(_np(layer.bias), solution.bias_.astype("float32"))
    np.testing.assert_allclose(_np(layer(x)), solution.transform(x), rtol=1e-5, atol=1e-5)


def test_direct_call_dtype_and_shape(blobs, dense_reference):
    init = ClassPCAInitializer.from_data(*blobs)
    # The Dense rule applies; no activation given: no sign pairs.
    expected = dense_reference(5, *blobs, rectified=False).kernel_
    # No dtype: floatx, as Keras' own initializers, on every backend.
    value = init((8, 5))
    assert tuple(value.shape) == (8, 5)
    assert keras.backend.standardize_dtype(value.dtype) == keras.config.floatx()
    np.testing.assert_array_equal(_np(value), expected.astype(keras.config.floatx()))
    if backend_has_float64():  # JAX without x64 has no float64 tensors
        value = init((8, 5), dtype="float64")
        assert keras.backend.standardize_dtype(value.dtype) == "float64"
        np.testing.assert_array_equal(_np(value), expected)


def test_from_data_flattens_samples_for_dense():
    x, y = _images()
    init = ClassPCAInitializer.from_data(x, y, batch_size=10)
    # Same batches, same float32 products: bit-identical.
    reference = ClassPCA(6).fit(x.reshape(len(x), -1), y, batch_size=10)
    np.testing.assert_array_equal(_np(init((98, 6))), reference.kernel_.astype("float32"))


@pytest.mark.parametrize(
    "strides, padding, dilation", [(1, "valid", 1), (2, "same", 1), (1, "same", 2)]
)
def test_conv2d_from_data_equals_class_pca_on_patches(strides, padding, dilation):
    x, y = _images()
    init = ClassPCAInitializer.from_data(
        x, y, kernel_size=3, strides=strides, padding=padding, dilation_rate=dilation
    )
    conv = keras.layers.Conv2D(
        6,
        3,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        kernel_initializer=init,
        bias_initializer=init.bias_initializer(),
    )
    out = _np(conv(x))
    patches = extract_patches(x, 3, strides, padding, dilation)
    reference = ClassPCA(6).fit(
        patches.reshape(-1, 18), np.repeat(y, patches.shape[1] * patches.shape[2])
    )
    np.testing.assert_allclose(
        _np(conv.kernel).reshape(18, 6), reference.kernel_, rtol=1e-5, atol=1e-6
    )
    expected = reference.transform(patches.reshape(-1, 18)).reshape(out.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # Standardised and centred outputs over the images' patches.
    np.testing.assert_allclose(out.reshape(-1, 6).mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.reshape(-1, 6).var(axis=0), 1.0, rtol=1e-4)


def test_from_data_accepts_datasets_and_generators():
    import tensorflow as tf

    x, y = _images()
    reference = ClassPCAInitializer.from_data(x, y, kernel_size=3, batch_size=12)
    sources = [
        tf.data.Dataset.from_tensor_slices((x, y)).batch(12),
        ((x[i : i + 12], y[i : i + 12]) for i in range(0, len(x), 12)),
    ]
    for source in sources:
        init = ClassPCAInitializer.from_data(source, kernel_size=3)
        np.testing.assert_array_equal(_np(init((3, 3, 2, 6))), _np(reference((3, 3, 2, 6))))


def test_from_data_accepts_one_hot_and_options(blobs):
    x, y = blobs
    plain = dict(sign_pairs=False)  # no Dense rule
    a = ClassPCAInitializer.from_data(x, np.eye(3)[y], allocation="adaptive", center=False,
                                      **plain)
    b = ClassPCA(allocation="adaptive", center=False, **plain).fit(x, y)
    assert a.class_pca.allocation == "adaptive" and a.class_pca.center is False
    np.testing.assert_array_equal(_np(a((8, 4))), b.solve(4).kernel.astype("float32"))


# ---------------------------------------------------------------- configs and saving
def test_config_round_trip_and_data_free_values(blobs):
    init = ClassPCAInitializer.from_data(*blobs, center=False, scaling="unit", n_classes=3)
    config = init.get_config()
    json.dumps(config)  # JSON-serializable, no arrays
    assert config["part"] == "kernel"
    assert config["class_pca_params"]["center"] is False
    assert config["class_pca_params"]["scaling"] == "unit"
    restored = ClassPCAInitializer.from_config(config)
    assert restored.get_config() == config
    # Rebuilt outside load_model (no weights to come): glorot_uniform, with a warning,
    # never an all-zero dead layer; a zero bias, as usual.
    with pytest.warns(UserWarning, match="no class statistics.*glorot_uniform.*set_weights"):
        kernel = _np(restored((8, 6)))
    assert np.all(kernel != 0) and np.max(np.abs(kernel)) <= np.sqrt(6 / 14)
    np.testing.assert_array_equal(_np(restored.bias_initializer()((6,))), np.zeros(6))
    bias_config = init.bias_initializer().get_config()
    assert bias_config["part"] == "bias"
    assert ClassPCAInitializer.from_config(bias_config).get_config() == bias_config


def test_keras_serialization_uses_registered_name(blobs):
    init = ClassPCAInitializer.from_data(*blobs)
    serialized = keras.initializers.serialize(init)
    assert serialized["registered_name"] == "keras_classpca>ClassPCAInitializer"
    revived = keras.initializers.deserialize(json.loads(json.dumps(serialized)))
    assert isinstance(revived, ClassPCAInitializer)
    assert revived.get_config() == init.get_config()


def test_saved_model_with_initializer_round_trip(tmp_path):
    x, y = _images()
    init = ClassPCAInitializer.from_data(x, y, kernel_size=3)
    model = keras.Sequential(
        [
            keras.Input((7, 7, 2)),
            keras.layers.Conv2D(
                6,
                3,
                kernel_initializer=init,
                bias_initializer=init.bias_initializer(),
                trainable=False,
                name="conv",
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weights come after the rebuild: no warning
        loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert float(np.max(np.abs(loaded.predict(x, verbose=0) - before))) == 0.0
    assert loaded.get_layer("conv").trainable is False
    np.testing.assert_array_equal(
        _np(loaded.get_layer("conv").kernel), _np(model.get_layer("conv").kernel)
    )
    loaded.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loaded.fit(x, y, epochs=1, batch_size=12, verbose=0)
    np.testing.assert_array_equal(
        _np(loaded.get_layer("conv").kernel), _np(model.get_layer("conv").kernel)
    )


def test_clone_model_gives_a_live_layer_with_a_warning(blobs):
    init = ClassPCAInitializer.from_data(*blobs)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(
                6, kernel_initializer=init, bias_initializer=init.bias_initializer()
            ),
            keras.layers.Dense(3),
        ]
    )
    with pytest.warns(UserWarning, match="rebuilt from its config"):
        clone = keras.models.clone_model(model)
    assert np.count_nonzero(_np(clone.layers[0].kernel)) == 6 * 8  # not a dead layer
    clone.set_weights(model.get_weights())  # what the warning advises
    np.testing.assert_array_equal(_np(clone.layers[0].kernel), _np(model.layers[0].kernel))


# ---------------------------------------------------------------- errors change nothing
@pytest.mark.parametrize(
    "shape, match",
    [
        (
            (5, 6),
            r"Kernel shape \(5, 6\) needs statistics over 5 features, but the class-PCA "
            r"statistics have 8",
        ),
        ((3, 3, 2, 6), r"needs statistics over 18 features, but the class-PCA statistics have 8"
                         r".*channels-first images pass `np.moveaxis\(x, 1, -1\)`"),
        ((1, 1, 1, 1, 8, 6), r"handles Dense kernels \(d, units\) and Conv2D kernels"),
        ((8, 2, 6), r"needs statistics over 16 features"),  # a Conv1D kernel shape
        ((8, 25), r"n_components=25 exceeds what 3 classes x 8 features can give"),
    ],
)
def test_incompatible_kernel_shape_rejected(blobs, shape, match):
    init = ClassPCAInitializer.from_data(*blobs)
    before = _stats(init)
    with pytest.raises(ValueError, match=match):
        init(shape)
    _assert_stats_unchanged(init, before)


def test_incompatible_layer_rejected_at_build(blobs):
    init = ClassPCAInitializer.from_data(*blobs)
    layer = keras.layers.Dense(6, kernel_initializer=init)
    with pytest.raises(ValueError, match="needs statistics over 5 features"):
        layer.build((None, 5))


@pytest.mark.parametrize(
    "shape, kind, hint",
    [
        ((5, 6), "Dense", "the layer's input features"),
        ((3, 2, 6), "Conv1D", "kernel_size * channels"),
        ((3, 3, 2, 6), "Conv2D", "kernel_height * kernel_width * channels"),
        ((2, 2, 2, 2, 6), "Conv3D", "kernel_depth * kernel_height * kernel_width * channels"),
    ],
)
def test_kernel_shape_error_hint_matches_the_kernel_rank(blobs, shape, kind, hint):
    init = ClassPCAInitializer.from_data(*blobs)
    with pytest.raises(ValueError) as info:
        init(shape)
    message = str(info.value)
    assert f"(for {kind}: {hint})." in message
    # Only the hint of this kernel's kind, never another layer's.
    others = {"Dense", "Conv1D", "Conv2D", "Conv3D"} - {kind}
    assert not any(f"for {other}:" in message for other in others), message


def test_dense_build_error_does_not_mention_conv2d():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 64)).astype("float32"), np.arange(60) % 3
    init = ClassPCAInitializer.from_data(x, y)
    layer = keras.layers.Dense(8, kernel_initializer=init)
    with pytest.raises(ValueError, match=r"statistics have 64 \(for Dense: the layer's "
                       r"input features\)\.$") as info:
        layer.build((None, 32))
    assert "Conv2D" not in str(info.value)


def test_bias_shape_and_component_count_rejected(blobs):
    x, y = blobs
    init = ClassPCAInitializer(ClassPCA(4).fit(x, y))
    before = _stats(init)
    with pytest.raises(ValueError, match=r"configured for 4 components but the layer asks for 6"):
        init((8, 6))
    with pytest.raises(
        ValueError, match=r"A bias initializer needs a 1-D shape; received \(8, 4\)"
    ):
        init.bias_initializer()((8, 4))
    _assert_stats_unchanged(init, before)


def test_class_with_too_few_samples_rejected_at_call(blobs):
    x, y = blobs
    keep = np.concatenate([np.flatnonzero(y != 1), np.flatnonzero(y == 1)[:2]])
    init = ClassPCAInitializer.from_data(x[keep], y[keep], sign_pairs=False)  # plain
    before = _stats(init)
    with pytest.raises(ValueError, match=r"Class 1 has 2 sample\(s\) but must supply 2"):
        init((8, 6))
    _assert_stats_unchanged(init, before)
    assert tuple(init((8, 3)).shape) == (8, 3)  # one per class is fine


@pytest.mark.parametrize(
    "init",
    [lambda: ClassPCAInitializer(), lambda: ClassPCAInitializer(ClassPCA(6))],
    ids=["no-class-pca", "unfitted-class-pca"],
)
def test_unfitted_initializer_rejected(init):
    initializer = init()
    with pytest.raises(ValueError, match="This ClassPCAInitializer has no statistics"):
        initializer((8, 6))
    with pytest.raises(ValueError, match="This ClassPCAInitializer has no statistics"):
        initializer.bias_initializer()((6,))
    layer = keras.layers.Dense(6, kernel_initializer=initializer)
    with pytest.raises(ValueError, match="has no statistics"):
        layer.build((None, 8))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: ClassPCAInitializer(np.zeros((8, 6))),
            TypeError,
            "`class_pca` must be a fitted ClassPCA",
        ),
        (lambda: ClassPCAInitializer(part="weights"), ValueError, "`part` must be one of"),
        (
            lambda: ClassPCAInitializer.from_data(
                np.zeros((6, 3)), np.arange(6) % 3, allocation="x"
            ),
            ValueError,
            "`allocation`",
        ),
    ],
)
def test_bad_constructor_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _nan(x, y):
    x = x.copy()
    x[0, 0] = np.nan
    return x, y


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (_nan, {}, r"`x` contains 1 NaN or infinite"),
        (lambda x, y: (x, y[:-1]), {}, r"`x` and `y` must have the same number of samples"),
        (lambda x, y: (x, y - 1), {}, r"`y` holds negative labels"),
        (lambda x, y: (x, y / 2), {}, r"`y` must hold integer class labels"),
        (
            lambda x, y: (x, y + 1),
            {"n_classes": 3},
            r"`y` holds label 3, out of range for n_classes=3",
        ),
        (lambda x, y: (x[:0], y[:0]), {}, r"`x` is empty"),
        (lambda x, y: (x, None), {"n_classes": 3}, r"inputs alone, which give the label-free"),
        (lambda x, y: (x, y), {"kernel_size": 3}, r"`x` must be 4-D images"),
    ],
    ids=["nan", "length", "negative", "non-integer", "out-of-range", "empty", "no-labels", "rank"],
)
def test_from_data_bad_input(blobs, data, kwargs, match):
    x, y = data(*blobs)
    with pytest.raises(ValueError, match=match):
        ClassPCAInitializer.from_data(x, y, **kwargs)


def _dense_rule_blobs():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(400, 12)) + np.repeat(np.eye(12)[:4], 100, axis=0)).astype("float32")
    return x, np.repeat(np.arange(4), 100)


@pytest.mark.parametrize("activation", ["relu", None, "tanh"])
def test_dense_initializer_from_data_follows_the_dense_rule(activation):
    # Rows >= 10 x features and units < features: Fisher directions, and sign pairs for
    # a layer a rectifier follows — as ClassPCADense.adapt and hybridize solve it. An
    # initializer does not see its layer: `activation` tells it; without sign pairs a
    # linear or tanh layer keeps a full-rank kernel (pairs would be copies).
    from keras_classpca import ClassPCADense

    x, y = _dense_rule_blobs()
    init = ClassPCAInitializer.from_data(x, y, activation=activation)
    layer = keras.layers.Dense(6, activation=activation, kernel_initializer=init,
                               bias_initializer=init.bias_initializer())
    layer.build((None, 12))
    adapted = ClassPCADense(6, activation=activation)
    adapted.adapt((x, y))
    kernel = np.asarray(layer.kernel)
    np.testing.assert_allclose(kernel, np.asarray(adapted.kernel), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.bias), np.asarray(adapted.bias), rtol=1e-5,
                               atol=1e-6)
    paired = np.allclose(kernel[:, 1::2], -kernel[:, ::2], atol=1e-6)
    assert paired == (activation == "relu")
    assert np.linalg.matrix_rank(kernel, 1e-4) == (3 if activation == "relu" else 6)


@pytest.mark.parametrize("activation", ["linaer", "tahn", 3])
def test_an_activation_keras_does_not_know_is_refused_before_reading(activation):
    # It counted as a rectifier: a misspelt "linear" gave the ReLU layer's sign pairs.
    def batches():
        raise AssertionError("read before the arguments were checked")
        yield

    with pytest.raises(ValueError, match=rf"`activation` must be None, the name of a "
                                         rf"Keras activation .*received {activation!r}"):
        ClassPCAInitializer.from_data(batches, activation=activation)
    x, y = _dense_rule_blobs()  # a callable Keras does not name is the caller's choice
    ClassPCAInitializer.from_data(x, y, activation=lambda v: v * (v > 0))


def test_dense_initializer_explicit_option_turns_the_rule_off():
    x, y = _dense_rule_blobs()
    plain = ClassPCAInitializer.from_data(x, y, sign_pairs=False)
    expected = ClassPCA(6, sign_pairs=False).fit(x, y).kernel_
    np.testing.assert_allclose(np.asarray(plain((12, 6))), expected, rtol=1e-5, atol=1e-6)


def test_the_statistics_geometry_must_match_the_kernel():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(60, 8, 8, 2)).astype("float32")
    y = np.arange(60) % 3
    wide = ClassPCAInitializer.from_data(images[..., :1], y, kernel_size=(3, 5))
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 5\)"):
        wide((5, 3, 1, 4))  # the patch pixels would be scrambled
    flat = ClassPCAInitializer.from_data(images.reshape(60, -1)[:, :18], y)
    with pytest.raises(ValueError, match="flattened samples, for a Dense kernel"):
        flat((3, 3, 2, 4))
    grouped = ClassPCAInitializer.from_data(images, y, kernel_size=3, groups=2)
    with pytest.raises(ValueError, match="does not fit statistics of 2 groups"):
        grouped((3, 3, 2, 6))  # an ungrouped Conv2D(6, 3): not a depthwise kernel
    assert tuple(grouped((3, 3, 1, 6)).shape) == (3, 3, 1, 6)
    with pytest.raises(TypeError, match=r"`x` is an `\(x, y\)` pair and `y` was also given"):
        ClassPCAInitializer.from_data((images, y), y)


def test_a_dense_initializer_decides_the_dense_rule_per_kernel():
    # Reused for Dense(6) then Dense(20): the second gets what a fresh initializer gives.
    rng = np.random.default_rng(1)
    y = np.arange(600) % 3
    x = rng.normal(size=(600, 8)).astype("float32") + 2.0 * y[:, None]
    reused = ClassPCAInitializer.from_data(x, y, activation="relu")
    reused((8, 6))
    fresh = ClassPCAInitializer.from_data(x, y, activation="relu")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reused((8, 20))),
                               keras.ops.convert_to_numpy(fresh((8, 20))), atol=1e-6)


def test_weights_beyond_float16_are_refused_not_made_inf():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 8)) * 1e-5).astype("float32")
    y = np.arange(600) % 2
    initializer = ClassPCAInitializer.from_data(x, y, discriminant=0)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(initializer((8, 8), "float32"))))
    with pytest.raises(ValueError, match="beyond the largest float16 value"):
        initializer((8, 8), "float16")


def test_reprs_say_what_an_initializer_and_the_caches_hold():
    from keras_classpca import SolveCache
    from keras_classpca.hybrid.training import PrefixOutputCache

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6)), np.arange(60) % 3
    fitted = ClassPCAInitializer.from_data(x, y)
    assert repr(fitted) == "ClassPCAInitializer(part='kernel', fitted on 60 rows of 3 classes)"
    assert "part='bias'" in repr(fitted.bias_initializer())
    assert repr(ClassPCAInitializer()) == "ClassPCAInitializer(part='kernel', not fitted)"
    assert repr(SolveCache()) == "SolveCache(in memory, entries=0, hits=0, misses=0)"
    assert repr(PrefixOutputCache(1000)).startswith("PrefixOutputCache(entries=0, nbytes=0")
