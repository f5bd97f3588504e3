"""Theory toolkit: the random-matrix and kernel results the package relies on.

Three results from the companion papers, each as a measured tool that can be
checked on your own networks, one module per paper:

1. **Nonlinear random-matrix spectra** (Pennington & Worah, "Nonlinear random
   matrix theory for deep learning", NeurIPS 2017): the Gaussian constants
   :func:`activation_constants` (:mod:`.constants`, exact, through the adaptive
   quadrature :func:`gaussian_expectations` of :mod:`.quadrature`);
   :func:`stieltjes_transform`, :func:`gram_spectrum`,
   :func:`marchenko_pastur_density`, :func:`compare_gram_spectrum`
   (:mod:`.random_matrix`); the layer-wise measurement on real models
   :func:`layer_input_spectra` (:mod:`.layer_spectra`).
2. **Alignment under gradient descent** (Ji & Telgarsky, ICLR 2019): see
   :class:`keras_classpca.diagnostics.AlignmentMonitor`.
3. **Conditioning with depth** (Agarwal, Awasthi & Kale, "A deep conditioning
   treatment of neural networks", 2020): :func:`normalized_gram`,
   :func:`gram_condition_number`, :func:`kernel_condition_number`
   (:mod:`.conditioning`), with the activation
   :class:`keras_classpca.layers.normalized_relu.NormalizedReLU`.

All the mathematics is plain NumPy; Keras is imported only to evaluate a Keras
activation missing from the NumPy table (:mod:`.activations`) or to run a Keras model.
"""

from keras_classpca.theory.conditioning import (
    gram_condition_number,
    kernel_condition_number,
    normalized_gram,
)
from keras_classpca.theory.constants import ActivationConstants, activation_constants
from keras_classpca.theory.layer_spectra import layer_input_spectra
from keras_classpca.theory.quadrature import gaussian_expectations
from keras_classpca.theory.random_matrix import (
    GramSpectrum,
    GramSpectrumComparison,
    compare_gram_spectrum,
    gram_spectrum,
    marchenko_pastur_density,
    stieltjes_transform,
)

__all__ = [
    "ActivationConstants",
    "GramSpectrum",
    "GramSpectrumComparison",
    "activation_constants",
    "gaussian_expectations",
    "stieltjes_transform",
    "gram_spectrum",
    "marchenko_pastur_density",
    "compare_gram_spectrum",
    "layer_input_spectra",
    "normalized_gram",
    "gram_condition_number",
    "kernel_condition_number",
]
