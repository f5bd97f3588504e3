"""Save / reload / export for TF Serving (issue 6).

One module-scoped export (plus the two `saved_model_cli` runs on it, launched in
parallel) keeps this file fast. Under TensorFlow every numeric check is exact (max
|delta| == 0 on CPU): the SavedModel runs the graph Keras ran. Under JAX the SavedModel
runs the jax2tf-converted XLA program, which may round float32 differently: served
values are compared within `SERVED_ATOL`. Torch cannot write a SavedModel here (see
test_backends.py for its error and the `.keras` route).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKEND

import keras_classpca
import keras_classpca.serving.export as kx

pytestmark = pytest.mark.skipif(
    BACKEND not in kx.EXPORT_BACKENDS, reason=f"no SavedModel export under {BACKEND}"
)
SERVED_ATOL = 0.0 if BACKEND == "tensorflow" else 1e-6

SHAPE = (8, 8, 1)
CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def _data(n=96, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n,) + SHAPE).astype("float32")
    x[y == 1, :4] += 1.5  # class 1 is brighter in the top half: something to find.
    return x, y.astype("int64")


def _plain_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(SHAPE, name="image"),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="plain",
    )


def _max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _serve(path, x, signature_name="serving_default"):
    """Run a reloaded SavedModel signature, keys read from the SavedModel itself."""
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures[signature_name]
    (in_key,) = fn.structured_input_signature[1].keys()
    return {k: v.numpy() for k, v in fn(**{in_key: tf.constant(x)}).items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A briefly trained plain model, exported once; saved_model_cli show/run started."""
    root = tmp_path_factory.mktemp("export")
    x, y = _data()
    model = _plain_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    base = str(root / "digits")
    path = kx.export_for_serving(model, base)

    x_cli = x[:5]
    np.save(root / "x.npy", x_cli)
    outdir = root / "cli_out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    show = subprocess.Popen(
        [CLI, "show", "--dir", path, "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    run = subprocess.Popen(
        [
            CLI,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"image={root / 'x.npy'}",
            "--outdir",
            str(outdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ns = SimpleNamespace(
        root=root,
        base=base,
        path=path,
        model=model,
        x=x,
        y=y,
        x_cli=x_cli,
        outdir=outdir,
        _procs={"show": show, "run": run},
    )

    def cli(name):
        proc = ns._procs[name]
        out, err = proc.communicate(timeout=120)
        ns._procs[name] = SimpleNamespace(
            returncode=proc.returncode,
            stdout=out,
            stderr=err,
            communicate=lambda timeout=None: (out, err),
        )
        assert proc.returncode == 0, f"saved_model_cli {name} failed:\n{err[-3000:]}"
        return out

    ns.cli = cli
    yield ns
    for proc in ns._procs.values():
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------- layout


def test_export_writes_tf_serving_layout(exported):
    assert exported.path == os.path.join(os.path.abspath(exported.base), "1")
    assert os.path.isfile(os.path.join(exported.path, "saved_model.pb"))
    assert os.path.isfile(os.path.join(exported.path, "variables", "variables.index"))
    # Only the version directory: the temporary directory was renamed, not copied.
    assert sorted(os.listdir(exported.base)) == ["1"]


def test_versions_increment_and_are_never_overwritten(exported, tmp_path):
    model = exported.model
    base = tmp_path / "m"
    assert kx.export_for_serving(model, base) == str(base / "1")
    assert kx.export_for_serving(model, base, version=7) == str(base / "7")
    assert kx.export_for_serving(model, base) == str(base / "8")
    (base / "notes").mkdir()  # non-integer entries are not versions
    before = {p: os.path.getmtime(base / p / "saved_model.pb") for p in ("1", "7", "8")}
    with pytest.raises(FileExistsError, match=r"`version` 7 already exists"):
        kx.export_for_serving(model, base, version=7)
    assert sorted(os.listdir(base)) == ["1", "7", "8", "notes"]
    assert before == {p: os.path.getmtime(base / p / "saved_model.pb") for p in before}


def test_version_numbers_are_compared_as_tf_serving_parses_them(exported, tmp_path):
    # TF Serving reads "007" as version 7: a second directory "7" would be ambiguous.
    base = tmp_path / "m"
    (base / "007").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"`version` 7 already exists.*'007' as 7"):
        kx.export_for_serving(exported.model, base, version=7)
    # A stray file named like a version is named as such, and the next free number skips it.
    (base / "8").write_text("not a model")
    with pytest.raises(FileExistsError, match=r"`version` 8 .*a file \(not a version"):
        kx.export_for_serving(exported.model, base, version=8)
    assert kx.export_for_serving(exported.model, base) == str(base / "9")
    assert sorted(os.listdir(base)) == ["007", "8", "9"]


def test_signature_info_names_shapes_dtypes(exported):
    info = keras_classpca.signature_info(exported.path)
    assert info["signature_name"] == "serving_default"
    assert info["method_name"] == "tensorflow/serving/predict"
    assert {k: (v["dtype"], v["shape"]) for k, v in info["inputs"].items()} == {
        "image": ("float32", [None, 8, 8, 1])
    }
    assert {k: (v["dtype"], v["shape"]) for k, v in info["outputs"].items()} == {
        "probs": ("float32", [None, 10])
    }
    with pytest.raises(ValueError, match="`signature_name` 'nope' is not in"):
        keras_classpca.signature_info(exported.path, "nope")
    with pytest.raises(FileNotFoundError, match="`export_path`"):
        keras_classpca.signature_info(exported.base)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("batch", [1, 7, 96])
def test_reloaded_saved_model_predicts_identically(exported, batch):
    x = exported.x[:batch]
    expected = exported.model.predict(x, verbose=0)
    got = _serve(exported.path, x)
    assert list(got) == ["probs"]
    assert got["probs"].shape == (batch, 10)
    assert _max_abs(got["probs"], expected) <= SERVED_ATOL


def test_predict_request_body_round_trips_through_json(exported):
    x = exported.x[:3]
    body = keras_classpca.predict_request_body(exported.path, x)
    assert set(body) == {"signature_name", "instances"}
    assert body["signature_name"] == "serving_default"
    assert [list(inst) for inst in body["instances"]] == [["image"]] * 3
    # What a server would parse: the JSON numbers are exactly the float32 inputs...
    parsed = json.loads(json.dumps(body))
    batch = np.array([inst["image"] for inst in parsed["instances"]], dtype="float32")
    assert batch.shape == (3, 8, 8, 1)
    assert _max_abs(batch, x) == 0.0
    # ...so serving them gives exactly the Keras predictions.
    assert (
        _max_abs(_serve(exported.path, batch)["probs"], exported.model.predict(x, verbose=0))
        <= SERVED_ATOL
    )


def test_predict_request_body_rejects_bad_x(exported):
    with pytest.raises(ValueError, match=r"`x` for input 'image' has shape \(3, 8, 8\)"):
        keras_classpca.predict_request_body(exported.path, exported.x[:3, ..., 0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        keras_classpca.predict_request_body(exported.path, np.full((1, 8, 8, 1), np.nan, "float32"))
    with pytest.raises(ValueError, match=r"do not match the signature's inputs \['image'\]"):
        keras_classpca.predict_request_body(exported.path, {"pixels": exported.x[:1]})


def test_artifact_sizes_against_keras_file(exported):
    keras_path = str(exported.root / "plain.keras")
    exported.model.save(keras_path)
    sizes = keras_classpca.artifact_sizes(exported.path, keras_path, exported.model)
    weights = sum(w.nbytes for w in exported.model.get_weights())
    assert sizes["weights_bytes"] == weights
    assert sizes["keras_bytes"] == os.path.getsize(keras_path)
    # Each variable is stored once (no `archive.track(model)`, keras issue #23553):
    # the checkpoint is the raw weights plus a small per-variable overhead.
    assert weights <= sizes["variables_bytes"] < 1.5 * weights + 2048
    assert sizes["saved_model_bytes"] > sizes["variables_bytes"]


# --------------------------------------------------------------------------- variants


def test_custom_signature_name_and_dict_inputs(tmp_path):
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    model = keras.Model(
        {"a": a, "b": b},
        [keras.layers.Dense(1, name="score")(h), keras.layers.Dense(2, name="logits")(a)],
    )
    path = kx.export_for_serving(model, tmp_path / "two", signature_name="predict")
    for name in ("predict", "serving_default"):
        info = keras_classpca.signature_info(path, name)
        assert {k: v["shape"] for k, v in info["inputs"].items()} == {
            "a": [None, 3],
            "b": [None, 2],
        }
        assert {k: v["shape"] for k, v in info["outputs"].items()} == {
            "logits": [None, 2],
            "score": [None, 1],
        }
    rng = np.random.default_rng(1)
    xa, xb = rng.normal(size=(4, 3)).astype("f4"), rng.normal(size=(4, 2)).astype("f4")
    body = keras_classpca.predict_request_body(path, {"a": xa, "b": xb}, signature_name="predict")
    assert body["signature_name"] == "predict" and len(body["instances"]) == 4
    assert set(body["instances"][0]) == {"a", "b"}
    with pytest.raises(ValueError, match=r"2 inputs \['a', 'b'\]: pass `x` as a dict"):
        keras_classpca.predict_request_body(path, [xa, xb], signature_name="predict")
    out = tf.saved_model.load(path).signatures["predict"](a=tf.constant(xa), b=tf.constant(xb))
    score, logits = model.predict({"a": xa, "b": xb}, verbose=0)
    assert _max_abs(out["score"], score) <= SERVED_ATOL
    assert _max_abs(out["logits"], logits) <= SERVED_ATOL


def test_request_bodies_take_the_models_input_names_the_export_renamed(tmp_path):
    # "Token IDs" is no valid signature key: exported as "Token_IDs", and the model's
    # own "Token_IDs" then as "Token_IDs_1". Both sets of names build the same body.
    ids, more, mask = (keras.Input((3,), name=n) for n in ("Token IDs", "Token_IDs", "mask"))
    h = keras.layers.Concatenate()([ids, more, mask])
    model = keras.Model([ids, more, mask], keras.layers.Dense(2, name="probs")(h))
    path = kx.export_for_serving(model, tmp_path / "renamed")
    keys = ["Token_IDs", "Token_IDs_1", "mask"]
    assert list(keras_classpca.signature_info(path)["inputs"]) == keys
    rng = np.random.default_rng(3)
    a, b, m = (rng.normal(size=(2, 3)).astype("f4") for _ in range(3))
    by_model = keras_classpca.predict_request_body(path, {"Token IDs": a, "Token_IDs": b,
                                                          "mask": m})
    by_signature = keras_classpca.predict_request_body(path, {"Token_IDs": a,
                                                              "Token_IDs_1": b, "mask": m})
    assert by_model == by_signature
    assert list(by_model["instances"][0]) == keys
    np.testing.assert_array_equal(by_model["instances"][1]["Token_IDs"], a[1])
    np.testing.assert_array_equal(by_model["instances"][1]["Token_IDs_1"], b[1])
    # Names that are neither (or a mix of both kinds) are refused, naming both sets.
    for x in ({"Tokens": a, "Token_IDs": b, "mask": m},
              {"Token IDs": a, "Token_IDs_1": b, "mask": m}):
        with pytest.raises(ValueError, match=re.escape(
                f"do not match the signature's inputs {keys}") + r".* nor the model's input "
                r"names they were exported from \['Token IDs', 'Token_IDs', 'mask'\]\."):
            keras_classpca.predict_request_body(path, x)

    # One input, named by the model: the repro of the renaming.
    single = keras.Input((4,), name="Token IDs")
    model = keras.Model(single, keras.layers.Dense(2, name="probs")(single))
    path = kx.export_for_serving(model, tmp_path / "single")
    body = keras_classpca.predict_request_body(path, {"Token IDs": np.ones((1, 4), "f4")})
    assert body["instances"] == [{"Token_IDs": [1.0] * 4}]
    # An export without the record (before it was written) still takes the signature's
    # names and refuses the others as before.
    shutil.rmtree(os.path.join(path, "assets.extra"))
    body = keras_classpca.predict_request_body(path, {"Token_IDs": np.ones((1, 4), "f4")})
    assert body["instances"] == [{"Token_IDs": [1.0] * 4}]
    with pytest.raises(ValueError, match=r"inputs \['Token_IDs'\] \(missing \['Token_IDs'\], "
                                         r"unexpected \['Token IDs'\]\)\.$"):
        keras_classpca.predict_request_body(path, {"Token IDs": np.ones((1, 4), "f4")})


def test_an_export_without_renamed_inputs_writes_no_name_record(exported):
    assert not os.path.exists(os.path.join(exported.path, kx.INPUT_NAMES_FILE))


def test_dict_outputs_are_served_under_their_keys(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, {"zscore": keras.layers.Dense(1, name="alpha")(inputs),
                                 "aclass": keras.layers.Dense(2, name="zeta")(inputs)})
    path = kx.export_for_serving(model, tmp_path / "dict")
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("f4")
    out = tf.saved_model.load(path).signatures["serving_default"](tf.constant(x))
    assert set(out) == {"zscore", "aclass"}  # as keras' own model.export names them
    expected = model.predict(x, verbose=0)
    for key in out:
        assert _max_abs(out[key], expected[key]) <= SERVED_ATOL


@pytest.mark.skipif(BACKEND != "tensorflow", reason="string lookup tables: TensorFlow")
def test_models_with_lookup_tables_export(tmp_path):
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"])(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.CategoryEncoding(
        num_tokens=4, output_mode="one_hot")(ids)))
    path = kx.export_for_serving(model, tmp_path / "lookup")
    x = tf.constant([["a"], ["c"], ["z"]])
    out = tf.saved_model.load(path).signatures["serving_default"](x)
    assert _max_abs(next(iter(out.values())), model.predict(x, verbose=0)) <= SERVED_ATOL


# --------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors(exported, tmp_path):
    base = tmp_path / "m"
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"`model` \('.*'\) is not built"):
        kx.export_for_serving(unbuilt, base)
    with pytest.raises(TypeError, match="`model` must be a `keras.Model`"):
        kx.export_for_serving(keras.layers.Dense(2), base)
    with pytest.raises(TypeError, match="`version` must be a non-negative int"):
        kx.export_for_serving(exported.model, base, version="1")
    with pytest.raises(TypeError, match="`version`"):
        kx.export_for_serving(exported.model, base, version=True)
    with pytest.raises(ValueError, match=r"`version` must lie in 0\.\.9223372036854775807"):
        kx.export_for_serving(exported.model, base, version=-1)
    with pytest.raises(ValueError, match="`signature_name`"):
        kx.export_for_serving(exported.model, base, signature_name="serving default")
    with pytest.raises(TypeError, match="`base_dir` must be a str"):
        kx.export_for_serving(exported.model, 3)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="`base_dir` .* is not a directory"):
        kx.export_for_serving(exported.model, afile)
    with pytest.raises(NotADirectoryError, match="`base_dir` .*: cannot create it"):
        kx.export_for_serving(exported.model, afile / "sub")
    # Rejected before anything was written.
    assert not base.exists()


