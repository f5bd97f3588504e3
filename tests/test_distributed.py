"""Class statistics over `tf.distribute` replicas and workers equal one local pass.

Multi-device runs happen in subprocesses: logical CPU devices must be configured before
TensorFlow initialises its devices, which this pytest process has already done (and a
`MultiWorkerMirroredStrategy` needs its own processes anyway). Every subprocess is
bounded in time; a failure to start is a test failure with the workers' output, never a
skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKEND

from keras_classpca import ClassPCA
from keras_classpca.distributed import (
    adapt_with_strategy,
    class_pca_from_statistics,
    class_statistics,
    fit_distributed,
    fit_with_strategy,
    layer_class_pca,
    local_tf_configs,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120
# Float64 round-off only: the distributed sums run in another order than NumPy's.
TIGHT = {"rtol": 1e-10, "atol": 1e-11}


def _data(n=1037, d=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    y = rng.integers(0, k, n)
    return x, y


def _subprocess_env(**extra):
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run_python(code, *args, env=None):
    """Run `code` in a fresh interpreter; return the JSON its last stdout line holds."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env or _subprocess_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, (
        f"subprocess failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-5000:]}"
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- in process
def test_from_statistics_equals_fit():
    x, y = _data()
    ref = ClassPCA(6, n_classes=3).fit(x, y)
    count = np.array([np.sum(y == c) for c in range(3)], dtype=float)
    total = np.stack([x[y == c].sum(axis=0) for c in range(3)])
    outer = np.stack([x[y == c].T @ x[y == c] for c in range(3)])
    pca = class_pca_from_statistics(count, total, outer, 6, n_classes=3)
    np.testing.assert_array_equal(pca.n_samples_seen_, ref.n_samples_seen_)
    np.testing.assert_allclose(pca.components_, ref.components_, **TIGHT)
    np.testing.assert_allclose(pca.kernel_, ref.kernel_, **TIGHT)
    np.testing.assert_allclose(pca.bias_, ref.bias_, **TIGHT)


def test_from_statistics_validates():
    with pytest.raises(ValueError, match="shapes"):
        class_pca_from_statistics(np.ones(2), np.ones((3, 4)), np.ones((3, 4, 4)), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        class_pca_from_statistics(np.ones(1), np.full((1, 2), np.nan), np.ones((1, 2, 2)), 1)
    with pytest.raises(ValueError, match="empty"):
        class_pca_from_statistics(np.zeros(2), np.zeros((2, 3)), np.zeros((2, 3, 3)), 1)
    # A class without samples is left out, as in `fit`; n_classes then makes solve raise.
    pca = class_pca_from_statistics(
        [2, 0], np.ones((2, 3)), np.stack([np.eye(3)] * 2), 1, n_classes=2
    )
    assert pca.statistics_.classes.tolist() == [0]
    with pytest.raises(ValueError, match="no samples"):
        pca.solve()


def test_default_strategy_equals_fit_for_all_input_forms():
    x, y = _data()
    ref = ClassPCA(6, n_classes=3).fit(x, y)
    onehot = np.eye(3)[y]
    forms = {
        "arrays": dict(data=x, y=y, batch_size=100),
        "pair": dict(data=(x, onehot), batch_size=100),
        "batched": dict(data=tf.data.Dataset.from_tensor_slices((x, y)).batch(128)),
        "unbatched": dict(data=tf.data.Dataset.from_tensor_slices((x, y))),
        "weighted": dict(
            data=tf.data.Dataset.from_tensor_slices((x, y[:, None], np.ones(len(y)))).batch(50)
        ),
        "float32": dict(
            data=tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)).batch(64)
        ),
    }
    for name, kwargs in forms.items():
        pca = fit_distributed(n_components=6, n_classes=3, **kwargs)
        np.testing.assert_array_equal(pca.n_samples_seen_, ref.n_samples_seen_, err_msg=name)
        if name == "float32":  # same rows, products in float64 as the TF pass does
            ref32 = ClassPCA(6, n_classes=3, product_dtype="float64").fit(x.astype("float32"), y)
            np.testing.assert_allclose(pca.kernel_, ref32.kernel_, **TIGHT, err_msg=name)
            continue
        np.testing.assert_allclose(pca.components_, ref.components_, **TIGHT, err_msg=name)
        np.testing.assert_allclose(pca.kernel_, ref.kernel_, **TIGHT, err_msg=name)
        np.testing.assert_allclose(pca.bias_, ref.bias_, **TIGHT, err_msg=name)


