"""Tests of keras_classpca.layers.normalized_relu.NormalizedReLU."""

import math

import keras
import numpy as np
import pytest
from scipy import integrate

from keras_classpca.layers.normalized_relu import MEAN, STD, NormalizedReLU


def test_constants_are_the_gaussian_moments_of_relu():
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mean, _ = integrate.quad(lambda z: z * pdf(z), 0, np.inf)
    second, _ = integrate.quad(lambda z: z * z * pdf(z), 0, np.inf)
    assert MEAN == pytest.approx(mean, rel=1e-10)
    assert STD == pytest.approx(math.sqrt(second - mean**2), rel=1e-10)


def test_zero_mean_unit_variance_on_gaussian_input():
    z = np.random.default_rng(0).standard_normal((1000, 1000)).astype("float32")
    y = np.asarray(NormalizedReLU()(z), dtype=np.float64)
    assert abs(y.mean()) < 5e-3
    assert y.var() == pytest.approx(1.0, abs=5e-3)
    # plain relu is not normalized: the test would fail without the shift/scale
    r = np.maximum(z, 0)
    assert abs(r.mean()) > 0.3 and abs(r.var() - 1) > 0.5


def test_pointwise_values_and_shape():
    x = np.array([[-2.0, 0.0, 1.0, 3.0]], dtype="float32")
    y = np.asarray(NormalizedReLU()(x))
    expected = (np.maximum(x, 0) - 1 / math.sqrt(2 * math.pi)) / math.sqrt(
        0.5 - 1 / (2 * math.pi))
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert y.shape == x.shape
    assert NormalizedReLU().compute_output_shape((None, 7, 3)) == (None, 7, 3)


def test_serialization_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                              NormalizedReLU(name="nrelu"), keras.layers.Dense(2)])
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("nrelu"), NormalizedReLU)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)
    config = keras.saving.serialize_keras_object(NormalizedReLU(name="n2"))
    assert config["registered_name"] == "keras_classpca>NormalizedReLU"
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, NormalizedReLU) and clone.name == "n2"


def _gradient_of_sum(fn, x):
    """d sum(fn(x)) / dx with the running backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = keras.ops.sum(fn(x))
        return tape.gradient(y, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: keras.ops.sum(fn(v)))(x))
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        keras.ops.sum(fn(x)).backward()
        return x.grad.numpy()
    pytest.fail(f"no autodiff for backend {backend!r}")


def test_gradient_is_relu_gradient_over_std():
    grad = _gradient_of_sum(NormalizedReLU(), np.array([-1.0, 2.0], dtype="float32"))
    np.testing.assert_allclose(grad, [0.0, 1 / STD], rtol=1e-6)
