"""Plan which layers of a Keras model class-PCA solves, in which order.

The planner reads the model's layer graph through public Keras API only —
`model.operations` / `model.layers` (topologically ordered), `layer.input` and
`layer.output` (the first call of a layer; a Sequential whose first calls are stale is
called once more, `call_tensors`), `keras.Model(inputs, tensor)` for the
sub-graph that computes a tensor — and returns a `Plan`:

- `steps`: every layer class-PCA can solve (`layers.geometry.SOLVABLE`), in
  topological order, each solvable once every layer with trainable weights it depends
  on is solved before it. Merges (`Add`, `Concatenate`, `Multiply`, `Average`, ...),
  projection shortcuts, pooling, activations, reshapes, dropout and augmentation
  layers (inference mode), preprocessing layers (`Rescaling`, `Normalization`,
  `Resizing`) and layers without trainable weights are passed; nested models (a
  backbone used as a layer) are flattened into the graph.
- BatchNormalization anywhere: adapted to the data (moving mean and variance) right
  after the last layer it depends on is solved (before the first step if it depends
  on none); `step.batchnorms` lists them. LayerNormalization, GroupNormalization
  and RMSNormalization pass as they are (`FIXED_NORMALIZATIONS`; nothing to adapt)
  and, like BatchNormalization, are frozen with the solved layers that read them.
- `blocked`: the layers with trainable weights that cannot be solved, and why — a
  kind class-PCA does not solve, a head of the model (a layer that feeds no other
  layer with weights is always trained), or a layer depending on such a layer.

A layer called more than once in the model (shared; counted from the model's config,
whose `inbound_nodes` list every call — a layer of a nested model counts once per call
of that model, and once more if the outer graph calls it too) is not solved: class-PCA
of one call's input does not fit the others, and Keras' public API shows only the first
call. The layers reading its later outputs are blocked too (their input has no producer
in the graph), and so are the layers feeding its later calls (their output has no
reader the graph shows).

`plan.cut(k)` gives the first `k` steps and `plan.reason_after(k)` says why the next
layer was not taken. A subclassed model has no layer graph: `plan_model` raises a
`ValueError` that names the two ways out.
"""

import dataclasses
import functools
import weakref

import keras
import numpy as np

from keras_classpca.hybrid.graph import (
    has_layer_graph,
    no_graph_error,
    normalized_axes,
    predict_batch,
    predict_on_batch,
)
from keras_classpca.hybrid.inputs import input_packing
from keras_classpca.layers.geometry import is_solvable_kind, unsolvable_reason


def _name(layer):
    return f"{type(layer).__name__} '{layer.name}'"


def outer_call_tensors(nested):
    """The tensors a nested model was called on / returned in its parent's graph.

    The one place that depends on a Keras detail: a functional model's own `input` /
    `output` properties give its inner graph's tensors, so the parent's tensors are
    read through `keras.Operation`'s properties (the operation's first call).
    `tests/test_planner.py` checks it on every Keras version the tests run on.
    """
    return (
        keras.tree.flatten(keras.Operation.input.fget(nested)),
        keras.tree.flatten(keras.Operation.output.fget(nested)),
    )


# Sequential models whose layers' first calls are not their current graph, with the
# chain traced again on the model's input (see `call_tensors`).
_RETRACED = weakref.WeakKeyDictionary()


def _chain_layers(model):
    return [op for op in model.layers if not isinstance(op, keras.layers.InputLayer)]


def _retraced_chain(model):
    """`({id(layer): (input tensors, output tensors)}, output tensors)` of a Sequential
    model's current graph when its layers' first calls are not that graph, else None.

    A Sequential built with `add()` after a `keras.Input`, or reloaded from a
    `.keras` file, rebuilds its graph at every `add`: each layer is called once per
    rebuild, and the public `layer.input` / `layer.output` are the tensors of its
    first call, in a graph no longer connected to the model's input. The chain is
    then called once more on the model's input (kept per model and layer list), which
    gives tensors that connect, through public API only.
    """
    if not isinstance(model, keras.Sequential) or not getattr(model, "inputs", None):
        return None
    layers = _chain_layers(model)
    tensor = model.inputs[0]
    for layer in layers:
        called_on, returned = outer_call_tensors(layer)
        if called_on[0] is not tensor:
            break
        tensor = returned[0]
    else:
        return None
    key = tuple(id(layer) for layer in layers)
    cached = _RETRACED.get(model)
    if cached is None or cached[0] != key:
        chain, tensor = {}, model.inputs[0]
        for layer in layers:
            output = layer(tensor)
            chain[id(layer)] = ([tensor], keras.tree.flatten(output))
            tensor = output
        cached = _RETRACED[model] = (key, chain, [tensor])
    return cached[1:]


