"""hybridize on graphs: every solved layer of a residual CNN is the class-PCA of its
actual input, BatchNormalization statistics are those of their actual input, a nested
backbone of depthwise and separable convolutions solves, keras.applications reload
exactly, the solve cache keys on the wiring."""

import keras
import numpy as np
import pytest

from keras_classpca import ClassPCA, SolveCache, hybridize
from keras_classpca.hybrid.planner import plan_model
from keras_classpca.layers.geometry import sample_rows

L = keras.layers


def _np(t):
    return keras.ops.convert_to_numpy(t)


def _images(n=120, hw=12, channels=3, seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n, hw, hw, channels))
    x[..., 0] += y[:, None, None] * 1.0
    x[:, ::2, :, 1] += (y == 1)[:, None, None]  # class 1: horizontal stripes
    return x.astype("float32"), y


def _actual_input(model, layer, x):
    return _np(keras.Model(model.inputs[0], layer.input)(x)).astype(np.float64)


def test_residual_cnn_every_layer_is_class_pca_of_its_actual_input():
    from test_planner import residual_cnn

    model = residual_cnn()
    x, y = _images()
    plan = plan_model(model)
    report = hybridize(model, (x, y), len(plan.steps), batch_size=50, verbose=0,
                       dedup_threshold=None)
    assert [r.name for r in report.layers] == plan.names
    for step in plan.steps:
        layer = step.layer
        h = _actual_input(model, layer, x)
        rows = sample_rows(layer, h)[:, :, 0].reshape(-1, np.prod(layer.kernel.shape[:-1]))
        reference = ClassPCA(layer.filters, dedup_threshold=None).fit(
            rows, np.repeat(y, rows.shape[0] // len(x))
        )
        np.testing.assert_allclose(_np(layer.kernel).reshape(rows.shape[1], -1),
                                   reference.kernel_, rtol=2e-3, atol=2e-4)
    for name in ["stem_bn", "b1_bn1", "b2_proj_bn"]:
        bn = model.get_layer(name)
        h = _actual_input(model, bn, x)
        np.testing.assert_allclose(_np(bn.moving_mean), h.mean(axis=(0, 1, 2)), atol=1e-4)
        np.testing.assert_allclose(_np(bn.moving_variance), h.var(axis=(0, 1, 2)),
                                   rtol=1e-3, atol=1e-4)
    frozen = {l.name for l in model.layers if not l.trainable}
    assert frozen == set(plan.names) | {"stem_bn", "b1_bn1"}  # b2_proj_bn feeds no solved layer
    assert model.get_layer("head").trainable


def test_cutoff_beyond_the_plan_names_the_blocking_layer():
    from test_planner import residual_cnn

    x, y = _images(n=30)
    with pytest.raises(ValueError, match=r"cutoff=7 but only 6 .*Dense 'head' is the model's last"):
        hybridize(residual_cnn(), (x, y), 7, verbose=0)


def _mobile_model(scale=1.0):
    """A nested backbone (Conv2D-BN-ReLU6, depthwise, separable) under a Dense head."""
    inner = keras.Input((12, 12, 3))
    h = L.Conv2D(6, 3, padding="same", name="expand")(inner)
    h = L.BatchNormalization(name="expand_bn")(h)
    h = L.ReLU(6.0)(h)
    h = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(h)
    h = L.SeparableConv2D(8, 3, strides=2, name="sep")(h)
    backbone = keras.Model(inner, h, name="mobile")
    inputs = keras.Input((12, 12, 3))
    x_ = backbone(L.Rescaling(scale)(inputs) if scale != 1.0 else inputs)
    x_ = L.GlobalAveragePooling2D()(x_)
    x_ = L.Dense(6, name="fc")(x_)
    return keras.Model(inputs, L.Dense(3, name="out")(x_))


def test_nested_mobile_backbone_with_depthwise_and_separable_layers():
    model = _mobile_model(scale=0.5)
    backbone = model.get_layer("mobile")
    x, y = _images()
    records = hybridize(model, (x, y), 4, batch_size=64, verbose=0).layers
    assert [(r.name, r.kind) for r in records] == [
        ("expand", "Conv2D"), ("dw", "DepthwiseConv2D"), ("sep", "SeparableConv2D"),
        ("fc", "Dense")]
    assert records[0].adapted_batchnorms == ["expand_bn"]
    # standardize + centred bias: each solved layer's output has mean 0, variance 1
    for name in ["expand", "dw", "sep"]:
        layer = backbone.get_layer(name)
        out = _np(keras.Model(backbone.inputs[0], layer.output)(x * 0.5))
        out = out.reshape(-1, out.shape[-1]).astype(np.float64)
        np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=2e-3)
        np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=2e-3)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() == "jax",
                    reason="keras.applications construction takes 20-40 s per model under JAX")
