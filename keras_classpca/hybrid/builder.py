"""`hybridize`: compute the bottom layers of an ordinary Keras model from data.

Four parts, one job each:

- the planner (`hybrid/planner.py`) lists the layers class-PCA can solve, in
  topological order of the model's graph, and the BatchNormalization layers to adapt;
- the cutoff policy (`hybrid/policy.py`) decides how many of them to solve (`cutoff=k`
  or `"auto"`);
- the one-layer solver (`hybrid/solver.py`) streams a layer's input through the
  already-solved part of the model batch by batch (never all activations in memory),
  accumulates its class statistics, solves and assigns it;
- the solve cache (`hybrid/cache.py`, `_CacheKeys` below) reuses solved layers.

`hybridize` reads the data through `hybrid/passes.py`, runs them, freezes the solved
layers (`hybrid/freezing.py`: what a solve sets, freezes and releases, and the checks
before it), and leaves the model as it was if anything fails. The user then compiles
and fits the model as usual.
"""

import dataclasses
import inspect
import time

import keras
import numpy as np

from keras_classpca._settings import checked_seed, checked_verbose, drawn_seed
from keras_classpca._warnings import warn
from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.convergence import SubspaceConvergence
from keras_classpca.core.data_adapter import (
    _is_input_dict,
    _is_tf_dataset,
    as_one_class,
    is_infinite,
    is_unlabeled,
    readable_data,
)
from keras_classpca.hybrid import policy
from keras_classpca.hybrid.activations import (
    ActivationReplacer,
    activation_or_none,
    activation_state,
    originals_snapshot,
    reset_originals,
    restore_activation,
    restore_replaced,
)
from keras_classpca.hybrid.cache import (
    SOLVER_VERSION,
    SolveCache,
    data_fingerprint,
    fixed_weights_digest,
    layer_signature,
    prefix_key,
)
from keras_classpca.hybrid.decision import decide_cutoff
from keras_classpca.hybrid.freezing import (
    SOLVED_MARK,
    apply_freeze,
    check_capacity,
    check_cutoff_fits,
    compile_again,
    frozen_by_solve,
    mark_and_freeze,
    release_earlier_solves,
    too_wide_step,
    warn_if_frozen_above,
    warn_if_frozen_before,
)
from keras_classpca.hybrid.graph import (
    ensure_built,
    has_layer_graph,
    no_graph_error,
)
from keras_classpca.hybrid.head import head_refusal, reads_solved_only, warm_start_head
from keras_classpca.hybrid.inputs import input_packing
from keras_classpca.hybrid.passes import DataPasses, infinite_data_error
from keras_classpca.hybrid.planner import plan_model
from keras_classpca.hybrid.policy import check_cutoff
from keras_classpca.hybrid.report import HybridReport, SolvedLayer, format_share
from keras_classpca.hybrid.solver import adapt_batchnorm, solve_layer, statistics_on_device
from keras_classpca.hybrid.training import compile_like
from keras_classpca.layers.adapt_mixin import (
    ClassPCAAdaptMixin,
    solve_options,
    warn_unadapted_layers,
)
from keras_classpca.layers.geometry import (
    LayerStatistics,
    is_solvable_kind,
    iter_layers,
    n_stages,
    start_initializer,
)

CLASS_PCA_OPTIONS = tuple(
    name for name in inspect.signature(ClassPCA).parameters if name != "n_components"
)
__all__ = ["hybridize", "check_settings", "freeze_solved_layers", "solved_layer_names"]

# samples="auto": BatchNormalization layers adapted before any solved layer read this
# many samples (the others read as many as the layer before them).
LEADING_BATCHNORM_SAMPLES = 10_000


# Losses that say the output is over classes (the compiled model's `loss`).
CLASS_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy",
                "binary_crossentropy", "categorical_focal_crossentropy",
                "binary_focal_crossentropy")


def _loss_name(model):
    loss = getattr(model, "loss", None)
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return name if isinstance(name, str) else None


def _single_output(model):
    """`(the model's output tensor, the layer that produces it)` for a single-output
    model (the layer None if no layer of `model.layers` does); None otherwise."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    if isinstance(model, keras.Sequential) and model.layers:
        return outputs[0], model.layers[-1]  # its first call may be of an older graph
    for layer in reversed(model.layers):
        try:
            if layer.output is outputs[0]:
                return outputs[0], layer
        except (AttributeError, ValueError):  # a layer called several times
            continue
    return outputs[0], None


def _is_linear(activation):
    return activation in (None, keras.activations.linear, "linear")


def _regression_head(model):
    """Whether the model's single output is one linear unit not compiled with a
    cross-entropy loss (a regression head)."""
    single = _single_output(model)
    if single is None or single[0].shape[-1] != 1 or _loss_name(model) in CLASS_LOSSES:
        return False
    return single[1] is not None and _is_linear(getattr(single[1], "activation", "other"))


def output_classes(model):
    """How many classes a single-output model's head predicts, or None if it does not
    say: a softmax output's width; 2 for one sigmoid unit; the output's width for
    logits (a linear head) compiled with a cross-entropy loss (2 for one unit)."""
    single = _single_output(model)
    if single is None or single[1] is None or single[0].shape[-1] is None:
        return None
    width, layer = int(single[0].shape[-1]), single[1]
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax) or activation in (
            keras.activations.softmax, "softmax"):
        return width if width >= 2 else None
    if activation in (keras.activations.sigmoid, "sigmoid"):
        return 2 if width == 1 else None  # several sigmoid units: multi-label
    if _is_linear(activation) and _loss_name(model) in CLASS_LOSSES:
        return max(width, 2)
    return None


# Samples per batch of arrays streamed through the model (`hybridize(batch_size=None)`).
DEFAULT_BATCH_SIZE = 256


def _positive_int(value, name):
    """`value` as an int if it is a positive integer (NumPy integers too) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer or None"
            + (' or "auto"' if name == "samples" else "") + f"; received {value!r}."
        )
    return int(value)