def test_non_writable_base_dir_leaves_nothing(exported):
    # World-traversable, owner-only-writable directory; as root, drop to `nobody`.
    base = tempfile.mkdtemp(prefix="kcp-ro-")
    try:
        os.chmod(base, 0o555)
        euid = os.geteuid()
        if euid == 0:
            os.seteuid(65534)
        try:
            with pytest.raises(PermissionError, match="`base_dir` is not writable"):
                kx.export_for_serving(exported.model, base)
            with pytest.raises(PermissionError, match="`base_dir`"):
                kx.export_for_serving(exported.model, os.path.join(base, "sub"))
        finally:
            if euid == 0:
                os.seteuid(0)
        assert os.listdir(base) == []
    finally:
        os.chmod(base, 0o755)
        shutil.rmtree(base)


def test_failed_write_leaves_no_partial_version(exported, tmp_path, monkeypatch):
    base = tmp_path / "m"
    real_build = kx._build_archive

    class Exploding:
        def __init__(self, archive):
            self.archive = archive

        def write_out(self, path, options=None, verbose=False):
            self.archive.write_out(path, options=options, verbose=verbose)  # complete...
            raise OSError("disk full")  # ...then the failure before the rename

    monkeypatch.setattr(kx, "_build_archive", lambda m, s: Exploding(real_build(m, s)))
    with pytest.raises(OSError, match="disk full"):
        kx.export_for_serving(exported.model, base / "digits")
    assert not base.exists()  # the directories this call created are gone too
    base.mkdir()
    (base / "3").mkdir()
    with pytest.raises(OSError, match="disk full"):
        kx.export_for_serving(exported.model, base)
    assert os.listdir(base) == ["3"]  # neither "4" nor the temporary directory


def test_model_that_cannot_be_traced_writes_nothing(tmp_path):
    class BreaksWhenTraced(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.broken = False

        def call(self, x):
            if self.broken:
                raise RuntimeError("this model cannot be traced")
            return self.dense(x)

    model = BreaksWhenTraced()
    model(np.zeros((3, 4), "float32"))
    model.broken = True
    with pytest.raises(RuntimeError, match="cannot be traced"):
        kx.export_for_serving(model, tmp_path / "models" / "m")
    assert os.listdir(tmp_path) == []


def test_variable_size_convolution_exports_and_serves_every_size(tmp_path):
    # Under JAX the export leaves out the jax2tf function's gradients, which jax2tf
    # cannot trace for a convolution over a variable length (Keras' `model.export`
    # fails there); TensorFlow traces it as it is.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 8)), keras.layers.Conv1D(4, 3),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    path = kx.export_for_serving(model, tmp_path / "models" / "m")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for length in (5, 17):
        x = np.random.default_rng(length).normal(size=(3, length, 8)).astype("float32")
        (served,) = serve(tf.constant(x)).values()
        assert _max_abs(served, model.predict(x, verbose=0)) <= SERVED_ATOL


# --------------------------------------------------------------------------- .keras


def _adapted_classpca_model(x, y):
    keras.utils.set_random_seed(0)
    conv = keras_classpca.ClassPCAConv2D(4, 3, activation="relu", name="pca_conv")
    conv.adapt((x, y))
    features = keras.layers.Flatten()(conv(x))
    dense = keras_classpca.ClassPCADense(6, activation="relu", name="pca_dense", trainable=True)
    dense.adapt((keras.ops.convert_to_numpy(features), y))
    init = keras_classpca.ClassPCAInitializer.from_data(x, y, kernel_size=3)
    return keras.Sequential(
        [
            keras.Input(SHAPE, name="image"),
            conv,
            keras.layers.Flatten(),
            dense,
            keras.layers.Dense(2, activation="softmax", name="probs"),
        ],
        name="classpca",
    ), keras.Sequential(
        [
            keras.Input(SHAPE, name="image"),
            keras.layers.Conv2D(
                4,
                3,
                kernel_initializer=init,
                bias_initializer=init.bias_initializer(),
                name="init_conv",
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax", name="probs"),
        ],
        name="initialized",
    )


def test_keras_round_trip_of_classpca_models(exported, tmp_path):
    x, y = exported.x, exported.y
    layered, initialized = _adapted_classpca_model(x, y)
    assert layered.get_layer("pca_conv").is_adapted
    for model in (layered, initialized, exported.model):
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)  # safe_mode on, no custom_objects
        assert type(reloaded) is type(model)
        assert [type(a) for a in reloaded.layers] == [type(b) for b in model.layers]
        assert [w.trainable for w in reloaded.weights] == [w.trainable for w in model.weights]
        assert [la.trainable for la in reloaded.layers] == [la.trainable for la in model.layers]
        assert _max_abs(reloaded.predict(x, verbose=0), model.predict(x, verbose=0)) == 0.0

    reloaded = keras.saving.load_model(str(tmp_path / "classpca.keras"))
    conv, dense = reloaded.get_layer("pca_conv"), reloaded.get_layer("pca_dense")
    assert isinstance(conv, keras_classpca.ClassPCAConv2D) and conv.is_adapted
    assert isinstance(dense, keras_classpca.ClassPCADense) and dense.is_adapted
    assert conv.trainable is False and dense.trainable is True
    assert conv.get_config() == layered.get_layer("pca_conv").get_config()

    # A reloaded model goes on training: frozen weights stay bit-identical.
    frozen = [w.numpy().copy() for w in conv.weights]
    head = reloaded.get_layer("probs").kernel.numpy().copy()
    reloaded.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = reloaded.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(_max_abs(a, w.numpy()) == 0.0 for a, w in zip(frozen, conv.weights))
    assert _max_abs(head, reloaded.get_layer("probs").kernel.numpy()) > 0.0

    # And it exports: the SavedModel predicts exactly what Keras predicts.
    path = kx.export_for_serving(reloaded, tmp_path / "classpca")
    assert _max_abs(_serve(path, x)["probs"], reloaded.predict(x, verbose=0)) <= SERVED_ATOL


def test_hybridized_model_saves_reloads_and_exports(exported, tmp_path):
    x, y = exported.x, exported.y
    model = _plain_model()
    model.build((None,) + SHAPE)
    keras_classpca.hybridize(model, (x, y), cutoff=1, verbose=0)
    assert model.get_layer("conv").trainable is False
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    expected = model.predict(x, verbose=0)

    keras_path = str(tmp_path / "hybrid.keras")
    model.save(keras_path)
    reloaded = keras.saving.load_model(keras_path)
    assert [la.trainable for la in reloaded.layers] == [la.trainable for la in model.layers]
    assert _max_abs(reloaded.predict(x, verbose=0), expected) == 0.0

    frozen = reloaded.get_layer("conv").kernel.numpy().copy()
    reloaded.fit(x, y, epochs=1, batch_size=32, verbose=0)  # compiled state came back too
    assert _max_abs(frozen, reloaded.get_layer("conv").kernel.numpy()) == 0.0

    path = kx.export_for_serving(model, tmp_path / "hybrid")
    assert _max_abs(_serve(path, x)["probs"], expected) <= SERVED_ATOL
    sizes = keras_classpca.artifact_sizes(path, keras_path, model)
    assert sizes["variables_bytes"] < 1.5 * sizes["weights_bytes"] + 2048


def test_subclassed_model_exports(tmp_path):
    class Scorer(keras.Model):
        def __init__(self):
            super().__init__(name="scorer")
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Scorer()
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    model(x)
    path = kx.export_for_serving(model, tmp_path / "sub")
    info = keras_classpca.signature_info(path)
    assert {k: v["shape"] for k, v in info["inputs"].items()} == {"inputs": [None, 5]}
    assert {k: v["shape"] for k, v in info["outputs"].items()} == {"output_0": [None, 3]}
    assert oct(os.stat(path).st_mode & 0o777) == oct(
        os.stat(os.path.join(path, "variables")).st_mode & 0o777
    )
    out = _serve(path, x)
    assert _max_abs(out["output_0"], model.predict(x, verbose=0)) <= SERVED_ATOL


def test_counter_generated_names_become_stable_positional_names(tmp_path):
    x = np.zeros((2, 4), "float32")
    keys = []
    for run in range(2):  # the second model's layers get names like "dense_3"
        model = keras.Sequential([keras.layers.Dense(3), keras.layers.Dense(2)])
        model(x)
        info = keras_classpca.signature_info(kx.export_for_serving(model, tmp_path / f"run{run}"))
        keys.append((list(info["inputs"]), list(info["outputs"])))
    assert keys == [(["inputs"], ["output_0"])] * 2
    with pytest.raises(ValueError, match="at least one example"):
        keras_classpca.predict_request_body(
            str(tmp_path / "run0" / "1"), np.zeros((0, 4), "float32")
        )


# --------------------------------------------------------------------------- saved_model_cli
# Last in the file: the two CLI processes started by the fixture run meanwhile.


def test_saved_model_cli_show_lists_signature(exported):
    out = exported.cli("show")
    block = out.split("signature_def['serving_default']:", 1)[1].split("signature_def[", 1)[0]
    assert re.search(
        r"inputs\['image'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 8, 8, 1\)", block
    ), block
    assert re.search(
        r"outputs\['probs'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)", block
    ), block
    assert "Method name is: tensorflow/serving/predict" in block


def test_saved_model_cli_run_returns_same_values(exported):
    exported.cli("run")
    got = np.load(exported.outdir / "probs.npy")
    expected = exported.model.predict(exported.x_cli, verbose=0)
    assert got.shape == (5, 10)
    assert _max_abs(got, expected) <= SERVED_ATOL


def test_example_export_serving_runs(tmp_path, capsys):
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "export_serving_example", os.path.join(here, "..", "examples", "export_serving.py")
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    path = example.main(["--base-dir", str(tmp_path / "serving" / "digits"), "--epochs", "1"])
    assert path == str(tmp_path / "serving" / "digits" / "1")
    out = capsys.readouterr().out
    assert f"exported: {path}" in out
    assert "input  'image': float32 [None, 8, 8, 1]" in out
    assert "output 'probs': float32 [None, 10]" in out
    body = json.loads((tmp_path / "serving" / "body.json").read_text())
    assert len(body["instances"]) == 2 and list(body["instances"][0]) == ["image"]
    reloaded = keras.saving.load_model(str(tmp_path / "serving" / "digits.keras"))
    assert reloaded.get_layer("conv").trainable is False  # hybridize froze it

