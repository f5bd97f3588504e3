"""Conditioning of the kernel with depth (Agarwal, Awasthi & Kale, 2020).

"A deep conditioning treatment of neural networks": with an activation normalized to
mean 0 and variance 1 under a standard Gaussian
(:class:`keras_classpca.layers.normalized_relu.NormalizedReLU`), the cosine Gram matrix of a
random network's representations becomes better conditioned with depth.  NumPy only;
Keras is imported only to measure a Keras model.
"""

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from keras_classpca.theory._validation import check_samples
from keras_classpca.theory.activations import (
    NORMALIZED_RELU_MEAN,
    NORMALIZED_RELU_STD,
    resolve_activation,
)

__all__ = ["normalized_gram", "gram_condition_number", "kernel_condition_number"]


def normalized_gram(features):
    """Cosine Gram matrix ``K_ij = <h_i, h_j> / (|h_i| |h_j|)`` of the rows of ``features``.

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import normalized_gram
        >>> normalized_gram(np.array([[2.0, 0.0], [1.0, 1.0]])).round(3).tolist()
        [[1.0, 0.707], [0.707, 1.0]]
    """
    h = check_samples("features", features)
    if h.ndim < 2:
        raise ValueError(
            f"`features` must be at least 2-D (samples, ...); received shape {h.shape}.")
    h = h.reshape(h.shape[0], -1)
    norms = np.linalg.norm(h, axis=1)
    if np.any(norms == 0):
        raise ValueError("features contains an all-zero row; its normalized Gram is undefined.")
    h = h / norms[:, None]
    return h @ h.T


def gram_condition_number(features):
    """Condition number ``lambda_max / lambda_min`` of :func:`normalized_gram`.

    Returns ``inf`` when the Gram matrix is singular (more samples than
    feature dimensions, or parallel rows).

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import gram_condition_number
        >>> float(gram_condition_number(np.eye(5)))
        1.0
    """
    k = normalized_gram(features)
    ev = np.linalg.eigvalsh(k)
    if ev[0] <= 1e-12 * ev[-1]:
        return float("inf")
    return float(ev[-1] / ev[0])


def _relu_product_mean(c):
    """``E[relu(u) relu(v)]`` for standard Gaussians ``(u, v)`` with correlation ``c``
    (the degree-1 arc-cosine kernel of Cho & Saul, 2009)."""
    c = np.clip(c, -1.0, 1.0)
    return (np.sqrt(1.0 - c * c) + (np.pi - np.arccos(c)) * c) / (2.0 * np.pi)


# Closed-form dual activations c -> E[f(u) f(v)] / E[f(u)**2].
_EXACT_DUAL = {
    "relu": lambda c: 2.0 * _relu_product_mean(c),
    "normalized_relu": lambda c: (_relu_product_mean(c) - NORMALIZED_RELU_MEAN**2)
    / NORMALIZED_RELU_STD**2,
    "linear": lambda c: np.clip(c, -1.0, 1.0),
}
_EXACT_DUAL["normalizedrelu"] = _EXACT_DUAL["normalized_relu"]
_EXACT_DUAL["identity"] = _EXACT_DUAL["linear"]


def _dual_correlation_map(activation, f, num_grid=1001, num_nodes=96):
    """The map c -> E[f(u) f(v)] / E[f(u)^2] for standard (u, v) with correlation c.

    Closed forms for ReLU, NormalizedReLU and linear; otherwise tabulated on
    ``num_grid`` points with a two-dimensional Gauss--Hermite rule and interpolated
    (about 3e-3 off across a kink: ReLU's table against its closed form).
    """
    key = activation.lower() if isinstance(activation, str) else None
    if key in _EXACT_DUAL:
        return _EXACT_DUAL[key]
    z, w = hermegauss(num_nodes)
    w = w / w.sum()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    ww = np.outer(w, w)
    fu = f(z1)
    grid = np.linspace(-1.0, 1.0, num_grid)
    vals = np.empty_like(grid)
    for i, ci in enumerate(grid):
        v = ci * z1 + np.sqrt(max(1.0 - ci * ci, 0.0)) * z2
        vals[i] = np.sum(ww * fu * f(v))
    table = vals / np.sum(w * f(z) ** 2)
    return lambda c: np.interp(np.clip(c, -1.0, 1.0), grid, table)


