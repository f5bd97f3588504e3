"""Turn the data users hand to `fit`/`adapt`/`hybridize` into a stream of numpy batches.

Accepted, in the spirit of `keras.layers.Normalization.adapt`:

- a pair of arrays or tensors ``(x, y)`` (or ``x`` with a separate ``y``), sliced into
  batches of ``batch_size``;
- a `tf.data.Dataset` whose elements are ``(x, y)`` or ``(x, y, sample_weight)``
  (TFDS with ``as_supervised=True``); unbatched datasets (scalar labels) are batched;
- a `keras.utils.PyDataset`;
- any other iterable of ``(x, y)`` batches, e.g. a generator.

Only one batch is ever held in memory, so statistics can stream over data sets that do
not fit in memory. No Keras layer lives here: this module only moves data.
"""

import functools
import itertools
import numbers
import sys

import numpy as np

from keras_classpca._warnings import warn
from keras_classpca.core.statistics import _is_backend_tensor

DEFAULT_BATCH_SIZE = 1024


def _is_array_like(obj):
    return hasattr(obj, "shape") and hasattr(obj, "dtype")


def _holds_several_label_sets(data):
    """`(x, [y1, y2])`, `(x, (y1, y2))` or `(x, {"a": y1, ...})`: a multi-output model's
    labels."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        return False
    x, y = data[0], data[1]
    parts = list(y.values()) if isinstance(y, dict) else y
    # (Several inputs only as `((x1, x2), [y1, y2])` or with a dict of labels: two
    # `(x, y)` batches in a list or a tuple look the same otherwise.)
    inputs = (_is_array_like(x)
              or (_is_several_inputs(x) and isinstance(data, tuple)
                  and isinstance(y, (list, dict)))
              or _is_array_dict(x))
    return (inputs and isinstance(y, (list, tuple, dict)) and len(parts) > 1
            and all(_is_array_like(part) for part in parts))


def _stream_kind(x):
    """What kind of stream of batches `x` is ("tf.data.Dataset", ...), or None."""
    if _is_tf_dataset(x):
        return "tf.data.Dataset"
    if _is_py_dataset(x):
        return "keras.utils.PyDataset"
    if hasattr(x, "__next__") or callable(x):
        return "generator"
    return None


def fit_style_data_error(x, y, where):
    """A `ValueError` for the data given otherwise than `fit` takes it, else None:
    `where(model, (x, y))` (a pair where `fit` takes `x` and `y` apart, as `hybridize`
    takes it), or a `y` next to a dataset or generator (its batches hold the labels)."""
    kind = _stream_kind(x) if y is not None else None
    if kind is not None:
        return ValueError(
            f"`{where}` takes no `y` when `x` is a {kind}, as `fit` does: its batches "
            f"hold the labels, `(x, y)` or `(x, y, sample_weight)`; received `y` of type "
            f"{type(y).__name__}."
        )
    if y is not None or not isinstance(x, tuple) or len(x) not in (2, 3):
        return None
    try:
        pair = is_xy_pair(x)
    except ValueError:
        return None
    if not pair:
        return None
    return ValueError(
        f"`{where}` takes `x` and `y` apart, as `fit` does: `{where}(model, x, y)`; it "
        "received one tuple `(x, y)` as `x` (the form `hybridize(model, (x, y))` takes)."
    )


def is_xy_pair(data):
    """Whether `data` is `(x, y)` or `(x, y, sample_weight)` in memory: `x` an array or
    tensor, `y` one too or a list of labels as long as `x`.

    >>> import numpy as np
    >>> is_xy_pair((np.zeros((2, 3)), [0, 1])), is_xy_pair([(np.zeros(2), 0)])
    (True, False)
    """
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        return False
    x, y = data[0], data[1]
    if _is_array_dict(x):
        x = next(iter(x.values()))  # {"input name": x}, as `Model.fit` takes
    elif _is_input_list(x):
        x = x[0]  # [x]: the inputs of a one-input model as a list, as `Model.fit` takes
    elif _is_several_inputs(x):
        # (x1, x2): the inputs of a multi-input model (their lengths checked when packed)
        if isinstance(y, list):
            return len(y) == x[0].shape[0]
        return _is_array_like(y) and len(y.shape) > 0
    if not _is_array_like(x):
        return False
    if _is_array_like(y):
        if (isinstance(data, list) and len(x.shape) >= 2
                and all(_is_array_like(part) and tuple(part.shape) == tuple(x.shape)
                        for part in data)):
            # [x1, x2] of one shape: two batches of inputs, or inputs and one-hot labels
            # exactly as wide. A tuple is `(x, y)`, as `fit` reads it.
            raise ValueError(
                f"`data` is a list of {len(data)} arrays of one shape {tuple(x.shape)}: "
                "batches of inputs, or inputs with labels? Pass `(x, y)` as a tuple, and "
                "batches of inputs as an iterator (`iter([...])`), a generator or a "
                "tf.data.Dataset."
            )
        return True
    return (isinstance(y, (list, tuple)) and len(x.shape) > 0 and len(y) == x.shape[0]
            and all(isinstance(v, (numbers.Number, str, list, tuple)) for v in y[:8]))


def _is_input_spec(spec):
    """Whether a tf.data `element_spec` is inputs alone: one TensorSpec, no labels."""
    return not isinstance(spec, (tuple, list, dict)) and hasattr(spec, "shape")


def is_unlabeled(data):
    """Whether `data` is inputs alone, not `(x, y)`: one array or tensor, or a
    `tf.data.Dataset` whose elements are single tensors (batches of `x`)."""
    if _is_tf_dataset(data):
        return _is_input_spec(data.element_spec)
    return _is_array_like(data) and not isinstance(data, (tuple, list))


def _one_class_batch(x):
    x = _to_numpy(x, "x")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"`x` must hold at least one sample; received shape {x.shape}.")
    return x, np.zeros(len(x), dtype=np.int64)


def _one_class_elements(elements):
    """Bare `x` batches as `(x, zeros)`; `(x, y)` elements pass unchanged."""
    for element in elements:
        yield element if isinstance(element, (tuple, list, dict)) else _one_class_batch(element)


def as_one_class(data, batch_rank=None):
    """Label-free inputs as `(x, zeros)`: class-PCA of a single class is the PCA of the
    data (the covariance eigenvectors of the first seed's label-free mode).

    `data` is an array or tensor `x`, or a `tf.data.Dataset` of `x` (a dataset of
    `(x, y)` is returned as it is): batched, or single samples when `batch_rank` (the
    rank of a batch the consumer takes, e.g. 4 for a Conv2D's images) says their rank
    is one less.

    >>> import numpy as np
    >>> x, y = as_one_class(np.ones((3, 2)))
    >>> y.tolist()
    [0, 0, 0]
    """
    if _is_tf_dataset(data):
        if not _is_input_spec(data.element_spec):
            return data
        import tensorflow as tf

        if batch_rank is not None and data.element_spec.shape.rank == batch_rank - 1:
            data = data.batch(DEFAULT_BATCH_SIZE)  # single samples: batch them
        return data.map(lambda x: (x, tf.zeros(tf.shape(x)[:1], dtype=tf.int64)))
    return _one_class_batch(data)


def labels_optional(data, batch_rank=None):
    """`data` with label-free parts as one class, for `adapt` (which, like
    `keras.layers.Normalization.adapt`, takes inputs alone): `x` arrays and datasets
    of `x` via `as_one_class`; a `keras.utils.PyDataset`, an iterable or a function
    returning one yields each bare `x` batch as `(x, zeros)` and `(x, y)` batches
    unchanged. Anything else is returned as it is.

    >>> import numpy as np
    >>> batches = labels_optional([np.ones((2, 2)), (np.ones((1, 2)), np.array([3]))])
    >>> [y.tolist() for _, y in batches()]
    [[0, 0], [3]]
    """
    if is_unlabeled(data) or _is_tf_dataset(data):
        return as_one_class(data, batch_rank)
    if is_xy_pair(data) or isinstance(data, (str, bytes, dict)):
        return data
    if _is_py_dataset(data):
        return lambda: _one_class_elements(_py_dataset_elements(data))
    if callable(data):
        return lambda: _one_class_elements(data())
    if not hasattr(data, "__iter__"):
        return data
    if iter(data) is data:  # one pass only (a generator)
        return _one_class_elements(data)
    return lambda: _one_class_elements(data)


def is_sparse(value):
    """Whether `value` is a sparse or ragged container (SciPy sparse, `tf.SparseTensor`,
    `tf.RaggedTensor`): `fit` takes them, the class statistics do not."""
    module, name = type(value).__module__, type(value).__name__
    return module.startswith("scipy.sparse") or name in (
        "SparseTensor", "SparseTensorValue", "RaggedTensor", "RaggedTensorValue")


def readable_data(data, sparse_ok=False):
    """`data` as the statistics read it, inside tuples, lists and dicts too: pandas
    DataFrames and Series as NumPy arrays (`fit` takes them; their indexing is not
    positional), and torch tensors that record gradients (`requires_grad`) detached
    (NumPy cannot read them). Sparse or ragged `x` raises a `TypeError` saying how to
    densify it, unless `sparse_ok` (then it is returned as it is). Anything else is
    returned as it is.

    >>> readable_data((np.zeros(2), [1, 2]))[1]
    [1, 2]
    """
    if isinstance(data, (list, tuple)) and type(data) in (list, tuple):
        parts = [readable_data(part, sparse_ok) for part in data]
        changed = any(new is not old for new, old in zip(parts, data))
        return type(data)(parts) if changed else data
    if type(data) is dict:
        parts = {key: readable_data(value, sparse_ok) for key, value in data.items()}
        changed = any(parts[key] is not data[key] for key in data)
        return parts if changed else data
    if type(data).__module__.startswith("pandas") and hasattr(data, "to_numpy"):
        return data.to_numpy()
    if getattr(data, "requires_grad", False) is True and hasattr(data, "detach"):
        return data.detach()
    if not sparse_ok and is_sparse(data):
        raise TypeError(
            f"Sparse or ragged input ({type(data).__name__}) is not supported for the "
            "class statistics: pass dense arrays (`x.toarray()`, `tf.sparse.to_dense(x)`, "
            "`x.to_tensor()`), or batches of them in a tf.data.Dataset."
        )
    return data


def as_standard_float(array):
    """`array` with bfloat16/float8 values (`ml_dtypes`, NumPy kind "V") cast to float32.

    NumPy has no arithmetic of its own for these types (what `mixed_bfloat16` layers
    output); statistics are computed in float32/float64 anyway. Other arrays unchanged.
    """
    try:
        array = np.asarray(array)
    except TypeError:
        if not _is_array_like(array):
            raise
        import keras  # NumPy cannot take torch's bfloat16 tensors; Keras converts them

        array = keras.ops.convert_to_numpy(array)
    if array.dtype.kind == "V" and array.dtype.name.startswith(("bfloat", "float")):
        return array.astype(np.float32)
    return array


def concatenate_batches(batches):
    """Batches of samples as one array. Batches of different lengths (a dataset of
    variable-length sequences under `padded_batch`, each batch padded to its own
    longest) are padded with zeros at the end of each axis to the longest, as
    `padded_batch` pads: the zeros are masked where the model masks padding.

    >>> concatenate_batches([np.ones((2, 3)), np.ones((1, 5))]).tolist()
    [[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]]
    """
    batches = [np.asarray(batch) for batch in batches]
    shapes = {batch.shape[1:] for batch in batches}
    if len(shapes) > 1:
        if len({len(shape) for shape in shapes}) > 1:
            raise ValueError(
                "The batches of `data` hold samples of different ranks "
                f"({sorted(shapes, key=len)}): every batch must have the model's input rank.")
        longest = tuple(max(sizes) for sizes in zip(*shapes))
        batches = [np.pad(batch, [(0, 0)] + [(0, full - size) for full, size in
                                             zip(longest, batch.shape[1:])])
                   for batch in batches]
    return np.concatenate(batches)


def _is_input_dict(x):
    """A dict of named inputs (not an array that is a dict, e.g. scipy's `dok_array`)."""
    return isinstance(x, dict) and not hasattr(x, "shape")


def _is_array_dict(x):
    """A non-empty dict of named input arrays, as `Model.fit` takes `x`."""
    return _is_input_dict(x) and bool(x) and all(_is_array_like(v) for v in x.values())


def _is_input_list(x):
    """`[x]` or `(x,)`: one model input in a list, as `Model.fit` takes it."""
    return isinstance(x, (list, tuple)) and len(x) == 1 and _is_array_like(x[0])


def _is_several_inputs(x):
    """`(x1, x2, ...)` or `[x1, x2, ...]`: the inputs of a multi-input model, as
    `Model.fit` takes them."""
    return (isinstance(x, (list, tuple)) and len(x) > 1
            and all(_is_array_like(part) and len(part.shape) > 0 for part in x))


def single_input(x, inputs=None):
    """`x`, or the one value of a dict of inputs (`{"image": x}` for a model whose
    single `keras.Input` is named "image", as `Model.fit` accepts) or of a one-element
    list `[x]`; a `ValueError` for the data of several inputs. With `inputs` (a
    multi-input model's `InputPacking`), `x`'s inputs packed into one array."""
    if inputs is not None:
        return inputs.pack(x)
    if _is_input_list(x):
        return x[0]
    if _is_several_inputs(x):
        raise ValueError(
            f"`x` is a {type(x).__name__} of {len(x)} arrays (the inputs of a "
            "multi-input model), but the model has a single input: pass that input's "
            "array."
        )
    if not _is_input_dict(x):
        return x
    if len(x) != 1:
        raise ValueError(
            f"`x` is a dict of {len(x)} inputs ({sorted(x)}) for a single-input model: "
            "the data must hold its one input, an array or a dict with one entry."
        )
    return next(iter(x.values()))


def _to_numpy(value, name):
    if isinstance(value, np.ndarray):
        return as_standard_float(value)
    if _is_array_like(value) or isinstance(value, (list, tuple)):
        try:
            return as_standard_float(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"`{name}` could not be converted to a numpy array: {error}")
    raise TypeError(
        f"`{name}` must be an array or tensor; received {type(value).__name__}."
    )


def as_arrays(data, y=None, inputs=None):
    """`(x, y)` if `data` is in-memory arrays or tensors (`x` with `y`, or a pair), else None.

    `inputs`: a multi-input model's `InputPacking`; `x` is then its inputs packed.

    >>> import numpy as np
    >>> as_arrays((np.zeros((2, 3)), np.arange(2)))[0].shape
    (2, 3)
    >>> as_arrays(iter([])) is None
    True
    """
    if y is not None and (_is_input_dict(data) or inputs is not None):
        return single_input(data, inputs), y
    if y is not None and _is_array_like(data):
        return data, y
    if y is not None and hasattr(data, "__array__"):  # e.g. a pandas DataFrame
        return data, y
    if y is None and is_xy_pair(data):
        return _split_element(data, "`data`", inputs=inputs)  # (warns about weights)
    return None


def never_ends_error(remedy, name="data"):
    """The `ValueError` for a data source that never ends (`is_infinite`); `remedy`
    says what to pass instead."""
    return ValueError(
        f"`{name}` never ends (a tf.data.Dataset repeated without a count, a PyDataset "
        f"whose `num_batches` is None, or an endless iterator): {remedy}"
    )


def is_infinite(data):
    """True for a data source known never to end: a `tf.data.Dataset` of infinite
    cardinality (`.repeat()`), a `keras.utils.PyDataset` without a length whose
    `num_batches` is None, `itertools.count`/`cycle`, or `itertools.repeat` without
    `times`. Other iterables (generators) cannot be told apart and are trusted."""
    if isinstance(data, (itertools.count, itertools.cycle)):
        return True
    if isinstance(data, itertools.repeat):
        try:
            data.__length_hint__()  # repeat(obj, times) knows what is left
        except TypeError:  # repeat(obj): "len() of unsized object"
            return True
        return False
    if _is_tf_dataset(data):
        import tensorflow as tf

        return int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    if _is_py_dataset(data):
        try:
            return data.num_batches is None
        except (TypeError, NotImplementedError):
            return False  # reading it raises the PyDataset's own error
    return False


def unbatched_dataset_error(data, input_rank, where):
    """A `ValueError` if `data` is a `tf.data.Dataset` of single samples for a model
    input of rank `input_rank` (batch axis included), else None: `fit` fails on one
    with a shape error, whatever path `where` takes."""
    if not _is_tf_dataset(data) or not input_rank:
        return None
    spec = data.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) and spec else spec
    if isinstance(spec, dict) and len(spec) == 1:
        spec = next(iter(spec.values()))
    shape = getattr(spec, "shape", None)
    if shape is None or shape.rank is None or shape.rank != input_rank - 1:
        return None
    return ValueError(
        f"`{where}` takes a batched tf.data.Dataset, as `fit` does; this one yields "
        f"single samples of shape {tuple(shape)}: batch it (`ds.batch(32)`)."
    )


def _is_tf_dataset(data):
    # Only a loaded TensorFlow can have made a Dataset: never import it just to check.
    tf = sys.modules.get("tensorflow")
    data_module = getattr(tf, "data", None) if tf is not None else None
    return data_module is not None and isinstance(data, data_module.Dataset)


def _is_py_dataset(data):
    keras = sys.modules.get("keras")
    utils = getattr(keras, "utils", None) if keras is not None else None
    return utils is not None and isinstance(data, utils.PyDataset)


def _split_element(element, where, keep_weights=False, inputs=None):
    """`(x, y)` or `(x, y, sample_weight)` -> `(x, y)` (`(x, y, sample_weight or None)`
    with `keep_weights`, for training), with clear errors otherwise; `inputs` (an
    `InputPacking`) packs a multi-input model's `x`."""
    if isinstance(element, dict):
        raise ValueError(
            f"{where} yields dicts with keys {sorted(element)}; class-PCA needs "
            "`(x, y)` pairs. For TFDS use `tfds.load(..., as_supervised=True)`, or map "
            "the dataset to `(x, y)` tuples."
        )
    if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
        raise ValueError(
            f"{where} must yield `(x, y)` pairs (labels are required for class-PCA); "
            f"received an element of type {type(element).__name__}"
            + (f" with {len(element)} parts" if isinstance(element, (tuple, list)) else "")
            + ". To solve label-free, pass `x` as an array or a `tf.data.Dataset` of `x` "
            "(a layer's `adapt` also takes a generator or PyDataset of `x` batches)."
        )
    weights = element[2] if len(element) == 3 else None
    x = single_input(element[0], inputs)
    if keep_weights:
        return x, element[1], weights
    if weights is not None:
        warn_sample_weights_ignored()
    return x, element[1]


def warn_sample_weights_ignored():
    """Class statistics count every sample once: say so when sample weights come."""
    warn(
        "The data holds sample weights; class-PCA statistics ignore them (every sample "
        "counts once). Weights still apply to the training that follows (`fit`).",
        UserWarning
    )


def _slice_arrays(x, y, batch_size, weights=None):
    weights = None if weights is None else _to_numpy(weights, "sample_weight")
    x = _to_numpy(single_input(x), "x")
    y = _to_numpy(y, "y")
    if x.ndim == 0:
        raise ValueError("`x` must have a batch dimension; received a scalar.")
    if y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same number of samples; received x with shape "
            f"{x.shape} and y with shape {y.shape}."
        )
    for start in range(0, len(x), batch_size):
        batch = slice(start, start + batch_size)
        yield (x[batch], y[batch]) + (() if weights is None else (weights[batch],))


def _is_unbatched(dataset):
    """Whether a dataset of `(x, y)` (or `(x, y, w)`) elements yields single samples.

    Scalar labels: unbatched. Labels `(n,)` with a leading size `x` does not share
    (`(28, 28, 1)` images, `(10,)` one-hot labels): unbatched; `x` of unknown leading
    size (`.batch()`): batched. When both sizes are static and equal — batches of `n`
    class ids (`drop_remainder=True`), or one-hot labels of `K` classes for `x` whose
    first axis happens to be `K` long (sequences of `K` steps) — the first
    `AMBIGUOUS_ELEMENTS` elements decide: unbatched only if every one holds a one-hot
    row (0/1 values summing to 1). Batches of 0/1 class ids with exactly one 1 in each
    of them would still read as one-hot rows: give such a dataset an unknown batch size
    (`dataset.unbatch().batch(n)`).
    """
    x_spec, y_spec = dataset.element_spec[:2]
    if isinstance(x_spec, (tuple, list, dict)) and x_spec:  # several inputs
        specs = list(x_spec.values()) if isinstance(x_spec, dict) else list(x_spec)
        if any(getattr(spec, "shape", None) is not None and spec.shape.rank == 0
               for spec in specs):
            return True  # a scalar input: a batch would have a leading axis
        x_spec = specs[0]
    y_shape = y_spec.shape
    if y_shape.rank == 0:
        return True
    x_shape = getattr(x_spec, "shape", None)
    if (y_shape.rank != 1 or y_shape[0] is None or x_shape is None or x_shape.rank is None
            or x_shape.rank < 1 or x_shape[0] is None):
        return False
    if x_shape[0] != y_shape[0]:
        return True
    seen = False
    for element in dataset.take(AMBIGUOUS_ELEMENTS).as_numpy_iterator():
        labels = np.asarray(element[1])
        if not (np.all((labels == 0) | (labels == 1)) and labels.sum() == 1
                and len(labels) > 1):
            return False  # a batch of class ids
        seen = True
    return seen


# Elements of an ambiguous dataset looked at (see `_is_unbatched`): batches of random
# 0/1 class ids all holding exactly one 1 become unlikely (8-row batches, 1 in 8
# positives: 0.39 per batch, 3e-7 for 16).
AMBIGUOUS_ELEMENTS = 16


def _dataset_batches(dataset, batch_size, split=_split_element):
    spec = dataset.element_spec
    if isinstance(spec, dict):
        _split_element(spec, "The dataset")
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            "The dataset must yield `(x, y)` pairs (labels are required for "
            f"class-PCA); its element_spec is {spec}."
        )
    if _is_unbatched(dataset):  # one sample per element: batch it ourselves
        dataset = dataset.batch(batch_size)
    for element in dataset.as_numpy_iterator():
        yield split(element, "The dataset")


