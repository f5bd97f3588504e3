"""Every warning of the package is attributed to the user's line (the first frame
outside `keras_classpca`), however deep the call that warns: `python -W error` and
`-W ignore::...:module` filters, and the line Python prints, then name the user's code."""

import warnings

import keras
import numpy as np
import pytest

from keras_classpca import ClassPCA, ClassPCADense, OvercompleteWarning, fit_top, hybridize

L = keras.layers


def _caught(action, category=UserWarning):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    found = [w for w in caught if issubclass(w.category, category)]
    assert found, f"no {category.__name__} was raised"
    return found


@pytest.mark.backend_independent
def test_a_warning_raised_deep_in_class_pca_names_the_users_line():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.arange(60) % 2
    # Raised three calls below what the user called (fit -> solve -> ...).
    (warning,) = _caught(lambda: ClassPCA(n_components=4).fit(x, y), OvercompleteWarning)
    assert warning.filename == __file__


def test_warnings_of_hybridize_and_fit_top_name_the_users_line():
    x = np.random.default_rng(0).normal(size=(120, 6)).astype("float32")
    y = np.arange(120) % 3
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, activation="relu", name="a"),
                              L.Dense(4, activation="relu", name="b"), L.Dense(3)])
    model.get_layer("b").trainable = False  # frozen by the user, above the cutoff
    (warning,) = _caught(lambda: hybridize(model, (x, y), cutoff=1, samples=None, verbose=0))
    assert "stay(s) frozen" in str(warning.message) and warning.filename == __file__
    # Raised in a helper of fit_top's entry checks.
    never_adapted = keras.Sequential([keras.Input((6,)), ClassPCADense(4, name="pca"),
                                      L.Dense(3)])
    never_adapted.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    caught = _caught(lambda: fit_top(never_adapted, x, y, epochs=1, verbose=0))
    (warning,) = [w for w in caught if "never adapted" in str(w.message)]
    assert warning.filename == __file__
