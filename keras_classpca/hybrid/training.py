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
"""

import os
import tempfile
import time
import warnings

import keras
import numpy as np

from keras_classpca.core.data_adapter import is_infinite, iter_batches
from keras_classpca.hybrid.graph import (
    RANDOM_IN_TRAINING,
    has_layer_graph,
    predict_batch,
    read_chain,
)

DEFAULT_MEMORY_LIMIT = 2 * 1024**3
TIMING_BATCHES = 3
# Caching is chosen when its predicted time is below this share of the plain fit's.
# The prediction counts forward/backward passes only, not the cost of feeding a large
# cached array back every epoch; measured (docs/benchmarks.md, bench_hybrid) on the
# benchmark CNN and MLP, cached training was faster in the cases predicted below 0.6
# and slower in most of those predicted between 0.6 and 0.9 (e.g. conv1 solved on all
# of Fashion-MNIST: predicted 0.87, measured 1.70x).
CACHE_IF_BELOW = 0.6


def _optimizer_for(target, optimizer):
    """`optimizer` itself, or a fresh copy if it was built for other variables.

    An optimizer is built (slots created) for the trainable variables of its first
    step; JAX cannot apply it to another set. So the same object is reused while it is
    unbuilt or built for exactly `target`'s trainable variables (its learning rate,
    schedule and step count carry over); otherwise a copy from its config starts afresh,
    as a new `compile(optimizer=...)` would.
    """
    if not getattr(optimizer, "built", False):
        return optimizer
    built_for = getattr(optimizer, "_trainable_variables", None)
    if built_for is not None and {id(v) for v in built_for} == {
        id(v) for v in target.trainable_variables
    }:
        return optimizer
    return keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))


def compile_like(target, model):
    """Compile `target` with `model`'s compile arguments and its optimizer.

    Keras fixes the trainable variables at `compile()`, so a model whose layers were
    frozen after compiling (or a model sharing its layers) is compiled again this way;
    the optimizer object is reused (learning rate, schedule and step count carry over)
    unless it already holds state for other variables (see `_optimizer_for`).
    """
    if not getattr(model, "compiled", False) or getattr(model, "_compile_config", None) is None:
        raise ValueError(
            "`model` must be compiled: its compile arguments are reused after the "
            "bottom layers are frozen."
        )
    arguments = dict(model._compile_config.config)
    arguments["optimizer"] = _optimizer_for(target, model.optimizer)
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
    warnings.warn(
        f"The `trainable` flag of {changed} changed since the model was compiled; fit_top "
        "compiles it again with the same arguments so that the change takes effect.",
        stacklevel=3,
    )
    compile_like(model, model)


def _frozen_prefix_end(chain):
    """Index of the first chain layer that must run during training."""
    for index, layer in enumerate(chain.layers):
        trainable_weights = layer.trainable and any(w.trainable for w in layer.weights)
        if trainable_weights or isinstance(layer, RANDOM_IN_TRAINING):
            return index
    return len(chain.layers)


def cache_point(model):
    """The symbolic tensor where the frozen deterministic prefix ends, or None.

    None when no layer with weights is frozen at the bottom (nothing worth caching).
    """
    chain = read_chain(model)
    end = _frozen_prefix_end(chain)
    if not any(layer.weights for layer in chain.layers[:end]):
        return None
    return chain.inputs[end] if end < len(chain.layers) else chain.outputs[-1]


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
    cache, labels = _Cache(memory_limit, directory), []
    try:
        first_size = None
        for x, y in iter_batches(data, batch_size=batch_size):
            first_size = first_size or len(x)
            cache.append(predict_batch(prefix, np.asarray(x), first_size))
            labels.append(np.asarray(y))
        if not labels:
            raise ValueError("`x` is empty: no samples to train on.")
    except BaseException:
        cache.close()  # a failure while caching must not leave a spill file behind
        raise
    return cache, np.concatenate(labels)


def _replay(first, rest):
    """A generator (what `Model.fit` accepts) yielding `first`, then the rest."""
    yield first
    yield from rest


def _seconds_per_batch(fn, batch):
    fn(batch)  # warm-up: tracing and compilation are not what we compare
    start = time.perf_counter()
    for _ in range(TIMING_BATCHES):
        fn(batch)
    return (time.perf_counter() - start) / TIMING_BATCHES


def predict_cache_speedup(model, prefix, x_batch, epochs):
    """Predicted time ratio cached / plain for `epochs`, from timed forward passes.

    A training step costs about one forward pass of the frozen prefix plus three of
    the top (forward and backward); caching pays the prefix once instead of every
    epoch.
    """
    prefix_seconds = _seconds_per_batch(prefix.predict_on_batch, x_batch)
    full_seconds = _seconds_per_batch(model.predict_on_batch, x_batch)
    top_step = 3.0 * max(full_seconds - prefix_seconds, 1e-9)
    plain = epochs * (prefix_seconds + top_step)
    cached = prefix_seconds + epochs * top_step
    return cached / plain


def fit_top(
    model,
    x=None,
    y=None,
    *,
    batch_size=128,
    epochs=1,
    validation_data=None,
    cache="auto",
    memory_limit=DEFAULT_MEMORY_LIMIT,
    cache_dir=None,
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
        batch_size, epochs, validation_data, verbose, **fit_kwargs: as in `Model.fit`.
        cache: `"auto"` (time both ways on a few batches, take the faster), `True` or
            `False`.
        memory_limit: bytes of prefix output kept in memory; beyond it the cache
            spills to a temporary file in `cache_dir`, removed after training.
        cache_dir: where that file goes (default: the system temp dir).

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
    if cache not in ("auto", True, False):
        raise ValueError(f"`cache` must be 'auto', True or False; received {cache!r}.")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError("`model` must be compiled before `fit_top` (hybridize, compile, then fit).")
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 0:
        raise ValueError(f"`memory_limit` must be a non-negative integer (bytes); received {memory_limit!r}.")
    fit_args = dict(batch_size=batch_size, epochs=epochs, verbose=verbose, **fit_kwargs)

    def plain_fit():
        history = model.fit(x, y, validation_data=validation_data, **fit_args)
        history.cache_used = False
        return history

    _recompile_if_trainable_changed(model)
    reason = (
        "the model has no frozen layers with weights at the bottom: hybridize (with "
        "freeze=True) before fit_top."
    )
    if cache is False:
        point = None
    elif not has_layer_graph(model):
        point = None
        reason = "the model is subclassed: it has no layer graph to find a frozen prefix in."
    elif any(is_infinite(d) for d in (x, validation_data)):
        point = None  # caching would read the data to its end: never
        reason = (
            "the data never ends (a repeated dataset): the prefix output cannot be computed "
            "once; pass `steps_per_epoch` and train with cache=False."
        )
    else:
        point = cache_point(model)
    if point is not None and any(
        isinstance(getattr(d, "element_spec", None), tuple) and len(d.element_spec) == 3
        for d in (x, validation_data)
    ):
        point = None  # the cache keeps (features, labels): sample weights would be lost
        reason = (
            "the dataset yields sample weights, which the cached training would drop; "
            "pass arrays with `sample_weight=` instead."
        )
    if point is not None:
        try:
            top = keras.Model(point, model.outputs[0])
        except ValueError:
            point = None  # the top also reads tensors from below the cache point
            reason = (
                "the layers above the frozen prefix also read tensors from below its end "
                "(e.g. a skip connection from the input): its output alone cannot feed them."
            )
    if point is None:
        if cache is True:
            raise ValueError(f"`cache=True` but {reason}")
        return plain_fit()
    prefix = keras.Model(model.inputs[0], point)
    if cache == "auto":
        if y is None and hasattr(x, "__next__"):
            # A one-shot iterator: the batch read for timing must still be trained on.
            first = next(x)
            x = _replay(first, x)
            x_batch = np.asarray(first[0])
        else:
            x_batch, _ = next(iter_batches(x, y, batch_size=batch_size, steps=1))
        if predict_cache_speedup(model, prefix, x_batch, epochs) >= CACHE_IF_BELOW:
            return plain_fit()

    compile_like(top, model)
    caches = []
    try:
        train_cache, labels = _prefix_outputs(prefix, (x, y) if y is not None else x, batch_size,
                                              memory_limit, cache_dir)
        caches.append(train_cache)
        features = train_cache.array()
        if validation_data is not None:
            val_cache, val_labels = _prefix_outputs(prefix, validation_data, batch_size,
                                                    memory_limit, cache_dir)
            caches.append(val_cache)
            validation_data = (val_cache.array(), val_labels)
        if train_cache.spilled and fit_kwargs.get("shuffle", True) is True:
            fit_args["shuffle"] = "batch"  # random rows of a file-backed array are slow
        history = top.fit(features, labels, validation_data=validation_data, **fit_args)
    finally:
        for c in caches:
            c.close()
    history.cache_used = True
    return history