def test_statistics_errors():
    x, y = _data(n=50)
    with pytest.raises(ValueError, match=r"2 label\(s\) out of range for n_classes=3"):
        class_statistics((x, np.concatenate([y[:-2], [3, -1]])), 3)
    with pytest.raises(ValueError, match="empty"):
        class_statistics(tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(8), 3)
    with pytest.raises(ValueError, match="n_features"):
        class_statistics((x, y), 3, row_fn=lambda a, b: (a, b))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_distributed((np.where(np.arange(50)[:, None] == 7, np.inf, x), y), 3, n_classes=3)
    with pytest.raises(ValueError, match="2-D"):
        class_statistics((x.reshape(50, 3, 4), y), 3)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        class_statistics(iter([(x, y)]), 3)
    with pytest.raises(ValueError, match="n_components"):
        fit_distributed((x, y), 0, n_classes=3)
    # K·d² that cannot fit (10^12 classes x 12^2 float64: 10^15 bytes): said with the
    # number before TF allocates anything
    with pytest.raises(MemoryError, match=r"1000000000000 classes x 12 features need"):
        class_statistics((x, y), 10**12)


def test_a_dataset_that_never_ends_needs_steps():
    x, y = _data(n=60)
    repeated = tf.data.Dataset.from_tensor_slices((x, y)).batch(20).repeat()
    with pytest.raises(ValueError, match="never ends .* pass `steps=`"):
        class_statistics(repeated, 3)
    with pytest.raises(ValueError, match="never ends"):
        fit_distributed(repeated, 3, n_classes=3)
    # with `steps` it reads that many global batches: the first 60 samples, once
    count, _, _ = class_statistics(repeated, 3, steps=3)
    np.testing.assert_array_equal(count, np.bincount(y, minlength=3))
    pca = fit_distributed(repeated, 3, n_classes=3, steps=3)
    reference = ClassPCA(3, n_classes=3).fit(x, y)
    np.testing.assert_allclose(pca.kernel_, reference.kernel_, atol=1e-6)


def test_dataset_function_default_strategy():
    x, y = _data()
    ref = ClassPCA(6, n_classes=3).fit(x, y)

    def dataset_fn(context):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(
            context.get_per_replica_batch_size(64)
        )

    pca = fit_distributed(dataset_fn, 6, n_classes=3)
    np.testing.assert_allclose(pca.kernel_, ref.kernel_, **TIGHT)
    np.testing.assert_allclose(pca.bias_, ref.bias_, **TIGHT)


def test_fit_with_strategy_keeps_state_on_error_and_needs_n_classes():
    x, y = _data()
    ref = ClassPCA(6, n_classes=3).fit(x, y)
    pca = fit_with_strategy(ClassPCA(6, n_classes=3), x, y, strategy=None, batch_size=200)
    np.testing.assert_allclose(pca.kernel_, ref.kernel_, **TIGHT)
    before = pca.kernel_.copy()
    with pytest.raises(ValueError, match="needs at least"):  # 2 rows per class: too few
        fit_with_strategy(pca, x[:6], np.repeat([0, 1, 2], 2), strategy=None)
    np.testing.assert_array_equal(pca.kernel_, before)
    with pytest.raises(ValueError, match="n_classes"):
        fit_with_strategy(ClassPCA(6), x, y, strategy=None)
    steps = fit_with_strategy(
        ClassPCA(6, n_classes=3), x, y, strategy=None, batch_size=200, steps=2
    )
    np.testing.assert_array_equal(
        steps.n_samples_seen_, ClassPCA(6, n_classes=3).fit(x[:400], y[:400]).n_samples_seen_
    )


