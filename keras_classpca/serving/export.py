"""Export a (hybrid) Keras model for TensorFlow Serving, and talk to the export.

A hybrid model, whose lower layers were solved with class-based PCA and whose top was
trained with `fit()`, is an ordinary Keras model: it saves to `.keras` and reloads with
`keras.saving.load_model(path)` once `keras_classpca` is imported. This module covers the
other half of production, the TF Serving artifact:

- `export_for_serving(model, base_dir)` writes `base_dir/<version>/saved_model.pb` and
  `variables/`, the layout `tensorflow_model_server --model_base_path=base_dir` watches.
  It writes into a hidden temporary directory inside `base_dir` and renames it into place,
  so the server never sees (and a failure never leaves) a half-written version.
- `signature_info(export_path)` reads a signature's input/output keys, dtypes and shapes
  back from the SavedModel (what `saved_model_cli show --all` prints).
- `predict_request_body(export_path, x)` builds the JSON body of a REST
  `POST /v1/models/<name>:predict` request from those input keys.
- `artifact_sizes(export_path, keras_path)` measures the export against the `.keras`
  file (keras issue #23553: an export may store variables more than once).

Example:

```python
import keras_classpca.serving.export as kx

path = kx.export_for_serving(model, "/srv/models/digits")  # -> /srv/models/digits/1
kx.signature_info(path)["inputs"]
# {'image': {'name': 'serving_default_image:0', 'dtype': 'float32',
#            'shape': [None, 8, 8, 1]}}
body = kx.predict_request_body(path, x[:2])  # json.dumps(body) is the POST body
```
"""

import errno
import os
import re
import shutil
import tempfile
import time

import numpy as np

from keras_classpca._optional import import_optional
from keras_classpca.core.data_adapter import as_standard_float

__all__ = [
    "export_for_serving",
    "signature_info",
    "predict_request_body",
    "artifact_sizes",
]

DEFAULT_SIGNATURE = "serving_default"
EXPORT_BACKENDS = ("tensorflow", "jax")
SERVE_TAG = "serve"
_TMP_PREFIX = ".tmp-export-"
# A temporary export directory nobody holds a lock on and untouched this long was
# left by a killed export; the next export into the same `base_dir` removes it.
STALE_TMP_SECONDS = 60
MAX_VERSION = 2**63 - 1  # TF Serving parses version directories as int64
# TF Serving (and `tf.saved_model.save`) need signature and tensor keys that are valid
# identifiers in a SignatureDef: letters, digits, '_', '.', '-', not starting with '-'.
_KEY_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-/]*$")
_SIGNATURE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- helpers


def _tf():
    return import_optional("tensorflow", "Export for TF Serving")


def _check_model(model):
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a `keras.Model` (Sequential, functional or subclassed); "
            f"received {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"`model` ({model.name!r}) is not built, so it has no input shape to export. "
            "Build it first: give it a `keras.Input(shape)`, call `model.build(input_shape)` "
            "or call it on a batch of data."
        )


def _check_version(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise TypeError(
            "`version` must be a non-negative int or None (next free version); "
            f"received {version!r} of type {type(version).__name__}."
        )
    version = int(version)
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(
            f"`version` must lie in 0..{MAX_VERSION} (TF Serving versions are int64); "
            f"got {version}."
        )
    return version


def _check_signature_name(signature_name):
    if not isinstance(signature_name, str):
        raise TypeError(
            f"`signature_name` must be a str; received {type(signature_name).__name__}."
        )
    if not _SIGNATURE_RE.match(signature_name):
        raise ValueError(
            "`signature_name` must be a Python identifier (letters, digits, '_', not "
            f"starting with a digit); got {signature_name!r}."
        )
    return signature_name


def _unique(names):
    """Make `names` unique and valid as SignatureDef keys, keeping order."""
    out, seen = [], set()
    for i, name in enumerate(names):
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name)) or f"key_{i}"
        if not _KEY_RE.match(name):
            name = f"key_{name}"
        candidate, k = name, 1
        while candidate in seen:
            candidate, k = f"{name}_{k}", k + 1
        seen.add(candidate)
        out.append(candidate)
    return out


