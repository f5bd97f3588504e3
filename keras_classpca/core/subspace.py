"""Subspace overlap: how close two spans of column vectors are.

Plain NumPy. The overlap of two subspaces is the mean squared cosine of their principal
angles (Björck & Golub 1973): 1 when the spans are identical, 0 when they are orthogonal,
cos²θ when one is the other rotated by θ. For an r-dimensional subspace and a random
(uniformly distributed) r-dimensional subspace of R^d its expected value is r / d — the
chance level a measured overlap should be read against.
"""

import numpy as np

__all__ = [
    "orthonormal_basis",
    "principal_cosines",
    "subspace_overlap",
    "chance_overlap",
    "leading_subspace",
]


def _as_columns(a, name):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(
            f"`{name}` must be a (d, k) matrix of column vectors; received shape {a.shape}."
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return a


def orthonormal_basis(a, rtol=1e-10):
    """An orthonormal basis `(d, r)` of the span of `a`'s columns (`r` = numerical rank).

    Directions whose singular value is below `rtol` times the largest are dropped, so
    duplicated or dependent columns do not inflate the dimension.
    """
    a = _as_columns(a, "a")
    if a.size == 0:
        return np.zeros((a.shape[0], 0))
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    if not s.size or s[0] == 0:
        return np.zeros((a.shape[0], 0))
    return u[:, s > rtol * s[0]]


def leading_subspace(a, rank):
    """The `rank` leading left singular vectors of `a` `(d, rank)`: the directions the
    columns of `a` weight most (the whole span when `rank` >= the rank of `a`)."""
    a = _as_columns(a, "a")
    basis_all, s, _ = np.linalg.svd(a, full_matrices=False)
    keep = min(int(rank), int(np.sum(s > 1e-10 * s[0])) if s.size and s[0] > 0 else 0)
    return basis_all[:, :keep]


def principal_cosines(a, b):
    """Cosines of the principal angles between span(a) and span(b), descending.

    There are `min(rank a, rank b)` of them, each in [0, 1].
    """
    a, b = _as_columns(a, "a"), _as_columns(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`a` and `b` must live in the same space; received {a.shape[0]} and {b.shape[0]} rows."
        )
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    if not qa.shape[1] or not qb.shape[1]:
        raise ValueError("Both spans must be non-empty (a matrix of zeros spans nothing).")
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.clip(cosines, 0.0, 1.0)


def subspace_overlap(a, b):
    """Mean squared cosine of the principal angles between span(a) and span(b).

    1 = identical spans (or one contains the other), 0 = orthogonal; a rotation of a
    line by θ gives cos²θ.

    Example:

    >>> import numpy as np
    >>> e = np.eye(3)
    >>> round(subspace_overlap(e[:, :2], e[:, :2] @ [[2.0, 1.0], [0.0, 1.0]]), 6)
    1.0
    >>> subspace_overlap(e[:, :1], e[:, 1:])
    0.0
    >>> theta = np.pi / 6
    >>> round(subspace_overlap(e[:, :1], np.cos(theta) * e[:, :1] + np.sin(theta) * e[:, 1:2]), 6)
    0.75
    """
    cosines = principal_cosines(a, b)
    return float(np.mean(cosines**2))


def subspace_residual(a, b):
    """Sine of the largest principal angle between span(a) and span(b): the spectral
    norm of what of the smaller span the other misses, ‖(I − P_a) Q_b‖₂ for equal ranks
    (0 = identical spans, 1 = some direction orthogonal to the other span).

    >>> import numpy as np
    >>> e = np.eye(3)
    >>> round(subspace_residual(e[:, :1], np.cos(0.1) * e[:, :1] + np.sin(0.1) * e[:, 1:2]), 6)
    0.099833
    """
    cosines = principal_cosines(a, b)
    return float(np.sqrt(max(0.0, 1.0 - float(cosines.min()) ** 2)))


def chance_overlap(rank_a, rank_b, dim):
    """Expected overlap of independent uniformly random subspaces of R^dim of ranks
    `rank_a` and `rank_b`: E‖Qaᵀ Qb‖²_F / min(ranks) = max(ranks) / dim."""
    if dim <= 0:
        raise ValueError(f"`dim` must be positive; received {dim}.")
    return min(float(max(rank_a, rank_b)), float(dim)) / float(dim)
