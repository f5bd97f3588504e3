"""`ClassPCADense`: a Dense layer whose weights `adapt` computes from labelled data."""

import keras

from keras_classpca.layers.adapt_mixin import CLASS_PCA_DEFAULTS, ClassPCAAdaptMixin


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCADense(ClassPCAAdaptMixin, keras.layers.Dense):
    """Densely-connected layer solved by class-based PCA of its input.

    `adapt((x, y))` sets the kernel to the class-PCA components of `x` (the leading
    eigenvectors of each class's covariance, `units // n_classes` per class) and the
    bias so the outputs are centred and standardised. Unless `discriminant` or
    `sign_pairs` is given, a layer that compresses its input (fewer units than input
    features) adapted from at least 10 rows per input feature also gets the Dense
    rule: Fisher directions of the class means among its units, each followed by its
    negative where a rectifier follows (measured best there, `bench_lossless`). The
    layer is created frozen (`trainable=False`): pass `trainable=True` to fine-tune it
    with `fit()` after adapting.

    Args:
        units: number of output units (= class-PCA components).
        n_classes, center, allocation, scaling, offset, variance_share,
            dedup_threshold, discriminant, sign_pairs, product_dtype, memory_limit,
            eigen_solver, sketch_size: see `keras_classpca.ClassPCA`.
        **kwargs: any `keras.layers.Dense` argument (activation, use_bias, name, ...).

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(300, 16)).astype("float32")
    >>> y = np.arange(300) % 3
    >>> layer = ClassPCADense(6, activation="relu")
    >>> layer.adapt((x, y))
    >>> tuple(layer(x).shape), layer.is_adapted, layer.trainable
    ((300, 6), True, False)
    """

    # sign_pairs / discriminant not given: decided by the Dense rule at adapt
    # (`layers.geometry.dense_remedies`: Fisher directions and sign pairs for a
    # compressing layer solved from >= 10 rows per input feature).
    RULE_DECIDED_OPTIONS = ("sign_pairs", "discriminant")

    def __init__(self, units, *args, **kwargs):
        options = {name: kwargs.pop(name) for name in CLASS_PCA_DEFAULTS if name in kwargs}
        kwargs.setdefault("trainable", False)
        super().__init__(units, *args, **kwargs)
        self._set_class_pca_options(options)

    def get_config(self):
        config = super().get_config()
        config.update(self._class_pca_config())
        return config

    def quantize(self, mode=None, type_check=True, config=None):
        """`keras.layers.Dense.quantize` (`model.quantize("int8")`): Keras skips
        subclasses of Dense unless they say they quantize as Dense does; this one's
        kernel and bias are a Dense layer's."""
        return super().quantize(mode, type_check=False, config=config)
