"""The docstring examples run under `pytest --doctest-modules keras_classpca` (make test).

This checks they exist where users look first, so that run cannot pass vacuously.
"""

import doctest
import importlib

import pytest

pytestmark = pytest.mark.backend_independent

DOCUMENTED_MODULES = [
    "keras_classpca.core.class_pca",
    "keras_classpca.core.data_adapter",
    "keras_classpca.core.patches",
    "keras_classpca.diagnostics.alignment_monitor",
    "keras_classpca.hybrid.settling",
    "keras_classpca.layers.class_pca_conv2d",
    "keras_classpca.layers.class_pca_dense",
    "keras_classpca.layers.class_pca_initializer",
    "keras_classpca.layers.normalized_relu",
    "keras_classpca.theory.conditioning",
    "keras_classpca.theory.constants",
    "keras_classpca.theory.layer_spectra",
    "keras_classpca.theory.quadrature",
    "keras_classpca.theory.random_matrix",
]


@pytest.mark.parametrize("module_name", DOCUMENTED_MODULES)
def test_module_has_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    examples = sum(len(test.examples) for test in doctest.DocTestFinder().find(module))
    assert examples > 0, f"{module_name} has no docstring example"