def _input_layout(model):
    """(flat input specs, names, pack) where pack(flat tensors) -> model's input structure."""
    import keras

    tf = _tf()
    inputs = None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        struct = inputs[0] if isinstance(model, keras.Sequential) else model.input
        if isinstance(struct, dict):
            keys = list(struct.keys())
            tensors = [struct[k] for k in keys]
            names = _unique(keys)

            def pack(flat):
                return dict(zip(keys, flat))

        else:
            tensors = keras.tree.flatten(struct)
            names = _unique([_input_name(t.name, i, len(tensors)) for i, t in enumerate(tensors)])

            def pack(flat):
                return keras.tree.pack_sequence_as(struct, list(flat))

        specs = [
            tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=n)
            for t, n in zip(tensors, names)
        ]
        return specs, names, pack

    # Subclassed model: the shapes recorded when it was built or first called.
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    flat_shapes = list(shapes.values())
    if len(flat_shapes) != 1 or not all(
        isinstance(d, (int, type(None))) for d in tuple(flat_shapes[0])
    ):
        raise ValueError(
            f"`model` ({model.name!r}) is a subclassed model whose input structure is not a "
            "single tensor; wrap it in a functional model with named `keras.Input`s first."
        )
    shape = (None,) + tuple(flat_shapes[0])[1:]
    dtype = getattr(model, "input_dtype", None) or "float32"
    names = ["inputs"]
    return [tf.TensorSpec(shape, dtype, name="inputs")], names, lambda flat: flat[0]


