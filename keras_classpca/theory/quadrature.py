"""Expectations under a standard Gaussian by adaptive Gauss--Legendre quadrature.

NumPy only.  Used for the activation constants of Pennington & Worah; the rule splits
its intervals at given kinks and bisects towards any other one, so piecewise smooth
integrands (ReLU-like activations) are integrated to round-off, unlike Gauss--Hermite
quadrature whose error across a kink decays only like ``1 / nodes``.
"""

import math

import numpy as np

from keras_classpca._warnings import warn

__all__ = ["gaussian_expectations"]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(10)
# exp(-z**2 / 2) underflows to exactly 0.0 in float64 beyond |z| = 38.6.
_Z_MAX = 40.0
_INITIAL_EDGES = (-_Z_MAX, -16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, _Z_MAX)


def _gauss_legendre(fn, a, b):
    """10-point Gauss--Legendre of the weighted integrands on every ``[a_i, b_i]``.

    Returns ``(integral, integral of |g|)``, each of shape ``(k, len(a))``.
    """
    half = 0.5 * (b - a)
    z = (0.5 * (a + b))[:, None] + half[:, None] * _GL_NODES[None, :]
    weight = np.exp(-0.5 * z * z) / _SQRT_2PI
    flat = z.ravel()
    values = np.asarray(fn(flat), dtype=np.float64).reshape(-1, flat.size)
    values = values.reshape(values.shape[0], *z.shape)
    weighted = np.where(weight > 0.0, values * weight, 0.0)
    integral = np.einsum("knq,q->kn", weighted, _GL_WEIGHTS) * half
    absolute = np.einsum("knq,q->kn", np.abs(weighted), _GL_WEIGHTS) * half
    return integral, absolute


def gaussian_expectations(fn, *, breakpoints=(), rtol=1e-12, max_rounds=100):
    """``E[g_k(z)]`` for ``z ~ N(0, 1)`` by globally adaptive Gauss--Legendre quadrature.

    ``fn(z)`` maps a 1-D array of points to an array ``(k, len(z))`` (or
    ``(len(z),)`` for one integrand).  The line is cut to ``|z| <= 40``, where
    the Gaussian weight is still above float64's underflow, at fixed edges and
    at ``breakpoints`` (where an integrand or a low derivative jumps).  Every
    interval is integrated whole and as two halves (10 nodes each); the
    difference is its error estimate.  While the summed estimates exceed
    ``rtol`` times ``E|g_k|`` for some ``k``, the intervals carrying the largest
    errors are bisected.  An unannounced kink is located by bisection, so it
    costs rounds, not accuracy.

    Args:
        fn: vectorized integrand(s), called with float64 arrays.
        breakpoints: points of ``(-40, 40)`` where intervals must end.
        rtol: target of the summed error estimate, relative to ``E|g_k|``.
        max_rounds: bisection rounds before giving up with a ``RuntimeWarning``.

    Returns:
        float64 array ``(k,)`` (a scalar for a single integrand).

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import gaussian_expectations
        >>> m = gaussian_expectations(lambda z: np.stack([z**2, np.abs(z)]))
        >>> bool(abs(m[0] - 1) < 1e-14), bool(abs(m[1] - np.sqrt(2 / np.pi)) < 1e-14)
        (True, True)
    """
    edges = np.unique(
        np.concatenate(
            [
                _INITIAL_EDGES,
                [p for p in np.asarray(breakpoints, dtype=np.float64).ravel() if abs(p) < _Z_MAX],
            ]
        )
    )
    a, b = edges[:-1], edges[1:]
    whole, _ = _gauss_legendre(fn, a, b)
    scalar = np.ndim(fn(edges[:1])) == 1
    # Each interval: its bounds, the one-piece estimate and the two-halves estimate.
    done_fine = np.zeros(whole.shape[0])
    done_abs = np.zeros(whole.shape[0])
    done_err = np.zeros(whole.shape[0])
    for _ in range(max_rounds):
        mid = 0.5 * (a + b)
        left, left_abs = _gauss_legendre(fn, a, mid)
        right, right_abs = _gauss_legendre(fn, mid, b)
        fine = left + right
        err = np.abs(fine - whole)
        total = done_fine + fine.sum(axis=1)
        scale = np.maximum(done_abs + (left_abs + right_abs).sum(axis=1), 1e-300)
        tol = rtol * scale
        # Normalised error of each interval: its worst integrand's share of the budget.
        share = np.max(err / tol[:, None], axis=0)
        spent = float(np.max(done_err / tol))
        if spent + share.sum() <= 1.0:
            return float(total[0]) if scalar else total
        # Keep the intervals with the smallest errors while they fit in half the budget
        # that is left; bisect the others (the halves become the new intervals).
        order = np.argsort(share)
        keep = np.zeros(share.size, dtype=bool)
        keep[order[np.cumsum(share[order]) <= 0.5 * max(1.0 - spent, 0.0)]] = True
        # An interval too narrow to split any further is kept as it is.
        keep |= (b - a) <= 8 * np.finfo(np.float64).eps * np.maximum(np.abs(a), np.abs(b))
        done_fine += fine[:, keep].sum(axis=1)
        done_abs += (left_abs + right_abs)[:, keep].sum(axis=1)
        done_err += err[:, keep].sum(axis=1)
        split = ~keep
        if not np.any(split):
            total = done_fine
            break
        a = np.concatenate([a[split], mid[split]])
        b = np.concatenate([mid[split], b[split]])
        whole = np.concatenate([left[:, split], right[:, split]], axis=1)
        total = done_fine + whole.sum(axis=1)
    warn(
        f"gaussian_expectations: error estimate above rtol={rtol:g} after "
        f"{max_rounds} rounds (integrand with a jump or a singularity?).",
        RuntimeWarning
    )
    return float(total[0]) if scalar else total