def test_adapt_with_default_strategy():
    from keras_classpca import ClassPCAConv2D, ClassPCADense

    rng = np.random.default_rng(1)
    images = rng.normal(size=(40, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 2, 40)
    # The TF pass multiplies in float64: so does the local reference.
    conv = ClassPCAConv2D(6, 3, padding="same", n_classes=2, product_dtype="float64")
    conv.adapt((images, labels), batch_size=16)
    twin = ClassPCAConv2D(6, 3, padding="same", n_classes=2)
    adapt_with_strategy(twin, (images, labels), strategy=None, batch_size=16)
    assert twin.is_adapted
    np.testing.assert_allclose(twin.kernel.numpy(), conv.kernel.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(twin.class_pca_.kernel_, conv.class_pca_.kernel_, **TIGHT)

    dense = ClassPCADense(4, n_classes=2)
    with pytest.raises(ValueError, match="n_classes"):
        adapt_with_strategy(ClassPCADense(4), (images.reshape(40, -1), labels), strategy=None)
    adapt_with_strategy(dense, (images.reshape(40, -1), labels), strategy=None)
    assert dense.is_adapted and dense.kernel.shape == (192, 4)


@pytest.mark.tensorflow_backend
def test_layer_class_pca_above_a_feature_model_with_default_strategy():
    import keras

    from keras_classpca.layers.geometry import iter_rows

    rng = np.random.default_rng(1)
    images = rng.normal(size=(40, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 2, 40)
    # A layer above a feature model: rows of the model's output, as hybridize streams them.
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(5, 3, activation="relu")(inputs)
    feature_model = keras.Model(inputs, features)
    top = keras.layers.Conv2D(4, 2, strides=2)
    top.build((None, 6, 6, 5))
    result = layer_class_pca(
        top,
        (images, labels),
        strategy=None,
        feature_model=feature_model,
        batch_size=16,
        n_classes=2,
    )
    assert (result.samples, result.rows) == (40, 40 * 9)
    pca = result.class_pca
    ref = ClassPCA(4, n_classes=2, product_dtype="float64")  # float64 as the TF pass
    h = feature_model.predict(images, verbose=0)
    for rows, row_labels in iter_rows(top, h, labels):
        ref.partial_fit(rows, row_labels)
    np.testing.assert_allclose(pca.kernel_, ref.kernel_, rtol=1e-6, atol=1e-8)


def test_class_sketches_over_the_default_strategy():
    from keras_classpca import ClassSketch
    from keras_classpca.core.subspace import subspace_residual
    from keras_classpca.distributed import StrategyPass, class_sketches

    rng = np.random.default_rng(1)
    k, d = 4, 200
    bases = [np.linalg.qr(rng.normal(size=(d, 3)))[0] for _ in range(k)]
    y = rng.integers(0, k, 3000)
    x = (np.einsum("ndk,nk->nd", np.stack(bases)[y], rng.normal(size=(3000, 3)) * [5, 3, 2])
         + 0.1 * rng.normal(size=(3000, d)) + 2.0).astype("float32")
    exact = ClassPCA(12, n_classes=k, sketch_size=None).fit(x, y)
    spread = ClassPCA(12, n_classes=k, sketch_size=16).fit(
        x, y, batch_size=250, statistics_pass=StrategyPass())
    sketch = spread.statistics_
    assert isinstance(sketch, ClassSketch) and spread.sketch_size_ == 16
    np.testing.assert_array_equal(sketch.counts, exact.statistics_.counts)
    # float64 sums here, float32 chunk products in the local reference
    np.testing.assert_allclose(sketch.sums, exact.statistics_.sums, rtol=1e-6)
    for c in range(k):
        truth = exact.statistics_.second_moment(c)
        assert sketch.trace(c) == pytest.approx(np.trace(truth), rel=1e-6)
        # Frequent Directions' guarantee 0 <= AᵀA − BᵀB <= Δ·I (float32 rows)
        gap = np.linalg.eigvalsh(truth - sketch.second_moment(c))
        scale = np.linalg.norm(truth, 2)
        assert gap.min() >= -1e-5 * scale and gap.max() <= sketch.shrinkage[c] + 1e-5 * scale
        assert 0 < sketch.shrinkage[c]  # 750 rows through 32-row buffers: shrunk
        found = spread.components_[:, spread.component_classes_ == c]
        assert subspace_residual(exact.components_[:, exact.component_classes_ == c],
                                 found) < 1e-3
    # sketch_size="auto" switches when exact statistics exceed memory_limit (1.3 MB here)
    with pytest.warns(UserWarning, match="Frequent Directions sketch"):
        auto = ClassPCA(12, n_classes=k, memory_limit=1_000_000).fit(
            x, y, batch_size=500, statistics_pass=StrategyPass())
    assert isinstance(auto.statistics_, ClassSketch) and auto.sketch_size_ >= 12
    with pytest.raises(ValueError, match="out of range for n_classes=3"):
        class_sketches((x, y), 3, 8)


# ---------------------------------------------------------------------- two CPU replicas
# Two logical CPUs, configured before TensorFlow initialises its devices.
TWO_CPUS = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

import keras
"""

MIRRORED = (
    TWO_CPUS
    + """
from keras_classpca import ClassPCA, ClassPCAConv2D
from keras_classpca.distributed import (
    _as_dataset, _per_replica_statistics, fit_distributed, layer_row_fn,
)

def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))

rng = np.random.default_rng(0)
x = rng.normal(size=(1037, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
y = rng.integers(0, 3, 1037)
ref = ClassPCA(6, n_classes=3).fit(x, y)
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
out = {"replicas": strategy.num_replicas_in_sync}

pca = fit_distributed(dataset, 6, n_classes=3, strategy=strategy)
out["dense"] = [max_diff(pca.components_, ref.components_), max_diff(pca.kernel_, ref.kernel_),
                max_diff(pca.bias_, ref.bias_)]
out["counts"] = [pca.n_samples_seen_.tolist(), ref.n_samples_seen_.tolist()]
local = _per_replica_statistics(
    strategy, strategy.experimental_distribute_dataset(dataset), 3, 12, None
)
out["local_rows"] = [float(v.numpy()[-3]) for v in strategy.experimental_local_results(local)]

with strategy.scope():  # strategy=None: the one in scope
    in_scope = fit_distributed(dataset, 6, n_classes=3)
out["in_scope"] = max_diff(in_scope.kernel_, ref.kernel_)

# Conv2D patches in TF ops (same padding, strides, dilation) vs the layer's own adapt.
images = rng.normal(size=(60, 9, 9, 2)).astype("float32")
labels = rng.integers(0, 3, 60)
conv = ClassPCAConv2D(8, 3, strides=2, padding="same", dilation_rate=1, n_classes=3,
                      product_dtype="float64")  # the TF pass multiplies in float64
conv.adapt((images, labels), batch_size=16)
conv_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
conv_pca = fit_distributed(conv_ds, 8, n_classes=3, strategy=strategy,
                           row_fn=layer_row_fn(conv), n_features=3 * 3 * 2)
out["conv"] = [max_diff(conv_pca.kernel_, conv.class_pca_.kernel_),
               max_diff(conv_pca.bias_, conv.class_pca_.bias_)]
dil = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="valid")
dil.build((None, 9, 9, 2))
dil_pca = fit_distributed(conv_ds, 4, n_classes=3, strategy=strategy,
                          row_fn=layer_row_fn(dil), n_features=18)
from keras_classpca.layers.geometry import iter_rows
dil_ref = ClassPCA(4, n_classes=3, product_dtype="float64")
for rows, row_labels in iter_rows(dil, images, labels):
    dil_ref.partial_fit(rows, row_labels)
out["dilated"] = max_diff(dil_pca.kernel_, dil_ref.kernel_)
print(json.dumps(out))
"""
)

MIRRORED_FEATURE_MODEL = (
    TWO_CPUS
    + """
from keras_classpca import ClassPCA
from keras_classpca.distributed import layer_class_pca
from keras_classpca.layers.geometry import iter_rows

# A feature model run inside strategy.run on both replicas (hybridize's case).
rng = np.random.default_rng(0)
images = rng.normal(size=(60, 9, 9, 2)).astype("float32")
labels = rng.integers(0, 3, 60)
conv_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
inputs = keras.Input((9, 9, 2))
feature_model = keras.Model(inputs, keras.layers.Conv2D(5, 3, activation="relu")(inputs))
top = keras.layers.Dense(4)
top.build((None, 7, 7, 5))
pca = layer_class_pca(
    top, conv_ds, strategy=strategy, feature_model=feature_model, n_classes=3
).class_pca
ref_top = ClassPCA(4, n_classes=3, product_dtype="float64")
for rows, row_labels in iter_rows(top, feature_model.predict(images, verbose=0), labels):
    ref_top.partial_fit(rows, row_labels)
relative = np.max(np.abs(pca.kernel_ - ref_top.kernel_)) / np.max(np.abs(ref_top.kernel_))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "feature_model": float(relative)}))
"""
)


# The statistics are TF ops on the input data whatever the Keras backend: this runs once
# (under the default backend), and `test_fit_and_adapt_strategy_argument_mirrored` checks
# the same pass under every backend.
@pytest.mark.backend_independent
def test_mirrored_strategy_two_cpus_equals_fit():
    out = _run_python(MIRRORED)
    assert out["replicas"] == 2
    # Each replica got half of every global batch of 128 (the last, 13 rows: 7 + 6).
    assert sorted(out["local_rows"]) == [518.0, 519.0], out["local_rows"]
    assert out["counts"][0] == out["counts"][1]
    assert max(out["dense"]) < 1e-11, out["dense"]
    assert out["in_scope"] < 1e-11, out["in_scope"]
    assert max(out["conv"]) < 1e-9, out["conv"]
    assert out["dilated"] < 1e-9, out["dilated"]


@pytest.mark.tensorflow_backend
def test_mirrored_strategy_two_cpus_runs_the_feature_model_per_replica():
    out = _run_python(MIRRORED_FEATURE_MODEL)
    assert out["replicas"] == 2
    # float32 features computed by TF in another batching than predict: float32 round-off.
    assert out["feature_model"] < 1e-5, out["feature_model"]


# ---------------------------------------------------------------------- wired entry points
WIRED = (
    TWO_CPUS
    + """
from keras_classpca import ClassPCA, ClassPCAConv2D
from keras_classpca.distributed import StrategyPass

rng = np.random.default_rng(0)
out = {}
x = rng.normal(size=(600, 10))
y = rng.integers(0, 3, 600)
local = ClassPCA(6, n_classes=3).fit(x, y)
spread_fit = ClassPCA(6, n_classes=3).fit(x, y, statistics_pass=StrategyPass(strategy))
out["fit"] = float(np.abs(spread_fit.kernel_ - local.kernel_).max())

images = rng.normal(size=(64, 10, 10, 2)).astype("float32")
labels = rng.integers(0, 3, 64)
plain = ClassPCAConv2D(6, 3, n_classes=3, product_dtype="float64")  # as the TF pass
plain.adapt((images, labels))
spread = ClassPCAConv2D(6, 3, n_classes=3)
spread.adapt((images, labels), strategy=strategy)
out["adapt"] = float(np.abs(keras.ops.convert_to_numpy(plain.kernel - spread.kernel)).max())

# Class sketches: each replica sketches its shard, the gathered sketches are merged.
from keras_classpca.core.subspace import subspace_residual
bases = [np.linalg.qr(rng.normal(size=(40, 3)))[0] for _ in range(4)]
ys = rng.integers(0, 4, 2000)
xs = (np.einsum("ndk,nk->nd", np.stack(bases)[ys], rng.normal(size=(2000, 3)) * [5, 3, 2])
      + 0.1 * rng.normal(size=(2000, 40)) + 2.0).astype("float32")
