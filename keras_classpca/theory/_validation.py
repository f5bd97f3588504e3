"""Argument checks shared by the theory modules."""

import numpy as np


def check_positive(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a positive number; received {value!r}.") from exc
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0; received {value!r}.")
    return value


def check_samples(name, x, min_samples=1):
    """`x` as a float64 array of at least `min_samples` finite samples (rows); a
    `TypeError` for data that is not an array (a dataset, a generator) and a
    `ValueError` naming `name` otherwise."""
    if not hasattr(x, "__array__") and not isinstance(x, (list, tuple)):
        raise TypeError(
            f"{name} must be an array of samples (n, ...); received {type(x).__name__} "
            "(take a batch of a dataset as an array first)."
        )
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of samples; {exc}") from exc
    if x.ndim < 1 or len(x) < min_samples:
        raise ValueError(
            f"{name} must hold at least {min_samples} sample(s); received shape {x.shape}."
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x
