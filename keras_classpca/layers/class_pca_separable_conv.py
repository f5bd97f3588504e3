"""`ClassPCASeparableConv1D/2D`: depthwise then pointwise kernels, both by class-PCA."""

import keras

from keras_classpca.layers.adapt_mixin import ClassPCAConvMixin

_DOC = """{rank}D separable convolution solved by class-PCA in two passes.

    `adapt((x, labels))` first solves the depthwise kernel channel by channel (as
    `ClassPCADepthwiseConv{rank}D`, `depth_multiplier` components per channel), then,
    in a second pass over `data`, the pointwise kernel and the bias from the class-PCA
    of the depthwise output. `data` must therefore be re-iterable (arrays, a
    `tf.data.Dataset`, a `PyDataset`; not a one-shot generator).

    Args:
        filters, kernel_size: as in `keras.layers.SeparableConv{rank}D`.
        patches_per_image: if set, use this many random patches of each sample.
        seed: seed of that sub-sampling.
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold, discriminant, sign_pairs, product_dtype, memory_limit,
            eigen_solver, sketch_size: see `keras_classpca.ClassPCA` (for both kernels).
        **kwargs: any `keras.layers.SeparableConv{rank}D` argument.
"""


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCASeparableConv2D(ClassPCAConvMixin, keras.layers.SeparableConv2D):
    __doc__ = _DOC.format(rank=2) + """
    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(20, 8, 8, 3)).astype("float32")
    >>> conv = ClassPCASeparableConv2D(4, 3, depth_multiplier=2)
    >>> conv.adapt((x, np.arange(20) % 2))
    >>> tuple(conv(x).shape), tuple(conv.pointwise_kernel.shape)
    ((20, 6, 6, 4), (1, 1, 6, 4))
    """

    def __init__(self, filters, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            filters, kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCASeparableConv1D(ClassPCAConvMixin, keras.layers.SeparableConv1D):
    __doc__ = _DOC.format(rank=1) + """
    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(20, 12, 2)).astype("float32")
    >>> conv = ClassPCASeparableConv1D(4, 3, padding="same")
    >>> conv.adapt((x, np.arange(20) % 2))
    >>> tuple(conv(x).shape)
    (20, 12, 4)
    """

    def __init__(self, filters, kernel_size, *args, patches_per_image=None, seed=0, **kwargs):
        super().__init__(
            filters, kernel_size, *args, patches_per_image=patches_per_image, seed=seed, **kwargs
        )
