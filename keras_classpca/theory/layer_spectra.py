"""Layer-wise input spectra of a real Keras model.

The measured counterpart of Pennington & Worah's random-layer spectra
(:mod:`keras_classpca.theory.random_matrix`): the covariance eigenvalues of what each
Dense / Conv2D layer of a model receives.  Imports Keras when called.
"""

import numpy as np

from keras_classpca.core.patches import extract_patches
from keras_classpca.theory._validation import check_samples

__all__ = ["layer_input_spectra"]


def _model_input(model):
    """The single symbolic input of a Sequential-with-Input or functional model."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"model {model.name!r} must be built on keras.Input (Sequential with an Input or "
            "functional) so that layer inputs can be read."
        )
    if len(inputs) != 1:
        raise ValueError(
            f"`model` ({model.name!r}) must have a single input; received {len(inputs)}.")
    return inputs[0]


def _layer_inputs(model, x, batch_size):
    """``[(layer, its input on x)]`` for every Dense / Conv2D layer, nested models included.

    Each model level is probed once (a model from its input to every layer's input);
    a nested model's own input on ``x`` then feeds the probe of its layers.
    """
    import keras

    from keras_classpca.hybrid.planner import call_tensors

    kinds = (keras.layers.Dense, keras.layers.Conv2D)
    top = [layer for layer in model.layers if isinstance(layer, (*kinds, keras.Model))]
    if not top:
        return []
    # The tensors each layer (or nested model) was called on in this model's graph.
    probe = keras.Model(_model_input(model), [call_tensors(model, layer)[0][0] for layer in top])
    # Direct calls (inference mode) in batches: no tf.function retracing per call.
    chunks = []
    for i in range(0, x.shape[0], int(batch_size)):
        outs = probe(x[i : i + batch_size])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        chunks.append([np.asarray(keras.ops.convert_to_numpy(o)) for o in outs])
    pairs = []
    for layer, parts in zip(top, zip(*chunks)):
        h = np.concatenate(parts, axis=0)
        if isinstance(layer, keras.Model):
            pairs += _layer_inputs(layer, h, batch_size)
        else:
            pairs.append((layer, h))
    return pairs


def _covariance_eigenvalues(rows):
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows - rows.mean(axis=0, keepdims=True)
    cov = rows.T @ rows / max(rows.shape[0] - 1, 1)
    return np.sort(np.linalg.eigvalsh(cov))[::-1].clip(min=0.0)


def layer_input_spectra(model, x, max_samples=2000, *, seed=0, batch_size=256):
    """Eigenvalues of the covariance of the input of every Dense / Conv2D layer.

    For a ``Dense`` layer the rows are the layer's input vectors (extra leading
    axes flattened); for a ``Conv2D`` layer they are the image patches the
    kernel sees (im2col with the layer's kernel size, strides, padding and
    dilation), of dimension ``kh * kw * channels``.  This is the spectrum that
    Pennington & Worah describe for random layers, measured on real data; use it
    to see how a solved class-PCA layer reshapes what the next layer receives.

    Args:
        model: a built Keras model (Sequential or functional) containing at
            least one Dense or Conv2D layer; the layers of nested models
            (Sequential or functional) are measured too.
        x: input data (array) accepted by ``model``.
        max_samples: at most this many rows (samples or patches, chosen at
            random) enter each covariance.
        seed: seed of the subsampling.
        batch_size: batch size of the forward pass.

    Returns:
        ``dict`` mapping layer name to the eigenvalues (descending, float64),
        in the order the layers appear in the model.

    Example:
        >>> import numpy as np, keras
        >>> from keras_classpca.theory import layer_input_spectra
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d1"),
        ...                           keras.layers.Dense(2, name="d2")])
        >>> spectra = layer_input_spectra(model, np.random.rand(100, 8).astype("float32"))
        >>> list(spectra), spectra["d1"].shape
        (['d1', 'd2'], (8,))
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if int(max_samples) != max_samples or max_samples < 2:
        raise ValueError(f"`max_samples` must be an integer >= 2; received {max_samples!r}.")
    _model_input(model)
    x = check_samples("x", x, min_samples=2)  # a covariance needs two samples
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_samples:
        x = x[np.sort(rng.choice(x.shape[0], int(max_samples), replace=False))]
    pairs = _layer_inputs(model, x, batch_size)
    if not pairs:
        raise ValueError("model has no Dense or Conv2D layers; nothing to measure.")
    spectra = {}
    for layer, h in pairs:
        h = np.asarray(h, dtype=np.float64)
        if isinstance(layer, keras.layers.Conv2D):
            if layer.data_format == "channels_first":
                h = np.moveaxis(h, 1, -1)
            patches = extract_patches(
                h, layer.kernel_size, layer.strides, layer.padding, layer.dilation_rate
            )
            rows = patches.reshape(-1, patches.shape[-1])
        else:
            rows = h.reshape(-1, h.shape[-1])
        if rows.shape[0] > max_samples:
            rows = rows[rng.choice(rows.shape[0], int(max_samples), replace=False)]
        spectra[layer.name] = _covariance_eigenvalues(rows)
    return spectra
