"""Class statistics across replicas and workers with `tf.distribute`.

Class-PCA needs, per class `c`, only three sums over the data: the count `n_c`, the
sum `s_c = Σ x` and the second moment `M_c = Σ x xᵀ`. Sums of shards are the sums of
the whole, so a data-parallel pass is exact: each replica accumulates the statistics
of its shard in float64 with TF ops inside `strategy.run`, one all-reduce
(`strategy.reduce(SUM)`) adds them up, and the eigen-solve runs once on the reduced
arrays. Every replica and every worker ends with the same statistics, hence the same
weights. What crosses the network is `K·(1 + d + d²)` float64 values per layer
(O(K·d²)), independent of the number of samples.

    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # or MirroredStrategy()
    pca = fit_distributed(dataset, 64, n_classes=10, strategy=strategy)
    pca.kernel_, pca.bias_                                    # same on every worker

`dataset` is a batched `tf.data.Dataset` of `(x, y)`; it is distributed with
`strategy.experimental_distribute_dataset` (each global batch is split across the
replicas; across workers it is sharded by the dataset's `AutoShardPolicy`, DATA
recommended, see docs/distributed.md).

The passes over raw data are TF ops and run under any Keras backend; running Keras
layers inside `strategy.run` (a solved prefix, as `hybridize(strategy=)` does) needs
`KERAS_BACKEND=tensorflow` (`require_tensorflow_backend`).
"""

import collections

import numpy as np

from keras_classpca._optional import import_optional
from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.statistics import ClassStatistics, check_memory

tf = import_optional("tensorflow", "keras_classpca.distributed (tf.distribute)")

__all__ = [
    "StrategyPass",
    "adapt_with_strategy",
    "class_sketches",
    "class_statistics",
    "class_pca_from_statistics",
    "fit_distributed",
    "fit_with_strategy",
    "layer_class_pca",
    "hybridize_layer_pass",
    "layer_row_fn",
]

DEFAULT_BATCH_SIZE = 1024


# ---------------------------------------------------------------------- helpers
def require_tensorflow_backend(what):
    """Raise unless Keras runs on TensorFlow: `what` runs Keras layers inside `strategy.run`.

    The statistics pass itself is TF ops on the input data and works under any Keras
    backend (`ClassPCA.fit(statistics_pass=StrategyPass(strategy))`,
    `layer.adapt(strategy=)`); a Keras model can
    only run inside a `tf.distribute` replica function on the TensorFlow backend.
    """
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"{what} with a tf.distribute `strategy` runs Keras layers inside "
            f"`strategy.run`, which needs KERAS_BACKEND=tensorflow (now {backend!r}). "
            "Without `strategy` it works on every backend; or compute the statistics "
            "on each host and combine them with `ClassPCA.merge`."
        )


def class_pca_from_statistics(count, total, outer, n_components=None, **params):
    """A `ClassPCA` whose statistics are the given per-class arrays.

    Args:
        count: `(K,)` samples per class.
        total: `(K, d)` per-class sums.
        outer: `(K, d, d)` per-class second moments `Σ x xᵀ`.
        n_components, **params: `ClassPCA` constructor arguments.

    Classes with no samples are left out of the statistics, exactly as `ClassPCA.fit`
    never creates them; with `n_classes=K` such classes make `solve` raise, as there.
    The same as `ClassPCA.from_statistics(ClassStatistics.from_arrays(count, total,
    outer), n_components, **params)` except that it does not solve yet.
    """
    statistics = ClassStatistics.from_arrays(count, total, outer)
    pca = ClassPCA(n_components, **params)
    k = np.shape(count)[0]
    if pca.n_classes is not None and k > pca.n_classes:
        raise ValueError(f"Statistics for {k} classes but n_classes={pca.n_classes}.")
    if not len(statistics):
        raise ValueError("`data` is empty: no samples to fit ClassPCA on.")
    # Solved on first use, as after `partial_fit`: a missing class raises there.
    return pca.merge(statistics)


def _labels_tensor(y, n_classes):
    """Integer labels `(n,)` from integer labels or one-hot rows (TF ops)."""
    y = tf.convert_to_tensor(y)
    if (
        y.shape.rank is not None
        and y.shape.rank >= 2
        and y.shape[-1] == n_classes
        and n_classes > 1
    ):
        return tf.argmax(y, axis=-1, output_type=tf.int64)
    if y.dtype.is_floating:
        return tf.cast(tf.reshape(y, [-1]), tf.int64)
    return tf.reshape(tf.cast(y, tf.int64), [-1])


def replica_rows_refusal(layer):
    """Why `layer_row_fn` cannot compute `layer`'s rows on the replicas (a message
    naming the layer), or None: it can (Dense, one-group ConvND, Conv3D undilated)."""
    import keras

    from keras_classpca.layers.geometry import CONVOLUTIONS

    if isinstance(layer, keras.layers.Dense):
        return None
    if not isinstance(layer, CONVOLUTIONS):
        return (
            f"{type(layer).__name__} '{layer.name}' is not a Dense, Conv1D, Conv2D or "
            "Conv3D layer: its statistics are not computed on the replicas (hybridize "
            "solves depthwise and separable convolutions in this process)."
        )
    if layer.groups != 1:
        return (
            f"{type(layer).__name__} '{layer.name}' has groups={layer.groups}: its "
            "statistics are per group of channels, not computed on the replicas "
            "(hybridize solves it in this process)."
        )
    if len(layer.kernel_size) == 3 and tuple(layer.dilation_rate) != (1, 1, 1):
        return (
            f"Conv3D '{layer.name}' has dilation_rate={tuple(layer.dilation_rate)}: TF's "
            "volume patches have no dilation (hybridize solves it in this process)."
        )
    return None


def layer_row_fn(layer):
    """`(x, y) -> (rows, row_labels)` in TF ops for a Dense or one-group ConvND `layer`.

    The TF counterpart of `layers.geometry.iter_rows` (without `patches_per_image`
    sub-sampling): a Dense layer's rows are its input vectors (leading axes
    flattened), a convolution's rows its patches in `(kernel axes..., channel)` order,
    matching `patches.extract_patches` and the kernel layout (Conv1D as a Conv2D of
    height 1, `"causal"` as left zero-padding; Conv3D with `dilation_rate` 1).
    """
    import keras

    if isinstance(layer, keras.layers.Dense):

        def dense_rows(x, labels):
            x = tf.convert_to_tensor(x)
            d = x.shape[-1]
            per_sample = tf.math.reduce_prod(tf.shape(x)[1:-1])
            return tf.reshape(x, [-1, d]), tf.repeat(labels, per_sample)

        return dense_rows
    refusal = replica_rows_refusal(layer)
    if refusal is not None:
        raise ValueError(refusal)
    rank = len(layer.kernel_size)
    kernel, strides, rates = (list(layer.kernel_size), list(layer.strides),
                              list(layer.dilation_rate))
    causal = layer.padding == "causal"
    padding = "VALID" if causal else layer.padding.upper()
    channels_first = layer.data_format == "channels_first"

    def conv_rows(x, labels):
        x = tf.convert_to_tensor(x)
        if channels_first:
            x = tf.transpose(x, [0] + list(range(2, rank + 2)) + [1])
        if causal:  # Conv1D: (k - 1)·d zeros before the first step
            x = tf.pad(x, [[0, 0], [(kernel[0] - 1) * rates[0], 0], [0, 0]])
        if rank == 1:
            x = x[:, None]  # a Conv2D of height 1
        if rank == 3:
            patches = tf.extract_volume_patches(
                x, ksizes=[1] + kernel + [1], strides=[1] + strides + [1], padding=padding)
        else:
            patches = tf.image.extract_patches(
                x,
                sizes=[1] + [1] * (rank == 1) + kernel + [1],
                strides=[1] + [1] * (rank == 1) + strides + [1],
                rates=[1] + [1] * (rank == 1) + rates + [1],
                padding=padding,
            )
        d = patches.shape[-1]
        per_sample = tf.math.reduce_prod(tf.shape(patches)[1:-1])
        return tf.reshape(patches, [-1, d]), tf.repeat(labels, per_sample)

    return conv_rows


def _as_dataset(data, y, batch_size):
    """A batched `tf.data.Dataset` of `(x, y)` from a dataset or `(x, y)` arrays."""
    from keras_classpca.core.data_adapter import _is_unbatched

    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if y is not None:
        data = (data, y)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        x_arr, y_arr = np.asarray(data[0]), np.asarray(data[1])
        if len(x_arr) != len(y_arr):
            raise ValueError(
                f"`x` and `y` must have the same number of samples; received {len(x_arr)} "
                f"and {len(y_arr)}."
            )
        return tf.data.Dataset.from_tensor_slices((x_arr, y_arr)).batch(batch_size)
    if not isinstance(data, tf.data.Dataset):
        raise TypeError(
            "With a tf.distribute strategy, `data` must be a tf.data.Dataset of `(x, y)` "
            f"batches or `(x, y)` arrays; received {type(data).__name__}."
        )
    spec = data.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            "The dataset must yield `(x, y)` pairs (labels are required for class-PCA); "
            f"its element_spec is {spec}."
        )
    if len(spec) == 3:
        data = data.map(lambda x, y, w: (x, y))
        spec = data.element_spec
    if _is_unbatched(data):
        data = data.batch(batch_size)
    return data


# ---------------------------------------------------------------------- the pass
def class_statistics(
    data,
    n_classes,
    *,
    strategy=None,
    n_features=None,
    row_fn=None,
    y=None,
    batch_size=None,
    steps=None,
    _samples_out=None,
):
    """Per-class count, sum and second moment of `data`, summed over all replicas.

    Each replica accumulates its shard's statistics in float64 inside `strategy.run`;
    a single `strategy.reduce(SUM)` of one packed vector combines them. The result is
    the same on every worker.

    Args:
        data: a batched `tf.data.Dataset` of `(x, y)` (or `(x, y, w)`; weights are
            ignored), distributed with `strategy.experimental_distribute_dataset`
            (global batches); or `x` arrays with `y=`, or an `(x, y)` pair of arrays;
            or a function `input_context -> dataset` (per-replica batches), passed to
            `strategy.distribute_datasets_from_function` so that each worker reads
            only its own shard (`dataset.shard(input_context.num_input_pipelines,
            input_context.input_pipeline_id)`).
        n_classes: number of classes `K`; labels must lie in `[0, K)`.
        strategy: a `tf.distribute.Strategy`; `None` uses the one in scope
            (`tf.distribute.get_strategy()`, the default strategy outside any scope).
        n_features: row dimension `d`; inferred from the dataset when `row_fn` is None.
        row_fn: `(x, labels) -> (rows, row_labels)` in TF ops, e.g. `layer_row_fn(layer)`
            for conv patches, or a feature model followed by it. `labels` are int64.
        y: labels when `data` is the array `x`.
        batch_size: batch size for arrays and unbatched datasets (the global batch).
        steps: use at most this many global batches (not with a dataset function).

    Returns:
        `(count, total, outer)`: float64 numpy arrays `(K,)`, `(K, d)`, `(K, d, d)`.
    """
    n_classes, strategy, distributed, n_features = _distributed_input(
        data, n_classes, strategy, n_features, row_fn, y, batch_size, steps)
    # Every replica holds the K·d² float64 sums (and the reduce a packed copy): refuse
    # up front, with the number, what would not fit rather than fail in TF allocation.
    check_memory(n_classes, n_features)
    per_replica = _per_replica_statistics(strategy, distributed, n_classes, n_features, row_fn)
    # The one collective of the pass: a sum of one packed float64 vector.
    reduced = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    reduced = np.asarray(reduced.numpy(), dtype=np.float64)
    if _samples_out is not None:
        _samples_out.append(int(reduced[-1]))
    return _unpack(reduced, n_classes, n_features)


def _distributed_input(data, n_classes, strategy, n_features, row_fn, y, batch_size, steps):
    """`(n_classes, strategy, distributed dataset, n_features)`, validated."""
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"`n_classes` must be a positive integer; received {n_classes!r}.")
    n_classes = int(n_classes)
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    if callable(data) and not isinstance(data, tf.data.Dataset):
        if y is not None or steps is not None:
            raise ValueError("`y` and `steps` cannot be given with a dataset function.")
        dataset_fn = data

        def replica_dataset(input_context):
            return _as_dataset(dataset_fn(input_context), None, batch_size)

        spec_dataset = replica_dataset(tf.distribute.InputContext())
        distributed = strategy.distribute_datasets_from_function(replica_dataset)
    else:
        spec_dataset = _as_dataset(data, y, batch_size)
        if steps is not None:
            if not isinstance(steps, (int, np.integer)) or steps < 1:
                raise ValueError(f"`steps` must be a positive integer; received {steps!r}.")
            spec_dataset = spec_dataset.take(int(steps))
        elif int(spec_dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            from keras_classpca.core.data_adapter import never_ends_error

            raise never_ends_error(
                "pass `steps=` (how many global batches to read), or a finite dataset.")
        distributed = strategy.experimental_distribute_dataset(spec_dataset)
    x_rank = spec_dataset.element_spec[0].shape.rank
    if row_fn is None and x_rank is not None and x_rank != 2:
        raise ValueError(
            f"`x` batches must be 2-D (batch, n_features); the dataset yields rank {x_rank}. "
            "Flatten samples, or pass `row_fn` (e.g. `layer_row_fn(layer)` for conv patches)."
        )
    if n_features is None:
        if row_fn is not None:
            raise ValueError("`n_features` (the row dimension) is required with `row_fn`.")
        n_features = spec_dataset.element_spec[0].shape[-1]
        if n_features is None:
            raise ValueError("`n_features` could not be inferred from the dataset; pass it.")
    return n_classes, strategy, distributed, int(n_features)


def _batch_rows(x, y_batch, k, d, row_fn):
    """One batch in TF ops: `(rows (n, d) float64, int64 labels, valid, bad labels,
    samples)`; `valid` marks the rows whose labels lie in `[0, k)`."""
    labels = _labels_tensor(y_batch, k)
    n_samples = tf.cast(tf.shape(labels)[0], tf.float64)
    if row_fn is not None:
        x, labels = row_fn(x, labels)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    rows = tf.cast(tf.reshape(x, [-1, d]), tf.float64)
    valid = tf.logical_and(labels >= 0, labels < k)
    n_bad = tf.reduce_sum(tf.cast(tf.logical_not(valid), tf.float64))
    return rows, labels, valid, n_bad, n_samples


def _run_pass(strategy, distributed, zeros, step):
    """`step(state, x, y)` over every batch of `distributed` on every replica, from
    `zeros()`: each replica's state of its shard (`PerReplica`)."""

    @tf.function
    def accumulate(distributed):
        state = strategy.run(zeros)
        for x, y_batch in distributed:
            state = strategy.run(step, args=(state, x, y_batch))
        return state

    return accumulate(distributed)


def _per_replica_statistics(strategy, distributed, k, d, row_fn):
    """Each replica's packed statistics of its shard of `distributed` (`PerReplica`)."""
    size = k + k * d + k * d * d + 3  # counts, sums, second moments, rows, bad labels, samples

    def zeros():
        return tf.zeros([size], tf.float64)

    def step(acc, x, y_batch):
        rows, labels, valid, n_bad, n_samples = _batch_rows(x, y_batch, k, d, row_fn)
        n_rows = tf.cast(tf.shape(rows)[0], tf.float64)
        # Rows with out-of-range labels go to an extra partition that is dropped.
        part = tf.cast(tf.where(valid, labels, k), tf.int32)
        blocks = tf.dynamic_partition(rows, part, k + 1)[:k]
        counts = tf.stack([tf.cast(tf.shape(b)[0], tf.float64) for b in blocks])
        sums = tf.stack([tf.reduce_sum(b, axis=0) for b in blocks])
        outers = tf.stack([tf.matmul(b, b, transpose_a=True) for b in blocks])
        packed = tf.concat(
            [counts, tf.reshape(sums, [-1]), tf.reshape(outers, [-1]), [n_rows, n_bad, n_samples]],
            axis=0,
        )
        return acc + packed

    return _run_pass(strategy, distributed, zeros, step)


# ---------------------------------------------------------------------- sketches
def class_sketches(
    data,
    n_classes,
    sketch_size,
    *,
    strategy=None,
    n_features=None,
    row_fn=None,
    y=None,
    batch_size=None,
    steps=None,
    product_dtype=None,
    _samples_out=None,
):
    """`ClassSketch` of `data` over `strategy`: for label spaces whose exact statistics
    (K·d² float64 on every replica) do not fit.

    Each replica keeps a Frequent Directions sketch per class of its shard (`2ℓ`
    float32 rows per class, shrunk as `ClassSketch` shrinks them, with the exact
    counts, sums, traces and total second moment) inside `strategy.run`; one
    `strategy.gather` brings every replica's sketches to every worker, where they are
    merged in replica order (sketches are mergeable summaries), so every worker ends
    with the same sketch. What crosses the network is `R·K·(2ℓ·d + 2d + 4)` values plus
    `R·d²` for the total (R replicas), against `K·d²` for exact statistics.

    Arguments as in `class_statistics`; `sketch_size` is `ℓ`.
    """
    from keras_classpca.core.sketch import check_sketch_memory

    n_classes, strategy, distributed, n_features = _distributed_input(
        data, n_classes, strategy, n_features, row_fn, y, batch_size, steps)
    ell = int(sketch_size)
    check_sketch_memory(n_classes, n_features, ell)
    per_replica = _per_replica_sketches(strategy, distributed, n_classes, n_features, ell,
                                        row_fn)
    parts = _gather(strategy, per_replica)
    n_rows, n_bad, _ = parts["meta"].sum(axis=0)
    _check_pass(n_rows, n_bad, n_classes)
    if _samples_out is not None:
        _samples_out.append(int(parts["meta"][:, 2].sum()))
    return _merge_sketches(parts, ell, product_dtype)


def _merge_sketches(parts, ell, product_dtype):
    """One `ClassSketch` from the gathered per-replica arrays, merged in replica order."""
    from keras_classpca.core.sketch import ClassSketch

    merged = None
    for r in range(len(parts["meta"])):
        total = ClassStatistics.from_arrays(
            [parts["meta"][r, 0]], [parts["total_sum"][r]], [parts["total"][r]],
            product_dtype=product_dtype)
        if not len(total):
            continue  # a replica that saw no rows
        sketch = ClassSketch.from_parts(
            ell, counts=parts["count"][r], sums=parts["sums"][r], traces=parts["traces"][r],
            shifts=parts["shift"][r], rows=parts["rows"][r], filled=parts["filled"][r],
            shrinkage=parts["shrinkage"][r], total=total, product_dtype=product_dtype)
        merged = sketch if merged is None else merged.merge(sketch)
    return merged


def _gather(strategy, per_replica):
    """`{name: numpy array (replicas, ...)}`: every replica's state, on every worker."""
    stacked = strategy.run(  # "seen" is bookkeeping of the pass (and a bool: not gathered)
        lambda state: {k: v[None] for k, v in state.items() if k != "seen"},
        args=(per_replica,))
    return {k: np.asarray(strategy.gather(v, axis=0)) for k, v in stacked.items()}


def _tf_shrink(rows, ell):
    """`ClassSketch`'s shrink in TF ops: `rows` `(n, d)` float32, n > 2ℓ -> `(2ℓ, d)`
    float32 (ℓ sketch rows, zero padded) and δ."""
    from keras_classpca.core.sketch import first_shrunk

    rows = tf.cast(rows, tf.float64)
    n, d = tf.shape(rows)[0], tf.shape(rows)[1]
    first = first_shrunk(ell)

    def leading(matrix):
        values, vectors = tf.linalg.eigh((matrix + tf.transpose(matrix)) / 2.0)
        values = tf.maximum(tf.reverse(values, [0]), 0.0)
        vectors = tf.reverse(vectors, [1])
        pad = tf.maximum(ell + 1 - tf.shape(values)[0], 0)  # fewer values than ℓ + 1
        values = tf.concat([values, tf.zeros([pad], tf.float64)], 0)
        vectors = tf.pad(vectors, [[0, 0], [0, pad]])
        delta = values[ell]
        old = values[:ell]
        kept = tf.concat([old[:first], tf.maximum(old[first:] - delta, 0.0)], 0)
        return old, kept, vectors[:, :ell], delta

    def by_gram():  # n <= d: eigenvectors of rows rowsᵀ, mapped back through the rows
        old, kept, vectors, delta = leading(tf.matmul(rows, rows, transpose_b=True))
        scale = tf.where(old > 0, tf.sqrt(kept / tf.where(old > 0, old, 1.0)), 0.0)
        return tf.matmul(vectors * scale, rows, transpose_a=True), delta

    def by_covariance():  # n > d: eigenvectors of rowsᵀ rows are the new rows' directions
        _, kept, vectors, delta = leading(tf.matmul(rows, rows, transpose_a=True))
        return tf.transpose(vectors * tf.sqrt(kept)), delta

    new, delta = tf.cond(n <= d, by_gram, by_covariance)
    return tf.pad(tf.cast(new, tf.float32), [[0, ell], [0, 0]]), delta


def _per_replica_sketches(strategy, distributed, k, d, ell, row_fn):
    """Each replica's sketch state of its shard of `distributed` (dict of `PerReplica`)."""

    def zeros():
        return {
            "count": tf.zeros([k], tf.float64), "sums": tf.zeros([k, d], tf.float64),
            "traces": tf.zeros([k], tf.float64), "shift": tf.zeros([k, d], tf.float64),
            "seen": tf.zeros([k], tf.bool), "rows": tf.zeros([k, 2 * ell, d], tf.float32),
            "filled": tf.zeros([k], tf.int32), "shrinkage": tf.zeros([k], tf.float64),
            "total": tf.zeros([d, d], tf.float64), "total_sum": tf.zeros([d], tf.float64),
            "meta": tf.zeros([3], tf.float64),  # rows, bad labels, samples
        }

    def insert(state, labels, shifted):
        """Append each class's shifted rows to its buffer; shrink past 2ℓ rows."""
        order = tf.argsort(labels, stable=True)
        labels, shifted = tf.gather(labels, order), tf.gather(shifted, order)
        classes, _, sizes = tf.unique_with_counts(labels)
        starts = tf.cumsum(sizes, exclusive=True)

        def body(i, rows, filled, shrinkage):
            c = classes[i]
            new = tf.cast(shifted[starts[i] : starts[i] + sizes[i]], tf.float32)
            stacked = tf.concat([rows[c][: filled[c]], new], 0)
            n = tf.shape(stacked)[0]

            def keep():
                return tf.pad(stacked, [[0, 2 * ell - n], [0, 0]]), n, tf.constant(0.0, tf.float64)

            def shrink():
                kept, delta = _tf_shrink(stacked, ell)
                return kept, tf.constant(ell, tf.int32), delta

            block, count, delta = tf.cond(n <= 2 * ell, keep, shrink)
            rows = tf.tensor_scatter_nd_update(rows, [[c]], block[None])
            filled = tf.tensor_scatter_nd_update(filled, [[c]], [count])
            shrinkage = tf.tensor_scatter_nd_add(shrinkage, [[c]], [delta])
            return i + 1, rows, filled, shrinkage

        _, rows, filled, shrinkage = tf.while_loop(
            lambda i, *_: i < tf.size(classes), body,
            [tf.constant(0), state["rows"], state["filled"], state["shrinkage"]])
        return rows, filled, shrinkage

    def step(state, x, y_batch):
        rows, labels, valid, n_bad, n_samples = _batch_rows(x, y_batch, k, d, row_fn)
        rows = tf.boolean_mask(rows, valid)
        labels = tf.cast(tf.boolean_mask(labels, valid), tf.int32)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, tf.float64), labels, k)
        sums = tf.math.unsorted_segment_sum(rows, labels, k)
        # A class's reference point: the mean of its rows in the first batch it has.
        first = tf.logical_and(counts > 0, tf.logical_not(state["seen"]))
        shift = tf.where(first[:, None], sums / tf.maximum(counts, 1.0)[:, None],
                         state["shift"])
        shifted = rows - tf.gather(shift, labels)
        new_rows, filled, shrinkage = insert(state, labels, shifted)
        return {
            "count": state["count"] + counts,
            "sums": state["sums"] + tf.math.unsorted_segment_sum(shifted, labels, k),
            "traces": state["traces"] + tf.math.unsorted_segment_sum(
                tf.reduce_sum(shifted * shifted, axis=1), labels, k),
            "shift": shift, "seen": tf.logical_or(state["seen"], counts > 0),
            "rows": new_rows, "filled": filled, "shrinkage": shrinkage,
            "total": state["total"] + tf.matmul(rows, rows, transpose_a=True),
            "total_sum": state["total_sum"] + tf.reduce_sum(rows, axis=0),
            "meta": state["meta"] + tf.stack(
                [tf.cast(tf.shape(rows)[0], tf.float64), n_bad, n_samples]),
        }

    return _run_pass(strategy, distributed, zeros, step)


def _unpack(reduced, k, d):
    """`(count, total, outer)` from a packed vector; raises for bad labels / no data."""
    count = reduced[:k]
    total = reduced[k : k + k * d].reshape(k, d)
    outer = reduced[k + k * d : k + k * d + k * d * d].reshape(k, d, d)
    _check_pass(reduced[-3], reduced[-2], k)
    return count, total, outer


def _check_pass(n_rows, n_bad, k):
    """Raise for labels out of range or a pass that saw no rows."""
    if n_bad:
        raise ValueError(
            f"`y` holds {int(n_bad)} label(s) out of range for n_classes={k} "
            f"(labels must lie in [0, {k - 1}])."
        )
    if n_rows == 0:
        raise ValueError("`data` is empty: no samples to fit ClassPCA on.")


def fit_distributed(
    data,
    n_components=None,
    *,
    n_classes,
    strategy=None,
    n_features=None,
    row_fn=None,
    y=None,
    batch_size=None,
    steps=None,
    **class_pca_params,
):
    """`ClassPCA(n_components, ...).fit(data)` with the pass spread over a strategy.

    The statistics are accumulated per replica and all-reduced once
    (`class_statistics`); the returned `ClassPCA` holds the reduced statistics and is
    solved once on the caller (on every worker, identically). `n_classes` is also
    passed to `ClassPCA` (every class must have samples). Other arguments as in
    `class_statistics` and `ClassPCA`.
    """
    ClassPCA(n_components, n_classes=n_classes, **class_pca_params).check_params()  # validate first
    count, total, outer = class_statistics(
        data,
        n_classes,
        strategy=strategy,
        n_features=n_features,
        row_fn=row_fn,
        y=y,
        batch_size=batch_size,
        steps=steps,
    )
    pca = class_pca_from_statistics(
        count, total, outer, n_components, n_classes=n_classes, **class_pca_params
    )
    if n_components is not None or pca.allocation == "adaptive":
        pca.solve()  # surface errors (too few samples, ...) now, as `fit` does
    return pca


# ---------------------------------------------------------------------- wiring helpers
# What `ClassPCA.fit(..., statistics_pass=StrategyPass(strategy))`,
# `ClassPCA*.adapt(..., strategy=)` and
# `hybridize(..., strategy=)` delegate to (see docs/distributed.md).
class StrategyPass:
    """The statistics pass over a `tf.distribute` strategy, handed to `ClassPCA.fit`.

    `ClassPCA(...).fit(data, statistics_pass=StrategyPass(strategy))` accumulates the
    class statistics on every replica and all-reduces them once (`class_statistics`);
    the core never imports this module. Called as the core calls it, it returns a
    `ClassStatistics`; `samples` then holds the samples (not rows) the pass read.

    Args:
        strategy: a `tf.distribute.Strategy`; None = the one in scope.
        row_fn: `(x, labels) -> (rows, row_labels)` in TF ops (`layer_row_fn(layer)`).
        n_features: the row dimension, required with `row_fn`.
    """

    def __init__(self, strategy=None, *, row_fn=None, n_features=None):
        self.strategy = strategy
        self.row_fn = row_fn
        self.n_features = n_features
        self.samples = None

    def __call__(self, data, y=None, *, n_classes, batch_size=None, steps=None, product_dtype=None,
                 sketch_size=None):
        """`sketch_size`: None (exact statistics), `ℓ`, or a callable `n_features -> None
        or ℓ` (what `ClassPCA.fit` passes: its `sketch_size` rule, decided once the row
        dimension is known). Returns `ClassStatistics` or a `ClassSketch`."""
        if n_classes is None:
            raise ValueError(
                "`n_classes` is required to accumulate class statistics over a tf.distribute "
                "strategy (one slot per class on every replica)."
            )
        samples = []
        options = dict(strategy=self.strategy, row_fn=self.row_fn, y=y, batch_size=batch_size,
                       steps=steps, _samples_out=samples)
        n_features = self.n_features
        if callable(sketch_size):
            if n_features is None:
                spec = _input_spec(data, y, batch_size)
                n_features = spec.shape[-1] if spec.shape.rank == 2 else None
            sketch_size = sketch_size(n_features) if n_features is not None else None
        if sketch_size is None:
            count, total, outer = class_statistics(data, n_classes, n_features=n_features,
                                                   **options)
            result = ClassStatistics.from_arrays(count, total, outer,
                                                 product_dtype=product_dtype)
        else:
            result = class_sketches(data, n_classes, sketch_size, n_features=n_features,
                                    product_dtype=product_dtype, **options)
        self.samples = samples[0]
        return result


def fit_with_strategy(
    class_pca,
    data,
    y=None,
    *,
    strategy,
    batch_size=None,
    steps=None,
    row_fn=None,
    n_features=None,
    _samples_out=None,
):
    """Refit `class_pca` from scratch on `data` over `strategy`; return it.

    `class_pca.fit(data, y, statistics_pass=StrategyPass(strategy, ...))`: same contract
    as `ClassPCA.fit` (on any error the previous state is kept). Needs
    `class_pca.n_classes` (the statistics have one slot per class).
    """
    statistics_pass = StrategyPass(strategy, row_fn=row_fn, n_features=n_features)
    class_pca.fit(data, y, batch_size=batch_size, steps=steps, statistics_pass=statistics_pass)
    if _samples_out is not None:
        _samples_out.append(statistics_pass.samples)
    return class_pca


def _input_spec(data, y, batch_size):
    if callable(data) and not isinstance(data, tf.data.Dataset):
        return _as_dataset(data(tf.distribute.InputContext()), None, batch_size).element_spec[0]
    return _as_dataset(data, y, batch_size).element_spec[0]


def _row_dimension(layer, input_shape):
    """Features of one row of `layer` for inputs of `input_shape` (batch axis first)."""
    from keras_classpca.layers.geometry import CONVOLUTIONS

    if isinstance(layer, CONVOLUTIONS):
        channels = input_shape[1] if layer.data_format == "channels_first" else input_shape[-1]
        return int(np.prod(layer.kernel_size)) * int(channels)
    return int(input_shape[-1])


LayerPass = collections.namedtuple("LayerPass", ["class_pca", "samples", "rows"])


