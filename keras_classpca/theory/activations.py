"""Activations as float64 NumPy functions, and where they have kinks.

The theory tools integrate activations against Gaussians; they take a Keras activation
name, this package's ``"normalized_relu"``, ``"abs"`` or any callable.  Keras is
imported only for a name missing from the NumPy table or for a callable that returns
backend tensors.
"""

import math
from typing import Callable

import numpy as np

NORMALIZED_RELU_MEAN = 1.0 / np.sqrt(2.0 * np.pi)
NORMALIZED_RELU_STD = np.sqrt(0.5 - 1.0 / (2.0 * np.pi))


def _normalized_relu_np(x):
    return (np.maximum(x, 0.0) - NORMALIZED_RELU_MEAN) / NORMALIZED_RELU_STD


def _softplus_np(x):
    return np.logaddexp(0.0, x)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
_erf = np.vectorize(math.erf, otypes=[np.float64])

# Keras activations (with Keras' default arguments) written in float64 NumPy: the
# quadratures stay float64 on every backend (JAX computes in float32 unless x64 is on).
# Any other name falls back to `keras.activations.get`, in the backend's precision.
# "abs" and "normalized_relu" are this module's own names (no Keras activation).
NUMPY_ACTIVATIONS = {
    "normalized_relu": _normalized_relu_np,
    "normalizedrelu": _normalized_relu_np,
    "linear": lambda x: x,
    "abs": np.abs,
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "tanh": np.tanh,
    "softplus": _softplus_np,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "silu": lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x)),
    "swish": lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x)),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "mish": lambda x: x * np.tanh(_softplus_np(x)),
    "exponential": np.exp,
}


def resolve_activation(activation, argname="activation") -> Callable[[np.ndarray], np.ndarray]:
    """Return a float64 NumPy function for a Keras activation name or a callable."""
    if isinstance(activation, str):
        key = activation.lower()
        if key in NUMPY_ACTIVATIONS:
            fn = NUMPY_ACTIVATIONS[key]
            return lambda x: np.asarray(fn(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        import keras

        try:
            fn = keras.activations.get(key)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"Unknown {argname} {activation!r}: expected a Keras activation name "
                f"(e.g. 'relu', 'tanh'), 'normalized_relu' or a callable."
            ) from exc
        return _wrap_callable(fn)
    if callable(activation):
        return _wrap_callable(activation)
    raise TypeError(
        f"`{argname}` must be a Keras activation name or a callable; received "
        f"{type(activation).__name__}."
    )


def _wrap_callable(fn):
    def f(x):
        x = np.asarray(x, dtype=np.float64)
        out = fn(x)
        if not isinstance(out, np.ndarray):
            try:
                import keras

                out = keras.ops.convert_to_numpy(out)
            except Exception:  # pragma: no cover - already array-like
                out = np.asarray(out)
        out = np.asarray(out, dtype=np.float64)
        if out.shape != x.shape:
            out = np.broadcast_to(out, x.shape)
        return out

    return f


# Points (in pre-activation units x) where a named activation or one of its first two
# derivatives jumps; the quadrature splits its intervals there.
KINKS = {
    "relu": (0.0,),
    "relu6": (0.0, 6.0),
    "leaky_relu": (0.0,),
    "elu": (0.0,),
    "selu": (0.0,),
    "celu": (0.0,),
    "softsign": (0.0,),
    "abs": (0.0,),
    "normalized_relu": (0.0,),
    "normalizedrelu": (0.0,),
    "hard_sigmoid": (-3.0, 3.0),
    "hard_silu": (-3.0, 3.0),
    "hard_swish": (-3.0, 3.0),
    "hard_tanh": (-1.0, 1.0),
    "hard_shrink": (-0.5, 0.5),
    "soft_shrink": (-0.5, 0.5),
    "sparse_plus": (-1.0, 1.0),
    "sparse_sigmoid": (-1.0, 1.0),
}
