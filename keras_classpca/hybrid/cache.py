"""`SolveCache`: reuse solved prefixes across `hybridize` calls (e.g. tuner trials).

Solving is deterministic given the data, the architecture of the prefix, the class-PCA
options and the sampling settings, so `hybridize` keys every solved layer by a hash of
exactly those and stores its weights as **numpy arrays** (never Keras variables): in
memory, and as `.npz` files in `directory` when one is given. A prefix of k layers
extends the cached prefix of k-1 layers: only the new layer is solved.
"""

import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from keras_classpca._warnings import warn

# Constructor arguments that cannot change what class-PCA computes: solved kernels and
# biases and adapted moving statistics overwrite their initial values, and regularizers
# act only in training. (A kernel or bias constraint projects the solved weights, and
# BatchNormalization's gamma/beta initializers shape the features the next layer is
# solved on: both matter.)
_IRRELEVANT_CONFIG = {
    "name",
    "trainable",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
}


def data_fingerprint(x, y):
    """A hash of arrays' shapes, dtypes and bytes (BLAKE2b, fast on large arrays); `x`
    may hold a multi-input model's inputs (a list, tuple or dict of arrays)."""
    digest = hashlib.blake2b(digest_size=20)
    inputs = ([x[key] for key in sorted(x)] if isinstance(x, dict)
              else list(x) if isinstance(x, (list, tuple)) else [x])
    for array in [np.ascontiguousarray(part) for part in inputs] + [np.ascontiguousarray(y)]:
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def layer_signature(layer):
    """What about a layer can change a solve: its class and relevant config."""
    config = {k: v for k, v in layer.get_config().items() if k not in _IRRELEVANT_CONFIG}
    return {"class": type(layer).__name__, "config": config}


def fixed_weights_digest(layers):
    """A hash of the weights of `layers` (shapes, dtypes, bytes); None if they have none.
    For the layers a solve passes through but does not write: an adapted
    `Normalization`'s statistics are weights, not config."""
    digest, seen = hashlib.blake2b(digest_size=20), False
    for layer in layers:
        for weight in layer.get_weights():
            weight = np.ascontiguousarray(weight)
            digest.update(f"{weight.shape}{weight.dtype}".encode())
            digest.update(memoryview(weight).cast("B"))
            seen = True
    return digest.hexdigest() if seen else None


# What a solve computes, versioned: bumped whenever a change of the package gives other
# weights for the same data, model and options (2: duplicate directions kept by the
# class they explain most, not the smallest label; `samples="auto"` batches cut at the
# check points). A `SolveCache` on disk written by another version is then not served.
SOLVER_VERSION = 2


def prefix_key(**parts):
    """A stable hash of JSON-able parts (data fingerprint, layers, options, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class SolveCache:
    """Solved-layer weights by key, in memory and optionally on disk.

    Args:
        directory: where `.npz` entries persist across processes (e.g. a tuner's
            `directory/project_name/solve_cache`); `None` keeps them in memory only.

    Attributes:
        hits, misses: lookups that found / did not find an entry.

    Example:

    >>> import numpy as np
    >>> cache = SolveCache()
    >>> cache.put("k", {"weights": [[np.ones(2)]], "record": {"name": "dense"}})
    >>> cache.get("k")["record"], cache.hits
    ({'name': 'dense'}, 1)
    """

    def __init__(self, directory=None):
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                "`directory` must be a path (a str or `os.PathLike`) where solved layers "
                f"are stored, or None to keep them in memory; received {directory!r}.")
        self.directory = None if directory is None else os.fspath(directory)
        self._memory = {}
        self.hits = 0
        self.misses = 0
        if directory is not None:
            os.makedirs(self.directory, exist_ok=True)

    def __repr__(self):
        where = "in memory" if self.directory is None else f"directory={self.directory!r}"
        return (f"SolveCache({where}, entries={len(self._memory)}, hits={self.hits}, "
                f"misses={self.misses})")

    def _path(self, key):
        return os.path.join(self.directory, f"{key}.npz")

    def get(self, key):
        """The entry `{"weights": [[array, ...] per layer], "record": dict}` or None."""
        entry = self._memory.get(key)
        if entry is None and self.directory is not None and os.path.exists(self._path(key)):
            entry = self._read(self._path(key))
            if entry is not None:
                self._memory[key] = entry
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    @staticmethod
    def _read(path):
        """The entry stored at `path`, or None (with a warning) if it cannot be read.

        A damaged file (truncated by a full disk, a killed process, a copy gone wrong)
        is a miss: the layer is solved again and `put` overwrites the file.
        """
        try:
            # The handle is ours: np.load leaves it open when the archive is damaged.
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
                record = json.loads(str(stored["record"]))
                weights = [
                    [stored[f"layer{i}_weight{j}"] for j in range(count)]
                    for i, count in enumerate(record.pop("_weight_counts"))
                ]
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            zipfile.BadZipFile,
        ) as error:
            warn(
                f"SolveCache: cannot read {path} ({type(error).__name__}: {error}); treating "
                "it as a miss: the layer is solved again and the file overwritten."
            )
            return None
        return {"weights": weights, "record": record}

    def put(self, key, entry):
        """Store an entry (written atomically when on disk)."""
        entry = {
            "weights": [[np.array(w) for w in layer] for layer in entry["weights"]],
            "record": dict(entry["record"]),
        }
        self._memory[key] = entry
        if self.directory is None:
            return
        record = dict(entry["record"], _weight_counts=[len(layer) for layer in entry["weights"]])
        arrays = {
            f"layer{i}_weight{j}": weight
            for i, layer in enumerate(entry["weights"])
            for j, weight in enumerate(layer)
        }
        handle, temporary = tempfile.mkstemp(suffix=".npz.tmp", dir=self.directory)
        with os.fdopen(handle, "wb") as f:
            np.savez(f, record=np.array(json.dumps(record)), **arrays)
        os.replace(temporary, self._path(key))

    def clear(self):
        """Remove every entry, in memory and on disk (the directory's `.npz` files,
        those of other package versions too, which keys of this version never match).

        Returns the number of files removed."""
        self._memory.clear()
        removed = 0
        if self.directory is not None:
            for name in os.listdir(self.directory):
                if name.endswith((".npz", ".npz.tmp")):
                    os.remove(os.path.join(self.directory, name))
                    removed += 1
        return removed

    def __len__(self):
        return len(self._memory)
