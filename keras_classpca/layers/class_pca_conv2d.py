"""`ClassPCAConv2D`: a Conv2D layer whose filters `adapt` computes from labelled images."""

import keras

from keras_classpca.layers.adapt_mixin import ClassPCAConvMixin


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCAConv2D(ClassPCAConvMixin, keras.layers.Conv2D):
    """2D convolution whose filters are the class-based PCA of its own input patches.

    `adapt((images, labels))` accumulates, per class, the covariance of the layer's
    patches exactly as the convolution sees them (kernel size, strides, padding and
    dilation as configured), one bounded chunk of images at a time, and sets the
    filters to the leading eigenvectors, `filters // n_classes` per class. A grouped
    convolution (`groups=g`) is solved per group of channels, `filters // g` filters
    each. Created frozen (`trainable=False`); pass `trainable=True` to fine-tune after
    adapting.

    Args:
        filters, kernel_size: as in `keras.layers.Conv2D`.
        patches_per_image: if set, use this many random patches of each image (fewer
            rows, faster adapt on large images); `None` uses every patch.
        seed: seed of that sub-sampling (the same seed and the same batches give the
            same filters: positions are drawn batch by batch, so another batch size or
            data source draws others).
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold, discriminant, sign_pairs, product_dtype, memory_limit,
            eigen_solver, sketch_size: see `keras_classpca.ClassPCA`. `sign_pairs`
            not given (None): spare filters (`"spare"`) if the layer's activation
            rectifies, else plain class-PCA.
        **kwargs: any `keras.layers.Conv2D` argument.

    Example:

    >>> import numpy as np
    >>> images = np.random.default_rng(0).normal(size=(40, 12, 12, 1)).astype("float32")
    >>> labels = np.arange(40) % 4
    >>> conv = ClassPCAConv2D(8, 3, activation="relu")
    >>> conv.adapt((images, labels))
    >>> tuple(conv(images).shape)
    (40, 10, 10, 8)
    """

    def __init__(self, filters, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            filters, kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )
