"""Image patches exactly as a Keras `Conv2D` sees them (im2col in NumPy).

A patch is flattened in `(kernel_row, kernel_col, channel)` order, so that for a Conv2D
kernel of shape `(kh, kw, c, filters)`::

    conv(x)[n, i, j, :] == extract_patches(x, ...)[n, i, j, :] @ kernel.reshape(-1, filters)
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pair(value, name):
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise ValueError(f"`{name}` must be a positive int or a pair of them; received {value!r}.")
    return tuple(int(v) for v in value)


def same_padding(size, kernel, stride, dilation):
    """(before, after) padding of one spatial axis for TensorFlow's 'same' padding."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def extract_patches(images, kernel_size, strides=1, padding="valid", dilation_rate=1):
    """Patches of channels-last `images` `(n, h, w, c)` -> `(n, out_h, out_w, kh*kw*c)`.

    Args:
        images: array of shape `(n, height, width, channels)`.
        kernel_size, strides, dilation_rate: int or pair, as in `keras.layers.Conv2D`.
        padding: `"valid"` or `"same"` (zero padding, TensorFlow's split).

    Example:

    >>> import numpy as np
    >>> extract_patches(np.zeros((2, 5, 5, 3)), 3).shape
    (2, 3, 3, 27)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"`images` must have shape (n, height, width, channels); received {images.shape}."
        )
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(strides, "strides")
    dh, dw = _pair(dilation_rate, "dilation_rate")
    padding = str(padding).lower()
    if padding == "same":
        pads = [same_padding(images.shape[1], kh, sh, dh), same_padding(images.shape[2], kw, sw, dw)]
        images = np.pad(images, [(0, 0), pads[0], pads[1], (0, 0)])
    elif padding != "valid":
        raise ValueError(f"`padding` must be 'valid' or 'same'; received {padding!r}.")
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if images.shape[1] < eff_h or images.shape[2] < eff_w:
        raise ValueError(
            f"Images of spatial size {images.shape[1:3]} are smaller than the dilated "
            f"kernel ({eff_h}, {eff_w})."
        )
    # windows: (n, out_h', out_w', c, eff_h, eff_w) as a view, then stride and dilate.
    windows = sliding_window_view(images, (eff_h, eff_w), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, :, ::dh, ::dw]
    n, out_h, out_w, c = windows.shape[:4]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(n, out_h, out_w, kh * kw * c)
