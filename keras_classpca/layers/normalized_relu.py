"""`NormalizedReLU`: ReLU centred and scaled for a standard Gaussian input.

Agarwal, Awasthi & Kale ("A deep conditioning treatment of neural networks",
2020) show that with an activation normalized so that ``E[f(z)] = 0`` and
``E[f(z)**2] = 1`` for ``z ~ N(0, 1)``, the kernel of a random deep network
becomes better conditioned with depth.  For ReLU::

    E[relu(z)]   = 1 / sqrt(2 pi)
    Var[relu(z)] = 1/2 - 1 / (2 pi)

so ``NormalizedReLU(x) = (relu(x) - 1/sqrt(2 pi)) / sqrt(1/2 - 1/(2 pi))``.
"""

import math

import keras

MEAN = 1.0 / math.sqrt(2.0 * math.pi)
"""Mean of ``relu(z)`` for ``z ~ N(0, 1)``."""

STD = math.sqrt(0.5 - 1.0 / (2.0 * math.pi))
"""Standard deviation of ``relu(z)`` for ``z ~ N(0, 1)``."""


@keras.saving.register_keras_serializable(package="keras_classpca")
class NormalizedReLU(keras.layers.Layer):
    """ReLU shifted and scaled to zero mean and unit variance under N(0, 1) input.

    ``y = (max(x, 0) - 1/sqrt(2 pi)) / sqrt(1/2 - 1/(2 pi))``, elementwise.  The
    layer has no weights; it is a drop-in replacement for ``Activation("relu")``
    when the pre-activations are roughly standard Gaussian (e.g. after a Dense
    layer with ``VarianceScaling(1.0)`` / LeCun-normal weights on standardized
    inputs).

    Args:
        **kwargs: standard layer arguments (``name``, ``dtype``...).

    Example:

    >>> import numpy as np
    >>> from keras_classpca.layers.normalized_relu import NormalizedReLU
    >>> z = np.random.default_rng(0).standard_normal(200_000).astype("float32")
    >>> y = np.asarray(NormalizedReLU()(z))
    >>> bool(abs(y.mean()) < 0.01), bool(abs(y.var() - 1) < 0.01)
    (True, True)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        x = keras.ops.relu(inputs)
        return (x - keras.ops.cast(MEAN, x.dtype)) / keras.ops.cast(STD, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config()
