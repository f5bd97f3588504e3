"""`ClassSketch`: class statistics in O(K·d·ℓ) memory, for large label spaces.

`ClassStatistics` keeps a `d x d` second moment per class: `K·d²` float64 values, 42 GB
for 1,000 classes of 3x3x256 patches (d = 2,304). Class-PCA only needs each class's
*leading* eigenvectors, so here each class keeps a Frequent Directions sketch instead
(Liberty 2013; Ghashami, Liberty, Phillips & Woodruff, *Frequent Directions: simple and
deterministic matrix sketching*, SIAM J. Comput. 2016): `ℓ` rows `B` with

    0 ≼ AᵀA − BᵀB ≼ Δ·I,   Δ ≤ ‖A − A_k‖²_F / (ℓ − k)  for every k < ℓ,

where `A` holds the class's rows (shifted by a per-class reference point, as in
`ClassStatistics`). Its leading directions are those of `AᵀA` up to an error set by the
energy of the class's tail: where a class's variance is concentrated in few directions
(images, patches), a sketch a few times larger than the components asked per class
recovers them closely (docs/benchmarks.md, `bench_accumulate`).

What stays exact: every class's count, sum and trace (so explained-variance shares are
true shares), and the total second moment over all classes — one `d x d` matrix, which
standardised scaling and the total covariance need. The sketch rows are stored in
float32 (their rounding, ~1e-7, is far below the sketch's own error) and combined in
float64. Memory is `K·2ℓ·d` float32 plus `K·(2d + 3) + d² + 2d + 1` float64 values
(`sketch_nbytes`).

A sketch is updated a buffer of `2ℓ` rows at a time: when the buffer is full, it is
shrunk back to `ℓ` rows from the eigen-decomposition of its `2ℓ x 2ℓ` Gram matrix;
over few features (`d` up to a few ℓ) a batch's rows of a class are shrunk with the
buffer in one step, through the `d x d` second moment, where that costs less. The
shrink is the parameterized one of Desai, Ghashami & Phillips (*Improved practical
matrix sketching with guarantees*, IEEE TKDE 2016): only the trailing `α·ℓ` of the
kept directions are shrunk, the leading `(1 − α)·ℓ` — where the class's components
are — are kept whole. The bound above becomes `Δ ≤ ‖A − A_k‖²_F / (α·ℓ − k)`; the
components come out closer (`SHRUNK_SHARE`, set in `bench_sketch`). Two
sketches merge exactly as the algorithm allows (mergeable summaries): the union of their
rows, shrunk again; a shard's different reference point enters as a rank-2 correction
solved in the span of the rows. The sketches are computed on the host.
"""

import copy

import numpy as np

from keras_classpca.core.statistics import (
    ClassStatistics,
    check_bytes,
)


def sketch_nbytes(n_classes, n_features, sketch_size):
    """Bytes a `ClassSketch` holds for `n_classes` classes of `n_features`."""
    k, d, ell = int(n_classes), int(n_features), int(sketch_size)
    return 4 * k * 2 * ell * d + 8 * (k * (2 * d + 3) + d * d + 2 * d + 1)


def check_sketch_memory(n_classes, n_features, sketch_size, memory_limit=None, held=0):
    """Raise `MemoryError` if the sketches would not fit (see `check_memory`)."""
    check_bytes(
        sketch_nbytes(n_classes, n_features, sketch_size),
        f"Class sketches for {n_classes} classes x {n_features} features with "
        f"sketch_size={sketch_size}",
        "Use a smaller sketch_size or fewer features.",
        memory_limit,
        held=held,
    )


# Share α of the ℓ kept directions that a shrink reduces (1 = classic Frequent
# Directions). Chosen among 1, 0.75, 0.5 and 0.25 on Fashion-MNIST pixels and the CNN's
# conv2 patches at ℓ = 32 and 64 (subspace residual at ℓ = 64 against α = 1: 1.1e-3 vs
# 3.0e-3 and 8.0e-3 vs 1.5e-2); the synthetic d = 2,304 case was held out (bench_sketch).
SHRUNK_SHARE = 0.25


def first_shrunk(ell):
    """Index of the first of the ℓ kept directions a shrink reduces (the last
    `SHRUNK_SHARE · ℓ`, at least one)."""
    return ell - max(1, int(round(SHRUNK_SHARE * ell)))


def _shrunk_values(values, ell):
    """`(new values, δ)`: the leading ℓ of descending `values` after the shrink."""
    values = np.clip(values, 0.0, None)
    delta = float(values[ell]) if len(values) > ell else 0.0
    kept = values[:ell].copy()
    first = first_shrunk(ell)
    kept[first:] = np.clip(kept[first:] - delta, 0.0, None)
    return kept, delta


def _shrink(rows, ell):
    """Frequent Directions' shrink: `(ℓ rows, δ)` with `0 ≼ rowsᵀrows − newᵀnew ≼ δ·I`.

    Any number of rows: more than `d` go through the `d x d` second moment (one
    eigen-decomposition for a whole batch of a class), fewer through their Gram."""
    rows = rows.astype(np.float64)
    if len(rows) > rows.shape[1]:
        moment = rows.T @ rows
        values, vectors = np.linalg.eigh((moment + moment.T) / 2.0)
        values, vectors = values[::-1], vectors[:, ::-1]
        kept, delta = _shrunk_values(values, ell)
        new = np.zeros((ell, rows.shape[1]))
        top = min(ell, len(kept))
        new[:top] = (vectors[:, :top] * np.sqrt(kept[:top])).T
        return new, delta
    gram = rows @ rows.T
    values, vectors = np.linalg.eigh((gram + gram.T) / 2.0)
    values, vectors = values[::-1], vectors[:, ::-1]
    kept, delta = _shrunk_values(values, ell)
    # New row i = sqrt(λ'_i) · v_iᵀ, where v_i = rowsᵀ u_i / sqrt(λ_i).
    old = np.clip(values[:ell], 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(old > 0, np.sqrt(kept / old), 0.0)
    return (vectors[:, :ell] * scale).T @ rows, delta


def _factor_shrink(basis_rows, extra, ell):
    """Shrink `basis_rowsᵀ basis_rows + extra` (a symmetric `d x d` correction given as
    `(U, C)` with `extra = U C Uᵀ`) to ℓ rows, in the span of the rows and of U."""
    u, c = extra
    span, _ = np.linalg.qr(np.column_stack([basis_rows.T, u]))
    projected = span.T @ basis_rows.T
    small = projected @ projected.T + (span.T @ u) @ c @ (u.T @ span)
    values, vectors = np.linalg.eigh((small + small.T) / 2.0)
    kept, delta = _shrunk_values(values[::-1], ell)
    rows = (span @ vectors[:, ::-1][:, :ell] * np.sqrt(kept)).T
    return rows, delta


class ClassSketch:
    """Per-class count, sum, trace and a Frequent Directions sketch of `ℓ` rows.

    The read interface of `ClassStatistics` (`classes`, `counts`, `sums`, `count`,
    `sum`, `second_moment`, `total_second_moment`, `n_samples`, `nbytes`, `merge`), so
    `ClassPCA` solves it alike; `second_moment(label)` is the sketch's approximation
    (a dense `d x d` matrix built on request) and `class_factor` the low-rank form the
    solver uses. `ClassPCA(sketch_size=...)` builds one (see its docstring for when
    `"auto"` does).

    Args:
        n_features: the row dimension `d`.
        sketch_size: `ℓ`, rows kept per class (a buffer of `2ℓ` rows is updated).
        product_dtype, memory_limit: as in `ClassStatistics` (the total second moment
            uses `product_dtype`; the sketches are float64).

    Attributes:
        shrinkage: `{label: Δ}`, the bound on `‖AᵀA − BᵀB‖₂` of each class so far.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 30)) * np.r_[10.0, 5.0, np.ones(28) * 0.1]
    >>> sketch = ClassSketch(30, sketch_size=8)
    >>> sketch.accumulate(x, np.arange(400) % 2)
    >>> exact = ClassStatistics(30)
    >>> exact.accumulate(x, np.arange(400) % 2)
    >>> gap = np.linalg.eigvalsh(exact.second_moment(0) - sketch.second_moment(0))
    >>> scale = np.linalg.norm(exact.second_moment(0), 2)  # float32 rows: ~1e-7 of it
    >>> bool(-1e-6 * scale <= gap.min() and gap.max() <= sketch.shrinkage[0] + 1e-6 * scale)
    True
    >>> sketch.counts.tolist(), bool(sketch.shrinkage[0] < 0.01 * scale)
    ([200, 200], True)
    """

    def __init__(self, n_features, sketch_size, *, product_dtype=None, memory_limit=None):
        if isinstance(sketch_size, bool) or not isinstance(sketch_size, (int, np.integer)):
            raise TypeError(f"`sketch_size` must be a positive integer; received {sketch_size!r}.")
        if sketch_size < 1:
            raise ValueError(f"`sketch_size` must be a positive integer; received {sketch_size!r}.")
        self._total = ClassStatistics(
            n_features, product_dtype=product_dtype, memory_limit=memory_limit
        )
        self.n_features = self._total.n_features
        self.sketch_size = int(sketch_size)
        self.product_dtype = product_dtype
        self.memory_limit = memory_limit
        self._count, self._sum, self._trace, self._shift = {}, {}, {}, {}
        self._rows, self._filled = {}, {}
        self.shrinkage = {}

    # ------------------------------------------------------------------ reading
    @property
    def version(self):
        """Changes whenever samples are added (see `ClassStatistics.version`)."""
        return self._total.version

    @property
    def classes(self):
        return np.array(sorted(self._count), dtype=np.int64)

    @property
    def counts(self):
        return np.array([self._count[c] for c in sorted(self._count)], dtype=np.int64)

    @property
    def sums(self):
        if not self._count:
            return np.zeros((0, self.n_features))
        return np.stack([self.sum(c) for c in sorted(self._count)])

    @property
    def n_samples(self):
        return int(sum(self._count.values()))

    @property
    def nbytes(self):
        return sketch_nbytes(len(self._count), self.n_features, self.sketch_size)

    def __len__(self):
        return len(self._count)

    def __contains__(self, label):
        return int(label) in self._count

    def __repr__(self):
        return (
            f"ClassSketch(n_features={self.n_features}, sketch_size={self.sketch_size}, "
            f"classes={len(self)}, n_samples={self.n_samples})"
        )

    def _known(self, label):
        label = int(label)
        if label not in self._count:
            raise KeyError(f"Class {label} has no samples.")
        return label

    def count(self, label):
        """Samples of class `label` (0 if none)."""
        return self._count.get(int(label), 0)

    def sum(self, label):
        """`Σ x` over class `label` (exact, float64)."""
        label = self._known(label)
        return self._sum[label] + self._count[label] * self._shift[label]

    def trace(self, label):
        """`Σ ‖x‖²` over class `label` (exact): the trace of its second moment."""
        label = self._known(label)
        r, s, n = self._shift[label], self._sum[label], self._count[label]
        return float(self._trace[label] + 2.0 * r @ s + n * r @ r)

    def _sketch_rows(self, label):
        """The class's sketch rows, float64."""
        return self._rows[label][: self._filled[label]].astype(np.float64)

    def class_factor(self, label, center):
        """`(basis, small, trace)`: the class matrix (second moment / n, or covariance
        with `center`) of the sketch as `basis @ small @ basis.T` with an orthonormal
        `basis` of at most ℓ + 2 columns, and the exact trace of the true matrix."""
        label = self._known(label)
        n, r, s = self._count[label], self._shift[label], self._sum[label]
        rows = self._sketch_rows(label)
        mean_offset = s / n  # class mean minus the reference point
        # Σ(x−r)(x−r)ᵀ ≈ BᵀB; the class matrix adds terms in span{r, mean − r}.
        directions = np.column_stack([rows.T, mean_offset] + ([] if center else [r]))
        basis, _ = np.linalg.qr(directions)
        projected = basis.T @ rows.T
        small = projected @ projected.T / n
        m = basis.T @ mean_offset
        if center:
            small -= np.outer(m, m)
            trace = self._trace[label] / n - mean_offset @ mean_offset
        else:
            p = basis.T @ r
            small += np.outer(p, m) + np.outer(m, p) + np.outer(p, p)
            trace = self.trace(label) / n
        return basis, (small + small.T) / 2.0, max(float(trace), 0.0)

    def second_moment(self, label):
        """The sketch's approximation of `Σ x xᵀ` over class `label` (a new dense array)."""
        label = self._known(label)
        rows, r, s = self._sketch_rows(label), self._shift[label], self._sum[label]
        w = s + 0.5 * self._count[label] * r
        return rows.T @ rows + np.outer(r, w) + np.outer(w, r)

    def total_second_moment(self):
        """`Σ x xᵀ` over all samples of all classes (exact)."""
        if not self._count:
            return np.zeros((self.n_features, self.n_features))
        return self._total.second_moment(0).copy()

    def projected_second_moment(self, directions):
        """`Σ (x · w_j)²` over all samples for each column of `directions` (exact; see
        `ClassStatistics.projected_second_moment`)."""
        if not self._count:
            return np.zeros(np.shape(directions)[1])
        return self._total.projected_second_moment(directions)

    # ------------------------------------------------------------------ building
    def _reserve(self, labels):
        new = [label for label in labels if label not in self._count]
        if not new:
            return
        check_sketch_memory(len(self._count) + len(new), self.n_features, self.sketch_size,
                             self.memory_limit, self.nbytes)
        d = self.n_features
        for label in new:
            self._count[label], self._trace[label] = 0, 0.0
            self._sum[label], self._shift[label] = np.zeros(d), None
            self._rows[label] = np.zeros((2 * self.sketch_size, d), dtype=np.float32)
            self._filled[label] = 0
            self.shrinkage[label] = 0.0

    def _forget(self, labels):
        for label in labels:
            for state in (self._count, self._trace, self._sum, self._shift, self._rows,
                          self._filled, self.shrinkage):
                del state[label]

    def _insert(self, label, rows):
        """Append shifted float64 rows to the class's buffer, shrinking when it fills.

        The buffer of Frequent Directions may be any size ≥ 2ℓ. Many rows of a class in
        a batch over few features (conv patches: d = 25 at ℓ = 16) are shrunk with the
        buffer in one step through the `d x d` second moment when that costs less than
        shrinking every ℓ rows (`s·d² + d³` against `(s/ℓ)·(4ℓ²·d + 8ℓ³)`): 100,000
        shrinks for the patches of 3,000 images became one per batch."""
        buffer, ell = self._rows[label], self.sketch_size
        filled, d = self._filled[label], rows.shape[1]
        stack = filled + len(rows)
        if stack > 2 * ell and stack > d and (
                stack * d * d + d ** 3 < stack / ell * (4 * ell * ell * d + 8 * ell ** 3)):
            kept, delta = _shrink(np.concatenate([buffer[:filled], rows]), ell)
            buffer[:ell], buffer[ell:] = kept, 0.0
            self._filled[label] = ell
            self.shrinkage[label] += delta
            return
        start = 0
        while start < len(rows):
            filled = self._filled[label]
            take = min(2 * ell - filled, len(rows) - start)
            buffer[filled : filled + take] = rows[start : start + take]
            self._filled[label] = filled + take
            start += take
            if self._filled[label] == 2 * ell:
                kept, delta = _shrink(buffer, ell)
                buffer[:ell], buffer[ell:] = kept, 0.0
                self._filled[label] = ell
                self.shrinkage[label] += delta

    def accumulate(self, x, labels):
        """Add the rows `x` `(n, d)` with integer `labels` `(n,)`; returns None.

        Checks as `ClassStatistics.accumulate` (NaN/inf, shapes, labels, memory) before
        anything is added. Backend tensors are copied to the host for the sketches.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
            raise ValueError(
                f"`labels` must be a vector of integers; received shape {labels.shape}."
            )
        if not len(labels):
            self._total.accumulate(x, labels)  # shape checks
            return
        if labels.min() < 0:
            raise ValueError(f"`labels` must be non-negative; received {labels.min()}.")
        new = [c for c in np.unique(labels).tolist() if c not in self._count]
        self._reserve(new)
        try:
            # The exact total checks the batch (NaN/inf, shapes) before it adds it.
            self._total.accumulate(x, np.zeros(len(labels), dtype=np.int64))
        except BaseException:
            self._forget(new)  # the batch is refused whole
            raise
        if not isinstance(x, np.ndarray):
            from keras import ops

            x = ops.convert_to_numpy(x)
        x = np.asarray(x)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(sorted_labels)) + 1, [len(x)]])
        for begin, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            label = int(sorted_labels[begin])
            rows = x[order[begin:end]].astype(np.float64)
            if self._shift[label] is None:
                self._shift[label] = rows.mean(axis=0)
            rows -= self._shift[label]
            self._count[label] += end - begin
            self._sum[label] += rows.sum(axis=0)
            self._trace[label] += float(np.einsum("ij,ij->", rows, rows))
            self._insert(label, rows)

    def copy(self):
        """An independent copy."""
        return copy.deepcopy(self)

    def shrink_to(self, sketch_size):
        """Keep `sketch_size` rows per class from now on (fewer than today); `self`.

        Each class's sketch is shrunk once more, as Frequent Directions does when its
        buffer fills: the result is a sketch of ℓ' rows of the same data, with the
        bound of ℓ' (its error adds to `shrinkage`). `ClassPCA(sketch_size="auto")`
        does this when classes that arrive late would not fit otherwise.
        """
        ell = int(sketch_size)
        if not 1 <= ell <= self.sketch_size:
            raise ValueError(
                f"`sketch_size` must be in [1, {self.sketch_size}] (a sketch only "
                f"shrinks); received {sketch_size!r}."
            )
        for label in self._count:
            rows = self._sketch_rows(label)
            buffer = np.zeros((2 * ell, self.n_features), dtype=np.float32)
            if len(rows) > ell:
                rows, delta = _shrink(rows, ell)
                self.shrinkage[label] += delta
            buffer[: len(rows)] = rows
            self._rows[label], self._filled[label] = buffer, len(rows)
        self.sketch_size = ell
        return self

    def merge(self, other):
        """Add `other`'s classes (another shard's sketch or exact statistics); `self`."""
        if isinstance(other, ClassStatistics):
            other = ClassSketch.from_statistics(other, self.sketch_size)
        if not isinstance(other, ClassSketch):
            raise TypeError(
                f"`other` must be ClassSketch or ClassStatistics; received {type(other).__name__}."
            )
        if other.n_features != self.n_features:
            raise ValueError(
                f"Cannot merge statistics over {other.n_features} features into "
                f"{self.n_features} features."
            )
        self._reserve(sorted(other._count))
        self._total.merge(other._total)
        for label in other._count:
            rows = other._sketch_rows(label)
            if self._shift[label] is None:
                self._shift[label] = other._shift[label]
            r, n2, s2 = self._shift[label], other._count[label], other._sum[label]
            delta = other._shift[label] - r
            # Other's rows are about its own reference: Σ(x−r)(x−r)ᵀ = Σ(x−r₂)(x−r₂)ᵀ
            # + n₂δδᵀ + δs₂ᵀ + s₂δᵀ (δ = r₂ − r, s₂ = Σ(x−r₂)).
            if np.any(delta):
                mine = self._sketch_rows(label)
                both = np.vstack([mine, rows])
                correction = (np.column_stack([delta, s2]),
                              np.array([[n2, 1.0], [1.0, 0.0]]))
                kept, shrunk = _factor_shrink(both, correction, self.sketch_size)
                self._rows[label][:] = 0.0
                self._rows[label][: len(kept)] = kept
                self._filled[label] = len(kept)
            else:
                self._insert(label, rows)
                shrunk = 0.0
            self._trace[label] += other._trace[label] + 2.0 * delta @ s2 + n2 * delta @ delta
            self._sum[label] += s2 + n2 * delta
            self._count[label] += n2
            self.shrinkage[label] += other.shrinkage[label] + shrunk
        return self

    @classmethod
    def from_parts(cls, sketch_size, *, counts, sums, traces, shifts, rows, filled, shrinkage,
                   total, **kwargs):
        """A sketch from per-class arrays, as a `tf.distribute` replica builds one
        (`keras_classpca.distributed`): `counts` `(K,)`; `sums` `(K, d)` and `traces`
        `(K,)` of the rows shifted by `shifts` `(K, d)`; `rows` `(K, 2ℓ, d)` of which the
        first `filled[c]` are class c's sketch; `shrinkage` `(K,)`; `total` the exact
        total statistics (a one-class `ClassStatistics`). Classes with no count are left
        out."""
        d = total.n_features
        kwargs.setdefault("product_dtype", total.product_dtype)
        sketch = cls(d, sketch_size, **kwargs)
        present = [c for c in range(len(counts)) if counts[c] > 0]
        sketch._reserve(present)
        sketch._total = total
        for c in present:
            sketch._count[c], sketch._trace[c] = int(counts[c]), float(traces[c])
            sketch._sum[c] = np.array(sums[c], dtype=np.float64)
            sketch._shift[c] = np.array(shifts[c], dtype=np.float64)
            kept = np.asarray(rows[c][: int(filled[c])], dtype=np.float32)
            sketch._rows[c][: len(kept)] = kept
            sketch._filled[c] = len(kept)
            sketch.shrinkage[c] = float(shrinkage[c])
        return sketch

    @classmethod
    def from_statistics(cls, statistics, sketch_size, **kwargs):
        """A sketch of exact `ClassStatistics` (each class's leading ℓ eigenpairs)."""
        import scipy.linalg

        kwargs.setdefault("product_dtype", statistics.product_dtype)
        kwargs.setdefault("memory_limit", statistics.memory_limit)
        sketch = cls(statistics.n_features, sketch_size, **kwargs)
        labels = statistics.classes.tolist()
        sketch._reserve(labels)
        sketch._total = ClassStatistics.from_arrays(
            [statistics.n_samples], [statistics.sums.sum(axis=0)],
            [statistics.total_second_moment()],
            product_dtype=kwargs["product_dtype"], memory_limit=kwargs["memory_limit"])
        d, ell = statistics.n_features, sketch.sketch_size
        for label in labels:
            n, raw_sum = statistics.count(label), statistics.sum(label)
            r = raw_sum / n
            held = statistics.held_rows(label)
            if held is not None:  # a class held as rows: sketched from them
                centered = held - r
                rows, delta = (centered, 0.0) if len(held) <= ell else _shrink(centered, ell)
                trace = float(np.sum(np.square(centered)))
            else:
                # Σ(x−r)(x−r)ᵀ about the class mean r.
                shifted = statistics.second_moment(label) - n * np.outer(r, r)
                shifted = (shifted + shifted.T) / 2.0
                k = min(d, ell + 1)
                values, vectors = scipy.linalg.eigh(shifted, subset_by_index=[d - k, d - 1])
                kept, delta = _shrunk_values(values[::-1], ell)
                rows = (vectors[:, ::-1][:, :ell] * np.sqrt(kept)).T
                trace = float(np.trace(shifted))
            sketch._count[label], sketch._shift[label] = n, r
            sketch._sum[label] = np.zeros(d)
            sketch._trace[label] = trace
            sketch._rows[label][: len(rows)] = rows
            sketch._filled[label] = len(rows)
            sketch.shrinkage[label] = delta
        return sketch
