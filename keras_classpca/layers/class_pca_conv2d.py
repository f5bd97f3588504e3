"""`ClassPCAConv2D`: a Conv2D layer whose filters `adapt` computes from labelled images."""

import keras
import numpy as np

from keras_classpca.layers.adapt_mixin import CLASS_PCA_DEFAULTS, ClassPCAAdaptMixin


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCAConv2D(ClassPCAAdaptMixin, keras.layers.Conv2D):
    """2D convolution whose filters are the class-based PCA of its own input patches.

    `adapt((images, labels))` accumulates, per class, the covariance of the layer's
    patches exactly as the convolution sees them (kernel size, strides, padding and
    dilation as configured), one bounded chunk of images at a time, and sets the
    filters to the leading eigenvectors, `filters // n_classes` per class. Created
    frozen (`trainable=False`); pass `trainable=True` to fine-tune after adapting.

    Args:
        filters, kernel_size: as in `keras.layers.Conv2D`.
        patches_per_image: if set, use this many random patches of each image (fewer
            rows, faster adapt on large images); `None` uses every patch.
        seed: seed of that sub-sampling (the same seed gives the same filters).
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold: see `keras_classpca.ClassPCA`.
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

    def __init__(self, filters, kernel_size, *, patches_per_image=None, seed=0, **kwargs):
        options = {name: kwargs.pop(name) for name in CLASS_PCA_DEFAULTS if name in kwargs}
        kwargs.setdefault("trainable", False)
        super().__init__(filters, kernel_size, **kwargs)
        if self.groups != 1:
            raise ValueError(
                f"`groups` must be 1 for ClassPCAConv2D (class-PCA solves full kernels); "
                f"received {self.groups}."
            )
        if patches_per_image is not None and (
            not isinstance(patches_per_image, int) or patches_per_image < 1
        ):
            raise ValueError(
                f"`patches_per_image` must be a positive integer or None; received {patches_per_image!r}."
            )
        self.patches_per_image = patches_per_image
        self.seed = seed
        self._set_class_pca_options(options)

    def _row_options(self):
        return {
            "patches_per_image": self.patches_per_image,
            "rng": np.random.default_rng(self.seed),
        }

    def get_config(self):
        config = super().get_config()
        config.update(self._class_pca_config())
        config.update({"patches_per_image": self.patches_per_image, "seed": self.seed})
        return config
