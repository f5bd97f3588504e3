"""The one-layer solver of `hybridize`: stream a layer's input through the solved
part of the model, accumulate its class statistics, solve; adapt BatchNormalization.

`passes` is any re-iterable of `(x, int labels)` batches (one iteration = one pass over
the data), with optional `total` (samples, for the progress bar) and `seen` (set to
the samples of the last complete pass) attributes, as `hybridize`'s `DataPasses`.

With `samples="auto"` a layer's first pass ends once its class subspaces converge
(`core/convergence.py`); its later passes (the second stage of a separable
convolution, the BatchNormalization layers after it) read the same samples.
"""

import keras
import numpy as np

from keras_classpca.core.data_adapter import as_standard_float
from keras_classpca.hybrid.graph import normalized_axes, predict_batch
from keras_classpca.layers.geometry import (
    LayerStatistics,
    UnsolvableDataError,
    check_float16_range,
    n_stages,
)

STATISTICS_ON = ("auto", "host", "device")


def statistics_on_device(statistics_on):
    """Whether `hybridize(statistics_on=...)` multiplies on the backend's device:
    `"device"`, `"host"` (NumPy on the host), or `"auto"`: on the device when the
    backend has an accelerator (a GPU or TPU), else on the host (on a CPU the NumPy
    path is the faster one: docs/benchmarks.md, `bench_accumulate --device`)."""
    if not isinstance(statistics_on, str) or statistics_on not in STATISTICS_ON:
        raise ValueError(
            f"`statistics_on` must be one of {list(STATISTICS_ON)}; received {statistics_on!r}."
        )
    if statistics_on != "auto":
        return statistics_on == "device"
    if keras.backend.backend() == "torch":
        import torch

        return bool(torch.cuda.is_available())
    distribution = getattr(keras, "distribution", None)
    devices = distribution.list_devices() if distribution is not None else []
    return any(not str(device).lower().startswith("cpu") for device in devices)


def stream(passes, feature_model, consumers, progress_label=None, verbose=0, limit=None,
           on_device=False):
    """One pass: features of every batch go to every consumer `(h, labels, end)`,
    `end` the samples read once the batch is consumed.

    The pass ends early after `limit` samples, or after the batch on which a consumer
    with a `converged` attribute reports True. With `on_device`, the features are the
    backend tensor the model returns, handed as such to the consumers whose
    `takes_tensors` is True (the others get a NumPy copy). A feature model that
    `selects_rows` (`planner.MaskedRows`: a masked tensor's unmasked steps) gives the
    consumers rows and their labels, on the host.
    """
    total = getattr(passes, "total", None)
    if limit is not None and total is not None:
        total = min(total, limit)
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="sample") if verbose else None
    if progress is not None and progress_label:
        print(progress_label)
    offset, first_size, done = 0, None, False
    for batch, batch_labels in passes:
        if limit is not None and offset + len(batch) > limit:
            batch, batch_labels = batch[: limit - offset], batch_labels[: limit - offset]
        first_size = first_size or len(batch)
        for x, labels in _cut_at_check_points(batch, batch_labels, offset, consumers):
            try:
                _consume(feature_model, x, labels, offset, consumers, first_size, on_device)
            except ValueError as error:
                raise _overflow_below(error, x, progress_label) from error
            offset += len(x)
            if progress is not None:
                progress.add(len(x))
            done = (limit is not None and offset >= limit) or any(
                getattr(consume, "converged", False) for consume in consumers)
            if done:
                break
        if done:
            break
    if offset == 0:
        raise ValueError("`data` is empty: no samples to solve the layers on.")
    if hasattr(passes, "seen"):
        passes.seen = offset
    return offset


def _cut_at_check_points(x, labels, offset, consumers):
    """The batch `(x, labels)` that starts at sample `offset`, cut where a consumer
    checks convergence (`check_point`, read again after each part is consumed): the
    samples a layer is solved from are then a check point's count whatever the batch
    size."""
    start, end = 0, len(x)
    while start < end:
        points = [point for point in (getattr(consume, "check_point", None)
                                      for consume in consumers)
                  if point is not None and offset + start < point < offset + end]
        if not points and start == 0:
            yield x, labels
            return
        stop = min(points) - offset if points else end
        yield x[start:stop], labels[start:stop]
        start = stop


def _overflow_below(error, x, label):
    """The error to raise for `error` from a consumer: where it reports NaN/inf in
    features computed from a finite batch `x`, the layers below overflowed (a float16
    policy, huge weights): say so, not that the user's `x` holds them."""
    if "NaN or infinite" not in str(error) or not label:
        return error
    try:
        values = np.asarray(keras.ops.convert_to_numpy(x))
    except (TypeError, ValueError):
        return error
    if values.dtype.kind != "f" or not np.all(np.isfinite(values)):
        return error  # the data's own NaN/inf: the message is right
    return ValueError(
        f"{label}: the layer's input, computed by the layers below it from finite "
        f"`data`, holds NaN or infinite values ({error}). The layers below overflow: "
        "a float16 dtype policy (`mixed_float16`) with large activations, or weights "
        "too large. Rescale the inputs, use `mixed_bfloat16` or float32, or solve "
        "fewer layers.")


def _consume(feature_model, x, labels, offset, consumers, first_size, on_device):
    """The features of one batch to every consumer (see `stream`)."""
    end = offset + len(x)
    if getattr(feature_model, "selects_rows", False):
        h, labels = feature_model.rows(x, labels, first_size)
        if len(h):  # a batch of padding only adds nothing
            for consume in consumers:
                consume(h, labels, end)
        return
    if not on_device:
        h = predict_batch(feature_model, x, first_size)
        for consume in consumers:
            consume(h, labels, end)
        return
    h = feature_model(x, training=False)
    host = None
    for consume in consumers:
        if getattr(consume, "takes_tensors", False):
            consume(h, labels, end)
            continue
        if host is None:
            host = as_standard_float(keras.ops.convert_to_numpy(h))
        consume(host, labels, end)


class MomentsConsumer:
    """Per-channel mean and variance of a BatchNormalization layer's input."""

    def __init__(self, layer):
        self.layer = layer
        self.count = 0
        self.total = None
        self.squares = None

    def __call__(self, h, labels, end):
        axes = normalized_axes(self.layer, h.ndim)
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
        for value, variable in ((mean, self.layer.moving_mean),
                                (variance, self.layer.moving_variance)):
            check_float16_range(  # a float16 layer would hold inf, and output zeros
                value, f"The adapted {variable.name} of BatchNormalization "
                f"'{self.layer.name}'", {keras.backend.standardize_dtype(variable.dtype)})
        self.layer.moving_mean.assign(mean.reshape(self.layer.moving_mean.shape))
        self.layer.moving_variance.assign(variance.reshape(self.layer.moving_variance.shape))


class StatisticsConsumer:
    """Feeds a layer's input to its `LayerStatistics` (every kind, every stage)."""

    takes_tensors = True  # the first stage's rows are extracted and multiplied on device

    def __init__(self, layer, options, seed=0, patches_per_image=None, convergence=None,
                 dense_sign_pairs=None, spare_filters=None):
        self.statistics = LayerStatistics(
            layer, options, patches_per_image=patches_per_image,
            rng=np.random.default_rng(seed), dense_sign_pairs=dense_sign_pairs,
            spare_filters=spare_filters,
        )
        self.convergence = convergence  # a SubspaceConvergence, for the first stage
        self.converged = False

    def __call__(self, h, labels, end):
        self.statistics.update(h, labels)
        if self.convergence is not None and self.statistics.stage == 0:
            self.converged = self.convergence.check(self.statistics.class_pcas, end)

    @property
    def check_point(self):
        """The sample count of the next convergence check (None: no checks)."""
        if self.convergence is None or self.statistics.stage != 0 or self.converged:
            return None
        return self.convergence.next_check

    @property
    def rows(self):
        return self.statistics.rows


def adapt_batchnorm(passes, feature_model, layer, verbose=0, limit=None):
    """Set a BatchNormalization layer's moving statistics from its streamed input
    (its first `limit` samples)."""
    moments = MomentsConsumer(layer)
    stream(passes, feature_model, [moments], f"Adapting BatchNormalization '{layer.name}'",
           verbose, limit=limit)
    moments.assign()


def solve_layer(passes, feature_model, layer, options, *, seed=0, patches_per_image=None,
                verbose=0, label=None, consumers=(), convergence=None, on_device=False,
                dense_sign_pairs=None, spare_filters=None):
    """Stream `layer`'s input (`feature_model`) and solve it: one pass per stage (two
    for separable convolutions); `consumers` (e.g. a probe) ride the first pass.
    With a `SubspaceConvergence`, the first pass stops once the class subspaces
    settle, and the later ones read as many samples. `on_device`: the first stage's
    rows are extracted and multiplied on the backend's device (`stream`).
    `dense_sign_pairs`: whether the Dense rule may add sign pairs; `spare_filters`:
    whether a convolution gets spare filters (None, both: if the layer's own
    activation rectifies).

    Returns `(statistics, samples)`; the weights are not assigned yet (`assign()`).
    """
    statistics = StatisticsConsumer(layer, options, seed, patches_per_image, convergence,
                                    dense_sign_pairs, spare_filters)
    extra = list(consumers)
    label = label or f"Solving {type(layer).__name__} '{layer.name}'"
    limit = None
    for stage in range(n_stages(layer)):
        seen = stream(passes, feature_model, [statistics] + extra,
                      label + (f" (pass {stage + 1})" if stage else ""), verbose, limit=limit,
                      on_device=on_device and stage == 0)
        extra, limit = [], seen
        statistics.converged = False
        try:
            statistics.statistics.end_pass()
        except UnsolvableDataError as error:  # say which layer (the data are the user's)
            raise UnsolvableDataError(
                f"{type(layer).__name__} '{layer.name}' cannot be solved from this data: "
                f"{error}{_sorted_data_hint(passes, statistics.statistics)}") from error
    return statistics.statistics, seen


def _sorted_data_hint(passes, statistics):
    """For an unsolvable layer: a hint when the samples read hold fewer classes than
    the model predicts (data sorted by class, cut short), else ""."""
    expected = getattr(passes, "expected_classes", lambda: None)()
    read = len(statistics.class_pcas[0].classes_)
    if not expected or read >= expected:
        return ""
    hint = (f" The samples read hold {read} of the {expected} classes the model predicts: "
            "if `data` is sorted by class, shuffle it (`ds.shuffle(...)`)")
    if not getattr(passes, "auto", True):
        hint += " or pass `samples='auto'` (it reads on until every class has come)"
    return hint + "."
