"""The math: class statistics and their eigen-solve in NumPy, no Keras models."""

from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.sketch import ClassSketch
from keras_classpca.core.statistics import ClassStatistics

__all__ = ["ClassPCA", "ClassSketch", "ClassStatistics"]
