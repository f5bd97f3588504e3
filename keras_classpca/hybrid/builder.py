"""`hybridize`: compute the bottom layers of an ordinary Keras model from data.

The model is walked from its input (`model_chain.read_chain`). Each solved layer gets
the class-PCA of *its own input*: the data is streamed batch by batch through the
already-solved prefix (never all activations in memory); BatchNormalization layers
after a solved layer get their moving statistics from its solved output. Solved
layers are then frozen, and the user compiles and fits the model as usual.
"""

import dataclasses
import inspect
import time

import keras
import numpy as np

from keras_classpca.core.class_pca import ClassPCA, labels_to_int
from keras_classpca.core.data_adapter import is_infinite, iter_batches
from keras_classpca.hybrid.cache import data_fingerprint, layer_signature, prefix_key
from keras_classpca.hybrid.graph import (
    ensure_built,
    has_layer_graph,
    no_graph_error,
    predict_batch,
    read_chain,
)
from keras_classpca.hybrid.probe import RidgeProbe, reduce_features
from keras_classpca.hybrid.report import HybridReport, SolvedLayer
from keras_classpca.hybrid.training import compile_like
from keras_classpca.layers.geometry import assign_solution, iter_rows, output_size

CLASS_PCA_OPTIONS = tuple(
    name for name in inspect.signature(ClassPCA).parameters if name != "n_components"
)
# `cutoff="auto"`: another layer is solved only if a linear probe on the features
# after it beats the features before it by this much (measured: docs/cutoff.md).
AUTO_MIN_GAIN = 0.02
PROBE_HOLDOUT_EVERY = 5  # every 5th streamed sample is held out to score the probe
PROBE_MAX_SAMPLES = 10_000


class _DataPasses:
    """Re-iterable `(x, labels)` batches of the (sub-sampled) training data."""

    def __init__(self, data, samples, batch_size, seed, n_classes):
        self.n_classes = n_classes
        self.batch_size = batch_size
        self.samples = samples
        self.passes = 0
        arrays = None
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
            hasattr(part, "shape") for part in data[:2]
        ):
            arrays = (np.asarray(data[0]), np.asarray(data[1]))
        if arrays is not None and samples is not None and samples < len(arrays[0]):
            if len(arrays[0]) != len(arrays[1]):
                raise ValueError(
                    f"`data` must hold x and y with the same number of samples; received "
                    f"{len(arrays[0])} and {len(arrays[1])}."
                )
            # A random subset, not the first rows: data sets are often sorted by class.
            keep = np.sort(np.random.default_rng(seed).choice(len(arrays[0]), samples, replace=False))
            arrays = (arrays[0][keep], arrays[1][keep])
        self.data = arrays if arrays is not None else data
        self.total = len(arrays[0]) if arrays is not None else samples
        self.one_shot = arrays is None and iter(data) is data if hasattr(data, "__iter__") else False
        self._peeked = None  # (first batch, rest of the pass) of a one-shot iterator
        self.seen = None  # samples in the last complete pass

    def peek(self):
        """The first batch, without spending a pass: a one-shot iterator keeps it."""
        batches = iter(self)
        first = next(batches, None)
        if first is None:
            raise ValueError("`data` is empty: no samples to solve the layers on.")
        self.passes = 0
        if self.one_shot:
            self._peeked = (first, batches)
        return first

    def __iter__(self):
        if self._peeked is not None:
            first, rest = self._peeked
            self._peeked = None
            self.passes = 1
            yield first
            yield from rest
            return
        if self.passes and self.one_shot:
            raise TypeError(
                "`data` is a one-shot iterator but hybridize needs one pass per solved "
                "layer: pass arrays, a tf.data.Dataset, a keras PyDataset, or a callable "
                "returning a fresh generator."
            )
        self.passes += 1
        source = self.data() if callable(self.data) else self.data
        if self.samples is None and is_infinite(source):
            raise infinite_data_error()
        for x, y in iter_batches(source, batch_size=self.batch_size, max_samples=self.samples):
            yield x, labels_to_int(y, self.n_classes)


def _check_cutoff(cutoff):
    if isinstance(cutoff, str) and cutoff == "auto":
        return
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)) or cutoff < 0:
        raise ValueError(
            f"`cutoff` must be 'auto' or a non-negative integer (layers to solve); received {cutoff!r}."
        )


def _positive_int(value, name):
    """`value` as an int if it is a positive integer (NumPy integers too) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer or None; received {value!r}.")
    return int(value)


def check_settings(
    samples=None, batch_size=None, seed=0, patches_per_image=None, verbose=1, **class_pca_options
):
    """Validate `hybridize`'s settings and class-PCA options before any work.

    Returns `(samples, batch_size, patches_per_image)` as Python ints (or None).
    Shared by `hybridize` and `HybridHyperModel`, which checks its fixed settings
    at construction.
    """
    unknown = sorted(set(class_pca_options) - set(CLASS_PCA_OPTIONS))
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown} for hybridize; ClassPCA options are "
            f"{list(CLASS_PCA_OPTIONS)}."
        )
    ClassPCA(1, **class_pca_options)  # validates option values up front
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(f"`seed` must be a non-negative integer or None; received {seed!r}.")
    if verbose not in (0, 1, 2):  # True and False too
        raise ValueError(f"`verbose` must be 0, 1 or 2; received {verbose!r}.")
    return (
        _positive_int(samples, "samples"),
        _positive_int(batch_size, "batch_size"),
        _positive_int(patches_per_image, "patches_per_image"),
    )


def infinite_data_error():
    return ValueError(
        "`data` never ends (a tf.data.Dataset repeated without a count): pass "
        "`samples=` (how many samples to solve the layers on), or a finite dataset."
    )


def _planned_passes(chain, target, auto):
    """Passes over the data a solve of `target` layers makes (without cache hits)."""
    ends = chain.candidates[1:] + [len(chain.layers)]

    def batchnorms(indices):
        return sum(isinstance(chain.layers[i], keras.layers.BatchNormalization) for i in indices)

    count = batchnorms(range(chain.candidates[0]))
    for j in range(target):
        count += 1 + batchnorms(range(chain.candidates[j] + 1, ends[j]))
    return count + (1 if auto else 0)


class _ModelState:
    """Weights and `trainable` flags of a model's layers, to put back after a failure."""

    def __init__(self, model):
        self.layers = [(layer, layer.get_weights(), layer.trainable) for layer in model.layers]

    def restore(self):
        for layer, weights, trainable in self.layers:
            if weights:
                layer.set_weights(weights)
            if layer.trainable != trainable:
                layer.trainable = trainable


def _stream(passes, feature_model, consumers, progress_label, verbose):
    """One pass: features of every batch go to every consumer `(h, labels, offset)`."""
    progress = keras.utils.Progbar(passes.total, verbose=verbose, unit_name="sample") if verbose else None
    if progress is not None:
        print(progress_label)
    offset, first_size = 0, None
    for x, labels in passes:
        first_size = first_size or len(x)
        h = predict_batch(feature_model, x, first_size)
        for consume in consumers:
            consume(h, labels, offset)
        offset += len(x)
        if progress is not None:
            progress.add(len(x))
    if offset == 0:
        raise ValueError("`data` is empty: no samples to solve the layers on.")
    passes.seen = offset
    return offset


class _StatisticsConsumer:
    """Feeds a layer's input rows to a ClassPCA."""

    def __init__(self, layer, options, seed, row_options):
        self.layer = layer
        self.class_pca = ClassPCA(output_size(layer), **options)
        self.rng = np.random.default_rng(seed)
        self.row_options = row_options
        self.rows = 0

    def __call__(self, h, labels, offset):
        for rows, row_labels in iter_rows(self.layer, h, labels, rng=self.rng, **self.row_options):
            self.class_pca.partial_fit(rows, row_labels)
            self.rows += len(rows)


class _ProbeConsumer:
    """Fits a ridge probe on 4/5 of the samples and scores it on the rest."""

    def __init__(self):
        self.train = []
        self.held_out = []

    def __call__(self, h, labels, offset):
        if offset >= PROBE_MAX_SAMPLES:
            return
        h, labels = h[: PROBE_MAX_SAMPLES - offset], labels[: PROBE_MAX_SAMPLES - offset]
        features = reduce_features(h)
        held_out = (offset + np.arange(len(h))) % PROBE_HOLDOUT_EVERY == 0
        self.train.append((features[~held_out], labels[~held_out]))
        self.held_out.append((features[held_out], labels[held_out]))

    def accuracy(self):
        labels = np.concatenate([y for _, y in self.train])
        probe = RidgeProbe(int(labels.max()) + 1 if labels.size else 1)
        for features, y in self.train:
            if len(y):
                probe.partial_fit(features, y)
        correct = sum(probe.score(f, y) * len(y) for f, y in self.held_out if len(y))
        total = sum(len(y) for _, y in self.held_out)
        return correct / max(total, 1)


class _MomentsConsumer:
    """Per-channel mean and variance of a BatchNormalization layer's input."""

    def __init__(self, layer):
        self.layer = layer
        self.count = 0
        self.total = None
        self.squares = None

    def __call__(self, h, labels, offset):
        axes = self.layer.axis if isinstance(self.layer.axis, (list, tuple)) else [self.layer.axis]
        axes = [a % h.ndim for a in axes]
        reduce = tuple(a for a in range(h.ndim) if a not in axes)
        h = h.astype(np.float64)
        if self.total is None:
            self.total = np.zeros(h.sum(axis=reduce).shape)
            self.squares = np.zeros_like(self.total)
        self.total += h.sum(axis=reduce)
        self.squares += (h * h).sum(axis=reduce)
        self.count += int(np.prod([h.shape[a] for a in reduce]))

    def assign(self):
        mean = self.total / self.count
        variance = np.maximum(self.squares / self.count - mean**2, 0.0)
        self.layer.moving_mean.assign(mean.reshape(self.layer.moving_mean.shape))
        self.layer.moving_variance.assign(variance.reshape(self.layer.moving_variance.shape))


class _CacheKeys:
    """Keys of `solve_cache` entries: one per candidate prefix (see SolveCache)."""

    def __init__(self, cache, fingerprint, passes, model, chain, ends, settings):
        self.cache = cache
        if cache is None:
            return
        if fingerprint is None:
            if not isinstance(passes.data, tuple):
                raise ValueError(
                    "`data_fingerprint` is required with `solve_cache` when `data` is not "
                    "arrays (a string that changes whenever the data changes)."
                )
            fingerprint = data_fingerprint(*passes.data)
        self.base = dict(settings, fingerprint=fingerprint,
                         input_shape=list(model.inputs[0].shape[1:]))
        self.chain, self.ends = chain, ends

    def _key(self, j):
        end = self.ends[j] if j < len(self.ends) else len(self.chain.layers)
        layers = [layer_signature(layer) for layer in self.chain.layers[:end]]
        return prefix_key(layers=layers, probe_only=j >= len(self.ends), **self.base)

    def lookup(self, j, need_probe):
        if self.cache is None:
            return None
        entry = self.cache.get(self._key(j))
        if entry is None or (need_probe and entry["record"].get("probe_accuracy") is None):
            return None
        if entry["record"].get("solved") is None and j < len(self.ends):
            return None  # only the probe was stored: the layer itself was never solved
        return entry

    def store(self, j, weights, solved, probe_accuracy):
        if self.cache is None:
            return
        record = {"solved": None if solved is None else dataclasses.asdict(solved),
                  "probe_accuracy": probe_accuracy}
        self.cache.put(self._key(j), {"weights": weights, "record": record})


def frozen_layer_names(chain, cutoff):
    """Names of the layers `hybridize(..., cutoff)` freezes in a model's chain.

    The `cutoff` solved layers and every BatchNormalization below the last of them
    (they feed solved layers, so they must not move); BatchNormalization after the
    last solved layer belongs to the trained top.
    """
    if cutoff == 0:
        return []
    last = chain.candidates[cutoff - 1]
    return [
        layer.name
        for i, layer in enumerate(chain.layers[: last + 1])
        if i in chain.candidates or isinstance(layer, keras.layers.BatchNormalization)
    ]


def _captured_variance(class_pca):
    """Share of the pooled input variance captured by the span of the components."""
    basis, _ = np.linalg.qr(class_pca.components_)
    covariance = class_pca.covariance_
    total = np.trace(covariance)
    return float(np.trace(basis.T @ covariance @ basis) / total) if total > 0 else 0.0


