"""`fit_top`: train what `hybridize` left trainable, computing the frozen prefix once.

A frozen, deterministic prefix (solved layers, frozen BatchNorm, pooling, ...) gives
the same output every epoch, so its forward pass need not be paid every epoch. Here
its output is computed once, streamed into a cache (memory up to `memory_limit`,
spilled to a temporary file beyond it), and a Keras model that *shares* the user's
top layers is trained on it — the trained weights land in the user's model object, so
saving and export see one ordinary model.

Whether that pays depends on how much of the forward pass the prefix is. With
`cache="auto"` both options are timed on a few batches and the cheaper one is used
(measurements behind that choice: docs/benchmarks.md).

The frozen prefix is cut where the model's graph allows: in a chain after the last
frozen layer, in a residual network after the last fully frozen block (a shortcut that
reads a tensor from below the cut forbids it); layers that draw random numbers in
training (dropout, noise, augmentation) end it.

Calls that train on the same arrays behind the same frozen prefix (tuner trials that
differ only in the learning rate or the top) share the computed outputs through a
`PrefixOutputCache`, keyed by the prefix's architecture and weights and the data.
"""

import collections
import functools
import inspect
import os
import tempfile
import time

import keras
import numpy as np

from keras_classpca._warnings import warn
from keras_classpca.core.data_adapter import (
    fit_style_data_error,
    is_infinite,
    is_sparse,
    iter_batches,
    readable_data,
    unbatched_dataset_error,
)
from keras_classpca.hybrid.cache import (
    data_fingerprint,
    fixed_weights_digest,
    layer_signature,
    prefix_key,
)
from keras_classpca.hybrid.graph import draws_random, has_layer_graph, predict_batch
from keras_classpca.hybrid.planner import flatten_graph, graph_outputs
from keras_classpca.layers.adapt_mixin import warn_unadapted_layers

DEFAULT_MEMORY_LIMIT = 2 * 1024**3
# Timed forward passes of the prefix and of the whole model, interleaved; their
# medians are compared (a single slow call on a shared machine flipped the decision).
TIMING_ROUNDS = 5
# Caching is chosen when its predicted time is below this share of the plain fit's.
# The prediction counts forward/backward passes only, not the cost of feeding a large
# cached array back every epoch; measured (docs/benchmarks.md, bench_hybrid) on the
# benchmark CNN and MLP, cached training was faster in the cases predicted below 0.6
# and slower in most of those predicted between 0.6 and 0.9 (e.g. conv1 solved on all
# of Fashion-MNIST: predicted 0.87, measured 1.70x).
CACHE_IF_BELOW = 0.6


def carry_optimizer(optimizer, variables):
    """A copy of `optimizer` built on `variables`, holding `optimizer`'s state for them.

    Same class and config; the step count, a learning-rate variable and every slot
    variable (e.g. Adam's moments) of a variable in `variables` are copied, matched by
    variable path. Slots of variables not in `variables` are dropped. JAX needs this:
    its stateless update requires the optimizer to be built on exactly the trainable
    variables; the other backends get the same copy so they behave alike.
    """
    new = optimizer.__class__.from_config(optimizer.get_config())
    new.build(list(variables))
    old = {variable.path: variable for variable in optimizer.variables}
    for variable in new.variables:
        source = old.get(variable.path)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(source)
    return new


def _optimizer_for(target, optimizer):
    """`optimizer` itself, or a copy carrying its state if it was built for other
    variables.

    An optimizer is built (slots created) for the trainable variables of its first
    step; JAX cannot apply it to another set. So the same object is reused while it is
    unbuilt or built for exactly `target`'s trainable variables; otherwise a copy built
    on them carries the step count, the learning rate and the slots of the variables
    still training (`carry_optimizer`), so training goes on as `fit` would: a
    learning-rate schedule does not restart.
    """
    if not getattr(optimizer, "built", False):
        return optimizer
    built_for = getattr(optimizer, "_trainable_variables", None)
    if built_for is not None and {id(v) for v in built_for} == {
        id(v) for v in target.trainable_variables
    }:
        return optimizer
    return carry_optimizer(optimizer, target.trainable_variables)


def compile_like(target, model):
    """Compile `target` with `model`'s compile arguments and its optimizer.

    Keras fixes the trainable variables at `compile()`, so a model whose layers were
    frozen after compiling (or a model sharing its layers) is compiled again this way;
    the optimizer object is reused (learning rate, schedule and step count carry over),
    or a copy carrying its state when it was built for other variables
    (`_optimizer_for`).
    """
    if not getattr(model, "compiled", False) or getattr(model, "_compile_config", None) is None:
        raise ValueError(
            "`model` must be compiled: its compile arguments are reused after the "
            "bottom layers are frozen."
        )
    arguments = dict(model._compile_config.config)
    arguments["optimizer"] = _optimizer_for(target, model.optimizer)
    if "auto_scale_loss" in inspect.signature(target.compile).parameters:
        # Not in the compile config: a model compiled with auto_scale_loss=False under
        # mixed_float16 would get a LossScaleOptimizer. Its optimizer says which it was.
        arguments.setdefault("auto_scale_loss", isinstance(
            model.optimizer, keras.optimizers.LossScaleOptimizer))
    target.compile(**arguments)


def _recompile_if_trainable_changed(model):
    """Compile `model` again if `trainable` flags changed since its compile().

    Keras fixes the trainable variables at compile time (its own warning about this
    is never reached in Keras 3.15), so a layer frozen after compile() would train.
    """
    compiled_state = getattr(model, "_compiled_trainable_state", None) or {}
    changed = [layer.name for layer, was in compiled_state.items() if layer.trainable != was]
    if not changed:
        return
    warn(
        f"The `trainable` flag of {changed} changed since the model was compiled; fit_top "
        "compiles it again with the same arguments so that the change takes effect."
    )
    compile_like(model, model)


def _weights(operation):
    """A layer's weights; none for a raw operation of the graph."""
    return getattr(operation, "weights", None) or []


def _runs_in_training(layer):
    """A layer whose output training would change: trainable weights, or random draws."""
    # A raw Keras operation in a functional graph (`h + 3.0`) has no weights or flags.
    trainable = getattr(layer, "trainable", False) and any(w.trainable for w in _weights(layer))
    return trainable or draws_random(layer)


FrozenPrefix = collections.namedtuple(
    "FrozenPrefix", "tensor layers wiring cut_blocked random_below")


def _frozen_prefix(model):
    """`FrozenPrefix(tensor, layers, wiring, cut_blocked)`: the cut where the frozen
    deterministic part of the graph ends (`tensor` None if there is none).

    The cut is the latest tensor computed only by layers that training leaves
    unchanged (frozen, no random draws) from which the rest of the model can be
    computed alone: in a chain the last frozen layer's output, in a residual network
    the output of the last fully frozen block (a frozen branch whose shortcut is still
    read above it cannot be cut). `layers` are the prefix's layers in topological
    order, `wiring` each one's parents as positions in `layers`. `cut_blocked`: frozen
    layers with weights exist, but the layers above read tensors from below each of
    them (e.g. a skip connection from the input).
    """
    none = FrozenPrefix(None, [], [], False, [])
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return none
    nodes, _ = flatten_graph(model)
    fixed = []
    for node in nodes:
        fixed.append(not node.scope and not node.orphan and not _runs_in_training(node.layer)
                     and all(fixed[p] for p in node.parents))
    output = graph_outputs(model)[0]
    blocked = False
    for index in reversed(range(len(nodes))):
        node = nodes[index]
        if not fixed[index] or len(node.outputs) != 1 or node.outputs[0] is output:
            continue
        ancestors, stack = {index}, [index]
        while stack:
            for parent in nodes[stack.pop()].parents:
                if parent not in ancestors:
                    ancestors.add(parent)
                    stack.append(parent)
        if not any(_weights(nodes[i].layer) for i in ancestors):
            continue  # nothing worth caching below this tensor
        try:
            keras.Model(node.outputs[0], output)
        except ValueError:
            blocked = True  # the rest also reads tensors from below this one
            continue
        order = sorted(ancestors)
        position = {i: k for k, i in enumerate(order)}
        return FrozenPrefix(node.outputs[0], [nodes[i].layer for i in order],
                            [[position[p] for p in nodes[i].parents] for i in order], False, [])
    # Frozen layers with weights that are not fixed: what below them draws random numbers.
    unfixed = [i for i, node in enumerate(nodes) if _weights(node.layer) and not fixed[i]
               and not _runs_in_training(node.layer)]
    random_below = sorted({nodes[i].layer.name for i in range(min(unfixed, default=0))
                           if draws_random(nodes[i].layer)})
    return none._replace(cut_blocked=blocked, random_below=random_below)


def cache_point(model):
    """The symbolic tensor where the frozen deterministic prefix ends, or None.

    None when no layer with weights is frozen at the bottom (nothing worth caching).
    """
    return _frozen_prefix(model).tensor


def prefix_output_key(layers, input_shape, fingerprint, wiring=None):
    """The `PrefixOutputCache` key of frozen `layers` (wired as `wiring`: each layer's
    parents as positions in `layers`; None for a chain) applied to data.

    Classes, configs (without names) and the bytes of every weight: two models built
    for two tuner trials share a key exactly when their prefixes compute the same
    function, whatever solved or loaded those weights.
    """
    return prefix_key(
        layers=[layer_signature(layer) for layer in layers],
        wiring=wiring,
        weights=fixed_weights_digest(layers),
        input_shape=list(input_shape),
        data=fingerprint,
    )


class PrefixOutputCache:
    """Frozen-prefix outputs shared by `fit_top` calls, in memory, least recently used
    dropped first.

    `fit_top(..., output_cache=cache)` looks up the prefix output of its training (and
    validation) arrays here before computing it, and stores what it computed. A
    KerasTuner search (`HybridHyperModel`) holds one: trials with the same solved
    prefix and data — another learning rate, another top — train on the outputs the
    first of them computed. Keys cover the prefix architecture, its weights and the
    data's bytes (`prefix_output_key`), so a changed prefix or data is a miss. It also
    remembers, per prefix and data, `fit_top(cache="auto")`'s timing of the forward
    passes and how many calls used them: the trials after the first do not time again
    (a timing near the threshold would otherwise flip from trial to trial), and the
    n-th trial with a prefix weighs the cost of computing its outputs against n trials
    sharing them — a search whose trials each train for too few epochs for caching to
    pay alone caches from the second trial with a prefix on.

    Args:
        memory_limit: bytes of outputs kept; older entries are dropped beyond it, and
            an entry larger than it is not kept.

    Attributes:
        hits, misses: lookups that found / did not find their entry.
        nbytes: bytes held.

    Example:

    >>> import numpy as np
    >>> cache = PrefixOutputCache(memory_limit=2**20)
    >>> cache.put("key", np.zeros((4, 3), "float32"), np.arange(4))
    >>> features, labels = cache.get("key")
    >>> features.shape, cache.hits, cache.nbytes
    ((4, 3), 1, 80)
    """

    def __init__(self, memory_limit=DEFAULT_MEMORY_LIMIT):
        check_cache_settings(memory_limit)
        self.memory_limit = memory_limit
        self._entries = collections.OrderedDict()
        self.timings = {}  # prefix and data keys -> forward_seconds of cache="auto"
        self.uses = collections.Counter()  # prefix and data keys -> fit_top calls
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self):
        return (f"PrefixOutputCache(entries={len(self._entries)}, nbytes={self.nbytes:,} of "
                f"memory_limit={self.memory_limit:,}, hits={self.hits}, misses={self.misses})")

    def get(self, key):
        """`(features, labels)` stored under `key`, or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key, features, labels):
        """Keep `(features, labels)` under `key` (not if larger than `memory_limit`)."""
        size = features.nbytes + labels.nbytes
        if size > self.memory_limit:
            return
        if key in self._entries:
            self.nbytes -= sum(a.nbytes for a in self._entries.pop(key))
        while self._entries and self.nbytes + size > self.memory_limit:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= sum(a.nbytes for a in dropped)
        self._entries[key] = (features, labels)
        self.nbytes += size

    def __contains__(self, key):
        return key in self._entries

    def count_use(self, shared):
        """Count one more `fit_top` call with the prefix and data `shared`; returns the
        calls so far, this one included."""
        self.uses[shared] += 1
        return self.uses[shared]

    def __len__(self):
        return len(self._entries)


# `fit_top`'s settings of the prefix-output cache (`fit_progressive` passes them on).
CACHE_SETTINGS = ("memory_limit", "cache_dir", "output_cache")


def check_cache_settings(memory_limit=DEFAULT_MEMORY_LIMIT, cache_dir=None, output_cache=None):
    """Raise for an invalid `fit_top` cache setting (see `CACHE_SETTINGS`)."""
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 0:
        raise ValueError(
            f"`memory_limit` must be a non-negative integer (bytes); received {memory_limit!r}."
        )
    if output_cache is not None and not isinstance(output_cache, PrefixOutputCache):
        raise TypeError(
            f"`output_cache` must be a PrefixOutputCache or None; received {output_cache!r}."
        )


_BLOCK_HOOKS = ("on_train_end", "on_epoch_begin", "on_epoch_end", "on_test_begin",
                "on_test_end", "on_predict_begin", "on_predict_end")
_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin",
                "on_test_batch_end", "on_predict_batch_begin", "on_predict_batch_end")


class _OnUserModel(keras.callbacks.Callback):
    """The user's callbacks, shown the user's model while a model sharing its top layers
    trains on cached prefix outputs.

    A checkpoint (KerasTuner's best-epoch one included) then saves the whole model, and
    `EarlyStopping` restores whole-model weights; its `stop_training` is passed on to
    the model being fitted. Batch hooks are forwarded only when a callback has them,
    so Keras keeps dispatching the others asynchronously.
    """

    def __init__(self, callbacks, model):
        super().__init__()
        self.user_model = model
        self.inner = keras.callbacks.CallbackList(list(callbacks), model=model)
        for hook in _BLOCK_HOOKS:
            setattr(self, hook, functools.partial(self._forward, hook))
        for hook in _BATCH_HOOKS:
            # Keras marks its no-op hooks `_is_default`; forwarding is always correct,
            # skipping an unused one only keeps the training loop fast.
            if any(not getattr(getattr(c, hook), "_is_default", False)
                   for c in self.inner.callbacks):
                setattr(self, hook, functools.partial(self._forward, hook))

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def _forward(self, hook, *args, **kwargs):
        # Each callback on the very `logs` dict of this fit, as a plain fit does: what
        # one adds (ReduceLROnPlateau's `learning_rate`, a metric a callback computes)
        # reaches History and KerasTuner's objective. `CallbackList` would hand the
        # callbacks a copy; the logs arrive here already as Python numbers.
        for callback in self.inner.callbacks:
            getattr(callback, hook)(*args, **kwargs)
        if getattr(self.user_model, "stop_training", False):
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        self.user_model.stop_training = False
        self._forward("on_train_begin", logs)


def _build_compiled_metrics(model, top, features, labels):
    """Build the compiled metrics of the user's `model`, which the callbacks see while
    `top` trains: Keras builds them at the first training step, which `model` never
    takes here, and `EarlyStopping` / `ModelCheckpoint` look a monitored metric up
    among them to tell "max" from "min". One row through `top`, then reset."""
    if isinstance(features, _CachedBatches):
        features, labels = features[0][:2]
    rows, targets = np.asarray(features[:1]), np.asarray(labels[:1])
    model.compute_metrics(rows, targets, top(rows, training=False))
    model.reset_metrics()


class _Cache:
    """Append-only array store: memory up to `memory_limit` bytes, then a temp file."""

    def __init__(self, memory_limit, directory):
        self.memory_limit = memory_limit
        self.directory = directory
        self.chunks, self.bytes, self.file, self.path = [], 0, None, None
        self.rows, self.row_shape, self.dtype = 0, None, None

    def append(self, values):
        values = np.ascontiguousarray(values)
        self.row_shape, self.dtype = values.shape[1:], values.dtype
        self.rows += len(values)
        self.bytes += values.nbytes
        if self.file is None and self.bytes > self.memory_limit:
            if self.directory is not None:
                os.makedirs(self.directory, exist_ok=True)
            handle, self.path = tempfile.mkstemp(suffix=".cache", dir=self.directory)
            self.file = os.fdopen(handle, "wb")
            for chunk in self.chunks:
                self.file.write(chunk.tobytes())
            self.chunks = []
        if self.file is not None:
            self.file.write(values.tobytes())
        else:
            self.chunks.append(values)

    @property
    def spilled(self):
        return self.path is not None

    def array(self):
        if self.file is None:
            return np.concatenate(self.chunks) if self.chunks else None
        self.file.close()
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.rows,) + self.row_shape)

    def close(self):
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)


def _prefix_outputs(prefix, data, batch_size, memory_limit, directory):
    """`(cache, labels, sample weights or None, rows of each batch)` of `data`."""
    cache, labels, weights, sizes = _Cache(memory_limit, directory), [], [], []
    try:
        for x, y, w in iter_batches(data, batch_size=batch_size, sample_weights=True):
            sizes.append(len(x))
            cache.append(predict_batch(prefix, np.asarray(x), sizes[0]))
            labels.append(np.asarray(y))
            weights.append(w)
        if not labels:
            raise ValueError("`x` is empty: no samples to train on.")
        if any(w is None for w in weights) and any(w is not None for w in weights):
            raise ValueError(
                "Some batches of the data hold sample weights and others do not: give "
                "every batch `(x, y, sample_weight)`, or none."
            )
    except BaseException:
        cache.close()  # a failure while caching must not leave a spill file behind
        raise
    weights = None if weights[0] is None else np.concatenate(weights)
    return cache, np.concatenate(labels), weights, sizes


class _CachedBatches(keras.utils.PyDataset):
    """A PyDataset's batches, as cached prefix outputs: `fit` shuffles their order
    every epoch (with `shuffle=True`, its default), as it does the PyDataset's."""

    def __init__(self, features, labels, weights, sizes):
        super().__init__()
        self.parts = (features, labels) + ((weights,) if weights is not None else ())
        self.ends = np.cumsum(sizes)

    def __len__(self):
        return len(self.ends)

    def __getitem__(self, index):
        start = self.ends[index - 1] if index else 0
        return tuple(np.asarray(part[start:self.ends[index]]) for part in self.parts)


def is_array_data(data):
    """`(x, y)` or `(x, y, sample_weight)` arrays: data that can be fingerprinted."""
    return (
        isinstance(data, (tuple, list))
        and len(data) in (2, 3)
        and all(hasattr(part, "shape") for part in data[:2])
    )


def _in_memory_arrays(x, y):
    """Whether `fit(x, y)` reads arrays it slices itself (and shuffles by row): `x` an
    array or a dict / list of arrays (a named input), `y` an array."""
    leaves = keras.tree.flatten(x) if isinstance(x, (dict, list, tuple)) else [x]
    return bool(leaves) and all(hasattr(part, "shape") for part in leaves + [y])


def _replay(first, rest):
    """A generator (what `Model.fit` accepts) yielding `first`, then the rest."""
    yield first
    yield from rest


def _timing_batch(x, y, batch_size):
    """`(x_batch, x)`: a batch of inputs to time the forward passes on, and the data to
    train on afterwards (a one-shot iterator replays the batch read for timing)."""
    if y is None and hasattr(x, "__next__"):
        first = next(x)
        return np.asarray(first[0]), _replay(first, x)
    # (weights are read, not warned about: the training uses them)
    x_batch, *_ = next(iter_batches(x, y, batch_size=batch_size, steps=1, sample_weights=True))
    return x_batch, x


def _median_seconds(functions, batch):
    """Median seconds of one call of each function on `batch`, interleaved."""
    for fn in functions:
        fn(batch)  # warm-up: tracing and compilation are not what we compare
    times = [[] for _ in functions]
    for _ in range(TIMING_ROUNDS):
        for fn, seconds in zip(functions, times):
            start = time.perf_counter()
            fn(batch)
            seconds.append(time.perf_counter() - start)
    return [float(np.median(seconds)) for seconds in times]


def forward_seconds(model, prefix, x_batch):
    """`(prefix_seconds, model_seconds)`: median time of one forward pass of the frozen
    prefix and of the whole model on `x_batch`."""
    return tuple(_median_seconds([prefix.predict_on_batch, model.predict_on_batch], x_batch))


def cache_ratio(prefix_seconds, model_seconds, epochs, uses=1):
    """Predicted time ratio cached / plain of training `epochs` on a frozen prefix.

    A training step costs about one forward pass of the prefix plus three of the top
    (forward and backward); caching pays the prefix once instead of every epoch, and
    `uses` calls that share the cached outputs (tuner trials) share that one pass.
    """
    top_step = 3.0 * max(model_seconds - prefix_seconds, 1e-9)
    plain = epochs * (prefix_seconds + top_step)
    cached = prefix_seconds / uses + epochs * top_step
    return cached / plain


def predict_cache_speedup(model, prefix, x_batch, epochs, uses=1):
    """Predicted time ratio cached / plain for `epochs`, from timed forward passes
    (`forward_seconds`, `cache_ratio`)."""
    return cache_ratio(*forward_seconds(model, prefix, x_batch), epochs, uses)


# What a Model subclass may override to train differently: the cached training fits a
# plain Keras model on the prefix outputs and would not run it.
_TRAINING_HOOKS = ("train_step", "test_step", "compute_loss", "compute_metrics")


def static_cache_refusal(model, x, validation_data, callbacks=None):
    """Why no frozen prefix of `model` could ever be cached for this training (None if
    one could): what does not depend on which layers are frozen."""
    if not has_layer_graph(model):
        return "the model is subclassed: it has no layer graph to find a frozen prefix in."
    custom = [name for name in _TRAINING_HOOKS
              if getattr(type(model), name, None) is not getattr(keras.Model, name, None)]
    if custom:
        return (
            f"{type(model).__name__} overrides {', '.join(custom)}: the cached training "
            "fits a plain Keras model on the prefix outputs, which would skip it. Train "
            "with cache=False (the frozen layers still skip back-propagation)."
        )
    if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks or []):
        return (
            "`BackupAndRestore` resumes the model being fitted, which with the cache is "
            "not the model it backs up: train with cache=False."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return (
            f"the model has {len(model.inputs)} input(s) and {len(model.outputs)} "
            "output(s): the prefix output is cached for single-input, single-output models "
            "only. Train with cache=False (the frozen layers still skip back-propagation)."
        )
    validation_x = validation_data[0] if isinstance(validation_data, (tuple, list)) else None
    if any(is_sparse(d) for d in (x, validation_x)):
        return ("the inputs are sparse or ragged: the cached prefix outputs are computed "
                "from dense arrays. `fit` trains on them as they are (cache=False).")
    if any(is_infinite(d) for d in (x, validation_data)):
        return (  # caching would read the data to its end: never
            "the data never ends (a repeated dataset): the prefix output cannot be computed "
            "once. Train with cache=False (with `steps_per_epoch`, as `fit` needs for such "
            "data; the frozen layers still skip back-propagation)."
        )
    return None


def _cacheable_prefix(model, x, validation_data, cache, callbacks=None):
    """`(point, prefix layers, wiring, reason)`: the tensor where the frozen prefix ends,
    or None with `reason` saying why its output cannot be cached."""
    if cache is False:
        return None, [], [], "`cache` is False."
    refusal = static_cache_refusal(model, x, validation_data, callbacks)
    if refusal is not None:
        return None, [], [], refusal
    point, prefix_layers, wiring, cut_blocked, random_below = _frozen_prefix(model)
    reason = (
        "the model has no frozen layers with weights at the bottom: hybridize (with "
        "freeze=True) before fit_top."
    )
    if random_below:
        reason = (
            f"the frozen layers read the output of {', '.join(random_below)}, which "
            "draw(s) random numbers in training (augmentation, dropout or noise): "
            "their input changes every epoch, so their output cannot be computed once."
        )
    if cut_blocked:
        reason = (
            "the layers above the frozen prefix also read tensors from below its end "
            "(e.g. a skip connection from the input): its output alone cannot feed them."
        )
    regularized = [layer.name for layer in prefix_layers
                   if getattr(layer, "activity_regularizer", None) is not None]
    if point is not None and regularized:
        return None, [], [], (
            f"the frozen layers {', '.join(regularized)} have an activity regularizer: "
            "its loss term, part of the loss `model.fit` reports, is computed from their "
            "outputs at every step. Train with cache=False."
        )
    return point, prefix_layers, wiring, reason


def fit_top(
    model,
    x=None,
    y=None,
    batch_size=None,
    epochs=1,
    *,
    validation_data=None,
    cache="auto",
    memory_limit=DEFAULT_MEMORY_LIMIT,
    cache_dir=None,
    output_cache=None,
    verbose="auto",
    **fit_kwargs,
):
    """`model.fit` for a hybrid model, computing the frozen prefix only once.

    Call after `hybridize(...)` and `model.compile(...)`. With a frozen prefix and
    `cache` on, the prefix output is computed once and a model sharing the top layers
    (and the same optimizer) is fitted on it; otherwise this is `model.fit`.

    Args:
        model: a compiled Keras model whose bottom layers are frozen.
        x, y: training data: arrays (with `y`), or `x` a `tf.data.Dataset` /
            iterable of `(x, y)` batches with `y=None`.
        batch_size, epochs, validation_data, verbose, **fit_kwargs: as in `Model.fit`
            (`batch_size` None: 32 for arrays; a dataset's or generator's own
            batches, which the cached training keeps, as do its sample weights).
        cache: `"auto"` (time both ways on a few batches, take the faster), `True` or
            `False`. For more than one epoch of a dataset, PyDataset or generator,
            `"auto"` does not cache: `model.fit` reads it every epoch, and its
            pipeline may draw new augmentation each time, which a cache would freeze
            (`cache=True` caches it: one read, the same outputs every epoch).
            Models with one input and one output only: others train with
            `model.fit` (`cache=True` raises and says why), as do a model class that
            overrides `train_step`, `test_step`, `compute_loss` or `compute_metrics`,
            a `BackupAndRestore` callback, and frozen layers with an activity
            regularizer (what the cached training would drop).
        memory_limit: bytes of prefix output kept in memory; beyond it the cache
            spills to a temporary file in `cache_dir`, removed after training, and
            `shuffle` defaults to `"batch"` (whole batches in random order: random
            rows of a file are slow; pass `shuffle=True` to shuffle rows anyway).
        cache_dir: where that file goes (created if missing; default: the system temp
            dir).
        output_cache: a `PrefixOutputCache` shared with other calls: prefix outputs of
            array data are looked up there first and stored after computing (not when
            spilled to a file). With `cache="auto"`, outputs found there are used
            without timing: their cost is already paid.

    Returns:
        The `keras.callbacks.History` of the training run, with
        `history.cache_used` telling whether the prefix was cached.

    Example:

    >>> import numpy as np, keras
    >>> from keras_classpca import hybridize
    >>> x = np.random.default_rng(0).normal(size=(256, 12)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="relu"),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> _ = hybridize(model, (x, y), cutoff=1, verbose=0)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> history = fit_top(model, x, y, epochs=2, cache=True, verbose=0)
    >>> history.cache_used
    True
    """
    # pandas frames, torch tensors that record gradients: `fit` takes them, NumPy (the
    # cache) does not. Sparse inputs go to `fit` as they are (`static_cache_refusal`).
    x, y, validation_data = readable_data((x, y, validation_data), sparse_ok=True)
    if cache not in ("auto", True, False):
        raise ValueError(f"`cache` must be 'auto', True or False; received {cache!r}.")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError(
            "`model` must be compiled before `fit_top` (hybridize, compile, then fit)."
        )
    error = fit_style_data_error(x, y, "fit_top")
    if error is not None:
        raise error
    warn_unadapted_layers(model, "fit_top")
    check_cache_settings(memory_limit, cache_dir, output_cache)
    if isinstance(fit_kwargs.get("callbacks"), keras.callbacks.Callback):
        fit_kwargs["callbacks"] = [fit_kwargs["callbacks"]]  # as `fit` takes one
    fit_args = dict(batch_size=batch_size, epochs=epochs, verbose=verbose, **fit_kwargs)

    def plain_fit():
        history = model.fit(x, y, validation_data=validation_data, **fit_args)
        history.cache_used = False
        return history

    inputs = getattr(model, "inputs", None) or []
    error = unbatched_dataset_error(x, len(inputs[0].shape) if len(inputs) == 1 else None,
                                    "fit_top")
    if error is not None:
        # (a cached prefix would batch it itself: the outcome of cache="auto" would
        # depend on its timing)
        raise error
    _recompile_if_trainable_changed(model)
    point, prefix_layers, wiring, reason = _cacheable_prefix(
        model, x, validation_data, cache, fit_kwargs.get("callbacks"))
    if point is None:
        if cache is True:
            raise ValueError(f"`cache=True` but {reason}")
        return plain_fit()
    prefix = keras.Model(model.inputs[0], point)
    top = keras.Model(point, graph_outputs(model)[0])

    def output_key(data):
        if output_cache is None or not is_array_data(data):
            return None
        fingerprint = data_fingerprint(np.asarray(data[0]), np.asarray(data[1]))
        return prefix_output_key(prefix_layers, model.inputs[0].shape[1:], fingerprint, wiring)

    train_data = (x, y) if y is not None else x
    keys = [output_key(train_data)]
    if validation_data is not None:
        keys.append(output_key(validation_data))
    already_computed = all(key is not None and key in output_cache for key in keys)
    if cache == "auto" and epochs <= fit_kwargs.get("initial_epoch", 0):
        return plain_fit()  # no epoch to train: nothing to save by caching
    remaining = epochs - fit_kwargs.get("initial_epoch", 0)
    # Calls with the same prefix and data (tuner trials) share one timing of the
    # forward passes, and the outputs the first caching call computes.
    shared = tuple(keys) if output_cache is not None and None not in keys else None
    uses = output_cache.count_use(shared) if shared is not None else 1
    streamed = not _in_memory_arrays(x, y)
    if streamed and fit_kwargs.get("steps_per_epoch") is not None:
        # `fit` draws that many batches per epoch from a stream that may never end
        # (a generator cannot tell): it cannot be read once to its end.
        if cache is True:
            raise ValueError(
                "`cache=True` but `steps_per_epoch` is given with a dataset or generator: "
                "`fit` draws that many batches per epoch from a stream that may not end, "
                "so its prefix outputs cannot be computed once. Train with cache=False "
                "(the frozen layers still skip back-propagation)."
            )
        return plain_fit()
    if cache == "auto" and remaining > 1 and streamed:
        # `model.fit` reads a dataset, PyDataset or generator once per epoch: its
        # pipeline may draw new augmentation (or a new order) every time, which cached
        # outputs would freeze into one draw. `cache=True` caches it anyway.
        return plain_fit()
    if cache == "auto" and not already_computed:
        seconds = output_cache.timings.get(shared) if shared is not None else None
        if seconds is None:
            x_batch, x = _timing_batch(x, y, batch_size)
            train_data = (x, y) if y is not None else x
            seconds = forward_seconds(model, prefix, x_batch)
            if shared is not None:
                output_cache.timings[shared] = seconds
        # The n-th call with this prefix expects as many again: it amortises the
        # prefix pass over n calls (the first call over itself alone).
        if cache_ratio(*seconds, remaining, uses) >= CACHE_IF_BELOW:
            return plain_fit()

    compile_like(top, model)
    if fit_args.get("callbacks"):
        fit_args["callbacks"] = [_OnUserModel(fit_args["callbacks"], model)]
    caches = []

    def outputs(data, key):
        """`(features, labels, weights, spilled, first batch rows)`: from `output_cache`
        (arrays: their weights are `sample_weight=`), or computed (and stored)."""
        stored = output_cache.get(key) if key is not None else None
        if stored is not None:
            return stored + (None, False, None)
        computed, labels, weights, rows = _prefix_outputs(prefix, data, batch_size,
                                                          memory_limit, cache_dir)
        caches.append(computed)
        features = computed.array()
        if key is not None and not computed.spilled:
            output_cache.put(key, features, labels)
        return features, labels, weights, computed.spilled, rows

    try:
        features, labels, weights, spilled, sizes = outputs(train_data, keys[0])
        shuffled_batches = (isinstance(x, keras.utils.PyDataset) and sizes is not None
                            and fit_kwargs.get("shuffle", True))
        if shuffled_batches:
            # `fit` shuffles a PyDataset's batch order every epoch: so it does the
            # cached batches'.
            features = _CachedBatches(features, labels, weights, sizes)
            labels = weights = None
            fit_args.pop("batch_size", None)
        if weights is not None:  # (x, y, sample_weight) batches: trained with them
            fit_args["sample_weight"] = weights
        if y is None and fit_args.get("batch_size") is None and not shuffled_batches:
            # a dataset's batches: the same steps per epoch
            fit_args["batch_size"] = sizes[0] if sizes else None
        if validation_data is not None:
            extra = tuple(validation_data[2:]) if is_array_data(validation_data) else ()
            val_features, val_labels, val_weights = outputs(validation_data, keys[1])[:3]
            validation_data = (val_features, val_labels) + (
                extra or ((val_weights,) if val_weights is not None else ()))
        if streamed:
            if not shuffled_batches:
                # `fit` keeps a dataset's (generator's) own batches in their order (it
                # ignores `shuffle`); so does the training on their cached outputs.
                fit_args["shuffle"] = False
        elif spilled and "shuffle" not in fit_kwargs:
            fit_args["shuffle"] = "batch"  # random rows of a file-backed array are slow
        if fit_args.get("callbacks"):
            _build_compiled_metrics(model, top, features, labels)
        history = top.fit(features, labels, validation_data=validation_data, **fit_args)
    finally:
        for c in caches:
            c.close()
    history.cache_used = True
    model.history = history  # as `model.fit` leaves it (the History was the top's)
    return history
