"""Read a TF Serving export back: its signature, request bodies, its size.

- `signature_info(export_path)` reads a signature's input/output keys, dtypes and shapes
  back from the SavedModel (what `saved_model_cli show --all` prints).
- `predict_request_body(export_path, x)` builds the JSON body of a REST
  `POST /v1/models/<name>:predict` request from those input keys.
- `artifact_sizes(export_path, keras_path)` measures the export against the `.keras`
  file (keras issue #23553: an export may store variables more than once).

Example:

```python
import json, keras_classpca

path = keras_classpca.export_for_serving(model, "/srv/models/digits")
keras_classpca.signature_info(path)["inputs"]
# {'image': {'name': 'serving_default_image:0', 'dtype': 'float32',
#            'shape': [None, 8, 8, 1]}}
body = keras_classpca.predict_request_body(path, x[:2])  # json.dumps(body): the POST body
```
"""

import json
import os

import numpy as np

from keras_classpca.core.data_adapter import as_standard_float
from keras_classpca.serving.export import DEFAULT_SIGNATURE, INPUT_NAMES_FILE, SERVE_TAG, _tf

__all__ = ["artifact_sizes", "predict_request_body", "signature_info"]


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


def _original_input_names(export_path, keys):
    """`{exported key: the model's own input name}` for the signature's input `keys`, from
    the record `export_for_serving` writes when it renames inputs (an export without it,
    or an older one: every name as exported)."""
    path = os.path.join(os.fspath(export_path), INPUT_NAMES_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        record = {}
    except ValueError as error:
        raise ValueError(f"{path!r} is not the JSON `export_for_serving` writes: {error}") from None
    recorded = record.get("input_names") if isinstance(record, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    return {k: str(recorded.get(k, k)) for k in keys}


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
            `{input_name: array}` for several inputs (a list would be matched by
            position, and a SavedModel signature orders its inputs by name, not as
            the model does: refused). The names are the signature's, or all of them
            the model's own where the export had to rename one (`"Token IDs"` is
            exported as `"Token_IDs"`); the body always uses the signature's.
        signature_name: which signature to address.

    Returns:
        A dict ready for `json.dumps`: `{"signature_name": ..., "instances": [...]}`.
    """
    info = signature_info(export_path, signature_name)
    inputs = info["inputs"]
    keys = list(inputs)
    if isinstance(x, dict):
        originals = _original_input_names(export_path, keys)
        model_names = [originals[k] for k in keys]
        if set(x) == set(keys):
            arrays = {k: x[k] for k in keys}
        elif (model_names != keys and len(set(model_names)) == len(keys)
              and set(x) == set(model_names)):
            # Keyed by the model's own names: one set or the other, never mixed (the
            # signature's "a_b" may be the model's "a b" while the model's "a_b" is
            # exported as "a_b_1").
            arrays = {k: x[originals[k]] for k in keys}
        else:
            missing, extra = set(keys) - set(x), set(x) - set(keys)
            raise ValueError(
                f"`x` keys {sorted(x)} do not match the signature's inputs {keys} "
                f"(missing {sorted(missing)}, unexpected {sorted(extra)})"
                + ("." if model_names == keys else
                   f" nor the model's input names they were exported from {model_names}.")
            )
    elif len(keys) != 1:
        # A list in `model.predict` order would be paired with the signature's inputs,
        # which are sorted by name: wrong answers whenever the shapes happen to match.
        raise ValueError(
            f"The signature has {len(keys)} inputs {keys}: pass `x` as a dict keyed by "
            "them (a list cannot say which array is which input)."
        )
    else:
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
    #  'keras_bytes': ..., 'weights_bytes': ..., 'export_over_keras': 0.37,
    #  'variables_over_weights': 1.0}   (the digits model of docs/serving.md)
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

