"""Conv patches: `extract_patches` vs a brute-force im2col, vs Keras `Conv2D`, and the
patch statistics `ClassPCAConv2D.adapt` gathers."""

import itertools

import keras
import numpy as np
import pytest

from keras_classpca import ClassPCA, ClassPCAConv2D
from keras_classpca.core.patches import extract_patches, patch_indices


def brute_force_patches(images, kernel_size, strides, padding, dilation):
    """Loop-based im2col in TensorFlow's conventions, written independently."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation
    n, h, w, c = images.shape
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        out_h, out_w = -(-h // sh), -(-w // sw)
        pad_h = max((out_h - 1) * sh + eff_h - h, 0)
        pad_w = max((out_w - 1) * sw + eff_w - w, 0)
        top, left = pad_h // 2, pad_w // 2
    else:
        out_h, out_w = (h - eff_h) // sh + 1, (w - eff_w) // sw + 1
        top = left = 0
    out = np.zeros((n, out_h, out_w, kh * kw * c), dtype=images.dtype)
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                values = []
                for u in range(kh):
                    for v in range(kw):
                        r, s = i * sh + u * dh - top, j * sw + v * dw - left
                        inside = 0 <= r < h and 0 <= s < w
                        values.extend(images[b, r, s] if inside else np.zeros(c, images.dtype))
                out[b, i, j] = values
    return out


GEOMETRIES = [
    # kernel, strides, padding, dilation, image (h, w)
    ((3, 3), (1, 1), "valid", (1, 1), (7, 7)),
    ((3, 3), (1, 1), "same", (1, 1), (7, 7)),
    ((3, 2), (2, 2), "valid", (1, 1), (8, 7)),
    ((3, 3), (2, 2), "same", (1, 1), (8, 7)),
    ((3, 3), (1, 2), "same", (1, 1), (6, 9)),
    ((2, 3), (1, 1), "valid", (2, 2), (9, 8)),
    ((3, 3), (1, 1), "same", (2, 2), (7, 8)),
    ((2, 2), (2, 2), "same", (2, 2), (9, 9)),  # numpy only: Keras refuses stride+dilation
    ((4, 4), (3, 3), "same", (1, 1), (10, 5)),  # odd padding split
]


@pytest.mark.backend_independent
@pytest.mark.parametrize("kernel, strides, padding, dilation, hw", GEOMETRIES)
def test_extract_patches_equals_brute_force(kernel, strides, padding, dilation, hw):
    images = np.random.default_rng(0).normal(size=(2,) + hw + (3,))
    expected = brute_force_patches(images, kernel, strides, padding, dilation)
    got = extract_patches(images, kernel, strides, padding, dilation)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.backend_independent
@pytest.mark.parametrize("shape, kernel, strides, padding, dilation, groups", [
    ((3, 7, 7, 4), 3, 1, "valid", 1, 1),
    ((3, 8, 7, 4), (3, 2), 2, "same", 1, 2),
    ((3, 9, 4), 3, 1, "causal", 2, 4),
    ((2, 5, 6, 5, 2), 2, (1, 2, 1), "same", 1, 1),
])
def test_extracting_chosen_positions_equals_the_full_rows_there(shape, kernel, strides,
                                                                 padding, dilation, groups):
    images = np.random.default_rng(0).normal(size=shape)
    full = extract_patches(images, kernel, strides, padding, dilation, groups=groups)
    n = shape[0]
    flat = full.reshape((n, -1) + full.shape[len(shape) - 1:])
    positions = np.stack([np.random.default_rng(i).choice(flat.shape[1], 3, replace=False)
                          for i in range(n)])
    chosen = extract_patches(images, kernel, strides, padding, dilation, groups=groups,
                             positions=positions)
    np.testing.assert_array_equal(chosen, np.take_along_axis(
        flat, positions.reshape(positions.shape + (1,) * (flat.ndim - 2)), axis=1))


@pytest.mark.backend_independent
@pytest.mark.parametrize("shape, kernel, strides, padding, dilation", [
    (g[4] + (3,), g[0], g[1], g[2], g[3]) for g in GEOMETRIES] + [
    ((9, 4), 3, 1, "causal", 2),
    ((10, 2), 4, 3, "valid", 1),
    ((5, 6, 5, 2), 2, (1, 2, 1), "same", 1),
    ((4, 7, 6, 1), (2, 3, 2), (2, 1, 3), "valid", 1),
])
def test_gathering_patch_indices_equals_extract_patches(shape, kernel, strides, padding,
                                                        dilation):
    # The device path gathers patches by these indices instead of an im2col.
    images = np.random.default_rng(0).normal(size=(2,) + shape)
    expected = extract_patches(images, kernel, strides, padding, dilation)
    pads, indices = patch_indices(shape[:-1], kernel, strides, padding, dilation)
    padded = np.pad(images, [(0, 0)] + list(pads) + [(0, 0)])
    pixels = padded.reshape(2, -1, shape[-1])  # (n, padded positions, channels)
    got = pixels[:, indices]  # (n, positions, prod(kernel), channels)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)


KERAS_CASES = [
    (padding, stride, dilation)
    for padding, stride, dilation in itertools.product(["valid", "same"], [1, 2], [1, 2])
    if not (stride > 1 and dilation > 1)  # Keras raises for that combination
]


@pytest.mark.parametrize("padding, stride, dilation", KERAS_CASES)
def test_patches_times_kernel_equals_keras_conv2d(padding, stride, dilation):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 9, 8, 3)).astype("float32")
    conv = keras.layers.Conv2D(5, 3, strides=stride, padding=padding, dilation_rate=dilation)
    conv.build(images.shape)
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    bias = rng.normal(size=5)
    conv.bias.assign(bias.astype("float32"))
    expected = keras.ops.convert_to_numpy(conv(images))
    patches = extract_patches(images.astype(np.float64), 3, stride, padding, dilation)
    got = patches @ kernel.reshape(-1, 5) + bias
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"images": np.zeros((4, 4, 1)), "rank": 2},
            r"`images` must have shape \(n, height, width, channels\)",
        ),
        (
            {"images": np.zeros((4, 4, 1)), "kernel_size": (3, 3, 3)},
            r"`images` must have shape \(n, depth, height, width, channels\)",
        ),
        ({"kernel_size": 0}, "`kernel_size` must be a positive int"),
        ({"kernel_size": (3, 3, 3), "rank": 2}, "`kernel_size` must be a positive int"),
        ({"kernel_size": 3, "rank": 4}, "1, 2 or 3 spatial axes"),
        ({"strides": (1, 0)}, "`strides` must be a positive int"),
        ({"dilation_rate": -1}, "`dilation_rate` must be a positive int"),
        ({"padding": "full"}, "`padding` must be one of"),
        ({"padding": "causal"}, "causal.* 1-D convolutions only"),
        ({"groups": 2, "images": np.zeros((1, 5, 5, 3))}, "`groups` must be a positive divisor"),
        ({"kernel_size": 6}, r"smaller than the dilated kernel \(6, 6\)"),
        ({"dilation_rate": 3}, r"smaller than the dilated kernel \(7, 7\)"),
    ],
)
def test_extract_patches_bad_arguments(kwargs, match):
    arguments = {"images": np.zeros((1, 5, 5, 1)), "kernel_size": 3}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        extract_patches(**arguments)


# ---------------------------------------------------------------- patch statistics of adapt
def _labelled_images(n=24, hw=(8, 7), channels=2, n_classes=3, seed=2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    images = rng.normal(size=(n,) + hw + (channels,))
    images[..., 0] += y[:, None, None]  # classes differ a little
    return images.astype("float32"), y


@pytest.mark.parametrize(
    "strides, padding, dilation",
    [(1, "valid", 1), (2, "same", 1), (1, "same", 2), ((2, 1), "valid", 1)],
)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv_adapt_statistics_equal_brute_force(strides, padding, dilation, data_format):
    images, y = _labelled_images()
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    patches = brute_force_patches(
        images.astype(np.float64), (3, 3), pair(strides), padding, pair(dilation)
    )
    rows = patches.reshape(-1, patches.shape[-1])
    row_labels = np.repeat(y, patches.shape[1] * patches.shape[2])
    reference = ClassPCA(6, dedup_threshold=None).fit(rows, row_labels)

    layer = ClassPCAConv2D(
        6,
        3,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
        dedup_threshold=None,
        product_dtype="float64",  # exact statistics: this test is about the patches
    )
    x = images if data_format == "channels_last" else np.moveaxis(images, -1, 1)
    layer.adapt((x, y), batch_size=7)
    stats = layer.class_pca_
    np.testing.assert_array_equal(stats.n_samples_seen_, np.bincount(row_labels))
    for label in range(3):
        np.testing.assert_allclose(
            stats.class_matrix(label), reference.class_matrix(label), rtol=1e-10, atol=1e-12
        )
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert kernel.shape == (3, 3, 2, 6)
    np.testing.assert_allclose(
        kernel.reshape(-1, 6), reference.kernel_.astype("float32"), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.bias), reference.bias_, rtol=1e-5, atol=1e-5
    )
    # The layer's output is the reference transform of its own patches.
    out = keras.ops.convert_to_numpy(layer(x))
    if data_format == "channels_first":
        out = np.moveaxis(out, 1, -1)
    expected = reference.transform(rows).reshape(patches.shape[:3] + (6,))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_patches_per_image_subsamples_reproducibly():
    images, y = _labelled_images()
    a = ClassPCAConv2D(6, 3, patches_per_image=5, seed=3)
    a.adapt((images, y))
    np.testing.assert_array_equal(a.class_pca_.n_samples_seen_, np.bincount(y) * 5)
    b = ClassPCAConv2D(6, 3, patches_per_image=5, seed=3)
    b.adapt((images, y))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(a.kernel), keras.ops.convert_to_numpy(b.kernel)
    )
    c = ClassPCAConv2D(6, 3, patches_per_image=5, seed=4)
    c.adapt((images, y))
    assert not np.array_equal(a.class_pca_.covariance_, c.class_pca_.covariance_)


@pytest.mark.parametrize("patches_per_image", [None, 4])
def test_chunked_patch_extraction_gives_the_same_statistics(monkeypatch, patches_per_image):
    import keras_classpca.layers.geometry as layer_inputs

    images, y = _labelled_images(n=15)
    exact = {"product_dtype": "float64"}  # float32 products depend on the chunking
    whole = ClassPCAConv2D(6, 3, patches_per_image=patches_per_image, **exact)
    whole.adapt((images, y))
    monkeypatch.setattr(layer_inputs, "MAX_CHUNK_VALUES", 1)  # one image per chunk
    chunked = ClassPCAConv2D(6, 3, patches_per_image=patches_per_image, **exact)
    chunked.adapt((images, y))
    np.testing.assert_array_equal(
        chunked.class_pca_.n_samples_seen_, whole.class_pca_.n_samples_seen_
    )
    np.testing.assert_allclose(
        chunked.class_pca_.covariance_, whole.class_pca_.covariance_, rtol=1e-10, atol=1e-12
    )


@pytest.mark.backend_independent
@pytest.mark.parametrize("shape, kernel, groups, positions", [
    ((3, 7, 7, 4), 3, 4, None),
    ((3, 7, 7, 4), 3, 2, 5),
    ((2, 9, 6), 2, 3, None),
])
def test_grouped_patches_are_the_channel_slices_and_each_group_reads_contiguously(
        shape, kernel, groups, positions):
    from keras_classpca.layers.geometry import iter_group_rows

    images = np.random.default_rng(0).normal(size=shape).astype("float32")
    chosen = None
    if positions is not None:
        chosen = np.stack([np.random.default_rng(i).choice(25, positions, replace=False)
                           for i in range(shape[0])])
    grouped = extract_patches(images, kernel, groups=groups, positions=chosen)
    per_group = shape[-1] // groups
    for g in range(groups):
        alone = extract_patches(images[..., g * per_group:(g + 1) * per_group], kernel,
                                positions=chosen)
        np.testing.assert_array_equal(grouped[..., g, :], alone)
    # The statistics take each group's rows as they are: a strided view would be
    # copied once per group and batch.
    layer = (keras.layers.DepthwiseConv2D(kernel) if len(shape) == 4 and groups == shape[-1]
             else keras.layers.Conv2D(4, kernel, groups=groups) if len(shape) == 4
             else keras.layers.Conv1D(6, kernel, groups=groups))
    rows, _ = next(iter_group_rows(layer, images, np.arange(shape[0])))
    assert rows.shape[0] == groups
    assert all(rows[g].flags.c_contiguous for g in range(groups))
