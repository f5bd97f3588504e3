"""Keras layers of keras-classpca."""

from keras_classpca.layers.class_pca_conv2d import ClassPCAConv2D
from keras_classpca.layers.class_pca_dense import ClassPCADense
from keras_classpca.normalized_relu import NormalizedReLU
