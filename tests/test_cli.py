"""`keras-classpca` end to end on the bundled 8×8 `digits` (tiny runs), and bad arguments."""

import json
import os

import matplotlib.image
import numpy as np
import pytest

from keras_classpca import cli


def _run_bad(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    return err


def _export_backend():
    from conftest import BACKEND

    from keras_classpca.serving.export import EXPORT_BACKENDS

    return BACKEND in EXPORT_BACKENDS


def test_timescales_end_to_end(tmp_path, capsys):
    out = tmp_path / "ts"
    code = cli.main(
        [
            "timescales",
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--train-samples",
            "300",
            "--monitor-samples",
            "100",
            "--out",
            str(out),
            "--verbose",
            "0",
            "--noise-ceiling",
        ]
    )
    assert code == 0
    result = json.loads((out / "timescales.json").read_text())
    history = result["history"]
    assert history["epochs"] == [0, 1, 2]
    assert [e["kind"] for e in history["layers"].values()] == ["Conv2D", "Conv2D", "Dense", "Dense"]
    for entry in history["layers"].values():
        assert len(entry["overlap"]) == 3 and all(0.0 <= v <= 1.0 for v in entry["overlap"])
        assert entry["weight_change"][0] is None and all(v > 0 for v in entry["weight_change"][1:])
        assert len(entry["noise_ceiling"]) == 3 and all(
            0.0 <= v <= 1.0 for v in entry["noise_ceiling"]
        )
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert matplotlib.image.imread(out / "timescales_curves.png").shape[0] > 100
    assert "settled" in capsys.readouterr().out


def test_timescales_under_plain_sgd(tmp_path):
    out = tmp_path / "ts"
    argv = ["timescales", "--dataset", "digits", "--epochs", "2", "--train-samples", "200",
            "--monitor-samples", "60", "--verbose", "0", "--optimizer", "sgd",
            "--learning-rate", "0.05", "--momentum", "0.9", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "timescales.json").read_text())
    assert (result["optimizer"], result["learning_rate"], result["momentum"]) == ("sgd", 0.05, 0.9)
    changes = [e["weight_change"][-1] for e in result["history"]["layers"].values()]
    assert all(change > 0 for change in changes)  # SGD moved every layer
    assert len(result["history"]["subspace_settled_epoch"]) == 4
    assert 0.0 <= result["test_accuracy"] <= 1.0  # 2 epochs of SGD on 200 images: no bar