def known_batches(data, batch_size=None):
    """How many batches a pass over `data` yields, if it says so without being read: a
    finite `tf.data.Dataset` (its cardinality; an unbatched one in batches of
    `batch_size`) or a `keras.utils.PyDataset` with a length; else None."""
    try:
        if _is_tf_dataset(data):
            count = int(data.cardinality())
            if count < 0:  # infinite or unknown
                return None
            spec = data.element_spec
            if isinstance(spec, tuple) and len(spec) >= 2 and _is_unbatched(data):
                return -(-count // (batch_size or DEFAULT_BATCH_SIZE))
            return count
        if _is_py_dataset(data):
            count = data.num_batches
            return None if count is None else int(count)
    except (TypeError, NotImplementedError, ValueError):
        return None
    return None


def _py_dataset_elements(py_dataset):
    num_batches = py_dataset.num_batches
    index = 0
    while num_batches is None or index < num_batches:
        try:
            element = py_dataset[index]
        except IndexError:
            break
        yield element
        index += 1


def _py_dataset_batches(py_dataset, split=_split_element):
    for element in _py_dataset_elements(py_dataset):
        yield split(element, "The PyDataset")


def iter_batches(
    data, y=None, *, batch_size=None, steps=None, max_samples=None, keep_tensors=False,
    sample_weights=False, inputs=None, on_ignored_weights=None,
):
    """Yield `(x, y)` numpy batches from any supported data source.

    Args:
        data: `(x, y)` arrays, `x` alone with `y` given, a `tf.data.Dataset`, a
            `keras.utils.PyDataset`, an iterable of `(x, y)` batches, or a function
            returning one (called once per pass, as `hybridize` does).
        y: labels, when `data` is the array `x`.
        batch_size: batch size for slicing arrays and for unbatched datasets.
        steps: stop after this many batches.
        max_samples: stop after this many samples (the last batch is cut).
        sample_weights: yield `(x, y, sample_weight or None)` (for training on the
            data, as `fit_top` does) instead of `(x, y)` and a warning that class-PCA
            ignores the weights.
        keep_tensors: yield `x` batches that are tensors of the Keras backend as they
            are (for products on their device) instead of converting them to NumPy.
        inputs: a multi-input model's `InputPacking` (`hybrid/inputs.py`): each batch's
            `x` (one array per input) is yielded packed into one array.
        on_ignored_weights: called once per pass when the data hold sample weights and
            `sample_weights` is False (default: a warning that class-PCA ignores them;
            a caller reading several passes may warn once for all of them).

    A source that never ends (`is_infinite`) needs `steps` or `max_samples`: without
    them a `ValueError` is raised before any batch is read.

    Example:

    >>> import numpy as np
    >>> x, y = np.zeros((5, 3)), np.arange(5) % 2
    >>> [b[0].shape for b in iter_batches((x, y), batch_size=2)]
    [(2, 3), (2, 3), (1, 3)]
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer; received {batch_size!r}.")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"`steps` must be a positive integer; received {steps!r}.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(
            f"`max_samples` must be a positive integer; received {max_samples!r}."
        )
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if y is None and callable(data) and not (
            _is_tf_dataset(data) or _is_py_dataset(data) or _is_array_like(data)):
        data = data()  # a function returning a fresh iterable: one call per pass
    if steps is None and max_samples is None and y is None and is_infinite(data):
        raise ValueError(
            f"`data` ({type(data).__name__}) never ends (e.g. `dataset.repeat()` without a "
            "count): pass `steps=` (or `samples=` to hybridize) to bound the pass, or "
            "repeat a finite number of times."
        )

    # Weights are read from every batch; a pass that ignores them says so once.
    split = functools.partial(_split_element, keep_weights=True, inputs=inputs)
    if y is not None:
        batches = _slice_arrays(single_input(data, inputs), y, batch_size)
    elif is_xy_pair(data):
        x, y_all, *weights = split(data, "`data`")
        batches = _slice_arrays(x, y_all, batch_size, *weights)
    elif _is_tf_dataset(data):
        batches = _dataset_batches(data, batch_size, split)
    elif _is_py_dataset(data):
        batches = _py_dataset_batches(data, split)
    elif _holds_several_label_sets(data):
        raise ValueError(
            "`data` is `(x, y)` with `y` a list, tuple or dict of label arrays (one per "
            "output of a multi-output model); class-PCA needs one label per sample: pass "
            "the labels of the head whose classes the solved layers should separate, "
            "e.g. `(x, y_head)`."
        )
    elif _is_array_like(data):
        raise ValueError(
            "Class-PCA needs labels: pass `(x, y)` (or `x` and `y=`), a dataset of "
            f"`(x, y)` batches, or a generator of them; received only x with shape "
            f"{tuple(data.shape)}."
        )
    elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes, dict)):
        batches = (split(element, "The data iterable") for element in data)
    else:
        raise TypeError(
            "`data` must be `(x, y)` arrays, a tf.data.Dataset, a keras PyDataset or an "
            f"iterable of `(x, y)` batches; received {type(data).__name__}."
        )

    if steps is not None:
        # Stop before pulling batch `steps + 1`: a caller's generator keeps it.
        batches = itertools.islice(batches, steps)
    seen, warned = 0, False
    for step, (x_batch, y_batch, *weights) in enumerate(batches):
        if not (keep_tensors and _is_backend_tensor(x_batch)):
            x_batch = _to_numpy(x_batch, "x")
        y_batch = _to_numpy(y_batch, "y")
        if x_batch.ndim == 0 or y_batch.ndim == 0 or len(x_batch) != len(y_batch):
            raise ValueError(
                f"Each batch must hold `x` and `y` with the same number of samples; "
                f"batch {step} has x with shape {x_batch.shape} and y with shape "
                f"{y_batch.shape}."
            )
        weights = weights[0] if weights else None
        if weights is not None and not sample_weights:
            if not warned:
                (on_ignored_weights or warn_sample_weights_ignored)()
                warned = True
            weights = None
        if weights is not None:
            weights = _to_numpy(weights, "sample_weight")
        if max_samples is not None:
            x_batch, y_batch = x_batch[: max_samples - seen], y_batch[: max_samples - seen]
            weights = None if weights is None else weights[: max_samples - seen]
        if len(x_batch):
            yield (x_batch, y_batch) + ((weights,) if sample_weights else ())
        seen += len(x_batch)
        if max_samples is not None and seen >= max_samples:
            return
