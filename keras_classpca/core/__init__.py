"""The math: class statistics and their eigen-solve in NumPy, no Keras models."""

from keras_classpca.core.class_pca import ClassPCA

__all__ = ["ClassPCA"]
