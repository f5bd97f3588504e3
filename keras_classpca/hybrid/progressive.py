"""`fit_progressive`: train with `fit()` and freeze each bottom layer once it has settled.

Under SGD the low layers of a network settle before the top (docs/timescales.md). Here
the dynamics decide, at every epoch boundary, which bottom layers are done: each layer
that has settled — with every layer below it already frozen — is frozen, the model is
compiled again (Keras fixes the trainable variables at `compile()`) with a copy of the
optimizer that carries over the state of the variables still training (step count,
moments, learning rate), and training goes on. From then on back-propagation stops at
the frozen layers: their weights no longer change, and an epoch costs less.

When a layer has settled is decided by `settle` (`hybrid/settling.py`): by default
the change of its leading filter subspace over the last epoch (`SettleOnChange`), or
the change of its output on a probe sample, or a fixed FreezeOut schedule. The
measures are blind to the optimizer's per-weight step (Adam moves every weight by
about the learning rate whatever the layer).

`snap=True` replaces a layer, at the moment it freezes, by the class-PCA solution of
its current input, rotated onto the current filters (orthogonal Procrustes) — the
paper's direct computation at the moment the dynamics say it is valid. `cache=` hands
the epochs after the last possible freeze to `fit_top`, which runs the frozen prefix
once instead of every step.

Measured on Fashion-MNIST: docs/progressive.md.
"""

import dataclasses
import numbers
import time

import keras
import numpy as np

from keras_classpca._warnings import warn
from keras_classpca.core.class_pca import ClassPCA, _one_blas_thread, labels_to_int
from keras_classpca.core.data_adapter import (
    concatenate_batches,
    fit_style_data_error,
    iter_batches,
    readable_data,
    single_input,
)
from keras_classpca.core.subspace import leading_subspace, subspace_overlap
from keras_classpca.hybrid.graph import ensure_built
from keras_classpca.hybrid.planner import plan_model
from keras_classpca.hybrid.settling import (
    FreezeOut,
    SettleOnChange,
    flat_kernel,
    kernel_matrices,
    linear_cka,
    resolve_settle,
    subspace_rank,
)
from keras_classpca.hybrid.training import (
    CACHE_SETTINGS,
    _cacheable_prefix,
    carry_optimizer,
    check_cache_settings,
    fit_top,
    static_cache_refusal,
)
from keras_classpca.layers.adapt_mixin import warn_unadapted_layers
from keras_classpca.layers.geometry import (
    CONVOLUTIONS,
    assign_solution,
    iter_rows,
    output_size,
)

__all__ = [
    "fit_progressive",
    "SettleOnChange",
    "FreezeOut",
    "ProgressiveReport",
    "linear_cka",
    "carry_optimizer",
]

SNAP_SAMPLES = 1024
SNAP_PATCHES_PER_IMAGE = 4


# ---------------------------------------------------------------------- report
@dataclasses.dataclass
class ProgressiveReport:
    """When each bottom layer froze, and what was measured on the way.

    Attributes:
        layers: names of the bottom layers that could be frozen, bottom first.
        frozen_at: `{name: epoch}` after which each layer froze (0 = frozen before
            training, e.g. solved by `hybridize`); None = trained to the end.
        changes: `{name: [change per epoch]}` as measured by the criterion (None for
            epochs when the layer was already frozen or for a schedule).
        snapped: `{name: {...}}` for layers replaced by class-PCA at freezing: the
            relative change of the kernel and the CKA of the layer's output before
            and after the replacement.
        epoch_seconds: wall time of each epoch (training only, without the checks).
        check_seconds: wall time of the settling checks (and snaps) per epoch.
        criterion: the criterion, as text.
        epochs: the epochs trained (`initial_epoch` + 1, ...).
        cached: whether the last epochs were trained on the cached output of the
            frozen prefix (`cache=`).
    """

    layers: list
    frozen_at: dict
    changes: dict
    snapped: dict
    epoch_seconds: list
    check_seconds: list
    criterion: str
    epochs: list
    cached: bool = False

    def to_dict(self):
        """Plain-Python dict (JSON-serializable), as `HybridReport.to_dict`."""
        return json_safe(dataclasses.asdict(self))

    def __str__(self):
        lines = [f"fit_progressive ({self.criterion}):"]
        for name in self.layers:
            epoch = self.frozen_at.get(name)
            when = "trained to the end" if epoch is None else (
                "frozen before training" if epoch == 0 else f"frozen after epoch {epoch}"
            )
            shown = [f"{c:.4f}" for c in self.changes.get(name, []) if c is not None]
            lines.append(
                f"  {name:<20}{when}" + (f"  (changes: {', '.join(shown)})" if shown else "")
            )
        if self.epoch_seconds:
            times = ", ".join(f"{s:.1f}" for s in self.epoch_seconds)
            lines.append(f"  epoch seconds: {times}")
        if self.cached:
            lines.append("  last epochs trained on the cached output of the frozen layers")
        return "\n".join(lines)