def check_settings(
    samples=None, batch_size=None, seed=0, patches_per_image=None, verbose=1, freeze=True,
    solved_activation=None, **class_pca_options
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
    ClassPCA(1, **class_pca_options).check_params()  # validates option values up front
    checked_seed(seed)
    checked_verbose(verbose)
    if not (isinstance(freeze, (bool, np.bool_)) or freeze == "kernel"):
        raise ValueError(f"`freeze` must be True, False or 'kernel'; received {freeze!r}.")
    activation_or_none(solved_activation)
    return (
        samples if isinstance(samples, str) and samples == "auto"
        else _positive_int(samples, "samples"),
        _positive_int(batch_size, "batch_size"),
        _positive_int(patches_per_image, "patches_per_image"),
    )


def _planned_passes(plan, target):
    """Passes over the data a solve of `target` layers makes (without cache hits)."""
    steps = plan.cut(target)
    count = len(plan.leading_batchnorms) if steps else 0
    for step in steps:
        count += n_stages(step.layer) + len(step.batchnorms)
    return count


class _ModelState:
    """Weights, `trainable` flags and activations of a model's layers, to put back
    after a failure."""

    def __init__(self, model):
        self.layers = [(layer, layer.get_weights(), layer.trainable,
                        [variable.trainable for variable in layer.weights],
                        activation_state(layer), getattr(layer, SOLVED_MARK, None))
                       for layer in iter_layers(model)]  # nested models' layers too
        self.originals = originals_snapshot([entry[0] for entry in self.layers])

    def restore(self):
        reset_originals([entry[0] for entry in self.layers], self.originals)
        for layer, weights, trainable, variables, activation, mark in self.layers:
            if weights:
                layer.set_weights(weights)
            restore_activation(layer, activation)
            if getattr(layer, SOLVED_MARK, None) != mark:
                setattr(layer, SOLVED_MARK, mark)
            if layer.trainable != trainable:
                layer.trainable = trainable
            for variable, flag in zip(layer.weights, variables):
                if variable.trainable != flag:
                    variable.trainable = flag


class _CacheKeys:
    """Keys of `solve_cache` entries: one per plan step (see SolveCache).

    The key of step `j` covers the flattened graph up to the next step: every layer's
    class, config and the positions of the layers feeding it, so equal architectures
    with other layer names (a new model per tuner trial) share entries.
    """

    def __init__(self, cache, fingerprint, passes, model, plan, settings):
        self.cache = cache
        if cache is None:
            return
        if fingerprint is None:
            if not passes.in_memory:
                raise ValueError(
                    "`data_fingerprint` is required with `solve_cache` when `data` is not "
                    "arrays (a string that changes whenever the data changes)."
                )
            fingerprint = data_fingerprint(*passes.data)
        inputs = keras.tree.flatten(model.inputs)
        self.base = dict(settings, fingerprint=fingerprint, solver=SOLVER_VERSION,
                         input_shape=list(inputs[0].shape[1:]))
        if len(inputs) > 1:  # (single-input keys unchanged: entries on disk stay valid)
            self.base["inputs"] = [[list(t.shape[1:]), keras.backend.standardize_dtype(
                t.dtype)] for t in inputs]
        self.plan = plan
        self._keys = {}
        # `initialize_above`: the steps from `start_at` on are solved as a start (at
        # their initializer's scale), and the steps above them read those.
        self.start_at = None

    def _key(self, j):
        """Step `j`'s key, of the graph as it is when first asked (at the lookup):
        solving the step may replace its activation (`solved_activation`), and a later
        call looks it up as it was before."""
        if j not in self._keys:
            self._keys[j] = self._graph_key(j)
        return self._keys[j]

    def _graph_key(self, j):
        steps = self.plan.steps
        end = steps[j + 1].position if j + 1 < len(steps) else len(self.plan.layers)
        # Weights the solve neither writes nor adapts (a Normalization's statistics, a
        # frozen layer of another kind) change the features: they are part of the key.
        several = "inputs" in self.base
        layers = [dict(layer_signature(layer), parents=self.plan.parents[i],
                       weights=None if is_solvable_kind(layer) or isinstance(
                           layer, keras.layers.BatchNormalization)
                       else fixed_weights_digest([layer]),
                       **({"inputs_read": self.plan.inputs_read[i]} if several else {}))
                  for i, layer in enumerate(self.plan.layers[:end])]
        # A started layer's scale is its initializer's (which plain keys leave out).
        started = {} if self.start_at is None or j < self.start_at else {
            "started_from": self.start_at,
            "start_initializers": [keras.initializers.serialize(start_initializer(s.layer))
                                   for s in steps[self.start_at:j + 1]]}
        return prefix_key(layers=layers, **self.base, **started)

    def lookup(self, j):
        if self.cache is None:
            return None
        return self.cache.get(self._key(j))

    def store(self, j, weights, solved):
        if self.cache is None:
            return
        self.cache.put(self._key(j), {"weights": weights,
                                      "record": {"solved": dataclasses.asdict(solved)}})


def solved_layer_names(model, cutoff):
    """Names of the layers `hybridize(model, ..., cutoff)` solves and freezes: the
    solved layers and the BatchNormalization layers they depend on."""
    plan = plan_model(model)
    return plan.frozen_names(min(cutoff, len(plan.steps)))


def hybridize(
    model,
    data,
    cutoff="auto",
    *,
    samples="auto",
    freeze=True,
    solved_activation=None,
    verbose=1,
    batch_size=DEFAULT_BATCH_SIZE,
    seed=0,
    patches_per_image=None,
    solve_cache=None,
    data_fingerprint=None,
    strategy=None,
    statistics_on="auto",
    warm_head=True,
    initialize_above=False,
    **class_pca_options,
):
    """Solve the bottom layers of `model` with class-PCA and freeze them.

    Works on ordinary `Sequential` and functional models, residual and branching graphs
    and nested models (a backbone used as a layer) included. The layers class-PCA
    solves — Dense (on inputs of any rank), Conv1D/2D/3D (grouped too), depthwise and
    separable convolutions — are taken in topological order of the graph, each once
    every layer with weights it depends on is solved; merges, activations, pooling,
    reshapes, dropout, preprocessing and augmentation layers (inference mode) are
    passed through; BatchNormalization layers get their moving mean and variance from
    the data once what they depend on is solved. A layer with weights of another kind,
    the layers depending on it, and the model's heads (layers feeding no other layer
    with weights) are never solved; `report.stopped_because` names the first of them
    and `report.next_not_taken` why the next solvable layer was not solved.

    Call it before `compile()`: Keras fixes the trainable variables at compile time.
    A model that was already compiled (or fitted) is compiled again after the freeze,
    with its own compile arguments and its optimizer (a copy built on the variables
    still training if it holds state for others, carrying their state, the step count
    and the learning rate; `report.recompiled`), so the solved layers do not go on
    training.

    Either it completes, or it raises and leaves the model as it was: weights,
    BatchNormalization statistics and `trainable` flags are put back on any error.

    Args:
        model: a built Keras model (an unbuilt Sequential is built from the data);
            with several outputs, every head trains and the labels of `data` are
            those the layers are solved for. With several inputs, `x` holds one
            array per input, as `fit` takes it — a list or tuple in the order of
            `model.inputs`, or a dict keyed by their names — and is packed into one
            array for the solve (`hybrid/inputs.py`).
        data: `(x, y)` arrays, a `tf.data.Dataset` of `(x, y)` batches, a keras
            `PyDataset`, or a callable returning a fresh iterable of `(x, y)` batches
            (one pass is made per solved layer, two for a separable convolution, one
            per BatchNormalization layer to adapt). An array `x` alone (no labels)
            solves label-free: each layer gets the leading covariance eigenvectors of
            its own input, layer after layer (the first seed's mode, like PCANet);
            `cutoff` must then be an integer.
        cutoff: the number of solvable layers to solve, in the planner's order (0
            leaves the model untouched), or `"auto"`: decide first, on 2,000 random
            samples, which layers are worth solving (a leave-one-out ridge probe on
            the features before and after each layer, against a threshold that grows
            with the training samples per class; `hybrid/policy.py`), then solve only
            those from the data. `report.evidence` holds the decision. An
            `AutoRule(...)` decides the same way with its own numbers.
        samples: `"auto"` (default): each layer streams the data (arrays in a random
            order) until its class subspaces stop moving (`core/convergence.py`) or
            the data ends — and not before every class it knows of (`n_classes=`,
            one-hot width, a softmax output) has come, so a dataset sorted by class
            is read on; `report.layers[i].samples` says how many it read. An
            integer: use that many samples (a random subset of arrays; the first
            `samples` of a dataset). None: all of them. A dataset that never ends
            (`ds.repeat()`) needs an integer.
        freeze: set solved layers (and the BatchNormalization layers they depend on)
            to `trainable=False`; `"kernel"` freezes only the solved kernels (their
            biases train; back-propagation then reaches the solved layers' outputs but
            computes no kernel gradient); False leaves everything trainable (the
            solved weights are an initialisation). Variable-level flags are not part
            of a layer's config: after `.keras` reloading, freeze the kernels again.
        solved_activation: None (default) keeps each solved layer's activation;
            `"linear"` (or another Keras activation) replaces the activation after
            every solved layer, before the next layer is solved from its outputs: its
            built-in `activation`, and an `Activation` / `ReLU` layer that alone reads
            its output, directly or through its BatchNormalization
            (`hybrid/activations.py`; an activation after a merge is kept). A ReLU
            after a solved layer discards the negative half of every class-PCA
            projection; with `"linear"` the solved layers pass their projections whole
            (the seeds' truncated linear maps): the trained top learned 0.4–2.4 pp
            more on the benchmark MLP and CNN, but less on a held-out residual
            network (docs/benchmarks.md, `bench_lossless`, `bench_identity`). This
            changes the architecture (saved with it in `.keras`); `cutoff="auto"`
            decides on the layers as written. `report.layers[i].replaced_activation`
            names what was replaced. A Dense layer whose activation is replaced gets
            the Dense rule's Fisher directions without its sign pairs (they are for a
            ReLU).
        verbose: 1 (or "auto") shows a progress bar per pass over the data.
        batch_size: batch size for arrays (None: 256). With `samples="auto"` the samples read do
            not depend on it: batches are cut at the check points.
        seed: seed for the order and sub-sampling of the samples, of patches and of
            the "auto" decision. None: a fresh seed each call, drawn once for all of
            them and reported as `report.seed` (the `solve_cache` then only matches a
            call given that seed). A `tf.data` dataset that reshuffles every
            iteration reads other samples on each pass whatever the seed (see
            docs/cutoff.md).
        patches_per_image: for convolutions, use this many random patches of each
            sample instead of all of them (fewer rows, faster solves).
        solve_cache: a `SolveCache`: solved layers are looked up there first and
            stored after solving, keyed by data, prefix architecture and options.
        data_fingerprint: a string identifying the data for `solve_cache` (computed
            from arrays when omitted; required for datasets and generators).
        strategy: a `tf.distribute.Strategy`: each solved layer's class statistics
            are accumulated per replica (the solved prefix runs inside
            `strategy.run`) and all-reduced once (the class count from the model's
            head, or `n_classes` for a head it cannot read; no `patches_per_image`).
            BatchNormalization moments and the `"auto"` decision still come from this
            process's `data`, so every worker must pass the same `data` (see
            docs/distributed.md). TensorFlow backend only. Dense and ungrouped ConvND
            layers of the top model are distributed; others (depthwise, separable,
            grouped, inside a nested model) are solved in this process from `data`.
        statistics_on: where a solved layer's input rows (a convolution's patches) are
            extracted and multiplied: `"device"` — with `keras.ops` on the backend's
            device, from the tensors the solved prefix returns there (only the
            `d x d` products reach the host); `"host"` — in NumPy; `"auto"`
            (default) — on the device when the backend has a GPU or TPU, else on the
            host. The second stage of a separable convolution is always on the host.
        warm_head: when every layer under the model's head is solved (the head then
            reads solved features only), set the head to the least-squares classifier
            of those features — ridge regression on the samples the last layer was
            solved from, its penalty and softmax temperature those of least
            leave-one-out cross-entropy — instead of leaving it random: `fit` then
            refines a linear probe (`hybrid/head.py`; `report.head`, or why not in
            `report.head_not_started`). Above layers that train too
            (`initialize_above=True`, `freeze=False` or `"kernel"`) its temperature
            stays 1: a start sharpened for frozen features would multiply the
            gradients reaching them. Heads it starts: one Dense on flat features
            (at most 8,192; above 2,048 fitted on a uniform sample of 2,048 of the
            samples), the model's only output, softmax or linear over the classes,
            or one sigmoid unit, whose constraints the start satisfies. Its weights
            stay trainable. It costs one
            more pass over the data (a one-shot iterator has none left: the head is
            then not started). False: the head keeps its initialisation.
        initialize_above: also solve every solvable layer above the cutoff, layer
            after layer from the same data, and leave those trainable: the layers
            `fit` trains start from their class-PCA filters instead of their
            initializers' draws — each filter at the output scale its initializer
            gives on the data (the scale the learning rate was chosen for; whitened
            filters diverged under SGD with momentum), and the head (`warm_head`) at
            the ridge classifier, unsharpened. The bottom `cutoff` layers are frozen
            as usual; `report.initialized` names the layers solved as a start. It
            helped networks whose trainable part learns slowly from a random start
            (a MobileNet-like separable network, a VGG-style one) and hurt a residual
            network (`bench_initialize_above`, docs/benchmarks.md): an option, not the
            default. Not with `solved_activation` (it would change the architecture
            of layers that train). With `cutoff=0` every layer trains from its start.
        **class_pca_options: any `ClassPCA` option, for every solved layer (`center`,
            `allocation`, `scaling`, `offset`, `variance_share`, `dedup_threshold`,
            `n_classes`, `discriminant`, `sign_pairs`, `sketch_size`, ...);
            `sign_pairs` / `discriminant` given override the per-layer rules.
            `ClassPCA*` layers in the model are solved with their own options (their
            constructor's), these on top; they count as adapted after, and their
            config then holds the options their weights were solved with.

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
    check_cutoff(cutoff)
    data = readable_data(data)  # pandas frames, torch tensors that record gradients
    label_free = is_unlabeled(data)
    if label_free:
        if policy.is_auto(cutoff):
            raise ValueError(
                "`data` has no labels, and cutoff='auto' decides with a classifier probe: "
                "pass an integer cutoff (the layers to solve) for label-free data, or "
                "`(x, y)`."
            )
        inputs = getattr(model, "inputs", None) or []
        data = as_one_class(data, len(inputs[0].shape) if len(inputs) == 1 else None)
        class_pca_options = {k: v for k, v in class_pca_options.items() if k != "n_classes"}
    samples, batch_size, patches_per_image = check_settings(
        samples, batch_size, seed, patches_per_image, verbose, freeze, solved_activation,
        **class_pca_options
    )
    batch_size = batch_size or DEFAULT_BATCH_SIZE  # None: the default, as in `fit`
    verbose = checked_verbose(verbose)  # "auto": a bar, as `fit`
    seed = drawn_seed(seed)  # one draw for everything that samples: kept in report.seed
    activation = activation_or_none(solved_activation)
    on_device = statistics_on_device(statistics_on)
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not has_layer_graph(model):
        raise no_graph_error(model)
    packing = input_packing(model)  # several inputs: packed into one array to solve
    if packing is None:
        _check_input_name(model, data)
    elif label_free:
        raise ValueError(
            f"`model` has {len(packing.names)} inputs ({', '.join(packing.names)}) and "
            "`data` is one array without labels: pass `((x_1, x_2, ...), y)` or "
            "`({name: x, ...}, y)`, one array per input, as `fit` takes them."
        )
    if samples in (None, "auto") and is_infinite(data):
        raise infinite_data_error()
    if solve_cache is not None and not isinstance(solve_cache, SolveCache):
        raise TypeError(
            "`solve_cache` must be a keras_classpca.SolveCache or None (for a cache on "
            f"disk: `SolveCache(directory=...)`); received {solve_cache!r}."
        )
    if strategy is not None:
        from keras_classpca.distributed import require_tensorflow_backend

        require_tensorflow_backend("`hybridize`")
        import tensorflow as tf

        if not isinstance(strategy, tf.distribute.Strategy):
            raise TypeError(
                "`strategy` must be a tf.distribute.Strategy (e.g. "
                f"`tf.distribute.MirroredStrategy()`) or None; received {strategy!r}."
            )
        if patches_per_image is not None:
            raise ValueError(
                "`patches_per_image` is not available with a tf.distribute `strategy`."
            )

    if not isinstance(warm_head, bool):
        raise TypeError(f"`warm_head` must be True or False; received {warm_head!r}.")
    if not isinstance(initialize_above, (bool, np.bool_)):
        raise TypeError(
            f"`initialize_above` must be True or False; received {initialize_above!r}.")
    if initialize_above and activation is not None:
        raise ValueError(
            "`initialize_above=True` cannot be combined with `solved_activation`: the "
            "replaced activation would change the layers that go on training. Solve "
            "with one of the two.")

    state = _ModelState(model)  # an unbuilt model has no weights yet: flags only
    try:
        report = _solve_and_freeze(
            model, data, cutoff, start=start, samples=samples, freeze=freeze,
            activation=activation, verbose=verbose, warm_head=warm_head,
            batch_size=batch_size, seed=seed, patches_per_image=patches_per_image,
            solve_cache=solve_cache, data_fingerprint=data_fingerprint, strategy=strategy,
            class_pca_options=class_pca_options, label_free=label_free, on_device=on_device,
            inputs=packing, initialize_above=bool(initialize_above),
        )
    except BaseException:
        # Nothing half-done: a failure (or an interrupt) leaves the model as it was.
        state.restore()
        raise
    _warn_if_trained_top_changed(model, state, report)
    warn_unadapted_layers(model, "hybridize", remedy="a `cutoff` that reaches it, or "
                          "`layer.adapt(data)`")
    return report


def _check_input_name(model, data):
    """Raise if `data`'s `x` is a dict whose key is not the model's input name (which
    `fit` refuses: "Missing data for input")."""
    x = data[0] if isinstance(data, (tuple, list)) and data else data
    if _is_tf_dataset(data):  # its element spec names the keys without a read
        spec = data.element_spec
        x = spec[0] if isinstance(spec, tuple) and spec else spec
    inputs = getattr(model, "inputs", None) or []
    if _is_input_dict(x) and len(x) == 1 and inputs:
        (key,) = x
        name = inputs[0].name
        if key != name:
            raise ValueError(
                f"`data` holds the input {key!r}, but the model's input is named "
                f"{name!r}: pass {{{name!r}: x}}, as `fit` requires, or `x` itself."
            )


def _listed(names):
    return ", ".join(f"'{name}'" for name in names)


def _warn_if_trained_top_changed(model, state, report):
    """Warn when the solve changed the weights under layers `fit` has trained: those
    were fitted to the features the solved layers computed before."""
    optimizer = getattr(model, "optimizer", None)
    steps = getattr(optimizer, "iterations", None)
    steps = 0 if steps is None else int(keras.ops.convert_to_numpy(steps))
    if not steps:
        return
    set_now = {name for record in report.layers
               for name in [record.name] + list(record.adapted_batchnorms)}
    if report.head:
        set_now.add(report.head["layer"])  # started from the solved features anew
    changed = [layer.name for layer, weights, *_ in state.layers
               if layer.name in set_now and weights and any(
                   not np.array_equal(before, after)
                   for before, after in zip(weights, layer.get_weights()))]
    trained = [layer.name for layer in iter_layers(model)
               if layer.trainable_weights and layer.name not in set_now]
    if changed and trained:
        warn(
            f"The model was trained before ({steps} optimizer steps): hybridize replaced "
            f"the weights of {_listed(changed)}. Its other trainable layers "
            f"({_listed(trained[:5])}{', ...' if len(trained) > 5 else ''}) still hold "
            "weights fitted to what those layers computed before. Train the model again "
            "(`fit`), or solve before training.",
            UserWarning
        )


def _check_input_shape(model, x):
    """Raise a `ValueError` when the samples of `x` cannot be the model's input (a fixed
    size differs; like Keras, a rank one short or long by a trailing axis of 1 is fine)."""
    inputs = keras.tree.flatten(getattr(model, "inputs", None) or [])
    if len(inputs) != 1 or not hasattr(x, "shape"):
        return
    expected, got = tuple(inputs[0].shape[1:]), tuple(x.shape[1:])
    if len(got) == len(expected) + 1 and got[-1:] == (1,):
        got = got[:-1]
    elif len(expected) == len(got) + 1 and expected[-1:] == (1,):
        expected = expected[:-1]
    if len(got) != len(expected) or any(
        e is not None and g is not None and e != g for e, g in zip(expected, got)
    ):
        raise ValueError(
            f"`data` holds samples of shape {tuple(x.shape[1:])}, but the model's input "
            f"has shape {tuple(inputs[0].shape[1:])} (None: any size): pass data the "
            "model takes (resize or reshape it, or build the model for it)."
        )


def _solve_and_freeze(model, data, cutoff, *, start, samples, freeze, verbose, batch_size, seed,
                      patches_per_image, solve_cache, data_fingerprint, strategy,
                      class_pca_options, label_free=False, on_device=False, activation=None,
                      inputs=None, warm_head=False, initialize_above=False):
    """`hybridize` after its arguments were checked; may leave the model half-done."""
    passes = DataPasses(data, samples, batch_size, seed, class_pca_options.get("n_classes"),
                         inputs=inputs)
    if not model.built or not getattr(model, "inputs", None):
        first_x, _ = passes.peek()
        ensure_built(model, first_x.shape[1:])
    plan = plan_model(model)
    if inputs is not None:
        # One packing for the data and the sub-models: the sizes of inputs declared of
        # unknown size (`Input((None,))`) come from the first data it packs.
        plan.input_packing = inputs
        if not inputs.resolved:
            passes.peek()
    if passes.in_memory:  # (a stream's first batch would cost a read here)
        _check_input_shape(model, passes.data[0])
    passes.model_classes = None if label_free else output_classes(model)
    passes.label_free = label_free
    passes.regression_head = _regression_head(model)
    if passes.in_memory:
        passes.check_classes(len(np.unique(passes.int_labels(passes.data[1]))),
                             f"the {samples} samples drawn from `data` (`samples`)"
                             if passes.drawn else "`data`")
    auto = policy.is_auto(cutoff)
    report = HybridReport(
        cutoff=0,
        cutoff_mode="auto" if auto else "fixed",
        candidates=plan.names,
        stopped_because=plan.stop_reason,
        label_free=label_free,
        seed=seed,
    )
    # Activations an earlier call replaced go back first: this call's `cutoff` and
    # `solved_activation` alone decide which are replaced (and the decision and the
    # solves see the model as it was built).
    restored = restore_replaced(model, [step.layer for step in plan.steps])
    if not auto:
        check_cutoff_fits(plan, cutoff)
    if auto and not plan.steps:
        # An explicit cutoff this model cannot give raises (`check_cutoff_fits`); the
        # default would otherwise return a model it left as it was, without a word.
        warn("hybridize solved nothing: "
             + (plan.stop_reason or "the model has no layer with weights to solve."),
             UserWarning)
    if (cutoff == 0 and not initialize_above) or not plan.steps:
        _solve_nothing(model, plan, report, restored)
        report.seconds = time.perf_counter() - start
        return report
    if auto and passes.one_shot:
        raise TypeError(
            "`data` is a one-shot iterator but cutoff='auto' reads it more than once: the "
            "'auto' decision reads a sample first, then one pass per solved layer follows. "
            "Pass arrays, a tf.data.Dataset, a keras PyDataset, or a callable returning a "
            "fresh generator (or an integer cutoff)."
        )
    # Which solved layers get sign pairs / spare filters, and the activations replaced.
    replacer = ActivationReplacer(model, activation)
    cutoff = _choose_cutoff(plan, passes, cutoff, report, replacer, class_pca_options,
                            seed=seed, verbose=verbose, label_free=label_free)
    warn_if_frozen_before(plan, cutoff)
    # `initialize_above`: the layers above the cutoff are solved too, as a start.
    # A layer too wide for the classes ends the start (training starts it as written).
    n_solve = cutoff
    if initialize_above:
        wide = None if label_free else too_wide_step(
            plan, len(plan.steps), passes.expected_classes(), class_pca_options, replacer)
        n_solve = max(cutoff, len(plan.steps) if wide is None else wide[0])
    needed = _planned_passes(plan, n_solve)
    if passes.one_shot and needed > 1:
        raise TypeError(
            f"`data` is a one-shot iterator but hybridize needs {needed} passes over it here "
            "(one per solved layer, two for a separable convolution, one per "
            "BatchNormalization to adapt): pass arrays, a tf.data.Dataset, a keras "
            "PyDataset, or a callable returning a fresh generator."
        )

    keys = _CacheKeys(solve_cache, data_fingerprint, passes, model, plan, {
        "samples": samples, "seed": seed, "batch_size": batch_size,
        "patches_per_image": patches_per_image, "options": class_pca_options,
        # Device products round differently: not the same solve (host keys unchanged).
        **({"on_device": True} if on_device and strategy is None else {}),
        # Later layers are solved from the replaced activation's outputs.
        **({"solved_activation": keras.activations.serialize(activation)}
           if activation is not None else {}),
    })
    if n_solve > cutoff:
        keys.start_at = cutoff
    # samples="auto": passes that do not converge themselves read what the last layer read.
    limit = LEADING_BATCHNORM_SAMPLES if passes.auto else None
    for j, step in enumerate(plan.cut(n_solve)):
        layer = step.layer
        # The layers this step sets: the layer, the BatchNormalization layers it
        # enables, and for the first step those that depend on no solved layer.
        leading = plan.leading_batchnorms if j == 0 else []
        block = [layer] + [bn for bn, _, _ in leading + step.batchnorms]
        cached = keys.lookup(j)
        if cached is not None:
            report.layers.append(_reuse_solve(cached, block, replacer))
            limit = report.layers[-1].samples if passes.auto else None
            continue
        layer_start = time.perf_counter()
        for bn, tensor, scope in leading:
            adapt_batchnorm(passes, plan.batchnorm_features(bn, tensor, scope), bn, verbose, limit)
        solved = _solve_step(
            passes, plan, step, replacer, class_pca_options,
            label=f"Solving {type(layer).__name__} '{layer.name}' ({j + 1}/{n_solve})"
            + ("" if j < cutoff else ", a start: it trains"),
            strategy=strategy, batch_size=batch_size, seed=seed,
            patches_per_image=patches_per_image, verbose=verbose, on_device=on_device,
            n_classes=None if label_free else passes.expected_classes(),
            start_only=j >= cutoff)
        limit = solved.samples if passes.auto else None
        for bn, tensor, scope in step.batchnorms:
            adapt_batchnorm(passes, plan.batchnorm_features(bn, tensor, scope), bn, verbose, limit)
        solved.adapted_batchnorms = [l.name for l in block[1:]]
        solved.seconds = time.perf_counter() - layer_start
        report.layers.append(solved)
        keys.store(j, [l.get_weights() for l in block], solved)

    n_solved = len(report.layers)
    if warm_head and not label_free:
        # Above layers that train too (`initialize_above`, `freeze` False or "kernel"),
        # a start sharpened for frozen features would amplify their gradients: the
        # head is then the ridge classifier as fitted.
        all_frozen = n_solve == cutoff and isinstance(freeze, (bool, np.bool_)) and freeze
        _start_head(plan, passes, report, limit, verbose, sharpen=bool(all_frozen))
    if n_solved < len(plan.steps):
        next_name = plan.steps[n_solved].layer.name
        report.next_not_taken = (
            plan.reason_after(n_solved) if not auto
            else f"cutoff='auto': {next_name} was not kept ("
            + _why_not_kept(report.evidence, next_name) + ")."
        )
    replaced_again = {record.name for record in report.layers if record.replaced_activation}
    report.restored_activations = {name: value for name, value in restored.items()
                                   if name not in replaced_again}
    mark_and_freeze(model, plan, report, freeze, class_pca_options, frozen_count=cutoff)
    report.cutoff = cutoff
    report.initialized = [record.name for record in report.layers[cutoff:]]
    report.seconds = time.perf_counter() - start
    return report


def _solve_nothing(model, plan, report, restored):
    """Cutoff 0 (or nothing to solve): release what an earlier call solved and froze,
    and compile again if that changed what trains."""
    report.restored_activations = restored
    released = release_earlier_solves(plan, 0, restored)
    warn_if_frozen_above(plan, 0)
    if (released or restored) and getattr(model, "compiled", False):
        compile_like(model, model)
        report.recompiled = True


def _choose_cutoff(plan, passes, cutoff, report, replacer, class_pca_options, *, seed,
                   verbose, label_free):
    """The layers to solve: a fixed `cutoff` checked against what the classes can give,
    or the "auto" decision (its evidence in `report`)."""
    if not policy.is_auto(cutoff):
        check_capacity(plan, cutoff, 1 if label_free else passes.expected_classes(),
                       class_pca_options, replacer)
        return cutoff
    decided, report.evidence = _decide(plan, passes, class_pca_options, seed, verbose,
                                       policy.rule_of(cutoff))
    asked = _asked_for(plan)
    if asked > decided:
        # A ClassPCA* layer is frozen from construction: the model asks for its solve,
        # and left out it would keep random weights. It and every layer below it are
        # solved, whatever the probe says.
        report.evidence["class_pca_layer"] = dict(
            layer=plan.steps[asked - 1].layer.name, cutoff=asked, rule_cutoff=decided)
        return asked
    return decided


def _solve_step(passes, plan, step, replacer, class_pca_options, *, label, strategy,
                batch_size, seed, patches_per_image, verbose, on_device, n_classes,
                start_only=False):
    """Solve one step's layer from the data and assign its weights (and replace its
    activation if asked): its `SolvedLayer` (`seconds` for the caller to set). A layer
    solved as a start only (`initialize_above`) gets its initializer's scale."""
    layer = step.layer
    feature_model = plan.input_features(step.input, step.scope, step.input_mask)
    convergence = SubspaceConvergence(n_classes=n_classes) if passes.auto else None
    # Sign pairs are for a ReLU, which discards each projection's negative half: after
    # the identity (or a replaced activation) the pairs would be copies.
    pairs = replacer.sign_pairs(layer)
    spare = replacer.sign_pairs(layer, through_batchnorm=False)
    options = solve_options(layer, class_pca_options)
    if strategy is not None and _distributable(step):
        statistics, seen = _distributed_statistics(
            passes, plan, step, feature_model, strategy, batch_size, options,
            dense_sign_pairs=pairs, spare_filters=spare)
    else:
        statistics, seen = solve_layer(
            passes, feature_model, layer, options, seed=seed,
            dense_sign_pairs=pairs, spare_filters=spare,
            patches_per_image=patches_per_image, verbose=verbose, label=label,
            convergence=convergence, on_device=on_device,
        )
    if start_only:
        statistics.match_initializer_scale()
    statistics.assign()
    return SolvedLayer(
        name=layer.name,
        kind=type(layer).__name__,
        samples=seen,
        rows=statistics.rows,
        seconds=0.0,
        explained_variance=statistics.explained_variance(),
        n_components=statistics.n_components,
        sample_checks=list(convergence.history) if convergence is not None else [],
        converged=None if convergence is None else convergence.converged_at is not None,
        fisher_sign_pairs=statistics.dense_remedies,
        sign_paired=(None if statistics.dense_remedies is None
                     else bool(statistics.dense_remedies and pairs)),
        replaced_activation=replacer.replace(layer),
        sketch_size=statistics.sketch_size,
        classes_without_filters=statistics.classes_without_filters,
        spare_filters=statistics.spare_filter_count,
    )


