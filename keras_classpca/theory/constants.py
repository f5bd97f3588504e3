"""The Gaussian constants ``eta`` and ``zeta`` of an activation (Pennington & Worah 2017).

Exact: closed forms where they are known, adaptive quadrature split at the kinks
otherwise (:func:`keras_classpca.theory.gaussian_expectations`).  NumPy only.
"""

import math
from typing import NamedTuple

import numpy as np

from keras_classpca.theory._validation import check_positive
from keras_classpca.theory.activations import (
    KINKS,
    NORMALIZED_RELU_MEAN,
    NORMALIZED_RELU_STD,
    resolve_activation,
)
from keras_classpca.theory.quadrature import gaussian_expectations

__all__ = ["ActivationConstants", "activation_constants"]


class ActivationConstants(NamedTuple):
    """The two Gaussian integrals of an activation (Pennington & Worah, eq. 5)."""

    eta: float
    zeta: float


_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _relu_moments(s):
    """``(E f, E f**2, E z f)`` of ``f(x) = max(x, 0)`` at ``x = s z``, ``z ~ N(0, 1)``."""
    return s / _SQRT_2PI, s * s / 2.0, s / 2.0


def _closed_form_moments(key, s):
    """Exact ``(E f, E f**2, E z f)`` for the activations that have one, else None."""
    if key in ("linear", "identity"):
        return 0.0, s * s, s
    if key == "relu":
        return _relu_moments(s)
    if key == "abs":  # |s z|: even, so E z f = 0
        return s * math.sqrt(2.0 / math.pi), s * s, 0.0
    if key == "leaky_relu":  # a x + (1 - a) relu(x), Keras' default slope a = 0.2
        a = 0.2
        return (1.0 - a) * s / _SQRT_2PI, (1.0 + a * a) * s * s / 2.0, (1.0 + a) * s / 2.0
    if key in ("normalized_relu", "normalizedrelu"):  # (relu - mu) / sd
        mu, sd = NORMALIZED_RELU_MEAN, NORMALIZED_RELU_STD
        mean, second, zf = _relu_moments(s)
        return (
            (mean - mu) / sd,
            (second - 2.0 * mu * mean + mu * mu) / sd**2,
            zf / sd,
        )
    return None


def activation_constants(
    activation, sigma_w=1.0, sigma_x=1.0, *, center=True, kinks=None, rtol=1e-12
) -> ActivationConstants:
    """Gaussian constants ``eta`` and ``zeta`` of an activation.

    With ``s = sigma_w * sigma_x`` and ``z ~ N(0, 1)``::

        eta  = E[f(s z)**2]
        zeta = (s * E[f'(s z)])**2 = (E[z f(s z)])**2      (Stein's lemma)

    ``zeta`` is evaluated through Stein's lemma, so no derivative of ``f`` is
    needed.  Linear, ReLU, leaky ReLU, ``"abs"`` and ``"normalized_relu"`` use
    closed forms (ReLU: ``E f = s / sqrt(2 pi)``, ``E f**2 = s**2 / 2``,
    ``E z f = s / 2``).  Every other activation is integrated by
    :func:`gaussian_expectations`: adaptive Gauss--Legendre quadrature,
    with the intervals split at the activation's kinks (known for the named
    Keras activations; pass ``kinks`` for a callable), to a relative error
    estimate of ``rtol``.  A kink the quadrature is not told about is still
    handled, by bisecting down to it, at a higher cost.

    The paper assumes a centred activation, ``E[f(s z)] = 0``.  A non-zero mean
    only adds a rank-one term ``E f * 1 1^T`` to ``Y``, which moves a single
    eigenvalue of the Gram matrix and leaves the limiting density unchanged;
    the density is then that of the centred ``f - E f``.  With ``center=True``
    (default) ``eta`` is therefore the *variance* ``E[f**2] - (E f)**2``;
    ``center=False`` returns the raw second moment of the paper's formula.
    ``zeta`` does not depend on centring.

    Args:
        activation: Keras activation name (``"relu"``, ``"tanh"``...),
            ``"normalized_relu"``, ``"abs"``, or any callable mapping arrays to
            arrays.
        sigma_w, sigma_x: standard deviations of the weights and of the data.
        center: subtract the Gaussian mean of ``f`` before computing ``eta``.
        kinks: points ``x`` (pre-activation units) where ``f`` or one of its
            first derivatives jumps, added to those known for a named activation
            (given, they also bypass the closed forms: the quadrature is used).
        rtol: relative error target of the quadrature (relative to
            ``E|f|``, ``E f**2`` and ``E|z f|``).

    Returns:
        ``ActivationConstants(eta, zeta)`` (a named tuple).

    Example:
        >>> import math
        >>> from keras_classpca.theory import activation_constants
        >>> eta, zeta = activation_constants("linear")
        >>> round(eta, 6), round(zeta, 6)
        (1.0, 1.0)
        >>> c = activation_constants("relu")
        >>> abs(c.eta - (1 / 2 - 1 / (2 * math.pi))) < 1e-15, c.zeta
        (True, 0.25)
        >>> c = activation_constants(lambda x: abs(x - 1.0), kinks=[1.0])
        >>> round(c.zeta, 10)                      # (E[z |z - 1|])**2 = (2 P(z < 1) - 1)**2
        0.4660649427
    """
    sigma_w = check_positive("sigma_w", sigma_w)
    sigma_x = check_positive("sigma_x", sigma_x)
    rtol = check_positive("rtol", rtol)
    s = sigma_w * sigma_x
    key = activation.lower() if isinstance(activation, str) else None
    moments = _closed_form_moments(key, s) if kinks is None else None
    if moments is None:
        f = resolve_activation(activation)
        points = list(KINKS.get(key, ())) + list(kinks if kinks is not None else ())
        try:
            points = [float(p) / s for p in points]
        except (TypeError, ValueError) as exc:
            raise TypeError(f"`kinks` must be a sequence of numbers; received {kinks!r}.") from exc

        def integrands(z):
            fz = f(s * z)
            if not np.all(np.isfinite(fz)):
                raise ValueError("activation returned non-finite values on the quadrature nodes.")
            return np.stack([fz, fz * fz, z * fz])

        moments = gaussian_expectations(integrands, breakpoints=points, rtol=rtol)
    mean, second, zf = (float(m) for m in moments)
    eta = second - mean**2 if center else second
    return ActivationConstants(float(max(eta, 0.0)), float(zf**2))
