"""`ClassPCADepthwiseConv1D/2D`: depthwise convolutions solved channel by channel."""

import keras

from keras_classpca.layers.adapt_mixin import ClassPCAConvMixin

_DOC = """{rank}D depthwise convolution solved by class-PCA, one input channel at a time.

    `adapt((x, labels))` runs one class-based PCA per input channel over that
    channel's own patches and keeps `depth_multiplier` components each (the
    channel-wise transform of PixelHop++): output channel `c * depth_multiplier + j`
    is component `j` of channel `c`. The bias centres and the scaling standardises
    each output, as for the other layers.

    Args:
        kernel_size: as in `keras.layers.DepthwiseConv{rank}D`.
        patches_per_image: if set, use this many random patches of each sample.
        seed: seed of that sub-sampling.
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold, discriminant, sign_pairs, product_dtype, memory_limit,
            eigen_solver, sketch_size: see `keras_classpca.ClassPCA` (per channel).
        **kwargs: any `keras.layers.DepthwiseConv{rank}D` argument.
"""


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCADepthwiseConv2D(ClassPCAConvMixin, keras.layers.DepthwiseConv2D):
    __doc__ = _DOC.format(rank=2) + """
    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(20, 8, 8, 3)).astype("float32")
    >>> conv = ClassPCADepthwiseConv2D(3, depth_multiplier=2, padding="same")
    >>> conv.adapt((x, np.arange(20) % 2))
    >>> tuple(conv(x).shape), tuple(conv.kernel.shape)
    ((20, 8, 8, 6), (3, 3, 3, 2))
    """

    def __init__(self, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCADepthwiseConv1D(ClassPCAConvMixin, keras.layers.DepthwiseConv1D):
    __doc__ = _DOC.format(rank=1) + """
    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(20, 12, 2)).astype("float32")
    >>> conv = ClassPCADepthwiseConv1D(3)
    >>> conv.adapt((x, np.arange(20) % 2))
    >>> tuple(conv(x).shape)
    (20, 10, 2)
    """

    def __init__(self, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )
