"""What class-PCA needs to know about a Keras layer: can it be solved, what rows does
its input give, and how a solution becomes its weights.

Shared by the `ClassPCA*` layers' `adapt`, `ClassPCAInitializer` and `hybridize`.
A Dense layer's rows are its input vectors (all leading axes flattened); a Conv2D
layer's rows are its own patches (kernel size, strides, padding and dilation as
configured), produced a bounded chunk of images at a time.
"""

import keras
import numpy as np

from keras_classpca.core.patches import extract_patches

# Patch rows materialised at once for a Conv2D: bounds memory to ~32 MB of float64.
MAX_CHUNK_VALUES = 1 << 22


def iter_layers(model):
    """All layers of `model` in order, descending into nested models."""
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)


def unsolvable_reason(layer):
    """None if class-PCA can compute `layer`'s weights, else why not (one sentence)."""
    name = f"{type(layer).__name__} '{layer.name}'"
    if isinstance(layer, keras.layers.Dense):
        if getattr(layer, "quantization_mode", None):
            return f"{name} is quantized ({layer.quantization_mode}); solve before quantizing."
        if getattr(layer, "lora_enabled", False):
            return f"{name} has LoRA enabled; class-PCA solves the full kernel only."
        return None
    if isinstance(layer, keras.layers.Conv2D):
        if layer.groups != 1:
            return f"{name} is a grouped convolution (groups={layer.groups}); only groups=1 is solvable."
        if getattr(layer, "lora_enabled", False):
            return f"{name} has LoRA enabled; class-PCA solves the full kernel only."
        return None
    return (
        f"{name} is not a Dense or Conv2D layer; class-PCA solves only those "
        "(other layers with weights end the solved prefix)."
    )


def output_size(layer):
    """Units of a Dense, filters of a Conv2D."""
    return layer.units if isinstance(layer, keras.layers.Dense) else layer.filters


def check_input(layer, x, argument="x"):
    """Raise a `ValueError` naming `argument` if `x` cannot feed `layer`."""
    if isinstance(layer, keras.layers.Conv2D):
        if x.ndim != 4:
            raise ValueError(
                f"`{argument}` for {type(layer).__name__} '{layer.name}' must be 4-D "
                f"(batch, height, width, channels); received shape {x.shape}."
            )
    elif x.ndim < 2:
        raise ValueError(
            f"`{argument}` for {type(layer).__name__} '{layer.name}' must be at least 2-D "
            f"(batch, ..., features); received shape {x.shape}."
        )
    if x.dtype.kind not in "biuf":
        raise TypeError(f"`{argument}` must be numeric; received dtype {x.dtype}.")
    if layer.built and isinstance(layer, keras.layers.Conv2D):
        channels_axis = -1 if layer.data_format == "channels_last" else 1
        expected = layer.kernel.shape[2] * layer.groups
        if x.shape[channels_axis] != expected:
            raise ValueError(
                f"`{argument}` has {x.shape[channels_axis]} channels but "
                f"{type(layer).__name__} '{layer.name}' expects {expected}."
            )
    elif layer.built and x.shape[-1] != layer.kernel.shape[0]:
        raise ValueError(
            f"`{argument}` has {x.shape[-1]} features but {type(layer).__name__} "
            f"'{layer.name}' expects {layer.kernel.shape[0]}."
        )


def iter_rows(layer, x, labels, *, patches_per_image=None, rng=None):
    """Yield `(rows, row_labels)` chunks of `layer`'s input `x` (numpy).

    Args:
        layer: a Dense or Conv2D layer.
        x: a batch of that layer's input.
        labels: int labels of the batch's samples; repeated for each row of a sample.
        patches_per_image: for Conv2D, keep this many random patches per image.
        rng: `np.random.Generator` for the patch sub-sampling.
    """
    if isinstance(layer, keras.layers.Dense):
        per_sample = int(np.prod(x.shape[1:-1])) if x.ndim > 2 else 1
        yield x.reshape(-1, x.shape[-1]), np.repeat(labels, per_sample)
        return
    if layer.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    kh, kw = layer.kernel_size
    values_per_image = max(1, x.shape[1] * x.shape[2] * kh * kw * x.shape[3])
    step = max(1, MAX_CHUNK_VALUES // values_per_image)
    for start in range(0, len(x), step):
        patches = extract_patches(
            x[start : start + step],
            layer.kernel_size,
            layer.strides,
            layer.padding,
            layer.dilation_rate,
        )
        n, out_h, out_w, d = patches.shape
        patches = patches.reshape(n, out_h * out_w, d)
        chunk_labels = labels[start : start + step]
        if patches_per_image is not None and patches_per_image < out_h * out_w:
            keep = np.stack(
                [rng.choice(out_h * out_w, patches_per_image, replace=False) for _ in range(n)]
            )
            patches = np.take_along_axis(patches, keep[:, :, None], axis=1)
        yield patches.reshape(-1, d), np.repeat(chunk_labels, patches.shape[1])


def kernel_from_solution(layer, kernel):
    """Reshape a `(d, n)` solution kernel to `layer`'s kernel shape."""
    return np.asarray(kernel).reshape(tuple(layer.kernel.shape))


def assign_solution(layer, kernel, bias):
    """Write a solved `(d, n)` kernel and `(n,)` bias into a built layer."""
    layer.kernel.assign(kernel_from_solution(layer, kernel).astype(layer.kernel.dtype))
    if layer.use_bias:
        layer.bias.assign(np.asarray(bias).astype(layer.bias.dtype))
