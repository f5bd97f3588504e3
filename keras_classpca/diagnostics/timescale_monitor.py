"""`TimescaleMonitor`: watch the separation of time scales while a model trains.

Dehmamy, Rohani & Katsaggelos (arXiv 1703.04757) claim that under SGD the lowest layers
of a network converge first, and that a settled layer spans about the same subspace as
the class-based PCA of its own input. This callback measures both during an ordinary
`model.fit()`, for every Dense and Conv2D layer, at the end of every `every` epochs
(and once before training):

* **weight change** — ``‖W_t − W_prev‖_F / ‖W_t‖_F`` of the kernel (bias excluded)
  since the previous check, divided by the epochs between the two checks;
* **overlap** — the mean squared cosine of the principal angles between the layer's
  filter subspace and the subspace of ``ClassPCA(r).components_`` of the layer's
  *current* input (computed on a fixed small sample pushed through the current lower
  layers; conv layers use `patches_per_image` random patches per image). 0 means
  orthogonal, 1 identical; `chance_overlap` is what two random subspaces of the same
  sizes would give. The filter subspace is the span of the kernel's columns, kernel
  flattened to ``(d, n)`` with ``d = kh·kw·C`` for a conv; when a layer has as many
  filters as input dimensions or more (``n ≥ d``, e.g. 32 filters of 5×5×1) that span
  is all of ``R^d`` and the overlap would be 1 trivially, so both sides are cut to
  ``r = min(n, ⌊max_rank_fraction·d⌋)`` dimensions: the kernel's ``r`` leading left
  singular vectors against ``ClassPCA(r)``. With ``n ≤ d/2`` (the default fraction)
  ``r = n`` and the comparison is exactly span(kernel) vs span(ClassPCA(n)).
* **subspace change** — ``1 − overlap`` between the layer's filter subspace (its ``r``
  leading left singular vectors) at this check and at the previous one, per epoch.
  Unlike the weight change it does not depend on the optimizer's per-weight step:
  Adam moves every weight by about the learning rate whatever its layer, so a
  relative weight change stays large even when the filters only rescale or rotate
  within a settled subspace;
* **settling** — a layer *settles* at the first epoch from which its per-epoch weight
  change stays below `settle_threshold` (default 0.05, i.e. the kernel moves by less
  than 5 % of its norm per epoch) at every later check (`settled_epoch`), or its
  subspace change below `subspace_threshold` (default 0.01;
  `subspace_settled_epoch`); `None` while it has not.

It only reads weights and runs inference on its own sample, so training is unchanged
(same seed, same weights with and without it).

Cost: one forward pass of `samples` inputs and one class-PCA per layer per check.
Measured on the Fashion-MNIST benchmark CNN: see `docs/timescales.md`.
"""

import json
import math
import time

import keras
import numpy as np

from keras_classpca._settings import checked_verbose, drawn_seed
from keras_classpca.core.class_pca import ClassPCA, labels_to_int
from keras_classpca.core.subspace import chance_overlap, leading_subspace, subspace_overlap
from keras_classpca.diagnostics.tensorboard import ScalarWriter
from keras_classpca.hybrid.graph import ensure_built
from keras_classpca.layers.geometry import iter_layers, iter_rows, output_size, unsolvable_reason

__all__ = ["TimescaleMonitor", "settled_epoch"]

DEFAULT_SETTLE_THRESHOLD = 0.05
DEFAULT_SUBSPACE_THRESHOLD = 0.01


def settled_epoch(epochs, changes, threshold=DEFAULT_SETTLE_THRESHOLD):
    """The first epoch from which every later change is below `threshold`, else None.

    `epochs` and `changes` are parallel lists; entries whose change is None (the check
    before training) are skipped.

    >>> settled_epoch([0, 1, 2, 3, 4], [None, 0.3, 0.04, 0.06, 0.02], 0.05)
    4
    >>> settled_epoch([0, 1, 2], [None, 0.3, 0.2], 0.05) is None
    True
    """
    settled = None
    for epoch, change in zip(epochs, changes):
        if change is None or (isinstance(change, float) and math.isnan(change)):
            continue
        if change < threshold:
            if settled is None:
                settled = epoch
        else:
            settled = None
    return settled



def _json_float(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class TimescaleMonitor(keras.callbacks.Callback):
    """Record per-layer weight change, class-PCA overlap and settling epochs in `fit()`.

    See the module docstring for the definitions.

    Args:
        data: `(x, y)` training arrays (numpy or anything `np.asarray` takes; `y` integer
            labels or one-hot). A fixed random subset of `samples` of them is used,
            balanced over the classes as far as the data allows.
        layers: names or layer objects to monitor; default every Dense and Conv2D
            layer of the model (nested models included), bottom first; grouped
            convolutions (`groups > 1`) are not monitored.
        every: check every `every` epochs (and after the last epoch).
        samples: size of the fixed sample the overlap is computed on.
        patches_per_image: random patches per image for conv layers (fixed seed).
            With the defaults a conv layer is measured on 512 patch rows: when there are
            fewer rows than input dimensions the class-PCA is solved exactly in the
            span of the rows, which keeps the eigen-solves small (see Cost).
        settle_threshold: per-epoch relative weight change below which a layer counts
            as settled.
        subspace_threshold: per-epoch subspace change below which a layer counts as
            settled by the optimizer-independent measure.
        max_rank_fraction: compare at most `⌊max_rank_fraction·d⌋` dimensions (see the
            module docstring); must lie in (0, 1].
        seed: seed of the sample and patch selection (None: one drawn, kept in
            `seed`).
        path: write the history as JSON there at the end of training.
        log_dir: also write every check to TensorBoard there, as
            `keras.callbacks.TensorBoard` writes its epoch scalars (run `<log_dir>/train`,
            step = index of the epoch just finished, -1 for the check before training):
            tags `timescale/overlap/<layer>`, `timescale/weight_change/<layer>`,
            `timescale/subspace_change/<layer>`,
            `timescale/chance_overlap/<layer>` and, with `noise_ceiling=True`,
            `timescale/noise_ceiling/<layer>`. Needs TensorFlow whatever the backend (the
            `tensorflow` extra); without it the constructor raises `ImportError`.
        batch_size: batch size of the monitor's own forward pass.
        blas_threads: BLAS threads for the monitor's eigen-solves (via `threadpoolctl`
            when installed; None leaves them alone). One thread is 10-20x faster than
            OpenBLAS' default on a machine already busy with training.
        noise_ceiling: also record, per layer and check, the overlap between the
            class-PCA subspaces of two disjoint halves of the sample (`noise_ceiling`
            in the history): how well the sample can pin down the class-PCA subspace
            at all. A filter overlap near it is as close as this measurement can tell.
            Triples the class-PCA work of a check.
        verbose: 1 (or "auto") prints one line per check.
        **class_pca_options: options for the `ClassPCA` of each layer's input
            (defaults: those of `ClassPCA`).

    Attributes:
        history: dict with `epochs` (0 = before training), per-layer `overlap`,
            `weight_change` and `subspace_change` (None at the first check),
            `chance_overlap`, `rank`, `input_dim`, `filters`, `noise_ceiling` (with
            `noise_ceiling=True`), the `settled_epoch` and `subspace_settled_epoch` of
            each layer, and the seconds each check took.

    Example:

    >>> import numpy as np, keras
    >>> from keras_classpca.diagnostics import TimescaleMonitor
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 12)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> model = keras.Sequential([keras.Input((12,)),
    ...                           keras.layers.Dense(4, activation="relu", name="hidden"),
    ...                           keras.layers.Dense(2, activation="softmax", name="out")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> monitor = TimescaleMonitor((x, y), samples=100)
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[monitor])
    >>> monitor.history["epochs"], sorted(monitor.history["layers"])
    ([0, 1, 2], ['hidden', 'out'])
    """

    def __init__(
        self,
        data,
        layers=None,
        every=1,
        *,
        samples=512,
        patches_per_image=1,
        settle_threshold=DEFAULT_SETTLE_THRESHOLD,
        subspace_threshold=DEFAULT_SUBSPACE_THRESHOLD,
        max_rank_fraction=0.5,
        seed=0,
        path=None,
        log_dir=None,
        batch_size=256,
        blas_threads=1,
        noise_ceiling=False,
        verbose=0,
        **class_pca_options,
    ):
        super().__init__()
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"`every` must be a positive integer; received {every!r}.")
        if isinstance(samples, bool) or int(samples) != samples or samples < 2:
            raise ValueError(f"`samples` must be an integer >= 2; received {samples!r}.")
        if patches_per_image is not None and (
            int(patches_per_image) != patches_per_image or patches_per_image < 1
        ):
            raise ValueError(
                "`patches_per_image` must be a positive integer or None; "
                f"received {patches_per_image!r}."
            )
        if not 0.0 < float(settle_threshold):
            raise ValueError(f"`settle_threshold` must be positive; received {settle_threshold!r}.")
        if not 0.0 < float(subspace_threshold) <= 1.0:
            raise ValueError(
                f"`subspace_threshold` must lie in (0, 1]; received {subspace_threshold!r}."
            )
        if not 0.0 < float(max_rank_fraction) <= 1.0:
            raise ValueError(
                f"`max_rank_fraction` must lie in (0, 1]; received {max_rank_fraction!r}."
            )
        seed = drawn_seed(seed)  # (None: drawn once, kept in `self.seed` with the results)
        verbose = checked_verbose(verbose)
        ClassPCA(1, **class_pca_options).check_params()  # validates the options now
        x, y = self._split(data)
        labels = labels_to_int(y)
        keep = self._balanced_sample(labels, int(samples), np.random.default_rng(seed))
        # A multi-input model's `x` (a list, tuple or dict of arrays): each one sampled.
        self._x = keras.tree.map_structure(lambda part: part[keep], x)
        if any(part.dtype.kind in "fc" and not np.all(np.isfinite(part))
               for part in keras.tree.flatten(self._x)):
            raise ValueError("`data` contains NaN or infinite values in `x`.")
        self._y = labels[keep]
        # Halves for the noise ceiling: alternate samples within each class.
        self._half = np.zeros(len(self._y), dtype=np.int64)
        for label in np.unique(self._y):
            self._half[np.flatnonzero(self._y == label)[1::2]] = 1
        if isinstance(layers, (str, keras.layers.Layer)):
            layers = [layers]
        self.layer_spec = None if layers is None else list(layers)
        self.every = int(every)
        self.samples = len(keep)
        self.patches_per_image = None if patches_per_image is None else int(patches_per_image)
        self.settle_threshold = float(settle_threshold)
        self.subspace_threshold = float(subspace_threshold)
        self.max_rank_fraction = float(max_rank_fraction)
        self.seed = seed
        self.path = path
        self.log_dir = log_dir
        self._tensorboard = None if log_dir is None else ScalarWriter(log_dir)
        self.batch_size = int(batch_size)
        self.blas_threads = blas_threads
        self.noise_ceiling = bool(noise_ceiling)
        self.verbose = verbose
        self.class_pca_options = dict(class_pca_options)
        self._layers = None
        self._feature_models = None
        self._previous = {}
        self._last_epoch = 0
        self._start_pending = False  # the check before training waits for its epoch
        self._finished = None  # the last epoch trained (a check is due after it)
        self.history = self._empty_history()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _split(data):
        if isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = data
        else:
            raise TypeError(
                "`data` must be an `(x, y)` pair of arrays (a fixed sample is drawn from it); "
                f"received {type(data).__name__}."
            )
        several = isinstance(x, (tuple, list, dict)) and not hasattr(x, "shape")
        x = keras.tree.map_structure(np.asarray, x) if several else np.asarray(x)
        y = np.asarray(y)
        for part in keras.tree.flatten(x):
            if part.ndim == 0 or len(part) != len(y):
                raise ValueError(
                    f"`x` and `y` must have the same length; received {part.shape} and "
                    f"{y.shape}."
                )
        if len(y) < 2:
            raise ValueError("`data` needs at least 2 samples.")
        return x, y

    @staticmethod
    def _balanced_sample(labels, samples, rng):
        """`samples` indices, as many per class as possible (equal allocation needs
        every class to supply its share of components), sorted."""
        if samples >= len(labels):
            return np.arange(len(labels))
        order = rng.permutation(len(labels))
        classes = np.unique(labels)
        per_class = samples // len(classes)
        chosen = np.concatenate([order[labels[order] == c][:per_class] for c in classes])
        rest = np.setdiff1d(order, chosen, assume_unique=True)
        rest = order[np.isin(order, rest)][: samples - len(chosen)]
        return np.sort(np.concatenate([chosen, rest]))

    def _empty_history(self):
        return {
            "epochs": [],
            "check_seconds": [],
            "layers": {},
            "settled_epoch": {},
            "subspace_settled_epoch": {},
            "settings": {
                "samples": self.samples,
                "patches_per_image": self.patches_per_image,
                "every": self.every,
                "settle_threshold": self.settle_threshold,
                "subspace_threshold": self.subspace_threshold,
                "max_rank_fraction": self.max_rank_fraction,
                "seed": self.seed,
                "class_pca_options": self.class_pca_options,
            },
        }

    def _resolve_layers(self):
        kinds = [
            layer
            for layer in iter_layers(self.model)
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
            and unsolvable_reason(layer) is None
        ]
        # A grouped convolution's kernel is one filter subspace per group of channels,
        # not one subspace of the whole input: the comparison here does not apply.
        grouped = {layer.name for layer in kinds if getattr(layer, "groups", 1) != 1}
        candidates = [layer for layer in kinds if layer.name not in grouped]
        if self.layer_spec is None:
            chosen = candidates
        else:
            by_name = {layer.name: layer for layer in candidates}
            chosen = []
            for item in self.layer_spec:
                name = item if isinstance(item, str) else getattr(item, "name", None)
                if name in grouped:
                    raise ValueError(
                        f"`layers`: {name!r} is a grouped convolution (groups > 1), which "
                        "TimescaleMonitor does not monitor: its filters span one subspace "
                        "per group of channels."
                    )
                if name not in by_name:
                    raise ValueError(
                        f"`layers`: no monitorable Dense/Conv2D layer {item!r} in the model "
                        f"(candidates: {sorted(by_name)})."
                    )
                chosen.append(by_name[name])
        if not chosen:
            raise ValueError("TimescaleMonitor: the model has no Dense or Conv2D layer to monitor.")
        return chosen

    def _build(self):
        from keras_classpca.hybrid.planner import plan_model

        self._layers = self._resolve_layers()
        try:
            self._plan, plan_error = plan_model(self.model), None
        except Exception as error:  # (the plain path below may still read the layers)
            self._plan, plan_error = None, error
        self._packed = None
        self._masked_rows = self._masked_inputs()
        self._from_packed = False
        try:
            inputs = self.model.inputs
            # One input as a tensor; several as the model takes them (a dict by name).
            inputs = inputs[0] if len(inputs) == 1 else self.model.input
            self._feature_models = [keras.Model(inputs, [layer.input for layer in self._layers])]
        except Exception:  # a layer of a nested model: its input is in the inner graph
            self._feature_models = self._nested_feature_models(plan_error)
            self._from_packed = True
        self._ranks = {}

    def _masked_inputs(self):
        """`{layer name: MaskedRows}` for the monitored Dense layers on masked steps
        (after `Masking` or `Embedding(mask_zero=True)`, as the planner finds them):
        measured on the unmasked steps, as the layers above read them."""
        if self._plan is None:
            return {}
        monitored = {id(layer) for layer in self._layers}
        steps = [step for step in self._plan.steps
                 if id(step.layer) in monitored and step.input_mask is not None]
        if steps:
            self._planner_sample()
        return {step.layer.name: self._plan.input_features(step.input, step.scope,
                                                           step.input_mask)
                for step in steps}

    def _planner_sample(self):
        """The sample as the planner's sub-models read it: a multi-input model's inputs
        packed into one row (the sizes of unknown axes come from the sample), packed
        only when such a sub-model is needed."""
        packing = self._plan.input_packing
        if packing is None:
            return self._x
        if self._packed is None:
            self._packed = packing.pack(self._x)
        return self._packed

    def _unmasked_rows(self, name):
        """The rows of the unmasked steps of layer `name`'s input and the sample each
        row comes from (the sample indices ride as the labels)."""
        return self._masked_rows[name].all_rows(self._planner_sample(),
                                                np.arange(self.samples), self.batch_size)

    def _nested_feature_models(self, plan_error):
        """One predictor per monitored layer, through the nested models it lies in
        (the planner's flattened graph)."""
        from keras_classpca.hybrid.planner import flatten_graph

        if plan_error is not None:
            raise ValueError(
                "TimescaleMonitor needs a functional or Sequential model (nested models "
                f"included) whose monitored layers are on its graph: {plan_error}"
            ) from plan_error
        plan = self._plan
        self._planner_sample()  # (resolves the packing before its sub-models are built)
        nodes, _ = flatten_graph(self.model)
        where = {}
        for node in nodes:
            where.setdefault(id(node.layer), node)
        models = []
        for layer in self._layers:
            node = where.get(id(layer))
            if node is None or len(node.inputs) != 1:
                raise ValueError(
                    f"TimescaleMonitor: the input of layer '{layer.name}' is not reachable "
                    "from `model.inputs`; pass `layers=` without it."
                )
            models.append(plan.feature_model(node.inputs[0], node.scope))
        return models

    def _layer_inputs(self):
        outputs = [[] for _ in self._layers]
        x = self._planner_sample() if self._from_packed else self._x
        for start in range(0, self.samples, self.batch_size):
            batch = keras.tree.map_structure(lambda part: part[start:start + self.batch_size], x)
            values = []
            for feature_model in self._feature_models:
                value = feature_model(batch, training=False)
                values.extend(value if isinstance(value, (list, tuple)) else [value])
            for out, value in zip(outputs, values):
                out.append(np.asarray(keras.ops.convert_to_numpy(value)))
        return [np.concatenate(out) for out in outputs]

    def _rank(self, layer, rows, labels):
        """Dimensions compared for `layer`: min(n, ⌊fraction·d⌋, what the sample gives)."""
        d, n = rows.shape[1], output_size(layer)
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        centered = self.class_pca_options.get("center", True)
        # Equal allocation asks every class for r / K components.
        smallest = int(counts.min()) // (2 if self.noise_ceiling else 1)  # halves for the ceiling
        capacity = len(counts) * max(1, min(d, smallest - (1 if centered else 0)))
        return max(1, min(n, int(self.max_rank_fraction * d), capacity))

    def _class_pca_subspace(self, rows, labels, rank):
        rows = rows.astype(np.float64)
        basis = None
        if len(rows) < rows.shape[1]:
            # Every class covariance / second moment lives in the span of the rows:
            # solving in that span is exact and much cheaper than in R^d.
            u, s, vt = np.linalg.svd(rows, full_matrices=False)
            basis = vt[s > 1e-10 * s[0]].T
            rows = rows @ basis
        try:
            components = ClassPCA(rank, **self.class_pca_options).fit(rows, labels).components_
        except ValueError:
            options = dict(self.class_pca_options, dedup_threshold=None)
            components = ClassPCA(rank, **options).fit(rows, labels).components_
        return components if basis is None else basis @ components

    # ------------------------------------------------------------------ measuring
    def measure(self):
        """Current `{layer name: (overlap, kernel (d, n), d, rank, noise ceiling or None)}`."""
        limiter = None
        if self.blas_threads is not None:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # optional: scikit-learn brings it
                threadpool_limits = None
            if threadpool_limits is not None:
                limiter = threadpool_limits(limits=int(self.blas_threads), user_api="blas")
        try:
            return self._measure()
        finally:
            if limiter is not None:
                limiter.restore_original_limits()

    def _measure(self):
        if self._layers is None:
            self._build()
        inputs = self._layer_inputs()
        rng = np.random.default_rng(self.seed)
        result = {}
        for layer, x in zip(self._layers, inputs):
            if layer.name in self._masked_rows:
                rows, sample_of_row = self._unmasked_rows(layer.name)
                rows = rows.reshape(len(rows), -1)
                labels = self._y[sample_of_row]
            else:
                chunks = list(iter_rows(layer, x, self._y,
                                        patches_per_image=self.patches_per_image, rng=rng))
                rows = np.concatenate([c[0] for c in chunks])
                labels = np.concatenate([c[1] for c in chunks])
                per_sample = len(rows) // len(x)
                sample_of_row = np.repeat(np.arange(len(x)), per_sample)
            kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)
            kernel = kernel.reshape(-1, kernel.shape[-1])
            if layer.name not in self._ranks:
                self._ranks[layer.name] = self._rank(layer, rows, labels)
            rank = self._ranks[layer.name]
            try:
                reference = self._class_pca_subspace(rows, labels, rank)
                overlap = subspace_overlap(leading_subspace(kernel, rank), reference)
            except ValueError:
                overlap = float("nan")
            ceiling = None
            if self.noise_ceiling:
                halves = [self._half[sample_of_row] == k for k in (0, 1)]
                try:
                    ceiling = subspace_overlap(
                        *[self._class_pca_subspace(rows[h], labels[h], rank) for h in halves]
                    )
                except ValueError:
                    ceiling = float("nan")
            result[layer.name] = (overlap, kernel, rows.shape[1], rank, ceiling)
        return result

    def _record(self, epoch, tensorboard=True):
        start = time.perf_counter()
        measured = self.measure()
        history = self.history
        epochs_since = max(1, epoch - self._last_epoch)
        for layer in self._layers:
            overlap, kernel, d, rank, ceiling = measured[layer.name]
            entry = history["layers"].setdefault(
                layer.name,
                {
                    "kind": type(layer).__name__,
                    "input_dim": int(d),
                    "filters": int(kernel.shape[1]),
                    "rank": int(rank),
                    "chance_overlap": chance_overlap(rank, rank, d),
                    "overlap": [],
                    "weight_change": [],
                    "subspace_change": [],
                },
            )
            previous = self._previous.get(layer.name)
            if previous is None:
                change = subspace_change = None
            else:
                norm = float(np.linalg.norm(kernel))
                change = (
                    float(np.linalg.norm(kernel - previous)) / norm / epochs_since
                    if norm
                    else float("nan")
                )
                try:
                    subspace_change = (1.0 - subspace_overlap(
                        leading_subspace(kernel, rank), leading_subspace(previous, rank)
                    )) / epochs_since
                except ValueError:  # an all-zero kernel has no subspace
                    subspace_change = float("nan")
            self._previous[layer.name] = kernel
            entry["overlap"].append(_json_float(overlap))
            if ceiling is not None:
                entry.setdefault("noise_ceiling", []).append(_json_float(ceiling))
            entry["weight_change"].append(_json_float(change) if change is not None else None)
            entry["subspace_change"].append(
                _json_float(subspace_change) if subspace_change is not None else None
            )
        history["epochs"].append(int(epoch))
        history["check_seconds"].append(time.perf_counter() - start)
        self._last_epoch = epoch
        if tensorboard:
            self._write_tensorboard(len(history["epochs"]) - 1)
        history["settled_epoch"] = {
            name: settled_epoch(history["epochs"], entry["weight_change"], self.settle_threshold)
            for name, entry in history["layers"].items()
        }
        history["subspace_settled_epoch"] = {
            name: settled_epoch(
                history["epochs"], entry["subspace_change"], self.subspace_threshold
            )
            for name, entry in history["layers"].items()
        }
        if self.verbose:
            parts = []
            for name, entry in history["layers"].items():
                change = entry["weight_change"][-1]
                parts.append(
                    f"{name}: overlap {entry['overlap'][-1] or float('nan'):.3f}"
                    + ("" if change is None else f" dW {change:.3f}")
                )
            print(f"TimescaleMonitor epoch {epoch}: " + " | ".join(parts))

    def _write_tensorboard(self, index):
        """Write check `index` of the history to TensorBoard (step: its epoch - 1)."""
        if self._tensorboard is None:
            return
        scalars = {}
        for name, entry in self.history["layers"].items():
            for key in ("overlap", "weight_change", "subspace_change", "noise_ceiling"):
                if key in entry:
                    scalars[f"timescale/{key}/{name}"] = entry[key][index]
            scalars[f"timescale/chance_overlap/{name}"] = entry["chance_overlap"]
        self._tensorboard.write(self.history["epochs"][index] - 1, scalars)

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, logs=None):
        # An unbuilt Sequential is built by fit's first step: build it now, from the
        # monitor's own samples, as fit would.
        if hasattr(self._x, "shape"):
            ensure_built(self.model, self._x.shape[1:], what="TimescaleMonitor")
        self._build()
        if not self.history["epochs"]:
            # Measured now, labelled at the first `on_epoch_begin` with the epoch
            # training starts from (`initial_epoch`).
            self._record(0, tensorboard=False)
            self._start_pending = True

    def _settle_start(self, epoch):
        if self._start_pending:
            self._start_pending = False
            self.history["epochs"][0] = self._last_epoch = epoch
            self._write_tensorboard(0)

    def on_epoch_begin(self, epoch, logs=None):
        self._settle_start(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._settle_start(0)  # (hooks driven without `on_epoch_begin`)
        done = self._finished = epoch + 1
        last = self.params.get("epochs") if self.params else None
        if done % self.every == 0 or (last is not None and done == last):
            self._record(done)

    def on_train_end(self, logs=None):
        if self._finished is not None and self._finished != self._last_epoch:
            self._record(self._finished)  # stopped early: a check after the last epoch
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self.path is not None:
            self.save(self.path)

    # ------------------------------------------------------------------ output
    def table(self):
        """The history as plain rows: one dict per (epoch, layer)."""
        rows = []
        for i, epoch in enumerate(self.history["epochs"]):
            for name, entry in self.history["layers"].items():
                rows.append(
                    {
                        "epoch": epoch,
                        "layer": name,
                        "overlap": entry["overlap"][i],
                        "chance_overlap": entry["chance_overlap"],
                        "weight_change": entry["weight_change"][i],
                        "subspace_change": entry["subspace_change"][i],
                    }
                )
        return rows

    def format_table(self):
        """A fixed-width text table of the history, plus the settling epochs."""
        lines = [
            f"{'epoch':>5}  {'layer':<16}{'overlap':>9}{'chance':>8}{'dW/W':>9}{'dS':>9}"
        ]
        for row in self.table():
            overlap = "nan" if row["overlap"] is None else f"{row['overlap']:.3f}"
            change = "-" if row["weight_change"] is None else f"{row['weight_change']:.4f}"
            moved = "-" if row["subspace_change"] is None else f"{row['subspace_change']:.4f}"
            lines.append(
                f"{row['epoch']:>5}  {row['layer']:<16}{overlap:>9}"
                f"{row['chance_overlap']:>8.3f}{change:>9}{moved:>9}"
            )
        lines.append(
            f"settled (from then on per-epoch dW/W < {self.settle_threshold:g} | subspace "
            f"change dS < {self.subspace_threshold:g}):"
        )
        for name, epoch in self.history["settled_epoch"].items():
            by_subspace = self.history["subspace_settled_epoch"][name]
            lines.append(
                f"  {name:<16}{'not yet' if epoch is None else f'epoch {epoch}':<10} | "
                f"{'not yet' if by_subspace is None else f'epoch {by_subspace}'}"
            )
        return "\n".join(lines)

    def to_json(self):
        return json.dumps(self.history, indent=1)

    def save(self, path):
        """Write the history to `path` as JSON; returns the path."""
        with open(path, "w") as handle:
            handle.write(self.to_json())
        return path