def _start_head(plan, passes, report, limit, verbose, sharpen=True):
    """`warm_head`: start the head at the least-squares classifier of the solved
    features when it reads solved features only (else say why not in `report`)."""
    solved = len(report.layers)
    if passes.regression_head or not reads_solved_only(plan, solved):
        return
    refusal = head_refusal(plan, solved, passes.expected_classes())
    if refusal is None and passes.one_shot:
        refusal = "a one-shot iterator has no pass left for it"
    if refusal is None:
        report.head, report.head_not_started = warm_start_head(
            plan, passes, limit=limit, verbose=verbose, sharpen=sharpen)
    else:
        report.head_not_started = refusal


def _reuse_solve(cached, block, replacer):
    """Set `block` (a layer and the BatchNormalization layers it enables) from a solve
    cache entry; its `SolvedLayer` record, under this model's layer names."""
    layer = block[0]
    for l, weights in zip(block, cached["weights"]):
        l.set_weights(weights)
    # Same architecture, possibly other layer names (a new model per trial).
    record = dict(cached["record"]["solved"], name=layer.name,
                  adapted_batchnorms=[l.name for l in block[1:]])
    record["replaced_activation"] = replacer.replace(layer)
    return SolvedLayer(**record)


def freeze_solved_layers(model, cutoff, freeze=True, solved_activation=None):
    """Leave `model` as `hybridize(model, ..., cutoff, freeze=freeze,
    solved_activation=solved_activation)` leaves it, without solving: the layers it
    freezes frozen, the activations it replaces replaced, and the layers marked as the
    package's (a later `hybridize` solves them without the warning for user-frozen
    layers). For a model whose solved weights come from a checkpoint, e.g. a KerasTuner
    trial's, or a `.keras` file (which keeps layer flags, not per-weight ones: see
    docs/serving.md). A compiled model is compiled again with its own arguments, as by
    `hybridize`. Returns the frozen names.

    Args:
        model: a built functional or `Sequential` model.
        cutoff: the number of solved layers (a non-negative integer, at most the
            layers `hybridize` can solve in this model).
        freeze: True, False or "kernel", as in `hybridize`.
        solved_activation: as in `hybridize`.
    """
    if policy.is_auto(cutoff):
        raise ValueError(
            "`cutoff` must be the number of solved layers (e.g. `report.cutoff` of the "
            "hybridize call that solved them), not 'auto'.")
    policy.check_cutoff(cutoff)
    check_settings(freeze=freeze, solved_activation=solved_activation)
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    plan = plan_model(model)
    check_cutoff_fits(plan, cutoff)
    if cutoff == 0:
        return []
    replacer = ActivationReplacer(model, activation_or_none(solved_activation))
    replaced_any = bool(restore_replaced(model, [step.layer for step in plan.steps]))
    for step in plan.steps[:cutoff]:
        replaced_any = bool(replacer.replace(step.layer)) or replaced_any
    for layer in frozen_by_solve(plan, cutoff):
        setattr(layer, SOLVED_MARK, True)
    frozen = apply_freeze(plan, cutoff, freeze) if freeze else []
    if frozen or replaced_any:
        compile_again(model, "freeze_solved_layers")
    return frozen


