"""The Keras surface: layers solved by `adapt`, the data-derived initializer."""

from keras_classpca.layers.class_pca_conv1d import ClassPCAConv1D
from keras_classpca.layers.class_pca_conv2d import ClassPCAConv2D
from keras_classpca.layers.class_pca_conv3d import ClassPCAConv3D
from keras_classpca.layers.class_pca_dense import ClassPCADense
from keras_classpca.layers.class_pca_depthwise_conv import (
    ClassPCADepthwiseConv1D,
    ClassPCADepthwiseConv2D,
)
from keras_classpca.layers.class_pca_initializer import ClassPCAInitializer
from keras_classpca.layers.class_pca_separable_conv import (
    ClassPCASeparableConv1D,
    ClassPCASeparableConv2D,
)
from keras_classpca.layers.normalized_relu import NormalizedReLU

__all__ = [
    "ClassPCAConv1D",
    "ClassPCAConv2D",
    "ClassPCAConv3D",
    "ClassPCADense",
    "ClassPCADepthwiseConv1D",
    "ClassPCADepthwiseConv2D",
    "ClassPCAInitializer",
    "ClassPCASeparableConv1D",
    "ClassPCASeparableConv2D",
    "NormalizedReLU",
]

_READY = True  # every serializable class above is registered with Keras
