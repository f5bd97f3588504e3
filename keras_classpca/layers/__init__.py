"""The Keras surface: layers solved by `adapt`, the data-derived initializer."""

from keras_classpca.layers.class_pca_conv2d import ClassPCAConv2D
from keras_classpca.layers.class_pca_dense import ClassPCADense
from keras_classpca.layers.class_pca_initializer import ClassPCAInitializer
from keras_classpca.layers.normalized_relu import NormalizedReLU

__all__ = ["ClassPCAConv2D", "ClassPCADense", "ClassPCAInitializer", "NormalizedReLU"]

_READY = True  # every serializable class above is registered with Keras
