"""A streamed ridge-regression classifier: the cheap probe behind `cutoff="auto"`.

It measures how linearly separable a layer's features are, in closed form and one
pass (float64 normal equations), with no SGD. Large feature maps are first reduced to
at most `max_features` values by average pooling over a coarse spatial grid (or, for
vectors, a fixed random projection), so every cutoff is probed at a bounded cost.
"""

import numpy as np


def _bin_edges(size, bins):
    return np.linspace(0, size, bins + 1).round().astype(int)


def reduce_features(features, max_features=2048, seed=0):
    """Flattened features of at most `max_features` values per sample.

    `(n, h, w, c)` maps are averaged over a `g × g` grid with `g² c <= max_features`;
    longer vectors are multiplied by a fixed Gaussian projection (seeded).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 4:
        n, h, w, c = features.shape
        grid = int(np.sqrt(max_features / c)) if c <= max_features else 1
        grid_h, grid_w = max(1, min(h, grid)), max(1, min(w, grid))
        if (grid_h, grid_w) != (h, w):
            rows, cols = _bin_edges(h, grid_h), _bin_edges(w, grid_w)
            pooled = np.empty((n, grid_h, grid_w, c))
            for i in range(grid_h):
                for j in range(grid_w):
                    pooled[:, i, j] = features[
                        :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]
                    ].mean(axis=(1, 2))
            features = pooled
    features = features.reshape(len(features), -1)
    if features.shape[1] > max_features:
        projection = np.random.default_rng(seed).normal(
            size=(features.shape[1], max_features)
        ) / np.sqrt(max_features)
        features = features @ projection
    return features


class RidgeProbe:
    """Ridge classifier on standardised features, fitted from streamed moments.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 600)
    >>> x = rng.normal(size=(600, 5)) + np.eye(5)[y] * 3
    >>> probe = RidgeProbe(n_classes=3).partial_fit(x[:400], y[:400])
    >>> probe.score(x[400:], y[400:]) > 0.9
    True
    """

    def __init__(self, n_classes, alpha=1e-3):
        self.n_classes = n_classes
        self.alpha = alpha
        self._n = 0
        self._sum = None
        self._gram = None
        self._cross = None
        self._weights = None

    def partial_fit(self, features, labels):
        features = np.asarray(features, dtype=np.float64)
        targets = np.eye(self.n_classes)[np.asarray(labels)]
        if self._gram is None:
            d = features.shape[1]
            self._sum, self._gram = np.zeros(d), np.zeros((d, d))
            self._cross = np.zeros((d, self.n_classes))
            self._target_sum = np.zeros(self.n_classes)
        self._n += len(features)
        self._sum += features.sum(axis=0)
        self._gram += features.T @ features
        self._cross += features.T @ targets
        self._target_sum += targets.sum(axis=0)
        self._weights = None
        return self

    def _solve(self):
        n = self._n
        mean = self._sum / n
        covariance = self._gram / n - np.outer(mean, mean)
        cross = self._cross / n - np.outer(mean, self._target_sum / n)
        scale = np.sqrt(np.maximum(np.diag(covariance), 1e-12))
        correlation = covariance / np.outer(scale, scale)
        ridge = self.alpha * np.eye(len(scale))
        weights = np.linalg.solve(correlation + ridge, cross / scale[:, None])
        # The intercept: the class frequencies (targets were centred above).
        self._weights = (weights / scale[:, None], mean, self._target_sum / n)

    def score(self, features, labels):
        """Accuracy of the ridge classifier on held-out `(features, labels)`."""
        if self._weights is None:
            self._solve()
        weights, mean, intercept = self._weights
        scores = (np.asarray(features, dtype=np.float64) - mean) @ weights + intercept
        predictions = np.argmax(scores, axis=1)
        return float(np.mean(predictions == np.asarray(labels)))


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
    labels = np.asarray(labels)
    n = len(x)
    targets = np.eye(n_classes)[labels]
    x = x - x.mean(axis=0)
    scale = np.sqrt((x * x).mean(axis=0))
    x = x[:, scale > 1e-12] / scale[scale > 1e-12]
    centred = targets - targets.mean(axis=0)
    if x.shape[1] <= n:  # primal: (XᵀX + αn I) w = Xᵀ t
        inverse = np.linalg.inv(x.T @ x + alpha * n * np.eye(x.shape[1]))
        fitted = x @ (inverse @ (x.T @ centred))
        leverage = ((x @ inverse) * x).sum(axis=1)
    else:  # dual: the n × n kernel (wide features, few samples)
        kernel = x @ x.T
        hat = kernel @ np.linalg.inv(kernel + alpha * n * np.eye(n))
        fitted, leverage = hat @ centred, np.diag(hat)
    leverage = leverage + 1.0 / n  # the intercept (the centring) is fitted too
    residual = centred - fitted
    loo = targets - residual / (1.0 - leverage)[:, None]
    return float(np.mean(np.argmax(loo, axis=1) == labels))
