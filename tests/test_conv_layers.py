"""The adapt-able convolution layers beyond Conv2D: ClassPCAConv1D/3D, depthwise and
separable (1-D and 2-D), grouped ClassPCAConv2D: adapt equals the layer-geometry solve
of the plain Keras layer, outputs are standardised, `.keras` round trips are exact."""

import keras
import numpy as np
import pytest

import keras_classpca
from keras_classpca import (
    ClassPCAConv1D,
    ClassPCAConv2D,
    ClassPCAConv3D,
    ClassPCADepthwiseConv1D,
    ClassPCADepthwiseConv2D,
    ClassPCASeparableConv1D,
    ClassPCASeparableConv2D,
)
from keras_classpca.layers.geometry import LayerStatistics

L = keras.layers

CASES = {
    "conv1d": (lambda: ClassPCAConv1D(6, 3, padding="causal", dilation_rate=2),
               lambda: L.Conv1D(6, 3, padding="causal", dilation_rate=2), (12, 3)),
    "conv1d_groups": (lambda: ClassPCAConv1D(6, 3, groups=3, strides=2),
                      lambda: L.Conv1D(6, 3, groups=3, strides=2), (12, 3)),
    "conv2d_groups": (lambda: ClassPCAConv2D(4, 3, groups=2, padding="same"),
                      lambda: L.Conv2D(4, 3, groups=2, padding="same"), (6, 6, 4)),
    "conv3d": (lambda: ClassPCAConv3D(4, 2, strides=(1, 2, 2)),
               lambda: L.Conv3D(4, 2, strides=(1, 2, 2)), (4, 5, 5, 2)),
    "depthwise1d": (lambda: ClassPCADepthwiseConv1D(3, depth_multiplier=2),
                    lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (10, 3)),
    "depthwise2d": (lambda: ClassPCADepthwiseConv2D(3, padding="same"),
                    lambda: L.DepthwiseConv2D(3, padding="same"), (6, 6, 3)),
    "separable1d": (lambda: ClassPCASeparableConv1D(4, 3, depth_multiplier=2),
                    lambda: L.SeparableConv1D(4, 3, depth_multiplier=2), (10, 2)),
    "separable2d": (lambda: ClassPCASeparableConv2D(5, 3, strides=2),
                    lambda: L.SeparableConv2D(5, 3, strides=2), (8, 8, 3)),
}


def _np(t):
    return keras.ops.convert_to_numpy(t)


def _data(shape, n=48, n_classes=3, seed=5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n,) + shape)
    x[..., 0] += 1.5 * y.reshape((n,) + (1,) * (len(shape) - 1))
    return x.astype("float32"), y


@pytest.mark.parametrize("kind", sorted(CASES))
def test_adapt_equals_geometry_solve_and_round_trips(kind, tmp_path):
    make, make_plain, shape = CASES[kind]
    x, y = _data(shape)
    layer = make()
    assert not layer.trainable and not layer.is_adapted
    layer.adapt((x, y), batch_size=16)
    assert layer.is_adapted

    # The same solve on the plain Keras layer, through the shared geometry.
    plain = make_plain()
    statistics = LayerStatistics(plain)
    while True:
        statistics.update(x, y)
        if not statistics.end_pass():
            break
    plain.build(x.shape)
    statistics.assign()
    ours = {w.name: _np(w) for w in layer.weights if w.name != "adapted"}
    theirs = {w.name: _np(w) for w in plain.weights}
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        # float32 data: products in float32 (ClassPCA), batch order changes the last bits
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=2e-5)

    # standardize + centred bias: every output has zero mean and unit variance.
    out = _np(layer(x)).reshape(-1, _np(layer(x)).shape[-1]).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-3)

    # `.keras` round trip: no custom_objects, same predictions bit for bit.
    model = keras.Sequential([keras.Input(shape), layer])
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[0]) is type(layer)
    assert loaded.layers[0].is_adapted and not loaded.layers[0].trainable
    assert loaded.layers[0].get_config() == layer.get_config()
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))


def test_depthwise_components_belong_to_their_channel():
    """Channel c's filters are solved from channel c alone: changing channel 1 leaves
    channel 0's filters and bias bit-identical, and changes channel 1's."""
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    # channel 0: a class-specific pattern with a random amplitude (class covariance)
    patterns = np.stack([np.ones(12), (-1.0) ** np.arange(12), np.linspace(-1, 1, 12)])
    channel0 = rng.normal(size=(90, 1)) * 2 * patterns[y] + 0.1 * rng.normal(size=(90, 12))
    x = np.stack([channel0, rng.normal(size=(90, 12))], -1).astype("float32")
    other = x.copy()
    other[..., 1] = rng.normal(size=(90, 12)) * 3
    first, second = ClassPCADepthwiseConv1D(3), ClassPCADepthwiseConv1D(3)
    first.adapt((x, y))
    second.adapt((other, y))
    k1, k2 = _np(first.kernel), _np(second.kernel)  # (3, 2, 1)
    np.testing.assert_array_equal(k1[:, 0], k2[:, 0])
    np.testing.assert_array_equal(_np(first.bias)[0], _np(second.bias)[0])
    assert not np.allclose(k1[:, 1], k2[:, 1])
    # channel 0's filter is one of the class patterns (up to sign and scale)
    unit = k1[:, 0, 0] / np.linalg.norm(k1[:, 0, 0])
    windows = patterns[:, :3] / np.linalg.norm(patterns[:, :3], axis=1, keepdims=True)
    assert np.max(np.abs(windows @ unit)) > 0.99


def test_separable_adapt_rejects_a_one_shot_generator_before_changing_anything():
    x, y = _data((10, 2))
    layer = ClassPCASeparableConv1D(4, 3)
    batches = ((x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16))
    with pytest.raises(TypeError, match="needs 2 passes over `data`"):
        layer.adapt(batches)
    assert not layer.built and not layer.is_adapted
    # A function returning a fresh generator is read once per pass, like arrays.
    layer.adapt(lambda: ((x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)))
    reference = ClassPCASeparableConv1D(4, 3)
    reference.adapt((x, y), batch_size=16)
    for got, expected in zip(layer.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_new_layers_are_exported():
    for name in ["ClassPCAConv1D", "ClassPCAConv3D", "ClassPCADepthwiseConv1D",
                 "ClassPCADepthwiseConv2D", "ClassPCASeparableConv1D", "ClassPCASeparableConv2D"]:
        assert name in keras_classpca.__all__
        assert keras.saving.get_registered_object(f"keras_classpca>{name}") is getattr(
            keras_classpca, name
        )


# ------------------------------------------------------------------ ClassPCAInitializer
INITIALIZER_CASES = {
    "conv1d_causal": (dict(kernel_size=3, padding="causal"),
                      lambda init: L.Conv1D(6, 3, padding="causal", kernel_initializer=init,
                                            bias_initializer=init.bias_initializer()),
                      lambda: ClassPCAConv1D(6, 3, padding="causal"), (12, 3)),
    "conv3d": (dict(kernel_size=2, strides=(1, 2, 2)),
               lambda init: L.Conv3D(4, 2, strides=(1, 2, 2), kernel_initializer=init,
                                     bias_initializer=init.bias_initializer()),
               lambda: ClassPCAConv3D(4, 2, strides=(1, 2, 2)), (4, 5, 5, 2)),
    "conv1d_groups": (dict(kernel_size=3, groups=3),
                      lambda init: L.Conv1D(6, 3, groups=3, kernel_initializer=init,
                                            bias_initializer=init.bias_initializer()),
                      lambda: ClassPCAConv1D(6, 3, groups=3), (12, 3)),
    "depthwise2d": (dict(kernel_size=3, padding="same", depthwise=True),
                    lambda init: L.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                                   depthwise_initializer=init,
                                                   bias_initializer=init.bias_initializer()),
                    lambda: ClassPCADepthwiseConv2D(3, padding="same", depth_multiplier=2),
                    (6, 6, 3)),
}


@pytest.mark.parametrize("kind", sorted(INITIALIZER_CASES))
def test_initializer_equals_adapt_for_new_kinds(kind):
    from keras_classpca import ClassPCAInitializer

    geometry, make_plain, make_adapted, shape = INITIALIZER_CASES[kind]
    x, y = _data(shape)
    init = ClassPCAInitializer.from_data(x, y, **geometry)
    plain = make_plain(init)
    adapted = make_adapted()
    adapted.adapt((x, y))
    np.testing.assert_allclose(_np(plain(x)), _np(adapted(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", [1, 2])
def test_separable_initializers_equal_adapt(rank):
    from keras_classpca import ClassPCAInitializer

    shape = (10, 2) if rank == 1 else (7, 7, 2)
    x, y = _data(shape)
    inits = ClassPCAInitializer.separable_from_data(x, y, kernel_size=3, depth_multiplier=2)
    kind = L.SeparableConv1D if rank == 1 else L.SeparableConv2D
    plain = kind(4, 3, depth_multiplier=2, **inits)
    adapted = (ClassPCASeparableConv1D if rank == 1 else ClassPCASeparableConv2D)(
        4, 3, depth_multiplier=2
    )
    adapted.adapt((x, y))
    np.testing.assert_allclose(_np(plain(x)), _np(adapted(x)), rtol=1e-4, atol=1e-4)


def test_initializer_rejects_a_kernel_shape_that_does_not_fit_its_groups():
    from keras_classpca import ClassPCAInitializer

    x, y = _data((12, 3))
    init = ClassPCAInitializer.from_data(x, y, kernel_size=3, depthwise=True)
    with pytest.raises(ValueError, match="does not fit statistics of 3 groups over 3 features"):
        init((5, 3, 2))
