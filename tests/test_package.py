"""The package as a plugin: lazy imports, public surface, registration, optional extras."""

import os
import subprocess
import sys
import textwrap

import pytest

import keras_classpca

HEAVY = ("keras", "tensorflow", "jax", "torch", "keras_tuner", "tensorflow_datasets", "matplotlib")


def _run(code):
    """Run `code` in a fresh interpreter (this test's backend) and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.backend_independent
def test_import_loads_no_backend_tuner_tfds_or_matplotlib():
    loaded = _run(f"""
        import sys, keras_classpca
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert loaded == "[]"


@pytest.mark.backend_independent
def test_cli_help_imports_nothing_heavy():
    loaded = _run(f"""
        import contextlib, io, sys
        from keras_classpca.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["--help"])
            except SystemExit as exit:
                assert exit.code == 0
        assert "usage: keras-classpca" in out.getvalue()
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert loaded == "[]"


@pytest.mark.backend_independent
def test_public_surface_resolves_and_nothing_shadows_a_module():
    for name in keras_classpca.__all__:
        assert getattr(keras_classpca, name) is not None, name
    assert set(keras_classpca.__all__) <= set(dir(keras_classpca))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        keras_classpca.not_a_name
    import keras_classpca.hybrid.training as training_module

    assert callable(keras_classpca.fit_top) and keras_classpca.fit_top is training_module.fit_top
    assert type(training_module).__name__ == "module"


@pytest.mark.backend_independent
def test_star_import_help_and_getmembers_work_without_the_optional_dependencies():
    # With keras_tuner and tensorflow unimportable (a core install under JAX), they
    # raised the ImportError of `HybridHyperModel` / `distributed`, which `__all__`
    # listed; with them installed, `help()` imported both.
    out = _run("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"  # a core install: Keras on JAX
        sys.modules["keras_tuner"] = None  # `import keras_tuner` raises ImportError
        sys.modules["tensorflow"] = None
        import contextlib, inspect, io, pydoc
        import keras_classpca
        namespace = {}
        exec("from keras_classpca import *", namespace)
        assert "hybridize" in namespace and "HybridHyperModel" not in namespace
        text = pydoc.render_doc(keras_classpca)
        members = dict(inspect.getmembers(keras_classpca))
        assert "fit_top" in members and "HybridHyperModel" not in dir(keras_classpca)
        try:
            keras_classpca.HybridHyperModel
        except ImportError as error:
            assert "keras-classpca[tuner]" in str(error)
        print("ok" if "hybridize" in text else "no doc")
    """)
    assert out == "ok"


@pytest.fixture(scope="module")
def saved_plugin_model(tmp_path_factory):
    """A `.keras` file with the package's layers, saved here: only the loading needs a
    fresh interpreter, where nothing has registered the classes yet."""
    import keras

    path = tmp_path_factory.mktemp("saved") / "m.keras"
    keras.Sequential([keras.Input((4,)), keras_classpca.ClassPCADense(3),
                      keras_classpca.NormalizedReLU(), keras.layers.Dense(2)]).save(path)
    return path


# Registration is Keras's, not the backend's: one backend (the default) suffices; every
# backend loads `.keras` files in test_backends.
@pytest.mark.backend_independent
@pytest.mark.parametrize("keras_first", [False, True])
def test_load_model_finds_the_classes_after_import(saved_plugin_model, keras_first):
    path = saved_plugin_model
    imports = "import keras; import keras_classpca" if keras_first else (
        "import keras_classpca; import keras")
    names = _run(f"""
        {imports}
        model = keras.saving.load_model({str(path)!r})
        print([type(layer).__name__ for layer in model.layers])
    """)
    assert names == "['ClassPCADense', 'NormalizedReLU', 'Dense']"


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "missing, code, extra",
    [
        ("keras_tuner", "import keras_classpca.tuner", "keras-classpca[tuner]"),
        ("matplotlib", "keras_classpca.diagnostics.plots._figure(1, 1)", "keras-classpca[plots]"),
        ("tensorflow_datasets", "keras_classpca.datasets.load_tfds('mnist')",
         "keras-classpca[tfds]"),
    ],
)
def test_a_missing_extra_is_named(missing, code, extra):
    message = _run(f"""
        import sys
        sys.modules[{missing!r}] = None  # what Python does for a package that is absent
        import keras_classpca, keras_classpca.diagnostics.plots, keras_classpca.datasets
        try:
            {code}
        except ImportError as error:
            print(error)
    """)
    assert extra in message and missing in message