def hybridize(
    model,
    data,
    cutoff="auto",
    *,
    samples=None,
    freeze=True,
    verbose=1,
    batch_size=256,
    seed=0,
    patches_per_image=None,
    solve_cache=None,
    data_fingerprint=None,
    strategy=None,
    **class_pca_options,
):
    """Solve the bottom layers of `model` with class-PCA and freeze them.

    Works on ordinary `Sequential` and functional models built from standard layers:
    Dense and Conv2D layers are solved, activations, pooling, Flatten, Reshape and
    Dropout (inference mode) are passed through, BatchNormalization layers following
    a solved layer get their moving mean and variance from its solved output. The walk
    stops at the first layer it cannot pass and never solves the model's last layer
    with weights; `report.stopped_because` says why it stopped.

    Call it before `compile()`: Keras fixes the trainable variables at compile time.
    A model that was already compiled (or fitted) is compiled again after the freeze,
    with its own compile arguments and its optimizer (a fresh copy of it if it already
    holds state for the unfrozen variables; `report.recompiled`), so the solved layers
    do not go on training.

    Either it completes, or it raises and leaves the model as it was: weights,
    BatchNormalization statistics and `trainable` flags are put back on any error.

    Args:
        model: a built single-input, single-output Keras model (an unbuilt Sequential
            is built from the data).
        data: `(x, y)` arrays, a `tf.data.Dataset` of `(x, y)` batches, a keras
            `PyDataset`, or a callable returning a fresh iterable of `(x, y)` batches
            (one pass is made per solved layer).
        cutoff: the number of Dense/Conv2D layers to solve from the bottom (0 leaves
            the model untouched), or `"auto"`: solve layer after layer while a ridge
            probe on the features after the new layer gains at least 2 points of
            held-out accuracy over the features before it (docs/cutoff.md).
        samples: use at most this many training samples (a random subset of arrays;
            the first `samples` of a dataset). The paper: a fraction suffices.
            Required for a dataset that never ends (`ds.repeat()`).
        freeze: set solved layers (and BatchNormalization between them) to
            `trainable=False`.
        verbose: 1 shows a progress bar per pass over the data.
        batch_size: batch size for arrays.
        seed: seed for the sub-sampling of `samples` and of patches.
        patches_per_image: for Conv2D layers, use this many random patches of each
            image instead of all of them (fewer rows, faster solves).
        solve_cache: a `SolveCache`: solved layers are looked up there first and
            stored after solving, keyed by data, prefix architecture and options.
        data_fingerprint: a string identifying the data for `solve_cache` (computed
            from arrays when omitted; required for datasets and generators).
        strategy: a `tf.distribute.Strategy`: each solved layer's class statistics
            are accumulated per replica (the solved prefix runs inside
            `strategy.run`) and all-reduced once (needs `n_classes`; no
            `patches_per_image`). BatchNormalization moments and the `"auto"` probe
            still come from this process's `data`, so every worker must pass the
            same `data` (see docs/distributed.md). TensorFlow backend only.
        **class_pca_options: `ClassPCA` options for every solved layer (`center`,
            `allocation`, `scaling`, `offset`, `variance_share`, `dedup_threshold`,
            `n_classes`).

    Returns:
        A `HybridReport`.

    Example:

    >>> import numpy as np, keras
    >>> x = np.random.default_rng(0).normal(size=(512, 16)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> report = hybridize(model, (x, y), cutoff=1, verbose=0)
    >>> report.cutoff, model.layers[0].trainable
    (1, False)
    """
    start = time.perf_counter()
    _check_cutoff(cutoff)
    samples, batch_size, patches_per_image = check_settings(
        samples, batch_size, seed, patches_per_image, verbose, **class_pca_options
    )
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not has_layer_graph(model):
        raise no_graph_error(model)
    if samples is None and is_infinite(data):
        raise infinite_data_error()
    if strategy is not None:
        from keras_classpca.distributed import require_tensorflow_backend

        require_tensorflow_backend("`hybridize`")
        if patches_per_image is not None:
            raise ValueError("`patches_per_image` is not available with a tf.distribute `strategy`.")

    state = _ModelState(model)  # an unbuilt model has no weights yet: flags only
    try:
        return _solve_and_freeze(
            model, data, cutoff, start=start, samples=samples, freeze=freeze, verbose=verbose,
            batch_size=batch_size, seed=seed, patches_per_image=patches_per_image,
            solve_cache=solve_cache, data_fingerprint=data_fingerprint, strategy=strategy,
            class_pca_options=class_pca_options,
        )
    except BaseException:
        # Nothing half-done: a failure (or an interrupt) leaves the model as it was.
        state.restore()
        raise