def test_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        cli.main(
            [
                "sweep",
                "--dataset",
                "digits",
                "--cutoffs",
                "0,1",
                "--fraction",
                "0.5",
                "--epochs",
                "3",
                "--train-samples",
                "600",
                "--out",
                str(out),
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["cutoff"] for r in rows] == [0, 1]
    assert rows[0]["solved_layers"] == [] and len(rows[1]["solved_layers"]) == 1
    for row in rows:
        assert 0.3 < row["test_accuracy"] <= 1.0  # 10 classes: chance is 0.1
    table = (out / "sweep.md").read_text()
    assert table.count("\n| ") == 3  # header + 2 rows (the separator starts with "|-")
    assert (out / "sweep.png").stat().st_size > 5_000
    assert "| 1 |" in capsys.readouterr().out


def test_filters_end_to_end(tmp_path):
    out = tmp_path / "filters"
    assert (
        cli.main(
            [
                "filters",
                "--dataset",
                "digits",
                "--layer",
                "1",
                "--epochs",
                "1",
                "--fraction",
                "0.2",
                "--train-samples",
                "300",
                "--out",
                str(out),
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    summary = json.loads((out / "filters_layer1.json").read_text())
    assert summary["input_dim"] == 9 and summary["rank"] == 4
    assert 0.0 <= summary["overlap"] <= 1.0
    assert (out / "filters_layer1.png").stat().st_size > 5_000
    kernels = np.load(out / "filters_layer1.npz")
    assert kernels["class_pca"].shape == kernels["sgd"].shape == (3, 3, 1, 32)


def test_demo_passes_its_options(monkeypatch):
    seen = {}
    monkeypatch.setattr("keras_classpca.demo.run_demo", lambda **kwargs: seen.update(kwargs))
    assert (
        cli.main(
            ["demo", "--dataset", "digits", "--cutoff", "1", "--samples", "500", "--epochs", "2"]
        )
        == 0
    )
    assert (seen["dataset"], seen["cutoff"], seen["samples"], seen["epochs"]) == (
        "digits",
        1,
        500,
        2,
    )
    cli.main(["demo"])
    assert seen["cutoff"] == seen["samples"] == "auto" and seen["dataset"] == "fashion_mnist"


def test_demo_on_digits_end_to_end(capsys):
    import re

    import keras

    assert cli.main(["demo", "--dataset", "digits", "--epochs", "1", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert f"on {keras.backend.backend()}" in out
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.25, out  # 10 classes, chance 0.1; measured 0.47 after 1 epoch


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "a command is required"),
        (["sweep", "--cutoffs", "0,x", "--out", "o"], "comma-separated non-negative integers"),
        (["sweep", "--cutoffs", "1,1", "--out", "o"], "repeat"),
        (["demo", "--samples", "0"], "'auto' or a positive integer"),
        (["sweep", "--fraction", "1.5", "--out", "o"], "(0, 1]"),
        (["demo", "--cutoff", "-1"], "'auto' or a non-negative integer"),
        (["timescales", "--epochs", "0", "--out", "o"], "positive integer"),
        (["timescales", "--epochs", "2"], "--out"),
        (["filters", "--lyaer", "1", "--out", "o"], "unrecognized arguments"),
        (["timescales", "--monitor-samples", "1", "--out", "o"], "an integer >= 2"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert message in _run_bad(argv, capsys)


def test_bad_values_found_after_parsing_exit_2(tmp_path, capsys):
    err = _run_bad(["filters", "--dataset", "no_such_data", "--out", str(tmp_path)], capsys)
    assert "keras-classpca filters: error: --dataset 'no_such_data'" in err
    err = _run_bad(["demo", "--dataset", "no_such_data"], capsys)
    assert "keras-classpca demo: error: --dataset 'no_such_data': Unknown or unavailable" in err
    err = _run_bad(
        [
            "filters",
            "--dataset",
            "digits",
            "--layer",
            "3",
            "--train-samples",
            "50",
            "--out",
            str(tmp_path),
            "--verbose",
            "0",
        ],
        capsys,
    )
    assert "--layer 3: the model has 2 Conv2D layer(s); use 1..2" in err
    err = _run_bad(
        [
            "sweep",
            "--dataset",
            "digits",
            "--cutoffs",
            "9",
            "--train-samples",
            "100",
            "--out",
            str(tmp_path),
            "--verbose",
            "0",
        ],
        capsys,
    )
    assert "keras-classpca sweep: error: --cutoffs: cutoff 9" in err


@pytest.mark.parametrize(
    "fraction, images, expected, share",
    [
        (0.5, 600, 300, "50% of them"),
        # Raised to 10 per class: the header says so instead of printing "1%".
        (0.01, 600, 100, "17% of them; --fraction 0.01 raised to 10 per class"),
        (0.01, 50, 50, "100% of them; --fraction 0.01 raised to 10 per class"),
    ],
)
def test_statistics_samples_say_what_was_used(fraction, images, expected, share):
    import argparse

    args = argparse.Namespace(fraction=fraction)
    assert cli._statistics_samples(args, images, 10) == (expected, share)


def test_unloadable_backend_is_a_one_line_error():
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="no_such_backend")
    result = subprocess.run(
        [sys.executable, "-m", "keras_classpca", "demo", "--epochs", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "KERAS_BACKEND='no_such_backend': Keras cannot load it" in result.stderr


# ---------------------------------------------------------------------- export
def _saved_classpca_model(path):
    import keras

    from keras_classpca import ClassPCADense

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype("float32")
    y = np.arange(60) % 3
    solved = ClassPCADense(4, name="solved")
    solved.adapt((x, y))
    inputs = keras.Input((6,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, name="probs")(solved(inputs)))
    model.save(path)
    return model, x


@pytest.mark.skipif(not _export_backend(), reason="SavedModel export runs under tensorflow or jax")
def test_export_writes_versions_from_a_keras_file(tmp_path, capsys):
    import tensorflow as tf

    model, x = _saved_classpca_model(tmp_path / "m.keras")
    base = tmp_path / "models" / "m"
    assert cli.main(["export", str(tmp_path / "m.keras"), str(base)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {base / '1'}" in out
    assert '"features"' in out and '"probs"' in out
    served = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    np.testing.assert_allclose(served(features=tf.constant(x))["probs"].numpy(),
                               np.asarray(model.predict(x, verbose=0)), rtol=1e-5, atol=1e-5)
    assert cli.main(["export", str(tmp_path / "m.keras"), str(base), "--version", "7"]) == 0
    assert sorted(p.name for p in base.iterdir()) == ["1", "7"]
    err = _run_bad(["export", str(tmp_path / "m.keras"), str(base), "--version", "7"], capsys)
    assert "keras-classpca export: error:" in err and "already exists" in err


def test_export_bad_arguments_exit_2(tmp_path, capsys):
    assert "no such file" in _run_bad(["export", str(tmp_path / "none.keras"), "out"], capsys)
    (tmp_path / "model.h5").write_text("")
    h5 = str(tmp_path / "model.h5")
    assert "expected a .keras model file" in _run_bad(["export", h5, "o"], capsys)
    assert "integer >= 0" in _run_bad(["export", "m.keras", "o", "--version", "-1"], capsys)
    if not _export_backend():
        _saved_classpca_model(tmp_path / "m.keras")
        err = _run_bad(["export", str(tmp_path / "m.keras"), str(tmp_path / "o")], capsys)
        assert "KERAS_BACKEND=tensorflow or jax" in err
        assert not (tmp_path / "o").exists()


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "keras_classpca", "--version"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from keras_classpca import __version__

    assert __version__ in result.stdout + result.stderr