def layer_class_pca(
    layer, data, *, strategy, feature_model=None, batch_size=None, steps=None, **class_pca_options
):
    """Class statistics of `layer`'s input rows over `strategy` -> `LayerPass`.

    `data` feeds `feature_model` (or `layer` directly when it is None); `feature_model`
    runs inside `strategy.run` on each replica. The `ClassPCA` has `n_components` =
    the layer's units / filters and is solved once the statistics are reduced;
    `samples` and `rows` are the totals over all replicas.
    """
    from keras_classpca.layers.geometry import output_size

    if feature_model is not None:
        require_tensorflow_backend("A feature model")
    rows_of = layer_row_fn(layer)
    if feature_model is None:
        input_shape = tuple(_input_spec(data, None, batch_size).shape)
        row_fn = rows_of
    else:
        input_shape = tuple(feature_model.outputs[0].shape)

        def row_fn(x, labels):
            return rows_of(feature_model(x, training=False), labels)

    class_pca = ClassPCA(output_size(layer), **class_pca_options)
    samples = []
    fit_with_strategy(
        class_pca,
        data,
        strategy=strategy,
        batch_size=batch_size,
        steps=steps,
        row_fn=row_fn,
        n_features=_row_dimension(layer, input_shape),
        _samples_out=samples,
    )
    return LayerPass(class_pca, samples[0], int(class_pca.n_samples_seen_.sum()))


def hybridize_layer_pass(passes, layer, feature_model, *, strategy, batch_size, class_pca_options):
    """The statistics pass `hybridize(..., strategy=)` makes for one layer -> `LayerPass`.

    `passes` is hybridize's `DataPasses` (`hybrid/passes.py`): arrays (already
    sub-sampled to `samples`) or a `tf.data.Dataset`; other sources cannot be
    distributed.
    """
    data = passes.data
    if isinstance(data, tf.data.Dataset):
        if passes.samples is not None:
            data = (
                data.unbatch().take(passes.samples)
                if _is_batched(data)
                else data.take(passes.samples)
            )
    elif not isinstance(data, tuple):
        raise TypeError(
            "With a tf.distribute `strategy`, hybridize needs `(x, y)` arrays or a "
            f"tf.data.Dataset; received {type(data).__name__}."
        )
    if class_pca_options.get("n_classes") is None:
        # Every replica holds one slot per class: the count the model or labels give.
        n_classes = passes.expected_classes()
        if n_classes is None:
            raise ValueError(
                "hybridize(strategy=...) needs the number of classes up front (every "
                "replica holds one slot per class), and neither a softmax output nor "
                "one-hot labels give it: pass `n_classes=`."
            )
        class_pca_options = dict(class_pca_options, n_classes=n_classes)
    return layer_class_pca(
        layer,
        data,
        strategy=strategy,
        feature_model=feature_model,
        batch_size=batch_size,
        **class_pca_options,
    )


def _is_batched(dataset):
    from keras_classpca.core.data_adapter import _is_unbatched

    spec = dataset.element_spec
    return isinstance(spec, tuple) and len(spec) >= 2 and not _is_unbatched(dataset)


def adapt_with_strategy(layer, data, *, strategy, batch_size=None, steps=None):
    """`layer.adapt(data)` for a `ClassPCADense` / `ClassPCAConv1D/2D/3D` over
    `strategy`."""
    if getattr(layer, "patches_per_image", None) is not None:
        raise NotImplementedError(
            "`patches_per_image` sub-sampling is not available with a tf.distribute strategy."
        )
    if getattr(layer, "n_classes", None) is None:
        raise ValueError(
            f"{type(layer).__name__}.adapt(strategy=...) needs the layer made with "
            "`n_classes=` (every replica holds one slot per class)."
        )
    class_pca = layer_class_pca(
        layer,
        data,
        strategy=strategy,
        batch_size=batch_size,
        steps=steps,
        **layer._solve_options(),
    ).class_pca
    input_shape = (None,) + tuple(_input_spec(data, None, batch_size).shape[1:])
    layer.set_class_pca(class_pca, input_shape)
    return layer


def local_tf_configs(n_workers):
    """`TF_CONFIG` values for a cluster of `n_workers` processes on this machine.

    Each worker gets a free port on 127.0.0.1 (asked of the OS, then released), so a
    `MultiWorkerMirroredStrategy` can be tried locally before a real cluster: start
    one process per returned value with it in its `TF_CONFIG` environment variable.
    """
    import json
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n_workers)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        for index in range(n_workers)
    ]
