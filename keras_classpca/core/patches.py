"""Patches exactly as a Keras convolution sees them (N-D im2col in NumPy).

One function for every convolution kind: `Conv1D/2D/3D` (strides, dilation, padding
`"valid"`, `"same"`, `"causal"`), grouped convolutions and depthwise convolutions (a
depthwise convolution is a grouped one with one input channel per group). A patch is
flattened in `(kernel axis 1, ..., kernel axis r, channel)` order, so that for a
convolution kernel of shape `(k1, ..., kr, c, filters)`::

    conv(x)[n, i, ..., :] == extract_patches(x, ...)[n, i, ..., :] @ kernel.reshape(-1, filters)

and with `groups=g` group `j` sees channels `[j c/g, (j+1) c/g)` and gives the output
channels `[j f/g, (j+1) f/g)`.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PADDINGS = ("valid", "same", "causal")
_SHAPES = {1: "(n, steps, channels)", 2: "(n, height, width, channels)",
           3: "(n, depth, height, width, channels)"}


def _tuple(value, rank, name):
    if isinstance(value, (int, np.integer)):
        value = (value,) * rank
    value = tuple(value)
    if len(value) != rank or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of {rank} of them; received {value!r}."
        )
    return tuple(int(v) for v in value)


def _pair(value, name):
    return _tuple(value, 2, name)


def same_padding(size, kernel, stride, dilation):
    """(before, after) padding of one spatial axis for TensorFlow's 'same' padding."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial_rank(images, kernel_size, rank):
    if rank is not None:
        return rank
    if isinstance(kernel_size, (int, np.integer)):
        return np.ndim(images) - 2
    return len(tuple(kernel_size))


def _geometry(kernel_size, strides, padding, dilation_rate, rank):
    """The checked `(kernel, strides, dilation, padding)` of a convolution of `rank`."""
    kernel = _tuple(kernel_size, rank, "kernel_size")
    strides = _tuple(strides, rank, "strides")
    dilation = _tuple(dilation_rate, rank, "dilation_rate")
    padding = str(padding).lower()
    if padding not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}; received {padding!r}.")
    if padding == "causal" and rank != 1:
        raise ValueError("`padding='causal'` is defined for 1-D convolutions only.")
    return kernel, strides, dilation, padding


def _paddings(spatial, kernel, strides, padding, dilation):
    """`(before, after)` zeros per spatial axis of an input of shape `spatial`."""
    if padding == "same":
        return tuple(same_padding(size, k, s, d)
                     for size, k, s, d in zip(spatial, kernel, strides, dilation))
    if padding == "causal":
        return (((kernel[0] - 1) * dilation[0], 0),)
    return ((0, 0),) * len(spatial)


def _check_fits(padded, effective):
    if any(size < k for size, k in zip(padded, effective)):
        raise ValueError(
            f"Inputs of spatial size {tuple(padded)} are smaller than the dilated "
            f"kernel {effective}."
        )


def patch_indices(spatial, kernel_size, strides=1, padding="valid", dilation_rate=1):
    """Where every patch lies in the zero-padded input, for a gather: `(pads, indices)`.

    `spatial` is the input's spatial shape (without batch and channel axes); `pads` the
    `(before, after)` zeros per spatial axis; `indices` `(positions, prod(kernel))`
    the flat (row-major) indices into the padded spatial grid of each output
    position's patch (positions row-major over the output grid, as `extract_patches`
    numbers them), in kernel order. Gathering those pixels of a channels-last input
    gives `extract_patches`' rows, with no im2col arithmetic.

    >>> pads, indices = patch_indices((4, 4), 3, padding="same")
    >>> pads, indices.shape, indices[0].tolist()
    (((1, 1), (1, 1)), (16, 9), [0, 1, 2, 6, 7, 8, 12, 13, 14])
    """
    spatial = tuple(int(size) for size in spatial)
    rank = len(spatial)
    kernel, strides, dilation, padding = _geometry(kernel_size, strides, padding,
                                                   dilation_rate, rank)
    effective = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    pads = _paddings(spatial, kernel, strides, padding, dilation)
    padded = tuple(size + before + after for size, (before, after) in zip(spatial, pads))
    _check_fits(padded, effective)
    out = tuple((size - k) // s + 1 for size, k, s in zip(padded, effective, strides))
    starts = np.indices(out).reshape(rank, -1) * np.array(strides)[:, None]
    offsets = np.indices(kernel).reshape(rank, -1) * np.array(dilation)[:, None]
    coords = starts[:, :, None] + offsets[:, None, :]  # (rank, positions, prod(kernel))
    return pads, np.ravel_multi_index(tuple(coords), padded)


def extract_patches(
    images, kernel_size, strides=1, padding="valid", dilation_rate=1, *, groups=1, rank=None,
    positions=None,
):
    """Patches of channels-last `images` `(n, *spatial, c)` -> `(n, *out, prod(kernel)*c)`.

    Args:
        images: array of shape `(n, *spatial, channels)` with 1, 2 or 3 spatial axes.
        kernel_size, strides, dilation_rate: int or tuple, as in `keras.layers.ConvND`.
        padding: `"valid"`, `"same"` (zero padding, TensorFlow's split) or `"causal"`
            (1-D only: zeros before the sequence).
        groups: split the channels into this many groups; the result then has shape
            `(n, *out, groups, prod(kernel) * c / groups)`, one patch per group.
        rank: the number of spatial axes; by default the length of a tuple
            `kernel_size`, else `images.ndim - 2`.
        positions: optional `(n, p)` integer array: for each image, the output
            positions (flat, row-major over the output grid) to extract. The result is
            then `(n, p, prod(kernel)*c)` (`(n, p, groups, ...)` with groups), equal to
            the full result's rows at those positions, and only they are copied.

    Example:

    >>> import numpy as np
    >>> extract_patches(np.zeros((2, 5, 5, 3)), 3).shape
    (2, 3, 3, 27)
    >>> extract_patches(np.zeros((2, 9, 4)), 3, padding="causal", groups=2).shape
    (2, 9, 2, 6)
    """
    images = np.asarray(images)
    rank = _spatial_rank(images, kernel_size, rank)
    if rank not in _SHAPES:
        raise ValueError(f"Patches need 1, 2 or 3 spatial axes; received rank {rank!r}.")
    if images.ndim != rank + 2:
        raise ValueError(f"`images` must have shape {_SHAPES[rank]}; received {images.shape}.")
    kernel, strides, dilation, padding = _geometry(kernel_size, strides, padding,
                                                   dilation_rate, rank)
    channels = images.shape[-1]
    if not isinstance(groups, (int, np.integer)) or groups < 1 or channels % groups:
        raise ValueError(
            f"`groups` must be a positive divisor of the {channels} channels; received {groups!r}."
        )
    effective = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    pads = _paddings(images.shape[1:-1], kernel, strides, padding, dilation)
    if any(before or after for before, after in pads):  # (np.pad copies even for none)
        images = np.pad(images, [(0, 0)] + list(pads) + [(0, 0)])
    _check_fits(images.shape[1:-1], effective)
    # windows: (n, *out', c, *effective) as a view, then stride and dilate.
    windows = sliding_window_view(images, effective, axis=tuple(range(1, rank + 1)))
    index = (slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),)
    windows = windows[index + tuple(slice(None, None, d) for d in dilation)]
    n, out = windows.shape[0], windows.shape[1 : rank + 1]
    # -> (n, *out, groups, *kernel, c / groups)
    windows = windows.reshape((n,) + out + (groups, channels // groups) + kernel)
    order = tuple(range(rank + 2)) + tuple(range(rank + 3, 2 * rank + 3)) + (rank + 2,)
    size = math.prod(kernel) * (channels // groups)
    windows = windows.transpose(order)
    # Copied group-major, returned as a `(n, *out, groups, size)` view: each group's rows
    # are then one contiguous block, which the statistics read without a copy.
    windows = np.moveaxis(windows, rank + 1, 0)  # (groups, n, *out, *kernel, c/g)
    if positions is not None:
        coords = np.unravel_index(np.asarray(positions), out)
        windows = windows[(slice(None), np.arange(n)[:, None]) + tuple(coords)]
        out = (windows.shape[2],)
    grouped = np.moveaxis(windows.reshape((groups, n) + out + (size,)), 0, -2)
    return grouped if groups > 1 else grouped[..., 0, :]
