"""`ClassPCAConv1D`: a Conv1D layer whose filters `adapt` computes from labelled sequences."""

import keras

from keras_classpca.layers.adapt_mixin import ClassPCAConvMixin


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCAConv1D(ClassPCAConvMixin, keras.layers.Conv1D):
    """1D convolution whose filters are the class-based PCA of its own input windows.

    As `ClassPCAConv2D`, over the windows the convolution sees (kernel size, strides,
    dilation, padding `"valid"`, `"same"` or `"causal"`; per group with `groups`).

    Args:
        filters, kernel_size: as in `keras.layers.Conv1D`.
        patches_per_image: if set, use this many random windows of each sequence.
        seed: seed of that sub-sampling.
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold, discriminant, sign_pairs, product_dtype, memory_limit,
            eigen_solver, sketch_size: see `keras_classpca.ClassPCA`. `sign_pairs`
            not given (None): spare filters (`"spare"`) if the layer's activation
            rectifies, else plain class-PCA.
        **kwargs: any `keras.layers.Conv1D` argument.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(30, 16, 2)).astype("float32")
    >>> conv = ClassPCAConv1D(6, 3, padding="causal")
    >>> conv.adapt((x, np.arange(30) % 3))
    >>> tuple(conv(x).shape), conv.is_adapted
    ((30, 16, 6), True)
    """

    def __init__(self, filters, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            filters, kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )
