"""`ClassStatistics`: per-class count, sum and second moment of streamed rows.

Class-PCA needs three sums per class `c` over the rows `x` it sees: the count `n_c`, the
sum `s_c = Σ x` and the second moment `M_c = Σ x xᵀ`. Sums of shards are the sums of
the whole, so statistics `merge` exactly (up to the rounding of the products, float32
for float32 data, which depends on how the rows are chunked): the
same object serves one streamed pass, shards gathered by another system, and the
all-reduce of a `tf.distribute` pass.

How a batch is accumulated (`accumulate`):

- The products are computed in `product_dtype` (float32 for float32-or-narrower data,
  float64 for float64 data; either can be forced) and added to float64 accumulators,
  a bounded chunk of rows at a time (the products of one chunk are summed by BLAS in
  `product_dtype`; chunks are added in float64).
- Rows are grouped by class with one stable `argsort` of the labels (skipped when the
  labels are already sorted) and gathered a cache-sized chunk at a time into a reusable
  buffer; each class chunk is multiplied by itself (`Bᵀ B`, BLAS `syrk`).
- Before the product each chunk is shifted by a per-class reference point (the mean of
  the first chunk of that class), and the float64 sums restore the raw moments exactly:
  `Σ x xᵀ = Σ (x-r)(x-r)ᵀ + r wᵀ + w rᵀ` with `w = Σ (x-r) + n r / 2`. The rounding of a
  float32 product is then relative to the class's spread, not to its mean: data far
  from the origin (pixels in [0, 255], post-ReLU activations) lose no accuracy to it.
  Rows that arrive in runs of one class (sorted labels, the patches of one image) are
  shifted as they are copied into the buffer: one pass over them, not two.
- A batch is checked before anything is added (one BLAS dot product of the batch with
  itself): NaN/inf raise and leave the statistics unchanged; values whose squares
  would overflow float32 are multiplied in float64 instead.
- Data that are tensors of the running Keras backend (TensorFlow, JAX, torch) are
  multiplied where they are, with `keras.ops`; only the `d x d` products travel to the
  host. Under JAX each class's rows are read as a block of one of a few rounded sizes,
  the rows of other classes masked to zero, by a function compiled once per size.

A class with few rows against `d` (a wide Dense layer solved from a small data set)
keeps its rows instead, up to `HELD_MAX_SHARE · d` of them: their Gram costs `m²·d`
where the `d x d` product costs `m·d²`, and the solve takes its leading directions from
an `m x m` problem (`class_factor`) instead of a `d x d` one. A class that outgrows
that gets its `d x d` matrix from its rows then, exactly as if it had had one all along.

Memory is `K·(d² + 2d + 1)` float64 values (`nbytes`); a new class that would take the
statistics past `memory_limit` (default: the memory the system reports available) raises
a `MemoryError` that says how much is needed, before anything is allocated.
"""

import functools

import numpy as np

PRODUCT_DTYPES = ("float32", "float64")
# Rows of one class multiplied at once: a chunk of about CHUNK_BYTES (in product_dtype)
# stays in cache between the gather and the product; at least MIN_CHUNK_ROWS rows so
# that BLAS runs at full speed (measured: 1,024-row blocks of d = 400 lose ~20 % to
# 4,096-row blocks; below that the loss grows).
CHUNK_BYTES = 8 << 20
# Rows of the input grouped by class at a time (see `accumulate`).
BLOCK_BYTES = 16 << 20
MAX_BLOCK_BYTES = 128 << 20
# Batches smaller than this are staged (copied) and multiplied together.
STAGE_BYTES = 64 << 20
MIN_CHUNK_ROWS = 1024
# Labels whose runs of equal values average at least this many rows are grouped by
# slicing the runs (no sort, no gather); shorter runs are sorted and gathered.
MIN_RUN_ROWS = 32
# Largest float32 sum of squares of a batch accepted for float32 products: below this
# no product entry, shifted or not, can overflow (Cauchy-Schwarz, with margin).
_FLOAT32_SAFE = float(np.finfo(np.float32).max) / 64.0
# Smallest mean square of a batch accepted for float32 products: below it products
# approach float32's subnormal range (1e-38) and lose digits, so float64 products are
# used (and in float64, below its own bound, the data is refused: rescale it).
_FLOAT32_TINY = 1e-24
_FLOAT64_TINY = 1e-280
# Classes are held as rows (see the module doc) over at least HELD_MIN_FEATURES
# features (below it a d x d matrix is small and its eigen-solve fast) while they have
# at most HELD_MAX_SHARE · d rows (their float64 rows then take at most a quarter of
# the d x d matrix they stand for).
HELD_MIN_FEATURES = 64
HELD_MAX_SHARE = 0.25
# Eigenvalues of a held class's Gram below this share of its largest are dropped: below
# ClassPCA's EXHAUSTED_SHARE of the trace they are dead directions anyway, and their
# vectors through the Gram would lose orthogonality (error ~ eps · λ_max / λ).
GRAM_RANK_TOLERANCE = 1e-10


def available_memory():
    """Bytes of memory the system reports available (`MemAvailable`), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def statistics_nbytes(n_classes, n_features):
    """Bytes that `ClassStatistics` holds for `n_classes` classes of `n_features`."""
    return int(n_classes) * (int(n_features) ** 2 + 2 * int(n_features) + 1) * 8


def format_bytes(n):
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def memory_budget(memory_limit=None, held=0):
    """`(bytes, name)` statistics may take: `memory_limit`, or (None) the available
    memory plus `held`, the bytes they already hold; None when the system does not say."""
    if memory_limit is not None:
        return int(memory_limit), "memory_limit"
    available = available_memory()
    return None if available is None else (available + held, "the available memory")


def check_bytes(needed, what, advice, memory_limit=None, *, held=0):
    """Raise `MemoryError` "`what` need `needed` bytes, more than the budget. `advice`"
    if `needed` exceeds `memory_budget(memory_limit, held)`."""
    budget = memory_budget(memory_limit, held)
    if budget is not None and needed > budget[0]:
        raise MemoryError(
            f"{what} need {format_bytes(needed)}, more than {budget[1]} "
            f"({format_bytes(budget[0])}). {advice}"
        )


def check_memory(n_classes, n_features, memory_limit=None, *, held=0):
    """Raise `MemoryError` if statistics for `n_classes` x `n_features` would not fit.

    `memory_limit` in bytes (None: the available memory plus `held`, the bytes the
    caller's statistics already hold).
    """
    check_bytes(
        statistics_nbytes(n_classes, n_features),
        f"Class statistics for {n_classes} classes x {n_features} features",
        "They hold K x d^2 float64 values. Use fewer classes or features (smaller "
        "patches, a narrower layer input), a ClassSketch (`sketch_size=`), or a machine "
        "with more memory.",
        memory_limit,
        held=held,
    )


def _is_backend_tensor(x):
    """True for a tensor of the running Keras backend (not a NumPy array)."""
    if isinstance(x, np.ndarray) or not (hasattr(x, "shape") and hasattr(x, "dtype")):
        return False
    module = type(x).__module__.split(".")[0]
    if module not in ("tensorflow", "jax", "jaxlib", "torch"):
        return False
    try:
        import keras
    except ImportError:  # pragma: no cover
        return False
    backend = keras.backend.backend()
    return {"tensorflow": "tensorflow", "jax": "jax", "jaxlib": "jax", "torch": "torch"}[
        module
    ] == backend


# Data of float32 precision or less: float32 products lose nothing the data had.
_NARROW_DTYPES = {"float16", "bfloat16", "float32", "uint8", "int8", "uint16", "int16", "bool"}


def _is_sorted(labels):
    return bool(np.all(labels[1:] >= labels[:-1]))


def _distinct(labels):
    """The distinct labels, ascending (without a sort when they are sorted already)."""
    if _is_sorted(labels):
        return labels[np.concatenate([[True], labels[1:] != labels[:-1]])]
    if labels.dtype.kind in "iu" and labels.min() >= 0 and labels.max() <= max(
            1 << 16, 2 * len(labels)):
        # Class ids are small non-negative integers: a count is O(n), a few times
        # faster than the hash (or sort) of `np.unique` on a million patch labels.
        return np.flatnonzero(np.bincount(labels)).astype(labels.dtype, copy=False)
    return np.unique(labels)


def _label_runs(sorted_labels):
    """`(label, begin, end)` of each run of equal consecutive labels (one per class when
    the labels are sorted)."""
    starts = np.flatnonzero(np.diff(sorted_labels)) + 1
    bounds = np.concatenate([[0], starts, [len(sorted_labels)]]).tolist()
    return zip(sorted_labels[bounds[:-1]].tolist(), bounds[:-1], bounds[1:])


def _runs_by_label(parts):
    """`{label: [row runs]}` over `(x, labels)` parts: each part's runs of equal
    consecutive labels, as slices of its rows, in order."""
    runs = {}
    for x, labels in parts:
        for label, begin, end in _label_runs(labels):
            runs.setdefault(label, []).append(x[begin:end])
    return runs


def _raw_product(rows, shift=None):
    """`Σ x xᵀ` of float64 `rows`, multiplied about `shift` (default: their mean) and
    corrected exactly, as `ClassStatistics` accumulates (module doc)."""
    shift = rows.mean(axis=0) if shift is None else shift
    shifted = rows - shift
    w = shifted.sum(axis=0) + (0.5 * len(rows)) * shift
    product = shifted.T @ shifted
    product += np.multiply.outer(shift, w)
    product += np.multiply.outer(w, shift)
    return product


def default_product_dtype(dtype):
    """float32 products for data of float32 precision or less, float64 otherwise."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return "float32" if name in _NARROW_DTYPES else "float64"


class ClassStatistics:
    """Per-class count, sum and second moment `Σ x xᵀ`, accumulated in float64.

    Args:
        n_features: the row dimension `d`.
        product_dtype: dtype of the per-chunk products, `"float32"` or `"float64"`;
            None (default) picks float32 for float32-or-narrower data (float16,
            bfloat16, uint8, ...) and float64 for float64 or wide integer data. The
            accumulators are float64 either way.
        memory_limit: bytes the statistics may take; None = the memory the system
            reports available when a new class arrives.

    Attributes:
        n_features: `d`.
        classes: sorted int64 labels that have samples.
        counts: `(K,)` int64 samples per class, aligned with `classes`.
        sums: `(K, d)` float64 per-class sums `Σ x`.
        second_moments: `(K, d, d)` float64 per-class `Σ x xᵀ` (a stacked copy; use
            `second_moment(label)` for one class without copying them all).
        n_samples: total rows seen.
        nbytes: memory held.

    Example:

    >>> import numpy as np
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> stats = ClassStatistics(2)
    >>> stats.accumulate(x, np.array([0, 1, 0, 1, 0, 1]))
    >>> stats.classes.tolist(), stats.counts.tolist()
    ([0, 1], [3, 3])
    >>> stats.sums[0].tolist(), stats.second_moment(0)[0].tolist()
    ([12.0, 15.0], [80.0, 92.0])
    """

    def __init__(self, n_features, *, product_dtype=None, memory_limit=None):
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
            raise TypeError(f"`n_features` must be a positive integer; received {n_features!r}.")
        if n_features < 1:
            raise ValueError(f"`n_features` must be a positive integer; received {n_features!r}.")
        if product_dtype is not None and product_dtype not in PRODUCT_DTYPES:
            raise ValueError(
                f"`product_dtype` must be one of {PRODUCT_DTYPES} or None; received "
                f"{product_dtype!r}."
            )
        self.n_features = int(n_features)
        self.product_dtype = product_dtype
        self.memory_limit = memory_limit
        self._count = {}
        self._sum = {}
        self._outer = {}
        self._shift = {}  # per-class reference point of the shifted products
        self._staged = []  # small batches waiting to be multiplied together: (x, labels)
        self._staged_rows = 0
        self._pending = {}  # per-class rank-2 corrections not yet applied (see `_add`)
        self._version = 0

    # ------------------------------------------------------------------ reading
    @property
    def version(self):
        """A number that changes whenever samples are added or removed (`accumulate`,
        `merge`, `clear`): what a solution computed from these statistics is valid for
        (several `ClassPCA` estimators may share one object)."""
        return getattr(self, "_version", 0)

    def _changed(self):
        self._version = self.version + 1

    @property
    def classes(self):
        self._settle()
        return np.array(sorted(self._count), dtype=np.int64)

    @property
    def counts(self):
        self._settle()
        return np.array([self._count[c] for c in sorted(self._count)], dtype=np.int64)

    @property
    def sums(self):
        self._settle()
        if not self._count:
            return np.zeros((0, self.n_features))
        return np.stack([self._sum[c] for c in sorted(self._count)])

    @property
    def second_moments(self):
        self._settle()
        self._materialize_all()
        if not self._count:
            return np.zeros((0, self.n_features, self.n_features))
        return np.stack([self._outer[c] for c in sorted(self._count)])

    @property
    def n_samples(self):
        self._settle()
        return int(sum(self._count.values()))

    @property
    def nbytes(self):
        return statistics_nbytes(len(self._count), self.n_features)

    def __len__(self):
        return len(self._count)

    def __contains__(self, label):
        return int(label) in self._count

    def count(self, label):
        """Samples of class `label` (0 if none)."""
        self._settle()
        return self._count.get(int(label), 0)

    def sum(self, label):
        """`Σ x` over class `label` (float64, a view: do not modify)."""
        self._settle()
        return self._sum[self._known(label)]

    def second_moment(self, label):
        """`Σ x xᵀ` over class `label` (float64, a view: do not modify)."""
        self._settle()
        label = self._known(label)
        self._materialize(label)
        return self._outer[label]

    def total_second_moment(self):
        """`Σ x xᵀ` over all samples of all classes (a new float64 array)."""
        self._settle()
        total = self._matrices_total()
        for rows in self._held_rows.values():
            total += _raw_product(rows)
        return total

    def _matrices_total(self):
        """The sum of the `d x d` matrices of the classes not held as rows (those of held
        classes are untouched zeros: adding them would only page them in)."""
        held = self._held_rows
        total = np.zeros((self.n_features, self.n_features))
        for label, outer in self._outer.items():
            if label not in held:
                total += outer
        return total

    def trace(self, label):
        """`Σ ‖x‖²` over class `label`: the trace of its second moment."""
        self._settle()
        label = self._known(label)
        rows = self._held_rows.get(label)
        return float(np.sum(np.square(rows))) if rows is not None else float(
            np.trace(self._outer[label]))

    def projected_second_moment(self, directions):
        """`Σ (x · w_j)²` over all samples, for each column `w_j` of `directions`
        `(d, k)`: the diagonal of `directionsᵀ · total_second_moment() · directions`,
        without forming the `d x d` products of classes held as rows."""
        self._settle()
        directions = np.asarray(directions, dtype=np.float64)
        held = self._held_rows
        result = np.zeros(directions.shape[1])
        if len(held) < len(self._outer):
            dense = self._matrices_total()
            result += np.sum(directions * (dense @ directions), axis=0)
        for rows in held.values():
            result += np.sum(np.square(rows @ directions), axis=0)
        return result

    def class_factor(self, label, center):
        """`(basis, small, trace)`: the class matrix (`Σ x xᵀ / n`, or the covariance with
        `center`) of a class held as rows, as `basis @ small @ basis.T` with an
        orthonormal `basis` of at most `n` columns, and its trace (as
        `ClassSketch.class_factor`, here exact). None for a class with a `d x d` matrix."""
        self._settle()
        rows = self._held_rows.get(self._known(label))
        if rows is None:
            return None
        n = len(rows)
        if center:
            rows = rows - rows.mean(axis=0)
        # Through the rows' m x m Gram G = U Λ Uᵀ: rowsᵀ rows = V Λ Vᵀ with the
        # orthonormal V = rowsᵀ U Λ^(-1/2) (directions of numerically zero λ dropped).
        gram = rows @ rows.T
        values, vectors = np.linalg.eigh((gram + gram.T) / 2.0)
        keep = values > GRAM_RANK_TOLERANCE * max(float(values[-1]), 0.0)
        values, vectors = values[keep], vectors[:, keep]
        basis = rows.T @ (vectors / np.sqrt(values))
        trace = float(np.trace(gram)) / n
        return basis, np.diag(values / n), trace

    def held_rows(self, label):
        """The rows of a class held as rows (float64, a view: do not modify), or None."""
        self._settle()
        return self._held_rows.get(self._known(label))

    @property
    def _held_rows(self):
        # (statistics pickled before rows were held have no such attribute)
        return self.__dict__.setdefault("_held", {})

    def _known(self, label):
        label = int(label)
        if label not in self._count:
            raise KeyError(f"Class {label} has no samples.")
        return label

    def __repr__(self):
        return (
            f"ClassStatistics(n_features={self.n_features}, classes={len(self)}, "
            f"n_samples={self.n_samples})"
        )

    # ------------------------------------------------------------------ building
    def _reserve(self, labels):
        """Allocate slots for new labels, after checking they fit in memory."""
        new = [label for label in labels if label not in self._count]
        if not new:
            return
        check_memory(
            len(self._count) + len(new), self.n_features, self.memory_limit, held=self.nbytes
        )
        d = self.n_features
        # The new classes' matrices in one block: the kernel gives a large allocation
        # huge pages (NumPy advises them from 4 MB), and first writes to separate 2.6 MB
        # matrices, a 4 KB page fault at a time, cost more than their products (1,000
        # classes of 3x3x64 patches: 7 s of a 20 s pass).
        matrices = np.zeros((len(new), d, d))
        for label, matrix in zip(new, matrices):
            self._count[label] = 0
            self._sum[label] = np.zeros(d)
            self._outer[label] = matrix

    def _add(self, label, n, shift, shifted_sum, shifted_product):
        """Add one class chunk's shifted statistics to the raw ones (float64; the product
        may be float32, converted as it is added).

        The rank-2 correction `r wᵀ + w rᵀ` is linear in `w` for a fixed reference point
        `r`, so it is summed in `_pending` and applied once per class when the
        statistics are next read (`_settle`), not once per batch.
        """
        self._outer[label] += shifted_product
        self._sum[label] += shifted_sum + n * shift
        self._count[label] += int(n)
        w = shifted_sum + (0.5 * n) * shift
        pending = self._pending.get(label)
        if pending is not None and not np.array_equal(pending[0], shift):
            # The reference point as rounded to another product dtype: apply the old one.
            self._apply_correction(label, *self._pending.pop(label))
            pending = None
        if pending is None:
            self._pending[label] = [shift, w]
        else:
            pending[1] += w

    def _hold(self, label, runs):
        """Keep a class's new rows `runs` as rows (True) while it qualifies (module doc);
        False once it has (or now gets) a `d x d` matrix."""
        held = self._held_rows
        rows = held.get(label)
        if rows is None and self._count[label]:
            return False  # it has products already
        n_held = 0 if rows is None else len(rows)
        d = self.n_features
        if d < HELD_MIN_FEATURES or n_held + sum(map(len, runs)) > HELD_MAX_SHARE * d:
            self._materialize(label)
            return False
        new = np.concatenate([run.astype(np.float64) for run in runs])
        held[label] = new if rows is None else np.concatenate([rows, new])
        self._count[label] += len(new)
        self._sum[label] += new.sum(axis=0)
        return True

    def _materialize(self, label):
        """Give a class held as rows its `d x d` matrix (a no-op for other classes); its
        reference point for later chunks is the mean of those rows."""
        rows = self._held_rows.pop(label, None)
        if rows is None:
            return
        self._shift[label] = rows.mean(axis=0)
        self._outer[label] += _raw_product(rows, self._shift[label])

    def _materialize_all(self):
        for label in list(self._held_rows):
            self._materialize(label)

    def _apply_correction(self, label, shift, w):
        outer = self._outer[label]
        outer += np.multiply.outer(shift, w)
        outer += np.multiply.outer(w, shift)

    def _settle(self):
        """Multiply the staged batches and apply the pending corrections: run before
        anything reads the sums."""
        self._process_staged()
        pending, self._pending = self._pending, {}
        for label, (shift, w) in pending.items():
            self._apply_correction(label, shift, w)

    @classmethod
    def from_arrays(cls, counts, sums, second_moments, *, classes=None, **kwargs):
        """Statistics from per-class arrays `(K,)`, `(K, d)`, `(K, d, d)`.

        `classes` (default `0..K-1`) labels the rows; classes with a zero count are left
        out, exactly as `accumulate` never creates them.
        """
        counts = np.asarray(counts, dtype=np.float64)
        sums = np.asarray(sums, dtype=np.float64)
        second_moments = np.asarray(second_moments, dtype=np.float64)
        if counts.ndim != 1 or sums.ndim != 2 or second_moments.ndim != 3:
            raise ValueError(
                "Statistics must have shapes (K,), (K, d) and (K, d, d); received "
                f"{counts.shape}, {sums.shape} and {second_moments.shape}."
            )
        k, d = sums.shape
        if counts.shape != (k,) or second_moments.shape != (k, d, d):
            raise ValueError(
                "Statistics must have shapes (K,), (K, d) and (K, d, d); received "
                f"{counts.shape}, {sums.shape} and {second_moments.shape}."
            )
        if np.any(counts < 0) or np.any(counts != np.round(counts)):
            raise ValueError("`counts` must hold non-negative integers.")
        if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(second_moments))):
            raise ValueError(
                "The statistics contain NaN or infinite values: `x` holds NaN/inf or values "
                "too large to square in float64."
            )
        classes = np.arange(k) if classes is None else np.asarray(classes)
        if classes.shape != (k,) or classes.dtype.kind not in "iu" or (k and classes.min() < 0):
            raise ValueError(f"`classes` must be {k} non-negative integer labels.")
        if len(set(classes.tolist())) != k:
            raise ValueError("`classes` must not repeat a label.")
        stats = cls(d, **kwargs)
        present = [i for i in range(k) if counts[i] > 0]
        stats._reserve([int(classes[i]) for i in present])
        for i in present:
            label = int(classes[i])
            stats._count[label] = int(counts[i])
            stats._sum[label][...] = sums[i]
            stats._outer[label][...] = second_moments[i]
        return stats

    def merge(self, other):
        """Add `other`'s statistics (e.g. another shard's) and return `self`."""
        if not isinstance(other, ClassStatistics):
            raise TypeError(f"`other` must be ClassStatistics; received {type(other).__name__}.")
        if other.n_features != self.n_features:
            raise ValueError(
                f"Cannot merge statistics over {other.n_features} features into "
                f"{self.n_features} features."
            )
        self._settle()
        other._settle()
        self._materialize_all()
        other._materialize_all()
        self._changed()
        self._reserve(sorted(other._count))
        for label in other._count:
            self._count[label] += other._count[label]
            self._sum[label] += other._sum[label]
            self._outer[label] += other._outer[label]
            self._shift.setdefault(label, other._shift.get(label))
        return self

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_products", None)  # scratch space
        return state

    def copy(self):
        """An independent copy."""
        self._settle()
        twin = ClassStatistics(
            self.n_features, product_dtype=self.product_dtype, memory_limit=self.memory_limit
        )
        twin._count = dict(self._count)
        twin._sum = {k: v.copy() for k, v in self._sum.items()}
        held = self._held_rows
        # (a held class's matrix is untouched zeros: a copy would write all of them)
        twin._outer = {k: np.zeros(v.shape) if k in held else v.copy()
                       for k, v in self._outer.items()}
        twin._shift = dict(self._shift)
        twin._held = {k: v.copy() for k, v in held.items()}
        return twin

    def clear(self):
        """Forget all samples (keeps `n_features` and the options)."""
        self._changed()
        self._count, self._sum, self._outer, self._shift = {}, {}, {}, {}
        self._staged, self._staged_rows, self._pending = [], 0, {}
        self._held = {}

    # ------------------------------------------------------------------ accumulate
    def accumulate(self, x, labels):
        """Add the rows `x` `(n, d)` with integer `labels` `(n,)`; returns None.

        `x` is a NumPy array (any real dtype) or a tensor of the running Keras backend,
        which is multiplied on its device with `keras.ops`. Labels must be non-negative
        integers (validate user labels with `ClassPCA`'s rules first). The batch is
        checked before anything is added: NaN or infinite values raise a `ValueError`
        and leave the statistics unchanged; so does a new class that would exceed the
        memory limit (`MemoryError`).
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
            raise ValueError(
                f"`labels` must be a vector of integers; received shape {labels.shape}."
            )
        self._changed()  # (a rejected batch adds nothing: a spurious change costs a solve)
        if _is_backend_tensor(x):
            return self._accumulate_tensor(x, labels)
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"`x` must be numeric; received dtype {x.dtype}.")
        labels = self._checked_labels(x.shape, labels)
        if labels is None:
            return
        dtype = np.dtype(self.product_dtype or default_product_dtype(x.dtype))
        dtype = self._checked_dtype(x, dtype)
        present = _distinct(labels)
        self._reserve(present.tolist())
        row_bytes = np.dtype(dtype).itemsize * self.n_features
        # Small batches (a layer's patches a few thousand rows at a time) are staged and
        # multiplied together: every call costs K·d² float64 additions.
        # Staged rows stay within a few times the statistics' own memory (and
        # STAGE_BYTES, or an eighth of the statistics when they are larger: with many
        # classes each flush adds every class's d x d product, and 64 MB of patch rows
        # over 1,000 classes is 30 rows a class), so that memory is still bounded by the
        # statistics, not the data.
        stage_bytes = min(
            max(STAGE_BYTES, self.nbytes // 8),
            max(4 * self.nbytes, MIN_CHUNK_ROWS * len(self._count) * row_bytes),
        )
        stage_rows = stage_bytes // row_bytes
        # Staging pays when a call's K·d² float64 additions outweigh copying its n·d
        # values: n < K·d (hybridize's conv2 pass, 5,242 rows x 800 features, 10 classes).
        if len(x) < len(present) * self.n_features and len(x) < stage_rows:
            # Staged grouped by class (the copy staging needs anyway), so that the staged
            # batches are later multiplied class by class without another gather.
            order = None if _is_sorted(labels) else np.argsort(labels, kind="stable")
            rows = x.astype(dtype, copy=True) if order is None else x[order].astype(dtype,
                                                                                  copy=False)
            self._staged.append((rows, labels.copy() if order is None else labels[order]))
            self._staged_rows += len(x)
            if self._staged_rows >= stage_rows:
                self._process_staged()
            return
        self._process_staged()
        self._process(x, labels, dtype)

    def _process_staged(self):
        """Multiply the staged batches (each grouped by class) into the sums: a class's
        runs from every staged batch are copied into one buffer and multiplied together."""
        if not self._staged:
            return
        staged, self._staged, self._staged_rows = self._staged, [], 0
        for dtype in sorted({x.dtype.str for x, _ in staged}):
            runs = _runs_by_label([(x, labels) for x, labels in staged
                                   if x.dtype.str == dtype])
            buffer = self._buffer(max(sum(map(len, r)) for r in runs.values()), np.dtype(dtype))
            for label in sorted(runs):
                if not self._hold(label, runs[label]):
                    self._multiply_runs(label, runs[label], buffer)

    def _buffer(self, rows, dtype):
        """A gather buffer of a cache-sized chunk of rows (at most `rows`)."""
        step = max(MIN_CHUNK_ROWS, CHUNK_BYTES // (dtype.itemsize * self.n_features))
        return np.empty((min(step, rows), self.n_features), dtype=dtype)

    def _process(self, x, labels, dtype):
        """Products of validated rows: a block of rows at a time."""
        # Rows are grouped by class a block at a time: gathering from a block of ~16 MB
        # is several times faster than from the whole array in memory; a block holds
        # about MIN_CHUNK_ROWS rows per class (up to MAX_BLOCK_BYTES) so that each
        # class's product is one long BLAS call.
        present = len(_distinct(labels)) if len(labels) < 1 << 20 else len(self._count)
        row_bytes = x.itemsize * self.n_features
        rows = max(BLOCK_BYTES // row_bytes, MIN_CHUNK_ROWS * present)
        rows = max(MIN_CHUNK_ROWS, min(rows, MAX_BLOCK_BYTES // row_bytes))
        # One gather buffer for all blocks: a fresh one per block costs page faults.
        buffer = self._buffer(len(x), dtype)
        for begin in range(0, len(x), rows):
            block = slice(begin, begin + rows)
            self._accumulate_block(x[block], labels[block], buffer)

    def _accumulate_block(self, x, labels, buffer):
        n_runs = np.count_nonzero(np.diff(labels)) + 1
        if n_runs * MIN_RUN_ROWS <= len(labels):
            # Labels in long runs (sorted, or the patches of one image): the rows of a
            # class are copied run by run, without a sort and a gather.
            runs = _runs_by_label([(x, labels)])
            for label in sorted(runs):
                self._multiply_runs(label, runs[label], buffer)
            return
        order = np.argsort(labels, kind="stable")
        step = len(buffer)
        for label, begin, end in _label_runs(labels[order]):
            for start in range(begin, end, step):
                stop = min(start + step, end)
                chunk = buffer[: stop - start]
                if x.dtype == buffer.dtype:
                    np.take(x, order[start:stop], axis=0, out=chunk)
                else:
                    chunk[...] = np.take(x, order[start:stop], axis=0)
                self._multiply(label, chunk)

    def _multiply_runs(self, label, runs, buffer):
        """Copy a class's row runs into `buffer` a full chunk at a time and multiply.

        Once the class has its reference point, the copy is also the shift (one pass
        over the rows instead of two; rows of the buffer's dtype only, so that the
        rounding stays that of a conversion followed by the shift)."""
        self._materialize(label)
        fuse = all(run.dtype == buffer.dtype for run in runs)
        shift = self._shift.get(label) if fuse else None
        shift = None if shift is None else shift.astype(buffer.dtype)
        filled = 0
        for run in runs:
            start = 0
            while start < len(run):
                take = min(len(buffer) - filled, len(run) - start)
                if shift is None:
                    buffer[filled : filled + take] = run[start : start + take]
                else:
                    np.subtract(run[start : start + take], shift,
                                out=buffer[filled : filled + take])
                filled, start = filled + take, start + take
                if filled == len(buffer):
                    self._multiply(label, buffer, shifted=shift is not None)
                    if fuse and shift is None:  # the first chunk set the reference point
                        shift = self._shift[label].astype(buffer.dtype)
                    filled = 0
        if filled:
            self._multiply(label, buffer[:filled], shifted=shift is not None)

    def _multiply(self, label, chunk, shifted=False):
        """Add one chunk of a class's rows (a scratch buffer: shifted in place, unless
        `shifted` says it holds the rows minus the class's reference point already)."""
        dtype = chunk.dtype
        ones = np.ones(len(chunk), dtype=dtype)
        self._materialize(label)
        if self._shift.get(label) is None:
            self._shift[label] = (ones @ chunk / len(chunk)).astype(np.float64)
        # The reference point as used (rounded to `dtype`) enters the correction.
        shift = self._shift[label].astype(dtype)
        if not shifted:
            chunk -= shift
        # `a.T @ a` on one buffer: NumPy calls BLAS syrk (half a GEMM's work), here into
        # a reused matrix (a fresh d x d result per chunk costs its page faults).
        product = self._product_buffer(dtype)
        np.matmul(chunk.T, chunk, out=product)
        self._add(label, len(chunk), shift.astype(np.float64),
                  (ones @ chunk).astype(np.float64), product)

    def _product_buffer(self, dtype):
        """A reused `d x d` matrix of `dtype` for one chunk's product (not pickled)."""
        buffers = self.__dict__.setdefault("_products", {})
        if dtype.str not in buffers:
            buffers[dtype.str] = np.empty((self.n_features, self.n_features), dtype=dtype)
        return buffers[dtype.str]

    def _checked_labels(self, shape, labels):
        """int64 `labels` for rows of `shape` (None for no rows); raises for mismatches."""
        if len(shape) != 2 or shape[1] != self.n_features:
            raise ValueError(
                f"`x` must have shape (n_samples, {self.n_features}); received {tuple(shape)}."
            )
        if len(labels) != shape[0]:
            raise ValueError(
                f"`x` and `labels` must have the same length; received {shape[0]} and "
                f"{len(labels)}."
            )
        if not len(labels):
            return None
        labels = labels.astype(np.int64, copy=False)
        if labels.min() < 0:
            raise ValueError(f"`labels` must be non-negative; received {labels.min()}.")
        return labels

    @staticmethod
    def _checked_dtype(x, dtype):
        """Raise for NaN/inf; float64 products if float32 ones could overflow."""
        flat = np.ascontiguousarray(x).reshape(-1)
        if flat.dtype.kind != "f":
            flat = flat.astype(dtype)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            squares = float(np.dot(flat, flat))
        if np.isfinite(squares) and dtype != np.float64 and (
                _FLOAT32_TINY * flat.size <= squares < _FLOAT32_SAFE):
            return dtype
        if flat.dtype != np.float64:
            flat = flat.astype(np.float64)
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                squares = float(np.dot(flat, flat))
        if not np.isfinite(squares):
            bad = int(flat.size - np.count_nonzero(np.isfinite(flat)))
            if bad:
                raise ValueError(f"`x` contains {bad} NaN or infinite values.")
            raise ValueError("`x` holds values too large to square in float64.")
        if squares < _FLOAT64_TINY * flat.size and np.any(flat):
            raise ValueError(
                f"`x` holds values too small to square in float64 (largest magnitude "
                f"{np.abs(flat).max():.1e}): their products underflow. Rescale it."
            )
        return np.dtype(np.float64)

    def _accumulate_tensor(self, x, labels):
        """`accumulate` for a backend tensor: gather and multiply with `keras.ops`."""
        import keras
        from keras import ops

        labels = self._checked_labels(tuple(x.shape), labels)
        if labels is None:
            return
        dtype = self.product_dtype or default_product_dtype(
            keras.backend.standardize_dtype(x.dtype)
        )
        x = ops.cast(x, dtype)
        squares = float(ops.convert_to_numpy(ops.sum(ops.square(x))))
        if not np.isfinite(squares) or (dtype == "float32" and not (
                _FLOAT32_TINY * int(np.prod(x.shape)) <= squares < _FLOAT32_SAFE)):
            # Rare: let the NumPy path say what is wrong (or multiply in float64).
            return self.accumulate(ops.convert_to_numpy(x), labels)
        order = np.argsort(labels, kind="stable")
        runs = list(_label_runs(labels[order]))
        self._reserve([label for label, _, _ in runs])
        grouped = ops.take(x, ops.convert_to_tensor(order.astype(np.int32)), axis=0)
        compiled = _compiles_per_shape()
        block_sum = _device_function(_block_sum)
        block_statistics = _device_function(_block_statistics)
        total = len(order)
        for label, begin, end in runs:
            self._materialize(label)
            # Under JAX a class's rows are read as a block of a rounded size (or the
            # whole batch), the rows of other classes masked to zero: a few shapes per
            # layer, not one per run length (each new one compiled every op again: 231
            # compilations, 9 s, for a 4-layer test model).
            size = min(_block_rows(end - begin, compiled), total)
            start = min(begin, total - size)
            # The class's rows within the block (None: all of them).
            kept = None if size == end - begin else (begin - start, end - begin)
            if self._shift.get(label) is None:
                raw_sum = block_sum(grouped, start, size, kept)
                self._shift[label] = (np.asarray(ops.convert_to_numpy(raw_sum), np.float64)
                                      / (end - begin))
            shift = self._shift[label].astype(dtype)
            product, shifted_sum = block_statistics(grouped, start, size, kept,
                                                    ops.convert_to_tensor(shift))
            self._add(
                label,
                end - begin,
                shift.astype(np.float64),
                np.asarray(ops.convert_to_numpy(shifted_sum), dtype=np.float64),
                np.asarray(ops.convert_to_numpy(product), dtype=np.float64),
            )


