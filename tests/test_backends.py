"""What differs between Keras backends: a `.keras` file moves between them, and a
backend that cannot write a SavedModel says so and how to get one.

The same suite runs under each backend (`make test`: TensorFlow, then JAX and torch);
this file checks what only makes sense across two of them.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import BACKEND

import keras_classpca
import keras_classpca.serving.export as kx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The other backend a saved model is loaded under: TensorFlow (the serving route) from
# JAX or torch; JAX from TensorFlow.
OTHER = "jax" if BACKEND == "tensorflow" else "tensorflow"

LOAD_AND_EXPORT = """
import json, sys
import numpy as np
import keras
import keras_classpca

model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
solved = model.get_layer("solved")
out = {"backend": keras.backend.backend(), "adapted": bool(solved.is_adapted),
       "trainable": [l.name for l in model.layers if l.trainable and l.weights],
       "predictions": keras.ops.convert_to_numpy(model.predict(x, verbose=0)).tolist()}
path = keras_classpca.export_for_serving(model, sys.argv[3])
out["served"] = keras_classpca.predict_request_body(path, x[:2])["instances"] is not None
print(json.dumps(out))
"""


def _hybrid_model(x, y):
    """A functional CNN: conv solved by hybridize, a ClassPCADense adapted, head trained."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten(name="flatten")(h)
    solved = keras_classpca.ClassPCADense(6, name="solved")
    h = solved(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs)
    keras_classpca.hybridize(model, (x, y), cutoff=1, verbose=0)
    features = keras.Model(inputs, model.get_layer("flatten").output).predict(x, verbose=0)
    solved.adapt((features, y))
    solved.trainable = False
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model


@pytest.mark.skipif(
    importlib.util.find_spec(OTHER) is None, reason=f"{OTHER} is not installed"
)
def test_keras_file_moves_to_another_backend_and_exports(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = rng.normal(size=(90, 8, 8, 1)).astype("float32")
    x[y == 1, :4] += 1.0
    model = _hybrid_model(x, y)
    model.save(tmp_path / "hybrid.keras")
    np.save(tmp_path / "x.npy", x[:10])
    expected = keras.ops.convert_to_numpy(model.predict(x[:10], verbose=0))

    env = dict(os.environ, KERAS_BACKEND=OTHER, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOAD_AND_EXPORT),
         str(tmp_path / "hybrid.keras"), str(tmp_path / "x.npy"), str(tmp_path / "served")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == OTHER
    # The solved layers arrive adapted and frozen; only the head trains.
    assert out["adapted"] and out["trainable"] == ["probs"]
    np.testing.assert_allclose(out["predictions"], expected, rtol=1e-5, atol=1e-6)
    assert out["served"] and os.listdir(tmp_path / "served") == ["1"]


@pytest.mark.skipif(BACKEND in kx.EXPORT_BACKENDS, reason=f"{BACKEND} exports SavedModels")
def test_export_without_savedmodel_support_explains_the_route(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow or jax") as error:
        kx.export_for_serving(model, tmp_path / "m")
    assert "keras-classpca export" in str(error.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(BACKEND != "torch", reason="torch tensors that record gradients")
def test_torch_tensors_that_record_gradients_are_read_as_model_fit_reads_them():
    import torch

    from keras_classpca import ClassPCADense, ClassPCAInitializer, fit_progressive, fit_top

    torch.manual_seed(0)
    x = torch.randn(240, 12, requires_grad=True)
    y = torch.arange(240) % 3

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((12,)), keras.layers.Dense(6, activation="relu"),
                                 keras.layers.Dense(3, activation="softmax")])

    # NumPy cannot read them ("Can't call numpy() on Tensor that requires grad"):
    # every entry point crashed where `model.fit` trains.
    recording, plain = model(), model()
    keras_classpca.hybridize(recording, (x, y), cutoff=1, samples=None, verbose=0)
    keras_classpca.hybridize(plain, (x.detach().numpy(), y.numpy()), cutoff=1, samples=None,
                             verbose=0)
    np.testing.assert_array_equal(recording.get_weights()[0], plain.get_weights()[0])
    layer = ClassPCADense(4)
    layer.adapt((x, y))
    assert layer.is_adapted
    assert tuple(ClassPCAInitializer.from_data(x, y)(shape=(12, 4)).shape) == (12, 4)
    recording.compile("adam", "sparse_categorical_crossentropy")
    assert fit_top(recording, x, y, epochs=1, cache=True, verbose=0).cache_used
    fit_progressive(recording, x, y, epochs=2, snap=True, verbose=0)
    assert x.requires_grad  # the caller's tensor is left as it was