def kernel_condition_number(
    model_or_depth,
    x,
    *,
    activation="relu",
    width=1024,
    batchnorm=False,
    normalize_inputs=True,
    seed=0,
):
    """Condition number of the normalized Gram matrix of a network's features vs depth.

    The quantity studied by Agarwal, Awasthi & Kale (2020): for a random
    network, the cosine Gram matrix of the representations of the points ``x``
    after ``l`` layers.  With an activation normalized to mean 0 and variance
    1 under a standard Gaussian (:class:`NormalizedReLU`), correlations between
    different points shrink with depth and the condition number tends to 1;
    with plain ReLU (mean > 0) all points become aligned and it grows.

    Two modes:

    * ``model_or_depth`` an ``int`` L: a random fully connected network of
      depth L.  Layer ``l`` computes ``h <- f(BN(h W_l))`` with
      ``W_l ~ N(0, 1 / fan_in)`` and no bias (BN only if ``batchnorm``,
      normalizing each unit over the batch ``x`` as in training mode).  With
      ``width=None`` the infinite-width kernel is propagated exactly through
      the dual activation ``c -> E[f(u) f(v)] / E[f(u)**2]`` (valid for
      positively homogeneous activations such as ReLU and for activations with
      ``E f(z)**2 = 1`` on inputs of equal norm; not available with batchnorm).
      The dual activation is in closed form for ``"relu"`` (the arc-cosine
      kernel), ``"normalized_relu"`` and ``"linear"``, tabulated otherwise.
    * a Keras model: the features after each Dense block (the input, then the
      tensor just before each following Dense layer, then the output), computed
      layer by layer with ``training=True`` only for BatchNormalization layers.

    Args:
        model_or_depth: ``int`` depth or a Sequential-like ``keras.Model``.
        x: array ``(n, d)`` of inputs (``n`` points).
        activation: name or callable for the int mode; ``"normalized_relu"``
            selects :class:`NormalizedReLU`'s function.
        width: hidden width (int mode); ``None`` for infinite width.
        batchnorm: insert batch normalization before each activation (int mode).
        normalize_inputs: rescale each row of ``x`` to norm ``sqrt(d)`` (int
            mode) so pre-activations are standard Gaussian, as in the paper.
        seed: random seed of the weights (int mode).

    Returns:
        float array of length ``depth + 1``: entry ``l`` is the condition
        number after ``l`` layers (entry 0: the inputs).

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import kernel_condition_number
        >>> x = np.random.default_rng(0).normal(size=(20, 30)) + 2.0
        >>> c = kernel_condition_number(10, x, activation="normalized_relu", width=None)
        >>> bool(c[-1] < c[0])
        True
    """
    x = check_samples("x", x)
    if x.ndim != 2:
        raise ValueError(f"`x` must be a 2-D array (n, d); received shape {x.shape}.")
    if isinstance(model_or_depth, bool) or not isinstance(model_or_depth, (int, np.integer)):
        import keras  # only a model needs Keras

        if isinstance(model_or_depth, keras.Model):
            return _model_condition_numbers(model_or_depth, x)
        raise TypeError(
            "`model_or_depth` must be an int depth or a keras.Model; received "
            f"{type(model_or_depth).__name__}."
        )
    depth = int(model_or_depth)
    if depth < 0:
        raise ValueError(f"`model_or_depth` (depth) must be >= 0; received {depth}.")
    f = resolve_activation(activation)
    if normalize_inputs:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("x contains an all-zero row.")
        x = x / norms * np.sqrt(x.shape[1])
    conds = [gram_condition_number(x)]
    if width is None:
        if batchnorm:
            raise ValueError("width=None (infinite width) is not available with batchnorm=True.")
        dual = _dual_correlation_map(activation, f)
        k = normalized_gram(x)
        for _ in range(depth):
            k = dual(k)
            d = np.sqrt(np.diag(k))
            k = k / np.outer(d, d)
            ev = np.linalg.eigvalsh(k)
            conds.append(float(ev[-1] / ev[0]) if ev[0] > 1e-12 * ev[-1] else float("inf"))
        return np.array(conds)
    if int(width) != width or width < 1:
        raise ValueError(f"`width` must be a positive integer or None; received {width!r}.")
    rng = np.random.default_rng(seed)
    h = x
    for _ in range(depth):
        w = rng.standard_normal((h.shape[1], int(width))) / np.sqrt(h.shape[1])
        h = h @ w
        if batchnorm:
            h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-5)
        h = f(h)
        conds.append(gram_condition_number(h))
    return np.array(conds)


def _check_chain(model, layers):
    """Raise a `ValueError` unless `layers` are one chain, each reading the one before
    (what the features after each Dense block assume)."""
    import keras

    nested = [l.name for l in layers if isinstance(l, keras.Model)]
    if not isinstance(model, keras.Sequential):  # a Sequential is a chain by construction
        for before, layer in zip(layers, layers[1:]):
            try:
                chained = layer.input is before.output
            except (AttributeError, ValueError):
                chained = False
            if not chained:
                raise ValueError(
                    f"kernel_condition_number(model) follows a chain of layers, each reading "
                    f"the one before; '{layer.name}' does not read '{before.name}' (a "
                    "branching, merging or multi-input graph). Pass the features yourself "
                    "to `gram_condition_number`."
                )
    if nested:
        raise ValueError(
            f"kernel_condition_number(model) does not look inside nested models "
            f"({', '.join(nested)}): their Dense layers would be skipped. Flatten the model "
            "or pass the features yourself to `gram_condition_number`."
        )


def _model_condition_numbers(model, x):
    import keras

    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    _check_chain(model, layers)
    if not any(isinstance(l, keras.layers.Dense) for l in layers):
        raise ValueError("model has no Dense layers; kernel_condition_number needs Dense blocks.")
    h = keras.ops.convert_to_tensor(x.astype("float32"))
    feats = [x]
    seen_dense = False
    for layer in layers:
        if isinstance(layer, keras.layers.Dense):
            if seen_dense:
                feats.append(keras.ops.convert_to_numpy(h))
            seen_dense = True
        if isinstance(layer, keras.layers.BatchNormalization):
            h = layer(h, training=True)
        else:
            h = layer(h)
    feats.append(keras.ops.convert_to_numpy(h))
    return np.array([gram_condition_number(f) for f in feats])
