"""Directions beyond class-PCA: Fisher discriminants and sign pairs.

Two remedies for what a frozen class-PCA layer loses (measured in docs/benchmarks.md):

- Class-PCA keeps each class's high-variance directions, not the ones that separate
  classes. The Fisher discriminant directions come from the same per-class statistics:
  the leading generalized eigenvectors of the between-class scatter of the class means
  against the pooled within-class covariance (at most K - 1 of them).
- A ReLU after a filter discards the negative half of every projection. The Saak
  transform (Kuo & Chen, arXiv 1710.04176) keeps each filter together with its
  negative, so relu(w·x + b) - relu(-(w·x + b)) = w·x + b: nothing is lost.

Plain NumPy on arrays; `ClassPCA` calls these from its solve.
"""

import numpy as np

# Ridge added to the within-class covariance, as a share of its mean eigenvalue: keeps
# the generalized eigenproblem well posed when some directions carry no variance.
WITHIN_CLASS_RIDGE = 1e-3


def discriminant_directions(counts, means, covariances, n_directions, ridge=WITHIN_CLASS_RIDGE,
                            *, within=None):
    """Unit Fisher discriminant directions `(d, n)` and their separation ratios `(n,)`.

    Args:
        counts: `(K,)` samples per class.
        means: `(K, d)` class means.
        covariances: `(K, d, d)` class covariances (or an iterable of them); None with
            `within`.
        n_directions: how many directions; at most `K - 1` carry separation.
        ridge: added to the pooled within-class covariance, times its mean eigenvalue.
        within: the pooled within-class covariance `Σ_c n_c cov_c / Σ_c n_c` `(d, d)`,
            instead of `covariances` (e.g. from the total second moment).

    Returns:
        `(directions, ratios)`: columns sorted by between/within variance ratio,
        largest first, each with its largest-magnitude entry positive.

    Example:

    >>> import numpy as np
    >>> means = np.array([[0.0, 0.0], [0.0, 1.0]])   # classes differ along the 2nd axis
    >>> covariances = np.stack([np.diag([9.0, 0.1])] * 2)
    >>> directions, _ = discriminant_directions([50, 50], means, covariances, 1)
    >>> np.round(directions[:, 0], 6).tolist()
    [0.0, 1.0]
    """
    counts = np.asarray(counts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    n_classes, d = means.shape
    if not 1 <= n_directions <= min(d, max(n_classes - 1, 1)):
        raise ValueError(
            f"`n_directions` must lie in [1, {min(d, max(n_classes - 1, 1))}] for "
            f"{n_classes} classes over {d} features; received {n_directions!r}."
        )
    weights = counts / counts.sum()
    if within is None:
        within = sum(w * np.asarray(c, dtype=np.float64) for w, c in zip(weights, covariances))
    within = np.asarray(within, dtype=np.float64)
    overall = weights @ means
    centred = (means - overall) * np.sqrt(weights)[:, None]
    between = centred.T @ centred
    within = (within + within.T) / 2 + ridge * max(np.trace(within) / d, 1e-300) * np.eye(d)
    # Whiten by the within-class covariance, then an ordinary symmetric eigenproblem.
    lower = np.linalg.cholesky(within)
    inverse = np.linalg.inv(lower)
    whitened = inverse @ between @ inverse.T
    ratios, vectors = np.linalg.eigh((whitened + whitened.T) / 2)
    order = np.argsort(ratios)[::-1][:n_directions]
    directions = inverse.T @ vectors[:, order]
    directions /= np.linalg.norm(directions, axis=0)
    return fix_signs(directions), np.clip(ratios[order], 0.0, None)


SIGN_TIE = 1e-3


def fix_signs(vectors):
    """Make the largest-magnitude entry of every column positive (like `svd_flip`).

    Entries within a relative `SIGN_TIE` (1e-3) of the largest count as tied and the
    first of them decides: which of two equal entries rounding makes larger must not
    flip a column. (Float32 products leave about 1e-5 relative in an antisymmetric
    filter's two largest entries, +a and -a: a tighter tie let the host and device
    paths solve opposite filters, which a ReLU after them makes different features.)

    >>> fix_signs(np.array([[0.6, 0.6], [-0.8, 0.8]])).tolist()
    [[-0.6, 0.6], [0.8, 0.8]]
    >>> fix_signs(np.array([[-0.7071067811865476], [0.7071067811865475]])).tolist()
    [[0.7071067811865476], [-0.7071067811865475]]
    """
    magnitudes = np.abs(vectors)
    if not magnitudes.size:
        return vectors
    rows = np.argmax(magnitudes >= magnitudes.max(axis=0) * (1.0 - SIGN_TIE), axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def sign_pair_columns(paired):
    """Source column and sign of every output column when each column `j` with
    `paired[j]` is followed by its negative: `(columns, signs)`.

    Example:

    >>> columns, signs = sign_pair_columns([True, False, True])
    >>> columns.tolist(), signs.tolist()
    ([0, 0, 1, 2, 2], [1.0, -1.0, 1.0, 1.0, -1.0])
    """
    paired = np.asarray(paired, dtype=bool)
    columns = np.repeat(np.arange(len(paired)), np.where(paired, 2, 1))
    signs = np.ones(len(columns))
    signs[1:][columns[1:] == columns[:-1]] = -1.0
    return columns, signs