def _asked_for(plan):
    """The cutoff that reaches the plan's last `ClassPCA*` layer not adapted yet (0 if
    there is none)."""
    return max((j + 1 for j, step in enumerate(plan.steps)
                if isinstance(step.layer, ClassPCAAdaptMixin) and not step.layer.is_adapted),
               default=0)


def _decide(plan, passes, class_pca_options, seed, verbose, rule=policy.DEFAULT_RULE):
    """`cutoff="auto"`: the decision on a sample (`hybrid/decision.py`)."""
    x, labels = passes.head(policy.DECISION_SAMPLES, passes.expected_classes())
    present = len(np.unique(labels))
    passes.check_classes(present, "the 'auto' decision sample")
    # Classes counted, not the largest id: ids may be sparse ({3, 7, 100}).
    n_classes = class_pca_options.get("n_classes") or max(present,
                                                         passes.expected_classes() or 0)
    n_train = passes.estimated_size()
    if n_train is None:
        # A dataset of unknown length: a short one ended within the decision sample;
        # otherwise it counts as large (the rule's threshold at 10,000 per class).
        n_train = len(x) if len(x) < policy.DECISION_SAMPLES else 10_000 * n_classes
    return decide_cutoff(
        plan, (x, labels), class_pca_options, n_classes=n_classes,
        samples_per_class=n_train / n_classes, rule=rule, seed=seed,
        verbose=verbose, sign_pairs=ActivationReplacer(plan.model, None).sign_pairs,
    )


