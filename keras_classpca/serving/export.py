"""Export a (hybrid) Keras model for TensorFlow Serving.

A hybrid model, whose lower layers were solved with class-based PCA and whose top was
trained with `fit()`, is an ordinary Keras model: it saves to `.keras` and reloads with
`keras.saving.load_model(path)` once `keras_classpca` is imported. This module covers the
other half of production, the TF Serving artifact:

- `export_for_serving(model, base_dir)` writes `base_dir/<version>/saved_model.pb` and
  `variables/`, the layout `tensorflow_model_server --model_base_path=base_dir` watches.
  It writes into a hidden temporary directory inside `base_dir` and renames it into place,
  so the server never sees (and a failure never leaves) a half-written version.

Reading an export back (its signature, request bodies for the REST API, its size) is
`keras_classpca.serving.requests`.

Example:

```python
import keras_classpca

path = keras_classpca.export_for_serving(model, "/srv/models/digits")  # -> .../digits/1
```
"""

import errno
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np

from keras_classpca._optional import import_optional

__all__ = ["export_for_serving"]

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
# The model's own names of the inputs `_unique` renamed ("Token IDs" -> "Token_IDs"),
# `{"input_names": {exported: original}}`, so `predict_request_body` takes both. In
# `assets.extra/`, which SavedModel reserves for files beside the graph that it does
# not load; written only when a name changed (no file: every name is as exported).
INPUT_NAMES_FILE = os.path.join("assets.extra", "keras_classpca_input_names.json")


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
    """(flat input specs, names, pack, original names) where pack(flat tensors) -> model's
    input structure and the original names are the model's own, before `_unique`."""
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
            originals = [str(k) for k in keys]
            names = _unique(keys)

            def pack(flat):
                return dict(zip(keys, flat))

        else:
            tensors = keras.tree.flatten(struct)
            originals = [_input_name(t.name, i, len(tensors)) for i, t in enumerate(tensors)]
            names = _unique(originals)

            def pack(flat):
                return keras.tree.pack_sequence_as(struct, list(flat))

        specs = [
            tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=n)
            for t, n in zip(tensors, names)
        ]
        return specs, names, pack, originals

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
    return [tf.TensorSpec(shape, dtype, name="inputs")], names, lambda flat: flat[0], names


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
    try:
        structure = model.output  # a dict for a model with dict outputs
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, dict) and len(structure) == n_outputs:
        # A dict output: its keys, in the order `keras.tree.flatten` gives the values.
        return [str(key) for key in sorted(structure)]
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


def _version_entries(base_dir):
    """{version: entry names} of `base_dir`'s entries that TF Serving reads as versions.

    The server parses a directory name as an int64, so `007` is version 7; files with
    such names are counted too, so the next free version never collides with them.
    """
    found = {}
    if os.path.isdir(base_dir):
        for entry in os.listdir(base_dir):
            if entry.isascii() and entry.isdigit():
                found.setdefault(int(entry), []).append(entry)
    return found


def _existing_versions(base_dir):
    return sorted(_version_entries(base_dir))


def _check_free(base_dir, version):
    taken = sorted(_version_entries(base_dir).get(version, []))
    if taken:
        final = os.path.join(base_dir, taken[0])
        kind = "directory" if os.path.isdir(final) else "file (not a version directory)"
        same = "" if taken[0] == str(version) else f" (TF Serving reads {taken[0]!r} as {version})"
        raise FileExistsError(
            f"`version` {version} already exists at {final!r}, a {kind}{same}; exported "
            "versions are never overwritten. Pass version=None for the next free version, "
            "or remove it first."
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
        _check_free(base_dir, version)

    # Trace before touching the disk: a model that cannot be traced leaves nothing behind.
    archive = _build_archive(model, signature_name)
    _, names, _, originals = _input_layout(model)
    renamed = {name: original for name, original in zip(names, originals) if name != original}

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
        _check_free(base_dir, version)
        _remove_stale_tmp(base_dir)
        try:
            tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=base_dir)
        except OSError as err:
            raise _os_error(base_dir, "write a temporary directory in", err) from err
        lock = _lock(tmp)  # held until the rename: tells other exporters it is alive
        archive.write_out(tmp, options=_save_options(), verbose=False)
        if renamed:
            _record_input_names(tmp, renamed)
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


def _record_input_names(path, renamed):
    """Write `INPUT_NAMES_FILE` into the export at `path` (see there)."""
    record = os.path.join(path, INPUT_NAMES_FILE)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record, "w", encoding="utf-8") as fh:
        json.dump({"input_names": renamed}, fh, indent=1, sort_keys=True)


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


def _save_options():
    """`tf.saved_model.SaveOptions` of the export. Under JAX without the gradients of
    the jax2tf function: serving never differentiates, and jax2tf cannot trace the
    gradient of a convolution over an input of variable size (symbolic padding), which
    failed the whole export of such models (also Keras' own `model.export`)."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    return _tf().saved_model.SaveOptions(experimental_custom_gradients=False)


def _build_archive(model, signature_name):
    import keras

    from keras_classpca.layers.geometry import iter_layers

    tf = _tf()
    backend = _check_backend()
    specs, _, pack, _ = _input_layout(model)

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
        # not all tracked by `add_endpoint`: the layers that own one are tracked
        # (their variables only, not the whole model's).
        lookups = (keras.layers.StringLookup, keras.layers.IntegerLookup,
                   keras.layers.TextVectorization)
        for layer in iter_layers(model):
            if isinstance(layer, lookups):
                archive.track(layer)
        archive.add_endpoint(
            name=signature_name, fn=tf.function(serve, autograph=False), input_signature=specs
        )
    else:
        # JAX: `track` turns the variables into tf.Variables (stored once) and
        # `add_endpoint` converts `serve` with jax2tf (an XlaCallModule op).
        archive.track(model)
        archive.add_endpoint(name=signature_name, fn=serve, input_signature=specs)
    return archive