def call_tensors(model, layer, chain=None):
    """`(input tensors, output tensors)` of `layer`'s call in `model`'s own graph (a
    nested model's: those it was called on and returned in `model`). `chain`: the
    model's `_retraced_chain`, when the caller already has it."""
    chain = _retraced_chain(model) if chain is None else chain
    if chain is not None and id(layer) in chain[0]:
        return chain[0][id(layer)]
    # A layer of the top graph, or an operation Keras inserted in the retraced chain
    # (its first call is that chain's).
    return outer_call_tensors(layer)


def graph_outputs(model):
    """`model.outputs`, as tensors of the graph `flatten_graph` walks."""
    chain = _retraced_chain(model)
    return model.outputs if chain is None else chain[1]


def _adaptable_class(layer):
    """The name of the package's adapt-able layer class for `layer`'s kind."""
    for kind in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
                 keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
                 keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
        if isinstance(layer, kind):
            return f"ClassPCA{kind.__name__}"
    return "ClassPCADense"


def shared_layer_calls(model):
    """`{id(layer): calls}` of the layers called more than once in `model`'s graph,
    read from `get_config()`: a functional model's config lists each layer's
    `inbound_nodes`, one per call. A layer inside a nested model is called once per
    call of that model, and a layer may appear both in a nested model and in the outer
    graph: the calls are counted per layer object over the whole model. Empty when the
    config cannot be built (a custom layer without `get_config`)."""
    try:
        config = model.get_config()
    except Exception:  # noqa: BLE001 - any failure only loses this check
        return {}
    calls = {}

    def walk(config, owner, times):
        for entry in (config or {}).get("layers", []) if isinstance(config, dict) else []:
            if not isinstance(entry, dict):
                continue
            name = (entry.get("config") or {}).get("name") or entry.get("name")
            try:
                layer = owner.get_layer(name)
            except (ValueError, TypeError, AttributeError):
                continue
            # A Sequential's config lists its layers without inbound nodes: one call each.
            n = times * max(len(entry.get("inbound_nodes") or []), 1)
            calls[id(layer)] = calls.get(id(layer), 0) + n
            if isinstance(layer, keras.Model):
                walk(entry.get("config"), layer, n)

    walk(config, model, 1)
    return {key: n for key, n in calls.items() if n > 1}


# Normalizations without statistics to adapt: a layer reading one is solved on its
# output as it is (`gamma`, `beta` at their values), and the normalization is frozen
# with it.
FIXED_NORMALIZATIONS = tuple(getattr(keras.layers, name) for name in (
    "LayerNormalization", "GroupNormalization", "RMSNormalization")
    if hasattr(keras.layers, name))


def _is_fixed_normalization(layer):
    return isinstance(layer, FIXED_NORMALIZATIONS)


def _is_nested_model(operation):
    return isinstance(operation, keras.Model) and has_layer_graph(operation)


# Sequential models with the operations of their graph (see `_operations`).
_SEQUENTIAL_GRAPHS = weakref.WeakKeyDictionary()


def _operations(model):
    """`model`'s operations in topological order. A Sequential model lists only its
    layers; the graph of its tensors also holds the operations Keras inserts between
    them (the `not_equal` computing the mask of an `Embedding(mask_zero=True)`, which
    the layers after it read), read from a functional model over that graph."""
    ops = getattr(model, "operations", None)
    if ops is not None:
        return list(ops)
    if not isinstance(model, keras.Sequential) or not getattr(model, "inputs", None):
        return list(model.layers)
    outputs = graph_outputs(model)
    cached = _SEQUENTIAL_GRAPHS.get(model)
    if cached is None or cached[0] != [id(t) for t in outputs]:
        try:
            operations = list(keras.Model(_single(model.inputs), _single(outputs)).operations)
        except (ValueError, TypeError):  # a graph Keras cannot wrap: its layers, as listed
            operations = list(model.layers)
        cached = _SEQUENTIAL_GRAPHS[model] = ([id(t) for t in outputs], operations)
    return list(cached[1])


def _weighted(operation):
    """A layer the plan must solve or train: a solvable kind with weights (trainable
    or frozen: hybridize solves it again), or any layer with trainable weights.
    Frozen layers of other kinds are fixed functions, like parameter-free ones."""
    if not isinstance(operation, keras.layers.Layer) or not operation.weights:
        return False
    # `trainable_weights`, not each variable's flag: a layer made with
    # `trainable=False` keeps its inner layers' variables marked trainable.
    return is_solvable_kind(operation) or bool(operation.trainable_weights)


@dataclasses.dataclass
class Node:
    """One operation of the flattened graph.

    Attributes:
        layer: the Keras layer (or operation).
        inputs: its input tensors (first call), in the graph of `scope`.
        outputs: its output tensors.
        scope: the chain of nested models from the top model to this layer (empty for
            layers of the top model).
        parents: indices of the nodes producing `inputs` (the model's inputs have none).
    """

    layer: object
    inputs: list
    outputs: list
    scope: tuple
    parents: list = dataclasses.field(default_factory=list)
    orphan: bool = False  # fed by a tensor that no node produces
    masked: bool = False  # its first input carries a Keras mask when the model runs


@dataclasses.dataclass
class PlanStep:
    """A layer to solve.

    Attributes:
        layer: the layer.
        input: its symbolic input tensor (in the graph of `scope`).
        scope: nested models from the top model to the layer (for `feature_model`).
        depends_on: names of the solved layers it depends on (its weighted ancestors).
        batchnorms: BatchNormalization layers to adapt right after it is solved, in
            order, as `(layer, input tensor, scope)`.
        position: index of the layer in `Plan.layers` (the flattened graph).
        output: its symbolic output tensor (in the graph of `scope`).
        input_mask: the symbolic mask its input carries (a Dense layer after
            `Masking` or `Embedding(mask_zero=True)`): it is solved from the unmasked
            steps only, as the layers above it read them. None: no mask.
    """

    layer: object
    input: object
    scope: tuple
    depends_on: list
    batchnorms: list = dataclasses.field(default_factory=list)
    position: int = 0  # index of the layer in `Plan.layers`
    output: object = None
    input_mask: object = None

    @property
    def name(self):
        return self.layer.name


@dataclasses.dataclass
class Plan:
    """Solvable layers of a model in order; see the module docstring."""

    model: object
    steps: list
    blocked: list  # (layer name, reason), in topological order
    leading_batchnorms: list  # adapted before the first step: (layer, input, scope)
    passed: list  # names of layers without trainable weights the data passes through
    layers: list = dataclasses.field(default_factory=list)  # flattened, topological
    parents: list = dataclasses.field(default_factory=list)  # per layer: parent indices
    top_input: tuple = None  # (tensor, scope): the input of the first blocked layer
    top_position: int = None  # index of the first blocked layer in `layers` (None: none)
    top_is_head: bool = False  # the first blocked layer is a head: the last step is under it
    # Trainable normalizations other than BatchNormalization (`FIXED_NORMALIZATIONS`):
    # passed as they are, frozen with the solved layers that read them.
    fixed_normalizations: list = dataclasses.field(default_factory=list)
    # Per layer: positions in `model.inputs` of the model inputs it reads itself (the
    # parents do not show them: several inputs read as one "no parent").
    inputs_read: list = dataclasses.field(default_factory=list)

    @property
    def names(self):
        return [step.name for step in self.steps]

    def cut(self, cutoff):
        """The first `cutoff` steps."""
        return self.steps[:cutoff]

    def reason_after(self, cutoff):
        """Why the plan stops after `cutoff` steps (None when nothing is left)."""
        if cutoff < len(self.steps):
            nxt = self.steps[cutoff].layer
            return f"cutoff={cutoff}: the next solvable layer, {_name(nxt)}, is left to training."
        if self.blocked:
            return self.blocked[0][1]
        return None

    @property
    def stop_reason(self):
        """Why no further layer can be solved (None if every weighted layer can)."""
        return self.blocked[0][1] if self.blocked else None

    def batchnorms_until(self, cutoff):
        """BatchNormalization layers adapted when the first `cutoff` steps are solved."""
        found = list(self.leading_batchnorms) if cutoff else []
        for step in self.steps[:cutoff]:
            found.extend(step.batchnorms)
        return found

    def frozen_names(self, cutoff):
        """Layers to freeze after solving `cutoff` steps, in graph order: the solved
        layers and the normalization layers any solved layer depends on (they must not
        move): the BatchNormalization layers adapted, the others as they are."""
        steps = self.steps[:cutoff]
        needed = set()
        for step in steps:
            needed.update(step.depends_on)
        names = {step.name for step in steps}
        names.update(layer.name for layer, _, _ in self.batchnorms_until(cutoff)
                     if layer.name in needed)
        names.update(layer.name for layer in self.normalizations_read(steps))
        return [layer.name for layer in self.layers if layer.name in names]

    def normalizations_read(self, steps):
        """The normalizations other than BatchNormalization (`fixed_normalizations`)
        that `steps` depend on, in graph order: frozen with them, as they are."""
        needed = {name for step in steps for name in step.depends_on}
        return [layer for layer in self.layers
                if layer.name in needed and layer.name in self.fixed_normalizations]

    def input_features(self, tensor, scope=(), mask=None):
        """The predictor of a layer's input `tensor`: `feature_model(tensor, scope)`,
        or for an input with a `mask` (`PlanStep.input_mask`, a symbolic mask of the
        graph of `scope`) a `MaskedRows` of its unmasked steps."""
        if mask is None:
            return self.feature_model(tensor, scope)
        return MaskedRows(self.feature_model([tensor, mask], scope))

    def batchnorm_features(self, layer, tensor, scope=()):
        """The predictor of BatchNormalization `layer`'s input `tensor`: on a tensor
        with a mask in its graph, of its unmasked steps when the layer normalizes the
        last axis (Keras' BatchNormalization computes its training moments over those)."""
        mask = getattr(tensor, "_keras_mask", None)
        rank = len(tensor.shape)
        if mask is not None and (normalized_axes(layer, rank) != [rank - 1]
                                 or tuple(mask.shape) != tuple(tensor.shape[:-1])):
            mask = None
        return self.input_features(tensor, scope, mask)

    @functools.cached_property
    def input_packing(self):
        """The `InputPacking` of a multi-input model (`hybrid/inputs.py`): its feature
        models read the inputs packed into one array. None for a single input."""
        return input_packing(self.model)

    def feature_model(self, tensor, scope=()):
        """A predictor from the model's input to `tensor` (or a list of tensors) of the
        graph of `scope` — from the packed inputs (`input_packing`) for a multi-input
        model.

        A `keras.Model` for tensors of the top model; for a tensor inside nested
        models, a `FeatureModel` that runs one sub-model per nesting level.
        """
        models, source = [], tensor
        for nested in reversed(scope):
            models.append(keras.Model(_single(nested.inputs), source))
            source = _single(outer_call_tensors(nested)[0])  # what it was called on
        if self.input_packing is not None:
            models.append(self.input_packing.feature_model(source))
        else:
            models.append(keras.Model(_single(self.model.inputs), source))
        models.reverse()
        return models[0] if len(models) == 1 else FeatureModel(models)


def _single(inputs):
    """One input as a tensor, not a list of one (what a model is then called with)."""
    inputs = keras.tree.flatten(inputs)
    return inputs[0] if len(inputs) == 1 else inputs


class FeatureModel:
    """Keras models run one after the other: the features of a nested model's tensor."""

    def __init__(self, models):
        self.models = models

    def predict_on_batch(self, x):
        for model in self.models:
            x = keras.tree.map_structure(keras.ops.convert_to_numpy, predict_on_batch(model, x))
        return x

    def __call__(self, x, **kwargs):
        for model in self.models:
            x = model(x, **kwargs)
        return x


class MaskedRows:
    """The unmasked steps of a masked tensor, as rows: `model` returns the tensor and
    its mask; `rows(x, labels, pad_to)` gives `(rows, row_labels)`, one row per step
    the mask keeps, labelled with its sample's label (what a Dense layer applied to
    every step sees of the data, the padded steps left out as the layers above skip
    them)."""

    selects_rows = True

    def __init__(self, model):
        self.model = model

    def rows(self, x, labels, pad_to):
        h, mask = predict_batch(self.model, x, pad_to)
        mask = np.asarray(mask, dtype=bool)
        steps = mask.reshape(len(mask), -1).shape[1]
        return h[mask], np.repeat(np.asarray(labels), steps)[mask.reshape(-1)]

    def all_rows(self, x, labels, batch_size=256):
        """`rows` of all of the in-memory samples `x` (an array, or a list of arrays
        for several inputs), read in batches of `batch_size`."""
        parts = []
        for start in range(0, len(labels), batch_size):
            batch = keras.tree.map_structure(lambda part: part[start:start + batch_size], x)
            parts.append(self.rows(batch, labels[start:start + batch_size], batch_size))
        return tuple(np.concatenate(part) for part in zip(*parts))


def _carries_mask(tensor, masked):
    """Whether `tensor` holds a Keras mask when the model runs: Keras attached one to
    it in the graph, or (`masked`, ids) the planner found one entering a nested model
    reaches it."""
    return getattr(tensor, "_keras_mask", None) is not None or id(tensor) in masked


def _passes_mask_on(layer, inputs):
    """Whether `layer`, its first input masked, returns a masked tensor: it supports
    masking and its `compute_mask` gives a mask (a pooling over the steps does not)."""
    if not getattr(layer, "supports_masking", False) or not inputs:
        return False
    stand_in = keras.KerasTensor(tuple(inputs[0].shape[:-1]), dtype="bool")
    try:
        if len(inputs) == 1:
            return layer.compute_mask(inputs[0], stand_in) is not None
        return layer.compute_mask(inputs, [stand_in] + [None] * (len(inputs) - 1)) is not None
    except Exception:  # noqa: BLE001 - a custom compute_mask: assume the mask goes on
        return True


def flatten_graph(model, scope=(), outer_inputs=None, nodes=None, producer=None,
                  masked=None):
    """Nodes of `model` in topological order, nested models expanded in place.

    `producer` maps `id(tensor)` to the node index that produces it; a nested model's
    input tensors alias the tensors it was called on (`outer_inputs`). `masked`: ids of
    the tensors of nested models that carry a mask coming from outside them (their
    own graph does not show it).
    """
    nodes = [] if nodes is None else nodes
    masked = set() if masked is None else masked
    if producer is None:  # the top model's inputs: produced by "-1"
        producer = {id(t): -1 for t in keras.tree.flatten(model.inputs)}
    if outer_inputs is not None:
        for inner, outer in zip(keras.tree.flatten(model.inputs), outer_inputs):
            if id(outer) in producer:
                producer[id(inner)] = producer[id(outer)]
            if _carries_mask(outer, masked):
                masked.add(id(inner))
    chain = _retraced_chain(model)  # once per walk: each check visits every layer
    for operation in _operations(model):
        if isinstance(operation, keras.layers.InputLayer):
            continue
        if _is_nested_model(operation):
            called_on, returned = call_tensors(model, operation, chain)
            flatten_graph(operation, scope + (operation,), called_on, nodes, producer,
                          masked)
            for inner, outer in zip(keras.tree.flatten(operation.outputs), returned):
                if id(inner) in producer:
                    producer[id(outer)] = producer[id(inner)]
                if _carries_mask(inner, masked):
                    masked.add(id(outer))
            continue
        inputs, outputs = call_tensors(model, operation, chain)
        inputs = [t for t in inputs if hasattr(t, "shape")]
        node = Node(operation, inputs, outputs, scope)
        node.parents = sorted({producer[id(t)] for t in inputs if producer.get(id(t), -1) >= 0})
        node.orphan = any(id(t) not in producer for t in inputs)
        node.masked = bool(inputs) and _carries_mask(inputs[0], masked)
        if node.masked and id(inputs[0]) in masked and _passes_mask_on(operation, inputs):
            masked.update(id(t) for t in outputs)
        index = len(nodes)
        nodes.append(node)
        for t in outputs:
            producer[id(t)] = index
    return nodes, producer


def _masked_rows_refusal(node):
    """Why a layer reading a masked tensor cannot be solved from its unmasked steps
    (None: it can, or it drops the mask and reads every step)."""
    layer = node.layer
    if not layer.supports_masking:
        return None
    mask = getattr(node.inputs[0], "_keras_mask", None)
    if mask is None:  # a mask crossing a nested model: Keras applies it when it runs
        where = (f"inside the nested model '{node.scope[-1].name}', with a mask from "
                 "outside it" if node.scope else "returned by a nested model")
        return (
            f"{_name(layer)} reads a masked tensor {where} (after `Masking` or "
            "`Embedding(mask_zero=True)`): the graph does not show the mask, so its "
            "class statistics would count the padded steps as data. Train it, keep the "
            "masking layer and the layers reading its mask in one model, or solve it on "
            f"unpadded inputs with `{_adaptable_class(layer)}.adapt`."
        )
    if tuple(mask.shape) != tuple(node.inputs[0].shape[:-1]):
        return (
            f"{_name(layer)} reads a masked tensor whose mask, of shape "
            f"{tuple(mask.shape)}, does not mark its input's steps "
            f"{tuple(node.inputs[0].shape[:-1])}: it cannot be solved from the unmasked "
            f"steps. Train it, or solve it with `{_adaptable_class(layer)}.adapt`."
        )
    return None


def plan_model(model):
    """The `Plan` of a built Sequential or functional `model` (see the module docstring):
    what `hybridize` would solve, in which order, and why the rest is not solved.

    Example:

    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="a")(inputs)
    >>> y = keras.layers.Conv2D(4, 1, name="b")(x)
    >>> z = keras.layers.Conv2D(4, 1, name="c")(x)
    >>> merged = keras.layers.Add()([y, z])
    >>> out = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(merged))
    >>> plan = plan_model(keras.Model(inputs, out))
    >>> plan.names, plan.stop_reason
    (['a', 'b', 'c'], "Dense 'out' is the model's last layer with weights (always trained).")
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not has_layer_graph(model):
        raise no_graph_error(model)
    nodes, producer = flatten_graph(model)
    shared = shared_layer_calls(model)

    # Forward: ancestors with trainable weights (solvable or not) and blockers.
    weighted = [_weighted(n.layer) for n in nodes]
    is_bn = [isinstance(n.layer, keras.layers.BatchNormalization) for n in nodes]
    # Normalizations pass (BatchNormalization adapted, the others as they are) and
    # are frozen with the solved layers that read them.
    is_norm = [is_bn[i] or _is_fixed_normalization(n.layer) for i, n in enumerate(nodes)]
    depends = []  # indices of the weighted ancestors of each node, normalizations aside
    bn_parents = []  # indices of its normalization ancestors
    tainted = []  # an ancestor (or itself) reads a tensor no node produces
    origin = []
    for node in nodes:
        deps, bns = set(), set()
        for p in node.parents:
            deps |= depends[p]
            bns |= bn_parents[p]
            if is_norm[p]:
                bns.add(p)
            elif weighted[p]:
                deps.add(p)
        depends.append(deps)
        bn_parents.append(bns)
        tainted.append(node.orphan or any(tainted[p] for p in node.parents))
        # The orphan the taint comes from (the layer to name in the reason).
        origin.append(len(origin) if node.orphan else next(
            (origin[p] for p in node.parents if origin[p] is not None), None))

    # Backward: does a node feed a layer with trainable weights (BN aside)?
    feeds_weighted = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        for p in nodes[i].parents:
            if (weighted[i] and not is_norm[i]) or feeds_weighted[i]:
                feeds_weighted[p] = True

    # Does a node's output reach a dead end — a tensor no node of the graph reads and
    # the model does not return? Then it is read by a call the graph does not show (a
    # later call of a shared layer), not unused.
    outputs = {producer.get(id(t), -1) for t in keras.tree.flatten(graph_outputs(model))}
    has_child = [False] * len(nodes)
    for node in nodes:
        for p in node.parents:
            has_child[p] = True
    dead_end = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        if not has_child[i] and i not in outputs:
            dead_end[i] = True
        for p in nodes[i].parents:
            if dead_end[i] and not (weighted[i] and not is_norm[i]):
                dead_end[p] = True

    # Layers whose first call is in another model: they read tensors this graph does
    # not produce, and no node of this graph reads what that call returned.
    consumed = {id(t) for node in nodes for t in node.inputs}
    foreign = [node.layer for node in nodes
               if node.orphan and not any(id(t) in consumed for t in node.outputs)]
    steps, blocked, taken = [], [], {}
    reasons, heads = {}, set()
    for i, node in enumerate(nodes):
        layer = node.layer
        if not weighted[i] or is_norm[i]:
            continue
        reason = None
        shared_scope = next((m for m in node.scope if id(m) in shared), None)
        if id(layer) in shared or shared_scope is not None:
            via = ("" if shared_scope is None else
                   f" (it is inside the nested model '{shared_scope.name}', which is called "
                   f"{shared[id(shared_scope)]} times)")
            calls = shared.get(id(layer)) or shared[id(shared_scope)]
            reason = (
                f"{_name(layer)} is called {calls} times in the model{via} (a shared "
                "layer): class-PCA of one call's input would not fit the other calls. It "
                "is trained; to solve it, give each call its own layer."
            )
        elif tainted[i]:
            source = nodes[origin[i]].layer if origin[i] is not None else layer
            elsewhere = (f" Layers of this model first called in another model: "
                         f"{', '.join(_name(f) for f in foreign)}." if foreign else "")
            reason = (
                f"{_name(layer)} is fed by a tensor no layer of the graph produces once: "
                f"{_name(source)} reads a tensor whose producer this model's graph does not "
                "show. Keras' public API shows a layer's first call only, so a layer called "
                "more than once, or one first called in another model (e.g. an adapted "
                "preprocessing layer reused in a second model), hides what comes after it."
                f"{elsewhere} Give each model its own layer (for an adapted one, a copy: "
                "`type(layer).from_config(layer.get_config())` and its weights), or pass "
                "an input the model lists."
            )
        elif not is_solvable_kind(layer) or unsolvable_reason(layer):
            reason = unsolvable_reason(layer)
        elif node.masked and (refusal := _masked_rows_refusal(node)):
            reason = refusal
        elif not feeds_weighted[i] and dead_end[i]:
            reason = (
                f"{_name(layer)} feeds a layer call the model's graph does not show (a "
                "later call of a shared layer or nested model, which Keras' public API "
                "does not list), so what it feeds cannot be checked. It is trained; to "
                "solve it, give each call of the shared layer or model its own copy."
            )
        elif not feeds_weighted[i]:
            reason = f"{_name(layer)} is the model's last layer with weights (always trained)."
            heads.add(i)
        else:
            missing = sorted(depends[i] - set(taken), key=lambda j: j)
            if missing:
                first = nodes[missing[0]].layer
                reason = (
                    f"{_name(layer)} depends on {_name(first)}, which cannot be solved: "
                    f"{reasons[missing[0]]}"
                )
        if reason is not None:
            reasons[i] = reason
            blocked.append((layer.name, reason))
            continue
        taken[i] = len(steps)
        # A convolution drops the mask (Keras warns): it reads, and its output carries,
        # the padded steps like any others. A Dense layer passes the mask on.
        mask = (getattr(node.inputs[0], "_keras_mask", None)
                if node.masked and layer.supports_masking else None)
        steps.append(PlanStep(layer, node.inputs[0], node.scope,
                              [nodes[j].layer.name for j in sorted(depends[i])], position=i,
                              output=node.outputs[0], input_mask=mask))

    # BatchNormalization: adapted once every weighted layer it depends on is solved.
    leading = []
    for i, node in enumerate(nodes):
        if not is_bn[i] or tainted[i] or any(j not in taken for j in depends[i]):
            continue
        entry = (node.layer, node.inputs[0], node.scope)
        if not depends[i]:
            leading.append(entry)
        else:
            steps[max(taken[j] for j in depends[i])].batchnorms.append(entry)
    # A solved layer also depends on the normalization layers before it.
    for i, node in enumerate(nodes):
        if i in taken:
            steps[taken[i]].depends_on.extend(nodes[j].layer.name for j in sorted(bn_parents[i]))

    passed = [n.layer.name for i, n in enumerate(nodes) if not weighted[i]]
    first_blocked = next((i for i, n in enumerate(nodes) if n.layer.name in dict(blocked)),
                         None)
    top = (nodes[first_blocked].inputs[0], nodes[first_blocked].scope) if (
        first_blocked is not None) else (_single(graph_outputs(model)), ())
    fixed_normalizations = [n.layer.name for i, n in enumerate(nodes)
                            if is_norm[i] and not is_bn[i] and n.layer.weights]
    model_inputs = {id(t): i for i, t in enumerate(keras.tree.flatten(model.inputs))}
    inputs_read = [sorted({model_inputs[id(t)] for t in n.inputs if id(t) in model_inputs})
                   if not n.scope else [] for n in nodes]
    return Plan(model, steps, blocked, leading, passed, [n.layer for n in nodes],
                [list(n.parents) for n in nodes], top, first_blocked,
                top_is_head=first_blocked in heads, fixed_normalizations=fixed_normalizations,
                inputs_read=inputs_read)