def _snake(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


# Names Keras generates from a per-process counter ("keras_tensor_12", "dense_3") would
# change from one training run to the next and silently break clients: they are
# replaced by positional names. Name your `keras.Input`s and output layers instead.
_AUTO_INPUT_RE = re.compile(r"^(keras_tensor|input_layer)(_\d+)?$")


def _input_name(name, i, n):
    if _AUTO_INPUT_RE.match(name):
        return "inputs" if n == 1 else f"input_{i}"
    return name


def _output_layers(model):
    """The layers producing the model's outputs (public API), or None if unknown."""
    import keras

    if isinstance(model, keras.Sequential):
        return model.layers[-1:] or None
    try:  # a functional model names its output layers
        return [model.get_layer(name) for name in model.output_names]
    except (AttributeError, TypeError, ValueError):
        return None


def _output_names(model, n_outputs):
    layers = _output_layers(model)
    if not layers or len(layers) != n_outputs:
        layers = [None] * n_outputs
    names = []
    for i, layer in enumerate(layers):
        auto = f"output_{i}"
        if layer is None:
            names.append(auto)
            continue
        pattern = rf"^{re.escape(_snake(type(layer).__name__))}(_\d+)?$"
        names.append(auto if re.match(pattern, layer.name) else layer.name)
    return _unique(names)


def _existing_versions(base_dir):
    found = []
    for entry in os.listdir(base_dir):
        if entry.isdigit() and os.path.isdir(os.path.join(base_dir, entry)):
            found.append(int(entry))
    return sorted(found)


def _check_free(final, version):
    if os.path.lexists(final):
        raise FileExistsError(
            f"`version` {version} already exists at {final!r}; exported versions are never "
            "overwritten. Pass version=None for the next free version, or remove it first."
        )


def _first_missing(path):
    """The top-most directory of `path` that does not exist yet (None if it exists)."""
    missing = None
    while not os.path.lexists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_empty(top, leaf):
    """Undo `os.makedirs(leaf)` down to `top` (which it created), where still empty."""
    if top is None:
        return
    path = leaf
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == top:
            return
        path = os.path.dirname(path)


def _os_error(path, what, err):
    """Re-raise an OSError about `base_dir` with a message naming the argument."""
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        return PermissionError(
            err.errno,
            f"`base_dir` is not writable: cannot {what} {path!r} ({err.strerror or err}). "
            "Choose a directory you can write to, or fix its permissions.",
        )
    # OSError(errno, msg) comes back as the matching subclass (NotADirectoryError, ...).
    return OSError(err.errno, f"`base_dir` {path!r}: cannot {what} it ({err.strerror or err}).")


# --------------------------------------------------------------------------- export


def export_for_serving(model, base_dir, *, version=None, signature_name=DEFAULT_SIGNATURE):
    """Write `model` as a TF Serving version directory `base_dir/<version>/`.

    The artifact is a TensorFlow SavedModel written with `keras.export.ExportArchive`
    (what `model.export(path, format="tf_saved_model")` uses; under the JAX backend the
    model is converted with `jax2tf`): one endpoint, registered
    as `signature_name` (and also as `serving_default`, which TF Serving requires), that
    runs the model in inference mode. Its inputs are named after the model's inputs (the
    `keras.Input(name=...)` names, or the keys of a dict-input model), its outputs after
    the model's output layers, and every batch dimension is `None`. Names Keras made up
    from a counter (`keras_tensor_3`, `dense_2`) would change between runs, so those
    become `inputs` / `input_<i>` and `output_<i>`: name what clients will see.

    `base_dir` is one model's directory, the `--model_base_path` of
    `tensorflow_model_server` (conventionally `<models>/<model_name>`); it is created if
    missing. The version is written to a hidden temporary directory inside `base_dir`
    and renamed into place, so a crash never leaves a half-written version behind; a
    temporary directory left by a killed export (unlocked, older than a minute) is
    removed by the next export into the same `base_dir`.

    Args:
        model: a built `keras.Model` (Sequential, functional, or subclassed with one
            input tensor).
        base_dir: `str` or path-like, the model's directory.
        version: an int in 0..2**63-1 (TF Serving's int64), or None for one more than
            the largest existing integer version (1 in an empty directory). An existing
            version is never overwritten.
        signature_name: the SignatureDef key of the endpoint (a Python identifier).

    Returns:
        The path (`str`) of the written version directory.

    Raises:
        TypeError: `model` is not a `keras.Model`; `version`, `signature_name` or
            `base_dir` has the wrong type.
        ValueError: `model` is not built; `version` outside 0..2**63-1; `base_dir` is
            empty; bad `signature_name`; the
            Keras backend is torch (TensorFlow and JAX export; see docs/backends.md).
        FileExistsError: `base_dir/<version>` already exists, or `base_dir` is a file.
        PermissionError: `base_dir` cannot be created or written to.
        OSError: any other failure to create `base_dir` (e.g. `NotADirectoryError` when
            a parent is a file), with a message naming `base_dir`.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8, 8, 1), name="image"),
                              keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax", name="probs")])
    path = export_for_serving(model, "/srv/models/digits")   # '/srv/models/digits/1'
    export_for_serving(model, "/srv/models/digits")          # '/srv/models/digits/2'
    export_for_serving(model, "/srv/models/digits", version=1)  # FileExistsError
    ```
    """
    _check_backend()
    _check_model(model)
    version = _check_version(version)
    signature_name = _check_signature_name(signature_name)
    if not isinstance(base_dir, (str, os.PathLike)):
        raise TypeError(
            f"`base_dir` must be a str or os.PathLike; received {type(base_dir).__name__}."
        )
    if not os.fspath(base_dir):
        raise ValueError(
            "`base_dir` is empty: give the model's directory (e.g. 'models/digits'); the "
            "version directory is written inside it."
        )
    base_dir = os.path.abspath(os.fspath(base_dir))

    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise FileExistsError(f"`base_dir` {base_dir!r} exists and is not a directory.")
    if version is not None:
        _check_free(os.path.join(base_dir, str(version)), version)

    # Trace before touching the disk: a model that cannot be traced leaves nothing behind.
    archive = _build_archive(model, signature_name)

    created = _first_missing(base_dir)  # the top directory makedirs will create, if any
    try:
        os.makedirs(base_dir, exist_ok=True)
    except OSError as err:
        _remove_empty(created, base_dir)
        raise _os_error(base_dir, "create", err) from err

    tmp = lock = None
    try:
        if version is None:
            existing = _existing_versions(base_dir)
            version = existing[-1] + 1 if existing else 1
        final = os.path.join(base_dir, str(version))
        _check_free(final, version)
        _remove_stale_tmp(base_dir)
        try:
            tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=base_dir)
        except OSError as err:
            raise _os_error(base_dir, "write a temporary directory in", err) from err
        lock = _lock(tmp)  # held until the rename: tells other exporters it is alive
        archive.write_out(tmp, verbose=False)
        raced = FileExistsError(
            f"`version` {version} appeared at {final!r} during the export (another "
            "exporter?); not overwriting it."
        )
        if os.path.lexists(final):
            raise raced
        try:
            # POSIX rename replaces an *empty* directory but fails on a non-empty one.
            os.rename(tmp, final)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise raced from err
            raise
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created, base_dir)
        raise
    finally:
        _unlock(lock)
    # mkdtemp creates 0700; a server running as another user must be able to read it.
    _make_readable(final)
    return final


def _lock(path):
    """An exclusive `flock` on directory `path` (a descriptor), or None where unsupported."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: stale directories go by age only
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a file system that cannot open directories: no lock, no harm
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd):
    if fd is not None:
        os.close(fd)  # closing releases the flock


def _remove_stale_tmp(base_dir):
    """Remove `.tmp-export-*` directories left in `base_dir` by killed exports.

    A running export holds a `flock` on its directory (released by the kernel when the
    process dies, even on SIGKILL); a directory that is unlocked and older than
    `STALE_TMP_SECONDS` is stale. Without `fcntl` (Windows) age alone decides, after a
    day. Never raises: cleaning is a courtesy, not part of the export.
    """
    try:
        import fcntl  # noqa: F401

        can_lock, min_age = True, STALE_TMP_SECONDS
    except ImportError:  # pragma: no cover
        can_lock, min_age = False, 24 * 3600
    try:
        entries = [e for e in os.listdir(base_dir) if e.startswith(_TMP_PREFIX)]
    except OSError:
        return
    for entry in entries:
        path = os.path.join(base_dir, entry)
        fd = None
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            if time.time() - os.stat(path).st_mtime < min_age:
                continue
            if can_lock:
                fd = _lock(path)
                if fd is None:
                    continue  # another export is writing it
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
        finally:
            _unlock(fd)


def _make_readable(path):
    """Give the version directory the mode its subdirectories got from the umask.

    `mkdtemp` creates it 0700; a server running as another user must be able to read
    it. TF created `variables/` with the process umask applied, so copy that mode
    (no `os.umask` round trip, which would briefly change it for every thread).
    """
    variables = os.path.join(path, "variables")
    mode = os.stat(variables).st_mode & 0o777 if os.path.isdir(variables) else 0o755
    os.chmod(path, mode)


def _check_backend():
    """The Keras backends `ExportArchive` can write a SavedModel from here."""
    import keras

    backend = keras.backend.backend()
    if backend not in EXPORT_BACKENDS:
        raise ValueError(
            f"Exporting a SavedModel needs KERAS_BACKEND=tensorflow or jax (now {backend!r}: "
            "Keras exports torch models through torch_xla, which has no CPU wheel for "
            "this torch). The `.keras` file is backend-independent: `model.save(path)` "
            "here, then load and export it under TensorFlow, e.g. "
            "`KERAS_BACKEND=tensorflow keras-classpca export model.keras models/name`."
        )
    return backend


def _build_archive(model, signature_name):
    import keras

    tf = _tf()
    backend = _check_backend()
    specs, _, pack = _input_layout(model)

    def call(flat):
        return keras.tree.flatten(model(pack(flat), training=False))

    # Trace once to learn the outputs' structure, then name them.
    if backend == "tensorflow":
        probe = tf.function(lambda *flat: call(flat)).get_concrete_function(*specs)
        n_outputs = len(probe.structured_outputs)
    else:
        symbolic = [keras.KerasTensor(spec.shape, spec.dtype.name) for spec in specs]
        n_outputs = len(call(symbolic))
    out_names = _output_names(model, n_outputs)

    def serve(*flat):
        return dict(zip(out_names, call(flat)))

    archive = keras.export.ExportArchive()
    if backend == "tensorflow":
        # No `archive.track(model)`: the endpoint already tracks every variable it uses,
        # and tracking the model too stores each variable twice (keras issue #23553;
        # measured in docs/serving.md). Lookup tables of Keras preprocessing layers are
        # tracked by `add_endpoint` itself.
        archive.add_endpoint(
            name=signature_name, fn=tf.function(serve, autograph=False), input_signature=specs
        )
    else:
        # JAX: `track` turns the variables into tf.Variables (stored once) and
        # `add_endpoint` converts `serve` with jax2tf (an XlaCallModule op).
        archive.track(model)
        archive.add_endpoint(name=signature_name, fn=serve, input_signature=specs)
    return archive


# --------------------------------------------------------------------------- reading


def _load_meta_graph(export_path, signature_name):
    from tensorflow.core.protobuf import saved_model_pb2

    if not isinstance(export_path, (str, os.PathLike)):
        raise TypeError(
            f"`export_path` must be a str or os.PathLike; received {type(export_path).__name__}."
        )
    export_path = os.fspath(export_path)
    pb_path = os.path.join(export_path, "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise FileNotFoundError(
            f"`export_path` {export_path!r} is not a SavedModel directory (no saved_model.pb)."
        )
    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as fh:
        saved.ParseFromString(fh.read())
    for meta in saved.meta_graphs:
        if SERVE_TAG in meta.meta_info_def.tags:
            break
    else:
        raise ValueError(f"`export_path` {export_path!r} has no MetaGraph tagged 'serve'.")
    if signature_name not in meta.signature_def:
        known = sorted(k for k in meta.signature_def if not k.startswith("__"))
        raise ValueError(
            f"`signature_name` {signature_name!r} is not in {export_path!r}; "
            f"its signatures are {known}."
        )
    return meta.signature_def[signature_name]


def _tensor_info(info):
    tf = _tf()
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = [None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
    return {"name": info.name, "dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": shape}


def signature_info(export_path, signature_name=DEFAULT_SIGNATURE):
    """Inputs and outputs of one signature of a SavedModel, read from `saved_model.pb`.

    The same facts `saved_model_cli show --dir PATH --tag_set serve --signature_def NAME`
    prints, as a dict, so clients never hard-code the keys:

    ```python
    signature_info("/srv/models/digits/1")
    # {'signature_name': 'serving_default',
    #  'method_name': 'tensorflow/serving/predict',
    #  'inputs':  {'image': {'name': 'serving_default_image:0', 'dtype': 'float32',
    #                        'shape': [None, 8, 8, 1]}},
    #  'outputs': {'probs': {'name': 'StatefulPartitionedCall:0', 'dtype': 'float32',
    #                        'shape': [None, 10]}}}
    ```

    Keys of `inputs`/`outputs` are the signature's keys (sorted, as TF stores them);
    `name` is the graph tensor; unknown dimensions are `None`.
    """
    sig = _load_meta_graph(export_path, signature_name)
    return {
        "signature_name": signature_name,
        "method_name": sig.method_name,
        "inputs": {k: _tensor_info(sig.inputs[k]) for k in sorted(sig.inputs)},
        "outputs": {k: _tensor_info(sig.outputs[k]) for k in sorted(sig.outputs)},
    }


def _json_ready(value, key, dtype):
    arr = as_standard_float(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`x` for input {key!r} must be numeric; received dtype {arr.dtype}.")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(
            f"`x` for input {key!r} holds NaN or infinite values, which JSON cannot carry."
        )
    if dtype.startswith("int") or dtype.startswith("uint") or dtype == "bool":
        if arr.dtype.kind == "f" and np.any(arr != np.round(arr)):
            raise ValueError(f"`x` for input {key!r} must hold integers (signature dtype {dtype}).")
        if dtype != "bool":
            info = np.iinfo(dtype) if hasattr(np, dtype) else np.iinfo(np.int64)
            low, high = int(info.min), min(int(info.max), int(np.iinfo(np.int64).max))
            if arr.size and (arr.min() < low or arr.max() > high):
                raise ValueError(
                    f"`x` for input {key!r} holds values outside the range of the "
                    f"signature's {dtype} ({low}..{high})."
                )
        return arr.astype(np.int64 if dtype != "bool" else bool)
    # Cast to the signature's float type first so the JSON numbers are exactly the values
    # the server will compute with (float32 -> Python float is exact).
    with np.errstate(over="ignore"):
        target = np.dtype(dtype) if dtype in ("float16", "float32", "float64") else np.float64
        cast = arr.astype(target)
    if not np.all(np.isfinite(cast)):
        raise ValueError(
            f"`x` for input {key!r} holds values too large for the signature's {dtype} "
            f"(largest {np.finfo(cast.dtype).max:g}): they would become infinite, which "
            "JSON cannot carry."
        )
    return cast


def predict_request_body(export_path, x, signature_name=DEFAULT_SIGNATURE):
    """The JSON body of a TF Serving REST `:predict` request for inputs `x`.

    Uses the row ("instances") format of TF Serving's REST API, one object per example
    keyed by the signature's input names read from `export_path`:

    ```python
    body = predict_request_body("/srv/models/digits/1", x[:2])
    # {'signature_name': 'serving_default',
    #  'instances': [{'image': [[[0.0], ...]]}, {'image': [[[0.0], ...]]}]}
    requests.post("http://localhost:8501/v1/models/digits:predict", json=body)
    ```

    Args:
        export_path: a SavedModel directory (what `export_for_serving` returned).
        x: one array (batch first) for a single-input signature; a dict
            `{input_name: array}` or a list/tuple of arrays in the order of
            `signature_info(export_path)["inputs"]` for several inputs.
        signature_name: which signature to address.

    Returns:
        A dict ready for `json.dumps`: `{"signature_name": ..., "instances": [...]}`.
    """
    info = signature_info(export_path, signature_name)
    inputs = info["inputs"]
    keys = list(inputs)
    if isinstance(x, dict):
        missing, extra = set(keys) - set(x), set(x) - set(keys)
        if missing or extra:
            raise ValueError(
                f"`x` keys {sorted(x)} do not match the signature's inputs {keys} "
                f"(missing {sorted(missing)}, unexpected {sorted(extra)})."
            )
        arrays = {k: x[k] for k in keys}
    elif isinstance(x, (list, tuple)) and len(keys) > 1:
        if len(x) != len(keys):
            raise ValueError(
                f"`x` has {len(x)} arrays but the signature has {len(keys)} inputs {keys}."
            )
        arrays = dict(zip(keys, x))
    else:
        if len(keys) != 1:
            raise ValueError(
                f"The signature has {len(keys)} inputs {keys}: pass `x` as a dict keyed by "
                "them (or a list in that order)."
            )
        arrays = {keys[0]: x}

    batch = None
    rows = {}
    for key, value in arrays.items():
        spec = inputs[key]
        arr = _json_ready(value, key, spec["dtype"])
        shape = spec["shape"]
        if shape is not None:
            if arr.ndim != len(shape):
                raise ValueError(
                    f"`x` for input {key!r} has shape {arr.shape}; the signature expects "
                    f"{tuple(shape)} (batch first)."
                )
            for got, want in zip(arr.shape, shape):
                if want is not None and got != want:
                    raise ValueError(
                        f"`x` for input {key!r} has shape {arr.shape}; the signature expects "
                        f"{tuple(shape)}."
                    )
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise ValueError(
                f"`x` for input {key!r} must have a batch dimension with at least one example; "
                f"received shape {arr.shape}."
            )
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise ValueError(
                f"`x` inputs have different batch sizes ({batch} and {arr.shape[0]} for {key!r})."
            )
        rows[key] = arr.tolist()
    instances = [{k: rows[k][i] for k in keys} for i in range(batch or 0)]
    return {"signature_name": signature_name, "instances": instances}


# --------------------------------------------------------------------------- sizes


def _tree_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def artifact_sizes(export_path, keras_path=None, model=None):
    """Bytes on disk of a SavedModel export, next to the `.keras` file and raw weights.

    Keras issue #23553: an exported SavedModel can store each variable more than once.
    This measures it:

    ```python
    artifact_sizes(path, "digits.keras", model)
    # {'saved_model_bytes': ..., 'saved_model_pb_bytes': ..., 'variables_bytes': ...,
    #  'keras_bytes': ..., 'weights_bytes': ..., 'export_over_keras': 1.9,
    #  'variables_over_weights': 2.0}
    ```

    `weights_bytes` is the sum of `nbytes` of the model's weights (needs `model`);
    ratios are present when both sides are known.
    """
    if not os.path.isdir(export_path):
        raise FileNotFoundError(f"`export_path` {export_path!r} is not a directory.")
    sizes = {
        "saved_model_bytes": _tree_bytes(export_path),
        "saved_model_pb_bytes": os.path.getsize(os.path.join(export_path, "saved_model.pb")),
        "variables_bytes": _tree_bytes(os.path.join(export_path, "variables")),
    }
    if keras_path is not None:
        if not os.path.isfile(keras_path):
            raise FileNotFoundError(f"`keras_path` {keras_path!r} is not a file.")
        sizes["keras_bytes"] = os.path.getsize(keras_path)
        sizes["export_over_keras"] = round(sizes["saved_model_bytes"] / sizes["keras_bytes"], 3)
    if model is not None:
        weights = int(sum(np.asarray(w).nbytes for w in model.get_weights()))
        sizes["weights_bytes"] = weights
        if weights:
            sizes["variables_over_weights"] = round(sizes["variables_bytes"] / weights, 3)
    return sizes

