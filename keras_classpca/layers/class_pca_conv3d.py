"""`ClassPCAConv3D`: a Conv3D layer whose filters `adapt` computes from labelled volumes."""

import keras

from keras_classpca.layers.adapt_mixin import ClassPCAConvMixin


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCAConv3D(ClassPCAConvMixin, keras.layers.Conv3D):
    """3D convolution whose filters are the class-based PCA of its own input patches.

    As `ClassPCAConv2D`, over the `(depth, height, width, channels)` patches the
    convolution sees.

    Args:
        filters, kernel_size: as in `keras.layers.Conv3D`.
        patches_per_image: if set, use this many random patches of each volume.
        seed: seed of that sub-sampling.
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold, discriminant, sign_pairs, product_dtype, memory_limit,
            eigen_solver, sketch_size: see `keras_classpca.ClassPCA`. `sign_pairs`
            not given (None): spare filters (`"spare"`) if the layer's activation
            rectifies, else plain class-PCA.
        **kwargs: any `keras.layers.Conv3D` argument.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(20, 5, 6, 6, 1)).astype("float32")
    >>> conv = ClassPCAConv3D(4, 2)
    >>> conv.adapt((x, np.arange(20) % 2))
    >>> tuple(conv(x).shape)
    (20, 4, 5, 5, 4)
    """

    def __init__(self, filters, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            filters, kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )
