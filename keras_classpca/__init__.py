"""keras-classpca: compute the lower layers of a Keras network from data.

Class-based PCA weights (Dehmamy, Rohani & Katsaggelos, arXiv 1703.04757): solve the
bottom layers from a fraction of the data, freeze them, train the rest with `fit()`.

    report = keras_classpca.hybridize(model, (x, y), cutoff="auto", samples=6000)
    model.compile(...)
    keras_classpca.fit_top(model, x, y, epochs=3)
"""

__version__ = "0.1.0"

from keras_classpca import datasets, diagnostics, theory, tuner
from keras_classpca.class_pca import ClassPCA
from keras_classpca.class_pca_initializer import ClassPCAInitializer
from keras_classpca.diagnostics import AlignmentMonitor, TimescaleMonitor
from keras_classpca.export import (
    artifact_sizes,
    export_for_serving,
    predict_request_body,
    signature_info,
)
from keras_classpca.fit_top import fit_top
from keras_classpca.hybrid import hybridize
from keras_classpca.hybrid_report import HybridReport, SolvedLayer
from keras_classpca.layers import ClassPCAConv2D, ClassPCADense, NormalizedReLU
from keras_classpca.solve_cache import SolveCache
from keras_classpca.tuner import HybridHyperModel