def test_mobilenet_v2_cutoff_8_solves_and_reloads_exactly(tmp_path):
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    # 10 classes: a 1x1 expansion (16 -> 96 filters) needs n_classes * 16 >= 96 components
    x, y = _images(n=40, hw=32, n_classes=10)
    records = hybridize(model, (x, y), 8, batch_size=40, patches_per_image=64, verbose=0).layers
    assert len(records) == 8
    assert {"DepthwiseConv2D", "Conv2D"} <= {r.kind for r in records}
    before = _np(model.predict(x, verbose=0))
    assert np.isfinite(before).all()
    model.save(tmp_path / "m.keras")
    after = _np(keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0))
    assert np.max(np.abs(after - before)) == 0.0


def test_hybridize_residual_cnn_with_the_solve_cache_keys_on_the_wiring():
    from test_planner import residual_cnn

    x, y = _images(n=90)
    cache = SolveCache()
    first = residual_cnn()
    report = hybridize(first, (x, y), cutoff=4, verbose=0, solve_cache=cache)
    assert report.cutoff == 4 and cache.misses == 4
    assert report.frozen == ["stem", "stem_bn", "b1_c1", "b1_bn1", "b1_c2", "b2_c1"]
    second = residual_cnn()  # same architecture, other layer objects: every step a hit
    hybridize(second, (x, y), cutoff=4, verbose=0, solve_cache=cache)
    assert cache.hits == 4
    for name in report.frozen:
        for a, b in zip(first.get_layer(name).weights, second.get_layer(name).weights):
            np.testing.assert_array_equal(_np(a), _np(b))
    # Same layers, wired differently (block 1 without its shortcut): no stale hit
    # beyond the steps whose sub-graph is unchanged.
    inputs = keras.Input((12, 12, 3))
    h = L.ReLU()(L.BatchNormalization(name="stem_bn")(
        L.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    z = L.ReLU()(L.BatchNormalization(name="b1_bn1")(
        L.Conv2D(8, 3, padding="same", name="b1_c1")(h)))
    z = L.ReLU()(L.Conv2D(8, 3, padding="same", name="b1_c2")(z))
    z = L.Conv2D(16, 3, strides=2, padding="same", name="b2_c1")(z)
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(z))
    plain = keras.Model(inputs, outputs)
    hits = cache.hits
    hybridize(plain, (x, y), cutoff=4, verbose=0, solve_cache=cache)
    assert cache.hits - hits < 4


def test_statistics_on_the_device_solve_as_on_the_host():
    x, y = _images()
    solved = {}
    for where in ("host", "device"):
        keras.utils.set_random_seed(0)
        model = _mobile_model()
        report = hybridize(model, (x, y), 4, batch_size=48, patches_per_image=20, verbose=0,
                           statistics_on=where)
        solved[where] = ([(r.name, r.samples, r.rows) for r in report.layers],
                         [w for layer in model.layers for w in layer.get_weights()])
    assert solved["device"][0] == solved["host"][0]
    for device, host in zip(solved["device"][1], solved["host"][1]):
        np.testing.assert_allclose(device, host, rtol=1e-3, atol=1e-3)


def test_statistics_on_is_checked_and_auto_follows_the_accelerators():
    from keras_classpca.hybrid.solver import statistics_on_device

    x, y = _images(n=30)
    with pytest.raises(ValueError, match="`statistics_on` must be one of"):
        hybridize(_mobile_model(), (x, y), 1, verbose=0, statistics_on="gpu")
    assert statistics_on_device("host") is False and statistics_on_device("device") is True
    if keras.backend.backend() == "torch":
        import torch

        accelerated = torch.cuda.is_available()
    else:
        accelerated = any(not d.startswith("cpu") for d in keras.distribution.list_devices())
    assert statistics_on_device("auto") is accelerated