# Class blocks under JAX: at least this many rows, rounded up to one of this many
# sizes per doubling (at most a quarter of a block is padding).
MIN_DEVICE_BLOCK_ROWS = 64
DEVICE_BLOCK_SIZES_PER_DOUBLING = 4


def _block_rows(n, compiled):
    """The block size for `n` rows of one class: `n` for a backend that runs eagerly,
    else `n` rounded up to at least `MIN_DEVICE_BLOCK_ROWS` and to one of
    `DEVICE_BLOCK_SIZES_PER_DOUBLING` sizes between powers of two (a compiled function
    is compiled again for every new shape).

    >>> [_block_rows(n, True) for n in (1, 64, 65, 100, 1000)], _block_rows(1000, False)
    ([64, 64, 80, 112, 1024], 1000)
    """
    if not compiled:
        return int(n)
    n = max(int(n), MIN_DEVICE_BLOCK_ROWS)
    unit = max(1, (1 << (n.bit_length() - 1)) // DEVICE_BLOCK_SIZES_PER_DOUBLING)
    return -(-n // unit) * unit


def _compiles_per_shape():
    """Whether the backend compiles a function for every new input shape (JAX)."""
    import keras

    return keras.backend.backend() == "jax"


def _device_function(function):
    """`function` compiled once per shape under JAX, whose eager ops compile one by one
    (`start` and `kept`, Python ints, are traced, not constants; `size` is static);
    TensorFlow and torch run it eagerly."""
    return _jitted(function) if _compiles_per_shape() else function


@functools.lru_cache(maxsize=None)
def _jitted(function):
    import jax

    return jax.jit(function, static_argnames=("size",))


def _block(grouped, start, size, kept):
    """Rows `start .. start + size` of `grouped` and, if `kept` = `(offset, count)`,
    a `(size, 1)` mask of the rows `offset .. offset + count` among them (made where
    the rows are: no mask travels from the host)."""
    from keras import ops

    block = ops.slice(grouped, (start, 0), (size, grouped.shape[1]))
    if kept is None:
        return block, None
    offset, count = kept
    rows = ops.arange(size)
    mask = ops.logical_and(rows >= offset, rows < offset + count)
    return block, ops.cast(mask, block.dtype)[:, None]


def _block_sum(grouped, start, size, kept):
    """`Σ B` of the class's rows `B` in a block (`_block`; the others masked to zero)."""
    from keras import ops

    block, mask = _block(grouped, start, size, kept)
    return ops.sum(block if mask is None else block * mask, axis=0)


def _block_statistics(grouped, start, size, kept, shift):
    """`(Bᵀ B, Σ B)` of the class's shifted rows `B = rows - shift` in a block (`_block`;
    masked rows contribute exactly zero)."""
    from keras import ops

    block, mask = _block(grouped, start, size, kept)
    block = block - shift
    if mask is not None:
        block = block * mask
    return ops.matmul(ops.transpose(block), block), ops.sum(block, axis=0)