def _why_not_kept(evidence, name):
    for row in evidence.get("layers", []):
        if row["layer"] == name:
            if "unsolvable" in row:
                return f"the decision sample cannot solve it: {row['unsolvable']}"
            if row["gain"] is None:  # rejected before solving it
                return (f"the probe before it reaches {row['before']:.3f}, so no gain can "
                        f"reach the threshold {row['threshold']:+.3f}")
            why = (f"its probe gain {row['gain']:+.3f} is below the threshold "
                   f"{row['threshold']:+.3f}")
            if row.get("kind") == "Dense":  # never lossless: the probe alone decides
                return why
            kept = format_share(row["explained_variance"])
            return f"{why}, and its filters keep only {kept} of its input's variance"
    return "the decision stopped before it"


def _distributable(step):
    """Whether `hybridize(strategy=...)` accumulates this step's statistics over the
    strategy: Dense and ungrouped ConvND layers of the top model (not a dilated
    Conv3D). Others (depthwise, separable, grouped, inside a nested model, reading a
    masked tensor) are solved in this process from its `data`, as BatchNormalization
    moments are."""
    from keras_classpca.distributed import replica_rows_refusal

    return (not step.scope and step.input_mask is None
            and replica_rows_refusal(step.layer) is None)


def _distributed_statistics(passes, plan, step, feature_model, strategy, batch_size,
                            class_pca_options, dense_sign_pairs=None, spare_filters=None):
    """The tf.distribute statistics pass of one layer, as solved `LayerStatistics`."""
    from keras_classpca.distributed import hybridize_layer_pass

    layer = step.layer
    distributed = hybridize_layer_pass(
        passes, layer, feature_model, strategy=strategy, batch_size=batch_size,
        class_pca_options=class_pca_options,
    )
    statistics = LayerStatistics(layer, class_pca_options, dense_sign_pairs=dense_sign_pairs,
                                 spare_filters=spare_filters)
    if statistics.spare_filters:  # (the pass made its ClassPCA with the options given)
        distributed.class_pca.set_params(sign_pairs="spare")
    statistics.class_pcas = [distributed.class_pca]
    statistics.end_pass()
    statistics.rows = distributed.rows
    return statistics, distributed.samples
