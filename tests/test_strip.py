"""`strip_class_pca`: a model with ClassPCA layers as plain Keras layers, same weights."""

import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from conftest import BACKEND

import keras_classpca


def _class_pca_model():
    """ClassPCA conv + separable layers, a nested backbone, and a plain Dense whose
    kernel initializer is a ClassPCAInitializer."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8, 8, 2)).astype("float32")
    y = np.arange(120) % 3
    conv = keras_classpca.ClassPCAConv2D(6, 3, activation="relu", name="solved_conv")
    conv.adapt((x, y))
    inner = keras.Input((6, 6, 6))
    backbone = keras.Model(
        inner, keras_classpca.ClassPCASeparableConv2D(4, 3, name="solved_sep")(inner),
        name="backbone")
    init = keras_classpca.ClassPCAInitializer.from_data(
        rng.normal(size=(120, 64)).astype("float32"), y)
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Flatten()(backbone(conv(inputs)))
    h = keras.layers.Dense(5, kernel_initializer=init, bias_initializer=init.bias_initializer(),
                           name="init_dense")(h)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h)), x


def test_strip_class_pca_gives_a_plain_keras_model_with_the_same_predictions(tmp_path):
    model, x = _class_pca_model()
    plain = keras_classpca.strip_class_pca(model)
    np.testing.assert_array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0))
    conv = plain.get_layer("solved_conv")
    sep = plain.get_layer("backbone").get_layer("solved_sep")
    assert type(conv) is keras.layers.Conv2D and type(sep) is keras.layers.SeparableConv2D
    assert not conv.trainable and not sep.trainable  # ClassPCA layers are made frozen
    assert plain.get_layer("init_dense").trainable
    assert len(conv.weights) == 2  # kernel and bias: no `adapted` flag
    # Nothing of the package is left in the saved config: it loads without it.
    path = tmp_path / "plain.keras"
    plain.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "keras_classpca" not in config and "ClassPCA" not in config
    script = ("import sys, keras; m = keras.saving.load_model(sys.argv[1]); "
              "print('keras_classpca' in sys.modules, len(m.layers))")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, env={**os.environ, "KERAS_BACKEND": BACKEND}, check=True)
    assert result.stdout.split()[0] == "False"


def test_strip_class_pca_rejects_what_it_cannot_clone():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed keras.Model: it has no layer graph"):
        keras_classpca.strip_class_pca(model)
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        keras_classpca.strip_class_pca(keras.layers.Dense(2))
