"""A ridge-regression classifier scored leave-one-out: the cheap probe behind
`cutoff="auto"`.

It measures how linearly separable a layer's features are, in closed form (float64),
with no SGD. Large features are first reduced to at most `max_features` values (a
fixed count sketch), so every layer is probed at a bounded cost.
"""

import functools

import numpy as np
import scipy.linalg
import scipy.sparse

from keras_classpca.core.class_pca import blas_threads_for


def reduce_features(features, max_features=2048, seed=0):
    """Flattened features of at most `max_features` values per sample: longer vectors
    go through a fixed count sketch (each input value added, with a random sign, to
    one of `max_features` outputs; seeded). Like a Gaussian projection it preserves
    inner products in expectation and keeps every position apart, as a Flatten–Dense
    top sees them (an earlier option, average pooling over a coarse grid, discarded
    where a feature is and was dropped), at `n·d` operations instead of a GEMM's
    `n·d·max_features`: the decision on a residual network's full-resolution maps
    (12,544 values per image) spent most of its time in that GEMM."""
    features = np.asarray(features).reshape(len(features), -1)
    if features.shape[1] > max_features:
        sketch = _count_sketch(features.shape[1], max_features, seed)
        features = np.asarray(sketch @ features.T.astype(np.float32, copy=False)).T
    return features.astype(np.float64)


@functools.lru_cache(maxsize=8)
def _count_sketch(n_in, n_out, seed):
    """The fixed sketch `(n_out, n_in)`: one ±1 per input column (drawn once per shape
    and seed), as a sparse matrix."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_out, n_in)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), n_in)
    return scipy.sparse.csr_matrix((signs, (rows, np.arange(n_in))), shape=(n_out, n_in))


def loo_ridge_accuracy(features, labels, n_classes, alpha=1e-2):
    """Leave-one-out accuracy of a ridge classifier on in-memory `features`.

    Every sample is scored by the ridge fitted on all the others, in closed form (the
    hat-matrix identity `r_loo = r / (1 - h_ii)`), so all `n` samples count as held
    out: about half the noise of a 1/5 hold-out, for one `d × d` (or `n × n`) solve.
    Features are standardised; `alpha` is relative to their correlation matrix.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300)
    >>> x = rng.normal(size=(300, 5)) + np.eye(5)[y] * 3
    >>> loo_ridge_accuracy(x, y, 3) > 0.9
    True
    """
    x = np.asarray(features, dtype=np.float64)
    with blas_threads_for(min(x.shape)):
        return _loo_ridge_accuracy(x, labels, alpha)


def _loo_ridge_accuracy(x, labels, alpha):
    # Classes as 0..K-1 over those present (ids may be sparse, e.g. {3, 7, 100}); an
    # absent class's target column is all zeros and never the argmax.
    classes, labels = np.unique(np.asarray(labels), return_inverse=True)
    n = len(x)
    targets = np.eye(len(classes))[labels]
    x = x - x.mean(axis=0)
    scale = np.sqrt((x * x).mean(axis=0))
    x = x[:, scale > 1e-12] / scale[scale > 1e-12]
    centred = targets - targets.mean(axis=0)
    if x.shape[1] <= n:  # primal: A = XᵀX + αn I = LLᵀ, hat matrix X A⁻¹ Xᵀ = ZᵀZ
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += alpha * n
        z = scipy.linalg.solve_triangular(
            np.linalg.cholesky(gram), x.T, lower=True, check_finite=False)
        fitted = z.T @ (z @ centred)
        leverage = np.einsum("ij,ij->j", z, z)
    else:  # dual (wide features, few samples): hat = K (K + αn I)⁻¹ = I - αn (K + αn I)⁻¹
        kernel = x @ x.T
        kernel[np.diag_indices_from(kernel)] += alpha * n
        inverse = scipy.linalg.cho_solve(
            scipy.linalg.cho_factor(kernel, check_finite=False), np.eye(n), check_finite=False)
        fitted = centred - alpha * n * (inverse @ centred)
        leverage = 1.0 - alpha * n * np.diag(inverse)
    leverage = leverage + 1.0 / n  # the intercept (the centring) is fitted too
    residual = centred - fitted
    loo = targets - residual / (1.0 - leverage)[:, None]
    return float(np.mean(np.argmax(loo, axis=1) == labels))