exact = ClassPCA(12, n_classes=4, sketch_size=None).fit(xs, ys)
sketched = ClassPCA(12, n_classes=4, sketch_size=8).fit(
    xs, ys, batch_size=256, statistics_pass=StrategyPass(strategy))
out["sketch_kind"] = type(sketched.statistics_).__name__
out["sketch_counts"] = [sketched.statistics_.counts.tolist(), exact.statistics_.counts.tolist()]
out["sketch_residual"] = max(
    subspace_residual(exact.components_[:, exact.component_classes_ == c],
                      sketched.components_[:, sketched.component_classes_ == c])
    for c in range(4))
out["sketch_total"] = float(np.abs(sketched.statistics_.total_second_moment()
                                   - exact.statistics_.total_second_moment()).max()
                            / np.abs(exact.statistics_.total_second_moment()).max())
print(json.dumps(out))
"""
)

WIRED_HYBRIDIZE = (
    TWO_CPUS
    + """
from keras_classpca import hybridize

rng = np.random.default_rng(0)
images = rng.normal(size=(64, 10, 10, 2)).astype("float32")
labels = rng.integers(0, 3, 64)

def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((10, 10, 2)), keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])

m1, m2 = model(), model()
r1 = hybridize(m1, (images, labels), cutoff=2, verbose=0, n_classes=3, product_dtype="float64")
r2 = hybridize(m2, (images, labels), cutoff=2, verbose=0, n_classes=3, strategy=strategy)
out = {"hybridize": max(
    float(np.abs(w1 - w2).max() / max(1e-12, np.abs(w1).max()))
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()))}
out["report"] = [[(l.samples, l.rows) for l in r.layers] for r in (r1, r2)]
print(json.dumps(out))
"""
)


def test_fit_and_adapt_strategy_argument_mirrored():
    out = _run_python(WIRED)
    assert out["fit"] < 1e-11, out
    assert out["adapt"] < 1e-6, out
    # sketches over two replicas: exact counts and total, class subspaces close to exact
    assert out["sketch_kind"] == "ClassSketch", out
    assert out["sketch_counts"][0] == out["sketch_counts"][1], out
    assert out["sketch_total"] < 1e-6, out  # float64 in TF, float32 products locally
    assert out["sketch_residual"] < 1e-3, out


@pytest.mark.tensorflow_backend
def test_hybridize_strategy_argument_mirrored():
    out = _run_python(WIRED_HYBRIDIZE)
    assert out["hybridize"] < 1e-5, out
    assert out["report"][0] == out["report"][1], out


@pytest.mark.skipif(BACKEND == "tensorflow", reason="checks the error other backends give")
def test_keras_layers_inside_strategy_need_the_tensorflow_backend():
    import keras

    from keras_classpca import hybridize

    x, y = _data(n=60)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4), keras.layers.Dense(3)])
    strategy = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match=f"KERAS_BACKEND=tensorflow .now '{BACKEND}'"):
        hybridize(model, (x, y), cutoff=1, n_classes=3, strategy=strategy, verbose=0)
    feature_model = keras.Model(model.inputs[0], model.layers[0].output)
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        layer_class_pca(
            model.layers[1], (x, y), strategy=strategy, feature_model=feature_model, n_classes=3
        )
    # Raw statistics are TF ops on the data: the same on every backend.
    from keras_classpca.distributed import StrategyPass

    np.testing.assert_allclose(
        ClassPCA(4, n_classes=3).fit(x, y, statistics_pass=StrategyPass(strategy)).kernel_,
        ClassPCA(4, n_classes=3, product_dtype="float64").fit(x, y).kernel_,  # as the TF pass
        **TIGHT,
    )


# ---------------------------------------------------------------------- two workers
WORKER = """
import json, sys, time
import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
from keras_classpca.distributed import _per_replica_statistics, fit_distributed

rng = np.random.default_rng(0)
x = rng.normal(size=(1037, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
y = rng.integers(0, 3, 1037)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(100).with_options(options)
start = time.perf_counter()
pca = fit_distributed(dataset, 6, n_classes=3, strategy=strategy)
seconds = time.perf_counter() - start
local = _per_replica_statistics(
    strategy, strategy.experimental_distribute_dataset(dataset), 3, 12, None
)

def shard_fn(context):  # each worker reads only its own rows
    rows = tf.data.Dataset.from_tensor_slices((x, y))
    rows = rows.shard(context.num_input_pipelines, context.input_pipeline_id)
    return rows.batch(context.get_per_replica_batch_size(100))

sharded = fit_distributed(shard_fn, 6, n_classes=3, strategy=strategy)
np.savez(sys.argv[1], components=pca.components_, kernel=pca.kernel_, bias=pca.bias_,
         sharded_kernel=sharded.kernel_, sharded_bias=sharded.bias_,
         sharded_counts=sharded.n_samples_seen_,
         counts=pca.n_samples_seen_,
         local_rows=[float(v.numpy()[-3]) for v in strategy.experimental_local_results(local)])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "seconds": seconds}))
"""


def _run_workers(script, n_workers, tmp_path):
    procs = []
    tf_configs = local_tf_configs(n_workers)
    cluster = json.loads(tf_configs[0])["cluster"]
    for index, tf_config in enumerate(tf_configs):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(script), str(tmp_path / f"w{index}.npz")],
                env=_subprocess_env(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            outputs.append((proc.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [proc.communicate()[1][-3000:] for proc in procs]
        pytest.fail(
            f"multi-worker run exceeded {TIMEOUT} s (cluster {cluster}); stderr:\n"
            + "\n---\n".join(logs)
        )
    for index, (code, stdout, stderr) in enumerate(outputs):
        assert code == 0, (
            f"worker {index} of cluster {cluster} failed (exit {code}):\n{stdout[-2000:]}\n"
            f"{stderr[-5000:]}"
        )
    return [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in outputs]


@pytest.mark.backend_independent  # TF workers that never import Keras
def test_multi_worker_two_processes_equals_fit(tmp_path):
    x, y = _data()
    ref = ClassPCA(6, n_classes=3).fit(x, y)
    infos = _run_workers(WORKER, 2, tmp_path)
    assert [info["replicas"] for info in infos] == [2, 2]
    results = [np.load(tmp_path / f"w{i}.npz") for i in range(2)]
    # Each worker saw only its DATA shard; together all 1037 rows, once.
    local_rows = [float(r["local_rows"].sum()) for r in results]
    assert sum(local_rows) == len(x) and min(local_rows) > 0, local_rows
    for r in results:
        np.testing.assert_array_equal(r["counts"], ref.n_samples_seen_)
        np.testing.assert_allclose(r["components"], ref.components_, **TIGHT)
        np.testing.assert_allclose(r["kernel"], ref.kernel_, **TIGHT)
        np.testing.assert_allclose(r["bias"], ref.bias_, **TIGHT)
        # Rows read once across workers (a kernel alone cannot tell: duplicating every
        # row leaves means and covariances unchanged).
        np.testing.assert_array_equal(r["sharded_counts"], ref.n_samples_seen_)
        np.testing.assert_allclose(r["sharded_kernel"], ref.kernel_, **TIGHT)
        np.testing.assert_allclose(r["sharded_bias"], ref.bias_, **TIGHT)
    # Every worker holds the very same weights (one reduce, one solve each).
    np.testing.assert_array_equal(results[0]["kernel"], results[1]["kernel"])
    np.testing.assert_array_equal(results[0]["bias"], results[1]["bias"])


@pytest.mark.tensorflow_backend
def test_hybridize_strategy_takes_the_class_count_from_the_softmax():
    import keras

    from keras_classpca import hybridize

    x, y = _data(n=120)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4, name="a"),
                              keras.layers.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), cutoff=1, strategy=tf.distribute.get_strategy(),
                       verbose=0)  # no n_classes=: the softmax says 3
    assert report.cutoff == 1
    logits = keras.Sequential([keras.Input((12,)), keras.layers.Dense(4),
                               keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="hybridize\\(strategy=...\\) needs the number of"):
        hybridize(logits, (x, y), cutoff=1, strategy=tf.distribute.get_strategy(), verbose=0)


@pytest.mark.tensorflow_backend
def test_hybridize_strategy_solves_depthwise_and_separable_layers_in_process():
    # Not distributed (Dense and ungrouped ConvND are): solved from this process's
    # data, as without a strategy, instead of failing after the layers below.
    import keras

    from keras_classpca import hybridize

    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(96, 8, 8, 1)).astype("float32"), np.arange(96) % 4

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.SeparableConv2D(8, 3, activation="relu"),
            keras.layers.DepthwiseConv2D(2, activation="relu"),
            keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])

    local, spread = model(), model()
    # (the heads stay as built: the solved layers are compared)
    hybridize(local, (images, labels), cutoff=3, verbose=0, product_dtype="float64",
              warm_head=False)
    report = hybridize(spread, (images, labels), cutoff=3, verbose=0, warm_head=False,
                       strategy=tf.distribute.get_strategy())
    assert report.cutoff == 3
    for a, b in zip(local.get_weights(), spread.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.tensorflow_backend
@pytest.mark.parametrize("kind", ["conv1d", "conv3d"])
def test_hybridize_strategy_distributes_conv1d_and_conv3d(kind):
    # Their statistics run on the replicas (docs: "Dense and ungrouped ConvND"); the
    # replica rows only knew Dense and Conv2D ("not a Dense or Conv2D layer").
    import keras

    from keras_classpca import ClassPCAConv1D, hybridize

    rng = np.random.default_rng(0)
    labels = np.arange(96) % 4
    if kind == "conv1d":
        x = rng.normal(size=(96, 20, 3)).astype("float32")
        convs = [keras.layers.Conv1D(6, 3, padding="causal", dilation_rate=2,
                                     activation="relu"),
                 keras.layers.Conv1D(8, 3, strides=2, padding="same", activation="relu")]
    else:
        x = rng.normal(size=(96, 6, 6, 6, 2)).astype("float32")
        convs = [keras.layers.Conv3D(6, 3, padding="same", activation="relu"),
                 keras.layers.Conv3D(8, 2, strides=2, activation="relu")]

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input(x.shape[1:]), *convs[:1], *convs[1:],
                                 keras.layers.Flatten(),
                                 keras.layers.Dense(4, activation="softmax")])

    local = model()
    hybridize(local, (x, labels), cutoff=2, samples=None, verbose=0, product_dtype="float64")
    convs = [type(c).from_config(c.get_config()) for c in convs]
    spread = model()
    report = hybridize(spread, (x, labels), cutoff=2, samples=None, verbose=0,
                       strategy=tf.distribute.get_strategy())
    assert report.cutoff == 2
    for a, b in zip(local.get_weights(), spread.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    if kind == "conv1d":  # and the layer's own adapt(strategy=)
        layer = ClassPCAConv1D(6, 3, padding="causal", n_classes=4)
        adapt_with_strategy(layer, (x, labels), strategy=None)
        reference = ClassPCAConv1D(6, 3, padding="causal", n_classes=4,
                                   product_dtype="float64")
        reference.adapt((x, labels))
        np.testing.assert_allclose(layer.kernel.numpy(), reference.kernel.numpy(),
                                   rtol=1e-5, atol=1e-6)