def _solve_and_freeze(model, data, cutoff, *, start, samples, freeze, verbose, batch_size, seed,
                      patches_per_image, solve_cache, data_fingerprint, strategy,
                      class_pca_options):
    """`hybridize` after its arguments were checked; may leave the model half-done."""
    passes = _DataPasses(data, samples, batch_size, seed, class_pca_options.get("n_classes"))
    if not model.built or not getattr(model, "inputs", None):
        first_x, _ = passes.peek()
        ensure_built(model, first_x.shape[1:])
    chain = read_chain(model)
    report = HybridReport(
        cutoff=0,
        cutoff_mode="auto" if cutoff == "auto" else "fixed",
        candidates=[chain.layers[i].name for i in chain.candidates],
        stopped_because=chain.stop_reason,
    )
    if cutoff != "auto" and cutoff > len(chain.candidates):
        raise ValueError(
            f"cutoff={cutoff} but only {len(chain.candidates)} layer(s) of this model can be "
            f"solved ({', '.join(report.candidates) or 'none'}); the prefix ends because "
            f"{chain.stop_reason}"
        )
    if cutoff == 0 or not chain.candidates:
        report.seconds = time.perf_counter() - start
        return report
    auto = cutoff == "auto"
    needed = _planned_passes(chain, len(chain.candidates) if auto else cutoff, auto)
    if passes.one_shot and needed > 1:
        raise TypeError(
            f"`data` is a one-shot iterator but hybridize needs {needed} passes over it here "
            "(one per solved layer and per BatchNormalization to adapt"
            + (", one for the 'auto' probe" if auto else "")
            + "): pass arrays, a tf.data.Dataset, a keras PyDataset, or a callable "
            "returning a fresh generator."
        )

    target = len(chain.candidates) if auto else cutoff
    row_options = {"patches_per_image": patches_per_image}
    probe_accuracy = []
    ends = chain.candidates[1:] + [len(chain.layers)]
    saved = {}  # weights before the latest solve, to undo it if the probe rejects it
    keys = _CacheKeys(solve_cache, data_fingerprint, passes, model, chain, ends, {
        "samples": samples, "seed": seed, "batch_size": batch_size,
        "patches_per_image": patches_per_image, "options": class_pca_options,
    })

    def probe_rejects_last():
        return auto and len(probe_accuracy) > 1 and (
            probe_accuracy[-1] < probe_accuracy[-2] + AUTO_MIN_GAIN
        )

    def undo_last():
        for l in chain.layers:
            if l.name in saved:
                l.set_weights(saved[l.name])
        report.layers.pop()

    def adapt_batchnorms(indices):
        names = []
        for i in indices:
            if isinstance(chain.layers[i], keras.layers.BatchNormalization):
                moments = _MomentsConsumer(chain.layers[i])
                _stream(passes, chain.feature_model(chain.inputs[i]), [moments],
                        f"Adapting BatchNormalization '{chain.layers[i].name}'", verbose)
                moments.assign()
                names.append(chain.layers[i].name)
        return names

    for j in range(target):
        position = chain.candidates[j]
        layer = chain.layers[position]
        # The block of layers this solve sets: the layer, what follows it up to the next
        # candidate, and for the first one also what precedes it (a BatchNormalization
        # on the raw input is adapted to the data like the ones after solved layers).
        block_start = 0 if j == 0 else position
        block = chain.layers[block_start : ends[j]]
        batchnorms = [l.name for l in block if isinstance(l, keras.layers.BatchNormalization)]
        cached = keys.lookup(j, need_probe=auto)
        if cached is not None:
            if auto:
                probe_accuracy.append(cached["record"]["probe_accuracy"])
                if probe_rejects_last():
                    undo_last()
                    break
            saved = {l.name: l.get_weights() for l in block}
            for l, weights in zip(block, cached["weights"]):
                l.set_weights(weights)
            # Same architecture, possibly other layer names (a new model per trial).
            record = dict(cached["record"]["solved"], name=layer.name, adapted_batchnorms=batchnorms)
            report.layers.append(SolvedLayer(**record))
            continue
        layer_start = time.perf_counter()
        pending_saved = {l.name: l.get_weights() for l in block}
        leading = adapt_batchnorms(range(block_start, position))
        # One pass feeds this layer's statistics and, for "auto", the probe of the
        # features the previous solved layer produced (they are this layer's input).
        statistics = _StatisticsConsumer(layer, class_pca_options, seed, row_options)
        probe = _ProbeConsumer() if auto else None
        consumers = [statistics] + ([probe] if probe else [])
        if strategy is not None:
            from keras_classpca.distributed import hybridize_layer_pass

            distributed = hybridize_layer_pass(
                passes, layer, chain.feature_model(chain.inputs[position]),
                strategy=strategy, batch_size=batch_size, class_pca_options=class_pca_options,
            )
            statistics.class_pca, statistics.rows = distributed.class_pca, distributed.rows
            consumers = consumers[1:]  # the probe, if any, still streams locally
        if consumers:
            seen = _stream(
                passes,
                chain.feature_model(chain.inputs[position]),
                consumers,
                f"Solving {type(layer).__name__} '{layer.name}' ({j + 1}/{target})",
                verbose,
            )
        else:  # the distributed pass already streamed every sample
            seen = distributed.samples
        if probe is not None:
            probe_accuracy.append(probe.accuracy())
            if probe_rejects_last():
                undo_last()
                break
        try:
            solution = statistics.class_pca.solve()
        except ValueError as error:
            if not auto:
                raise
            # "auto" stops below a layer the data cannot solve (e.g. too few samples
            # per class for its units) instead of failing the whole call.
            report.stopped_because = f"{type(layer).__name__} '{layer.name}' cannot be solved from this data: {error}"
            for l in block:
                l.set_weights(pending_saved[l.name])
            break
        saved = pending_saved
        assign_solution(layer, solution.kernel, solution.bias)
        solved = SolvedLayer(
            name=layer.name,
            kind=type(layer).__name__,
            samples=seen,
            rows=statistics.rows,
            seconds=0.0,
            explained_variance=_captured_variance(statistics.class_pca),
            n_components=solution.kernel.shape[1],
        )
        solved.adapted_batchnorms = leading + adapt_batchnorms(range(position + 1, ends[j]))
        solved.seconds = time.perf_counter() - layer_start
        report.layers.append(solved)
        keys.store(j, [l.get_weights() for l in block], solved, probe_accuracy[-1] if auto else None)
    else:
        if auto:
            # The features after the last candidate: what the trained top would see.
            cached = keys.lookup(target, need_probe=True)
            if cached is not None:
                probe_accuracy.append(cached["record"]["probe_accuracy"])
            else:
                probe = _ProbeConsumer()
                _stream(passes, chain.feature_model(chain.outputs[-1]), [probe],
                        "Probing the features of the solved prefix", verbose)
                probe_accuracy.append(probe.accuracy())
                keys.store(target, [], None, probe_accuracy[-1])
            if probe_rejects_last():
                undo_last()

    if freeze:
        for name in frozen_layer_names(chain, len(report.layers)):
            model.get_layer(name).trainable = False
            report.frozen.append(name)
    if report.frozen and getattr(model, "compiled", False):
        # Keras fixes the trainable variables at compile(): a model compiled (or
        # fitted) before would go on training the "frozen" layers.
        try:
            compile_like(model, model)
        except ValueError:
            raise ValueError(
                "`model` was compiled before hybridize but its compile arguments are "
                "unknown, so it cannot be compiled again to make the freeze hold: call "
                "hybridize before compile()."
            ) from None
        report.recompiled = True
    report.cutoff = len(report.layers)
    if cutoff == "auto":
        report.evidence = {
            "probe_accuracy": probe_accuracy,
            "rule": (
                "solve the next layer only if a ridge probe on the features after it "
                f"gains at least {AUTO_MIN_GAIN:.3f} held-out accuracy over the features before it"
            ),
            "probe_samples": min(PROBE_MAX_SAMPLES, passes.seen or passes.samples or PROBE_MAX_SAMPLES),
        }
    report.seconds = time.perf_counter() - start
    return report
