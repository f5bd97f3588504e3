"""The inputs of a multi-input model, packed into one array for the solve.

Everything that streams data to a solve — sub-sampling, class grouping, padding, the
convergence check points — works on one array of samples. A model with several inputs
(an image and its metadata, two token sequences, ...) has its inputs packed: each
sample's inputs flattened and laid side by side in one row of floats (`pack`), and the
sub-models that compute a layer's input get a front end that cuts the row back into
the model's inputs (`unpack`, with `keras.ops`). The model itself is not changed: it is
trained, saved and served with its own inputs. In-memory arrays are packed once (a
copy of the data, in float32 — float64 if an input is); datasets and generators batch
by batch.

The data for a multi-input model is what `Model.fit` takes: `x` a list or tuple of
arrays in the order of `model.inputs`, or a dict keyed by the inputs' names (the keys
of a model built on a dict of inputs), with labels — `((x1, x2), y)`, `({"image": ...,
"meta": ...}, y)`, or a dataset / generator of such batches.
"""

import keras
import numpy as np

# Integers above this lose their exact value in a float32 row.
_FLOAT32_EXACT = 2**24


class InputPacking:
    """Packs the inputs of a multi-input `model` into one float array and back.

    Example:

    >>> import numpy as np, keras
    >>> image, meta = keras.Input((4, 4, 1), name="image"), keras.Input((3,), name="meta")
    >>> merged = keras.layers.Concatenate()([keras.layers.Flatten()(image), meta])
    >>> model = keras.Model([image, meta], keras.layers.Dense(2)(merged))
    >>> packing = InputPacking(model)
    >>> rows = packing.pack({"meta": np.ones((5, 3)), "image": np.zeros((5, 4, 4, 1))})
    >>> rows.shape, packing.names
    ((5, 19), ['image', 'meta'])
    """

    def __init__(self, model):
        structure = model.input
        if isinstance(structure, dict):
            keys = sorted(structure)  # the order of `model.inputs` (keras.tree sorts keys)
            tensors = [structure[key] for key in keys]
        else:
            tensors = list(keras.tree.flatten(structure))
            keys = [tensor.name for tensor in tensors]
        if len(keras.tree.flatten(structure)) != len(tensors):
            raise ValueError(
                "`model`'s inputs are a nested structure; hybridize solves models whose "
                "inputs are a list or a flat dict of `keras.Input`s."
            )
        self.names = keys
        self.tensors = tensors
        # Declared shapes; an axis of unknown size (`Input((None,))`) takes the size of
        # the first data packed, and every later batch must have it too.
        self.shapes = [tuple(tensor.shape[1:]) for tensor in tensors]
        self.dtypes = [keras.backend.standardize_dtype(t.dtype) for t in tensors]
        for name, dtype in zip(keys, self.dtypes):
            if dtype in ("string", "bool"):
                raise ValueError(
                    f"`model`'s input {name!r} is of dtype {dtype}: hybridize packs the "
                    "inputs of a multi-input model as numbers."
                )
        self.dtype = "float64" if "float64" in self.dtypes else "float32"

    @property
    def resolved(self):
        """Whether every input's size is known (declared, or read from the data)."""
        return all(size is not None for shape in self.shapes for size in shape)

    @property
    def sizes(self):
        """Values per sample of each input (in its packed row)."""
        return [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]

    def _fit_shape(self, index, part):
        """Check `part`'s sample shape against input `index`'s, taking the sizes of its
        unknown axes from the first data."""
        name, shape = self.names[index], self.shapes[index]
        declared = tuple(self.tensors[index].shape[1:])
        got = tuple(part.shape[1:])
        if part.ndim == 0 or len(got) != len(declared) or any(
                size is not None and size != g for size, g in zip(declared, got)):
            raise ValueError(
                f"`x`'s input {name!r} must have shape (n,) + {declared} (None: any "
                f"size), as the model's input; received {part.shape}."
            )
        if got != shape and None not in shape:
            raise ValueError(
                f"`x`'s input {name!r} (declared (n,) + {declared}) came with samples of "
                f"shape {got} after {shape}: the inputs of a multi-input model are packed "
                "side by side, so each one needs one size over all the data. Pad its "
                "batches to one length (e.g. `padded_batch` with `padded_shapes`)."
            )
        self.shapes[index] = got

    def _parts(self, x):
        """`x` as a list of arrays in the order of the model's inputs."""
        if isinstance(x, dict) and not hasattr(x, "shape"):
            if set(x) != set(self.names):
                raise ValueError(
                    f"`x` is a dict with the keys {sorted(x)}, but the model's inputs are "
                    f"named {self.names}: pass one entry per input, keyed by its name, "
                    "as `fit` takes them."
                )
            return [x[name] for name in self.names]
        if isinstance(x, (list, tuple)) and len(x) == len(self.names):
            return list(x)
        what = (f"a {type(x).__name__} of {len(x)}" if isinstance(x, (list, tuple))
                else f"one {type(x).__name__}" + (
                    f" of shape {tuple(x.shape)} (if `data` was `(x_1, x_2)`, the "
                    "second array was read as the labels: pass them beside the inputs)"
                    if hasattr(x, "shape") else ""))
        raise ValueError(
            f"The model has {len(self.names)} inputs ({', '.join(self.names)}), so `x` "
            f"must hold one array per input — a list or tuple in that order, or a dict "
            f"keyed by their names, as `fit` takes them, with the labels beside it: "
            f"`((x_{self.names[0]}, ...), y)`; received {what}."
        )

    def pack(self, x):
        """The rows of `x` (one array per input) as one `(n, sum of sizes)` array."""
        from keras_classpca.core.data_adapter import as_standard_float

        parts = [as_standard_float(part) for part in self._parts(x)]
        n = None
        rows = []
        for index, (name, part) in enumerate(zip(self.names, parts)):
            self._fit_shape(index, part)
            if n is not None and len(part) != n:
                raise ValueError(
                    f"The inputs in `x` must hold the same number of samples; {name!r} "
                    f"holds {len(part)}, {self.names[0]!r} {n}."
                )
            n = len(part)
            if part.dtype.kind not in "biuf":
                raise TypeError(
                    f"`x`'s input {name!r} holds {part.dtype} values; the inputs of a "
                    "multi-input model are packed as numbers."
                )
            if (part.dtype.kind in "iu" and self.dtype == "float32" and part.size
                    and np.abs(part).max() >= _FLOAT32_EXACT):
                raise ValueError(
                    f"`x`'s input {name!r} holds integers up to {np.abs(part).max()}, which "
                    f"a float32 row cannot hold exactly (|value| < {_FLOAT32_EXACT})."
                )
            rows.append(part.reshape(len(part), -1).astype(self.dtype, copy=False))
        return np.concatenate(rows, axis=1)

    def unpack(self, rows):
        """The model's inputs (a list, in the order of `model.inputs`) cut out of the
        symbolic `rows` of `pack`, each reshaped and cast back to its input's dtype."""
        inputs, start = [], 0
        for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes):
            part = rows[:, start:start + size]
            inputs.append(keras.ops.cast(keras.ops.reshape(part, (-1,) + shape), dtype))
            start += size
        return inputs

    def feature_model(self, source):
        """A `keras.Model` from packed rows to `source` (a tensor of the model's graph,
        or a list of them). Inputs of unknown size need data packed first."""
        if not self.resolved:
            unknown = [name for name, shape in zip(self.names, self.shapes) if None in shape]
            raise RuntimeError(
                f"The sizes of the inputs {unknown} are read from the data: pack some "
                "before building a feature model."
            )
        rows = keras.Input((sum(self.sizes),), dtype=self.dtype)
        inputs = self.unpack(rows)
        sources = source if isinstance(source, (list, tuple)) else [source]
        position = {id(tensor): i for i, tensor in enumerate(self.tensors)}
        # A model input asked for itself is its unpacked tensor (a sub-model returning
        # its own input makes a cycle of the graph around it).
        computed = [s for s in sources if id(s) not in position]
        outputs = keras.Model(self.tensors, computed)(inputs) if computed else []
        outputs = iter(keras.tree.flatten(outputs))
        result = [inputs[position[id(s)]] if id(s) in position else next(outputs)
                  for s in sources]
        return keras.Model(rows, result if isinstance(source, (list, tuple)) else result[0])


def input_packing(model):
    """An `InputPacking` for a model with several inputs; None for one input."""
    inputs = keras.tree.flatten(getattr(model, "inputs", None) or [])
    return InputPacking(model) if len(inputs) > 1 else None