# ---------------------------------------------------------------------- optimizer
def _recompile(model, optimizer):
    arguments = dict(model._compile_config.config)
    arguments["optimizer"] = optimizer
    model.compile(**arguments)


# ---------------------------------------------------------------------- units
@dataclasses.dataclass
class _Unit:
    """A solvable layer of the plan and the BatchNormalization layers adapted with it:
    frozen together."""

    layer: object
    members: list
    input_tensor: object
    output_tensor: object
    scope: tuple = ()
    input_mask: object = None  # `PlanStep.input_mask`

    @property
    def frozen(self):
        return all(
            not layer.trainable or not any(w.trainable for w in layer.weights)
            for layer in self.members
            if layer.weights
        )

    def freeze(self):
        for layer in self.members:
            if layer.weights:
                layer.trainable = False


def _units(plan):
    """The plan's steps in order; the BatchNormalization layers before the first one
    freeze with it, and another normalization with the first step that reads it."""
    units, taken = [], set()
    for i, step in enumerate(plan.steps):
        batchnorms = (plan.leading_batchnorms if i == 0 else []) + step.batchnorms
        norms = [layer for layer in plan.normalizations_read([step])
                 if layer.name not in taken]
        taken.update(layer.name for layer in norms)
        members = [step.layer] + [layer for layer, _, _ in batchnorms] + norms
        units.append(_Unit(step.layer, members, step.input, step.output, step.scope,
                           step.input_mask))
    return units


def json_safe(value):
    """`value` with NumPy scalars and arrays as Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _snappable(layer):
    """Whether `snap=True` can replace `layer` (one kernel over one group of rows)."""
    return isinstance(layer, (keras.layers.Dense,) + CONVOLUTIONS) and (
        isinstance(layer, keras.layers.Dense) or layer.groups == 1
    )


# ---------------------------------------------------------------------- data
def _sample(x, y, samples, seed, need_labels, inputs=None):
    """Up to `samples` inputs (and int labels) from the training data, as numpy; a
    multi-input model's inputs packed into one array (`inputs`, its `InputPacking`),
    as the plan's feature models read them."""
    if inputs is None or isinstance(x, (list, tuple, dict)):
        x = single_input(x, inputs)  # `{"image": x}`, as `fit` takes it
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        x = np.asarray(x)
        keep = np.arange(len(x))
        if samples < len(x):
            keep = np.sort(np.random.default_rng(seed).choice(len(x), samples, replace=False))
        labels = None
        if need_labels:
            if y is None:
                raise ValueError("`y` is needed with array `x` (labels for `snap=True`).")
            labels = labels_to_int(np.asarray(y)[keep])
        return x[keep], labels
    if hasattr(x, "__next__"):
        raise TypeError(
            "`x` is a one-shot iterator: "
            + ("`snap=True` cannot draw the labelled sample it solves from" if need_labels
               else "a probe sample cannot be drawn from it")
            + " without consuming training data. Pass data that can be iterated again "
            "(arrays, tf.data.Dataset, keras.utils.PyDataset)"
            + ("." if need_labels else ", or `settle=SettleOnChange(probe=...)`.")
        )
    xs, ys = [], []
    # Weights in the data are read silently unless `snap` solves from this sample.
    for batch_x, batch_y, *_ in iter_batches(x, y, max_samples=samples, inputs=inputs,
                                             sample_weights=not need_labels):
        xs.append(np.asarray(batch_x))
        ys.append(np.asarray(batch_y))
    if not xs:
        raise ValueError("`x` is empty: no samples to draw the probe from.")
    return concatenate_batches(xs), labels_to_int(np.concatenate(ys)) if need_labels else None


def _predict(model, x, batch_size=256):
    """`model`'s outputs on `x` as a list of numpy arrays (one per model output)."""
    outputs = []
    for start in range(0, len(x), batch_size):
        values = model(x[start : start + batch_size], training=False)
        if not isinstance(values, (list, tuple)):
            values = [values]
        outputs.append([np.asarray(keras.ops.convert_to_numpy(v)) for v in values])
    return [np.concatenate(parts) for parts in zip(*outputs)]


# ---------------------------------------------------------------------- snap
def _snap(plan, unit, x, labels):
    """Replace `unit.layer` by the class-PCA solution of its current input, rotated
    onto the current kernel; returns what changed."""
    layer = unit.layer
    output_model = plan.feature_model(unit.output_tensor, unit.scope)
    features = plan.input_features(unit.input_tensor, unit.scope, unit.input_mask)
    if getattr(features, "selects_rows", False):  # a masked input: its unmasked steps
        inputs, labels = features.all_rows(x, labels)
    else:
        (inputs,) = _predict(features, x)
    (before,) = _predict(output_model, x)
    rng = np.random.default_rng(0)
    pca = ClassPCA(output_size(layer))
    row_options = (
        {} if isinstance(layer, keras.layers.Dense)
        else {"patches_per_image": SNAP_PATCHES_PER_IMAGE}
    )
    for rows, row_labels in iter_rows(layer, inputs, labels, rng=rng, **row_options):
        pca.partial_fit(rows, row_labels)
    current = flat_kernel(layer)
    solved = np.asarray(pca.kernel_, dtype=np.float64)
    bias = np.asarray(pca.bias_, dtype=np.float64)
    if solved.shape != current.shape:  # fewer components than filters: pad with zeros
        padded = np.zeros_like(current)
        padded[:, : solved.shape[1]] = solved
        solved = padded
        bias = np.concatenate([bias, np.zeros(current.shape[1] - len(bias))])
    # Orthogonal Procrustes: the rotation R minimising ||solved R - current||_F; then
    # the current kernel's norm, so the layers above see inputs of the same size.
    u, _, vt = np.linalg.svd(solved.T @ current)
    rotation = u @ vt
    rotated, bias = solved @ rotation, bias @ rotation
    norm = float(np.linalg.norm(rotated))
    scale = float(np.linalg.norm(current)) / norm if norm > 0 else 1.0
    rotated, bias = scale * rotated, scale * bias
    assign_solution(layer, rotated, bias)
    (after,) = _predict(output_model, x)
    return {
        "kernel_change": float(np.linalg.norm(rotated - current) / np.linalg.norm(current)),
        "output_cka": linear_cka(before, after),
        "scale": scale,
    }


# ---------------------------------------------------------------------- callbacks
class _Relay(keras.callbacks.Callback):
    """Hands the events of several `fit` segments to the user's callbacks as one run:
    `on_train_begin` only once, `on_train_end` only after the last segment."""

    def __init__(self, callbacks, controller):
        super().__init__()
        self.callbacks = list(callbacks)
        self.controller = controller
        self.began = False

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def _forward(self, hook, *args, **kwargs):
        for callback in self.callbacks:
            getattr(callback, hook)(*args, **kwargs)

    def on_train_begin(self, logs=None):
        if not self.began:
            self.began = True
            self._forward("on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        if not self.controller.continuing:
            self._forward("on_train_end", logs=logs)


def _relay_hook(hook):
    def method(self, *args, **kwargs):
        self._forward(hook, *args, **kwargs)

    method.__name__ = hook
    return method


for _hook in (
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
):
    setattr(_Relay, _hook, _relay_hook(_hook))


class _Controller(keras.callbacks.Callback):
    """Measures the bottom layers at every epoch end and ends a `fit` segment when some
    have to be frozen."""

    def __init__(self, plan, units, criterion, probe, n_epochs, first_epoch, report):
        super().__init__()
        self.plan = plan
        self.units = units
        self.criterion = criterion
        self.probe = probe
        self.first_epoch = first_epoch
        self.n_epochs = n_epochs
        self.report = report
        self.previous = None
        self.below = {unit.layer.name: 0 for unit in units}
        self.pending = []
        self.continuing = False
        self.user_stopped = False
        self.last_epoch = None
        self.timing_only = False
        self._output_models = {}
        self._epoch_start = None
        if isinstance(criterion, FreezeOut):
            fixed = criterion.fixed_epochs
            if fixed is not None and len(fixed) > len(units):
                raise ValueError(
                    f"`settle` lists {len(fixed)} epochs, one per bottom layer, but "
                    f"{len(units)} layer(s) can freeze here "
                    f"({', '.join(unit.layer.name for unit in units) or 'none'})"
                    + (f": the bottom layers end because {plan.stop_reason}"
                       if plan.stop_reason else ".")
                )
            self.schedule = criterion.freeze_epochs(len(units), n_epochs)
            late = [f"{unit.layer.name} after epoch {epoch}"
                    for unit, epoch in zip(units, fixed or [])
                    if epoch >= n_epochs and not unit.frozen]
            if late:
                warn(
                    f"`settle` freezes {', '.join(late)}, but this call trains {n_epochs} "
                    "epoch(s) (`epochs` - `initial_epoch`; a freeze takes effect for the "
                    "epochs after it): they train to the end.",
                    UserWarning,
                )

    # measuring
    def _state(self):
        """`{name: output on the probe or kernel}` of the units still training."""
        if isinstance(self.criterion, FreezeOut):
            return None
        units = [unit for unit in self.units if not unit.frozen]
        if self.criterion.measure == "subspace":
            return {unit.layer.name: kernel_matrices(unit.layer) for unit in units}
        state = {}
        for unit in units:
            name = unit.layer.name
            if name not in self._output_models:
                self._output_models[name] = self.plan.feature_model(unit.output_tensor,
                                                                    unit.scope)
            (state[name],) = _predict(self._output_models[name], self.probe)
        return state

    def _change(self, now, before):
        if self.criterion.measure == "subspace":
            # The largest move of the layer's filter matrices (two for a separable one).
            return max(
                1.0 - subspace_overlap(leading_subspace(a, rank), leading_subspace(b, rank))
                for a, b in zip(now, before)
                for rank in [subspace_rank(a)]
            )
        return max(0.0, 1.0 - linear_cka(now, before))

    def remeasure(self):
        self.previous = self._state()

    def _settle_limit(self):
        """Units below this index may freeze: `keep_top` spares the layers right under
        the model's head, not those under a layer that cannot be solved (an LSTM, an
        attention block), which trains on above them."""
        spared = self.criterion.keep_top if self.plan.top_is_head else 0
        return len(self.units) - spared

    def can_freeze_more(self):
        """Whether a layer still training may yet be frozen by the criterion."""
        for i, unit in enumerate(self.units):
            if unit.frozen:
                continue
            if isinstance(self.criterion, FreezeOut):
                if self.schedule[i] is not None:
                    return True
            elif i < self._settle_limit():
                return True
        return False

    # hooks
    def on_train_begin(self, logs=None):
        self.continuing = False
        self.pending = []
        if self.previous is None and not self.timing_only:
            self.remeasure()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.report.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        self.report.epochs.append(epoch + 1)
        self.last_epoch = epoch
        if self.timing_only:  # the cached top of `fit_top`: nothing left to measure
            for unit in self.units:
                self.report.changes[unit.layer.name].append(None)
            self.report.check_seconds.append(0.0)
            return
        start = time.perf_counter()
        self.user_stopped = bool(getattr(self.model, "stop_training", False))
        done = epoch + 1 - self.first_epoch  # epochs trained in this call
        with _one_blas_thread():  # NumPy beside a training framework: one thread is faster
            state = self._state()
            changes = {
                name: self._change(value, self.previous[name]) for name, value in state.items()
            } if state is not None else None
        frozen_below = True
        for i, unit in enumerate(self.units):
            name = unit.layer.name
            if unit.frozen:
                self.report.changes[name].append(None)
                continue
            if state is None:
                change = None
                settled = self.schedule[i] is not None and done >= self.schedule[i]
            else:
                change = changes[name]
                self.below[name] = self.below[name] + 1 if change < self.criterion.threshold else 0
                settled = self.below[name] >= self.criterion.patience and (
                    i < self._settle_limit()
                )
            self.report.changes[name].append(change)
            if frozen_below and settled:
                self.pending.append(unit)
            else:
                frozen_below = False
        self.previous = state
        more = epoch + 1 < self.n_epochs + self.first_epoch
        if self.pending and more and not self.user_stopped:
            self.continuing = True
            self.model.stop_training = True
        else:
            self.pending = []
        self.report.check_seconds.append(time.perf_counter() - start)


# ---------------------------------------------------------------------- the loop
def _merge(total, history):
    if total is None:
        return history
    for key, values in history.history.items():
        total.history.setdefault(key, []).extend(values)
    total.epoch.extend(history.epoch)
    return total


def _cache_possible(model, x, fit_kwargs, callbacks, cache):
    """Whether `fit_top` can cache the frozen prefix now; with `cache=True` a warning
    says why not (the epochs then go on with `fit`: never an error after training)."""
    if cache is not True:
        return True  # "auto" decides for itself
    point, _, _, reason = _cacheable_prefix(
        model, x, fit_kwargs.get("validation_data"), True, callbacks)
    if point is None:
        warn(f"`cache=True` but {reason} The remaining epochs train with fit.")
    return point is not None


def fit_progressive(
    model, x=None, y=None, *, epochs, settle="auto", snap=False, cache=False, **fit_kwargs
):
    """`model.fit`, freezing each bottom layer at the epoch boundary where it has settled.

    Call on a compiled model, as `fit`. At the end of every epoch the bottom layers
    that are still training are measured (see `settle`); every layer that has
    settled, with all layers below it already frozen, is frozen; the model is compiled
    again with its compile arguments and a copy of its optimizer carrying the state of
    the variables still training; training goes on from the next epoch. The bottom
    layers are the layers `hybridize` could solve, in its order (`plan_model`: residual
    graphs, nested models, Dense, Conv1D/2D/3D, depthwise and separable convolutions;
    the model's heads always train); a layer is frozen together with the
    BatchNormalization layers adapted after it, and a layer freezes only once every
    layer before it in that order is frozen. Layers already frozen at the bottom
    (solved by `hybridize`) stay frozen; the BatchNormalization layers `hybridize`
    adapted after them (left trainable) freeze with them at the first check.

    Args:
        model: a compiled, built `keras.Model` (Sequential or functional).
        x, y: training data, as for `fit` (arrays, `tf.data.Dataset`,
            `keras.utils.PyDataset`; a one-shot generator with the default measure,
            with `measure="output"` only given `probe=`, never with `snap=True`).
        epochs: as in `fit`: the index of the last epoch (with `initial_epoch`).
        settle: when a layer has settled: `"auto"` (= `SettleOnChange()`: its leading
            filter subspace moved by less than 0.01 (1 - overlap) over the last epoch),
            a number (that threshold), a `SettleOnChange`, `"freezeout"` (=
            `FreezeOut(0.5)`), a `FreezeOut`, or a list of epochs (a fixed schedule:
            bottom layer `i` freezes after epoch `settle[i]` of this call).
        snap: replace each layer, when it freezes, by the class-PCA solution of its
            current input (1,024 training samples), rotated and scaled onto its current
            kernel by orthogonal Procrustes (Dense and one-group convolutions).
        cache: once no layer is left that may still freeze (with arrays `x`, `y`):
            `False` (default) goes on with `fit`; `"auto"` or `True` hands the
            remaining epochs to `fit_top`, which computes the frozen prefix's output
            once and trains the rest on it (`"auto"`: if its timing says that is
            faster). Callbacks see the model itself in those epochs too.
            `True` raises before training when no frozen prefix of this model could
            be cached (e.g. several inputs, a custom `train_step`), and warns and goes
            on with `fit` when the prefix frozen by then cannot be (e.g. it reads a
            Dropout layer). `fit_top`'s cache settings (`memory_limit`, `cache_dir`,
            `output_cache`) may be given with it.
        **fit_kwargs: everything else `fit` takes (`batch_size`, `validation_data`,
            `callbacks`, `initial_epoch`, `verbose`, ...). Callbacks see one run:
            `on_train_begin` once, `on_train_end` once. `BackupAndRestore` is refused
            (its backup does not hold the freezing schedule): use `ModelCheckpoint`.

    Returns:
        The `keras.callbacks.History` of the whole run (all epochs), with
        `history.progressive` a `ProgressiveReport` (when each layer froze, the
        measured changes, the seconds per epoch). `model.optimizer` is the optimizer
        copy in use at the end.

    Example:

    >>> import numpy as np, keras
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(256, 12)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> model = keras.Sequential([keras.Input((12,)),
    ...                           keras.layers.Dense(8, activation="relu", name="hidden"),
    ...                           keras.layers.Dense(2, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> history = fit_progressive(model, x, y, epochs=3, settle=[1], verbose=0)
    >>> history.progressive.frozen_at, model.layers[0].trainable
    ({'hidden': 1}, False)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not getattr(model, "compiled", False) or getattr(model, "_compile_config", None) is None:
        raise ValueError("`model` must be compiled before `fit_progressive` (as before `fit`).")
    error = fit_style_data_error(x, y, "fit_progressive")
    if error is not None:
        raise error
    warn_unadapted_layers(model, "fit_progressive")
    # pandas frames, torch tensors that record gradients: for the probes (and sparse
    # inputs only where no class statistics are computed)
    x, y = readable_data((x, y), sparse_ok=snap is not True)
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive integer; received {epochs!r}.")
    if not isinstance(snap, bool):
        raise TypeError(f"`snap` must be True or False; received {type(snap).__name__}.")
    if not (cache is True or cache is False or (isinstance(cache, str) and cache == "auto")):
        raise ValueError(f"`cache` must be False, 'auto' or True; received {cache!r}.")
    cache_settings = {name: fit_kwargs.pop(name) for name in CACHE_SETTINGS
                      if name in fit_kwargs}
    if cache_settings and cache is False:
        raise ValueError(
            f"`{next(iter(cache_settings))}` sets the prefix-output cache of the last "
            "epochs: pass `cache='auto'` or `cache=True` with it.")
    check_cache_settings(**cache_settings)
    array_data = hasattr(x, "shape") and hasattr(x, "dtype") and y is not None
    initial_epoch = fit_kwargs.pop("initial_epoch", 0)
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) or not (
        0 <= initial_epoch < epochs
    ):
        raise ValueError(
            f"`initial_epoch` must be an integer in [0, epochs); received {initial_epoch!r}."
        )
    callbacks = fit_kwargs.pop("callbacks", None) or []
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            # Its backup holds the weights and the epoch, not which layers froze when:
            # a resumed run would train frozen layers again and repeat an epoch.
            raise ValueError(
                "fit_progressive does not support `BackupAndRestore`: the freezing "
                "schedule is not part of its backup. Use `ModelCheckpoint` (and "
                "`initial_epoch` with a fixed `settle=[...]` schedule to resume)."
            )
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if getattr(optimizer, "use_ema", False):
        # Keras writes the moving averages into the trainable weights at the end of
        # every `fit`; each freeze ends one, so the layers still training would restart
        # from their averages at every freeze.
        raise ValueError(
            "fit_progressive does not support an optimizer with `use_ema=True`: every "
            "freeze ends a `fit` segment, and Keras then writes the moving averages into "
            "the weights still training. Compile with use_ema=False (or train with fit)."
        )
    criterion = resolve_settle(settle)

    if hasattr(x, "shape"):
        ensure_built(model, tuple(x.shape[1:]))
    if cache is True:
        # Refused now, not after epochs of training: what no freeze can change.
        refusal = static_cache_refusal(model, x, fit_kwargs.get("validation_data"), callbacks)
        if refusal is not None:
            raise ValueError(f"`cache=True` but {refusal}")
    plan = plan_model(model)
    units = _units(plan)
    if snap:
        weighted = [name for name in ("sample_weight", "class_weight")
                    if fit_kwargs.get(name) is not None]
        if weighted:
            warn(
                f"`snap=True` solves each layer from class statistics that ignore "
                f"`{weighted[0]}` (every sample counts once); it still weights the "
                "training with `fit`.",
                UserWarning
            )
        for unit in units:
            if not _snappable(unit.layer):
                raise ValueError(
                    f"`snap=True` replaces Dense and convolution layers of one group; "
                    f"{type(unit.layer).__name__} '{unit.layer.name}' is neither: pass "
                    "snap=False for this model."
                )
    report = ProgressiveReport(
        layers=[unit.layer.name for unit in units],
        frozen_at={},
        changes={unit.layer.name: [] for unit in units},
        snapped={},
        epoch_seconds=[],
        check_seconds=[],
        criterion=repr(criterion),
        epochs=[],
    )
    for unit in units:  # a layer the user froze above a training one is frozen too
        report.frozen_at[unit.layer.name] = 0 if unit.frozen else None

    probe = None
    if isinstance(criterion, SettleOnChange) and criterion.measure == "output":
        probe = criterion.probe
        if probe is None:
            probe, _ = _sample(x, y, criterion.samples, criterion.seed, need_labels=False,
                               inputs=plan.input_packing)
        elif plan.input_packing is not None:
            probe = plan.input_packing.pack(probe)
        elif not hasattr(probe, "shape"):
            probe = np.asarray(probe)  # a list of samples of the single input
    # Drawn (and its labels checked) before training: not an epoch later, at a freeze.
    snap_data = (_sample(x, y, SNAP_SAMPLES, 0, need_labels=True, inputs=plan.input_packing)
                 if snap else None)

    n_epochs = epochs - initial_epoch
    controller = _Controller(plan, units, criterion, probe, n_epochs, initial_epoch, report)
    relay = _Relay(callbacks, controller)
    history, epoch = None, initial_epoch
    while True:
        if cache is not False and array_data and not controller.can_freeze_more() and (
            _cache_possible(model, x, fit_kwargs, callbacks, cache)
        ):
            # Nothing left to freeze: the frozen prefix's output is computed once and
            # the rest trained on it (`fit_top`), if `cache` says so.
            controller.timing_only = True
            arguments = dict(fit_kwargs)
            if callbacks:
                arguments["callbacks"] = [relay, controller]
            else:
                arguments["callbacks"] = [controller]
            segment = fit_top(
                model, x, y, epochs=epochs, initial_epoch=epoch, cache=cache,
                **cache_settings, **arguments
            )
            report.cached = bool(segment.cache_used)
            history = _merge(history, segment)
            break
        segment = model.fit(
            x,
            y,
            epochs=epochs,
            initial_epoch=epoch,
            callbacks=[relay, controller] if callbacks else [controller],
            **fit_kwargs,
        )
        history = _merge(history, segment)
        if not controller.continuing:
            break
        epoch = controller.last_epoch + 1
        start = time.perf_counter()
        for unit in controller.pending:
            if snap:
                with _one_blas_thread():
                    report.snapped[unit.layer.name] = _snap(plan, unit, *snap_data)
            unit.freeze()
            report.frozen_at[unit.layer.name] = epoch
        _recompile(model, carry_optimizer(model.optimizer, model.trainable_variables))
        if snap:
            controller.remeasure()
        report.check_seconds[-1] += time.perf_counter() - start
    history.progressive = report
    history.params = dict(history.params or {}, epochs=epochs)
    model.history = history
    return history
