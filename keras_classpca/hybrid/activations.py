"""`hybridize(solved_activation=...)`: replace the activation after each solved layer.

A ReLU after a class-PCA layer discards the negative half of every projection; with
`solved_activation="linear"` the solved layers pass their projections whole. The
activations replaced are the solved layer's own (`Dense(..., activation="relu")`) and
an `Activation` or `ReLU` layer that alone reads its output, directly or through a
BatchNormalization that alone reads it (Conv -> BN -> ReLU; both when the convolution
has its own activation too). A `ReLU`
layer can only become the identity (`negative_slope=1`); an activation after a merge
(the ReLU after a residual block's `Add`) is never replaced.
"""

import weakref

import keras

from keras_classpca.hybrid.planner import flatten_graph
from keras_classpca.layers.geometry import rectifies

# A ReLU layer with these settings computes the identity.
IDENTITY_RELU = {"negative_slope": 1.0, "max_value": None, "threshold": 0.0}
RELU_SETTINGS = tuple(IDENTITY_RELU)

# Solved layer -> [(layer holding an activation, its state before the package replaced
# it, its state after)]: what `restore_replaced` puts back when a later hybridize no
# longer solves the layer, or solves it with another `solved_activation`. Kept outside
# the layers (Keras would track a list of layers set as an attribute as sublayers).
_ORIGINALS = weakref.WeakKeyDictionary()


def activation_or_none(solved_activation):
    """The Keras activation function `solved_activation` names, or None to keep each
    solved layer's own; raises a `ValueError` for anything else."""
    if solved_activation is None:
        return None
    error = ValueError(
        "`solved_activation` must be None (keep each solved layer's activation) or a "
        f"Keras activation such as 'linear'; received {solved_activation!r}."
    )
    if not (isinstance(solved_activation, str) or callable(solved_activation)):
        raise error
    try:
        return keras.activations.get(solved_activation)
    except ValueError:
        raise error from None


def _is_identity(relu):
    """Whether a `ReLU` layer computes the identity (`IDENTITY_RELU`)."""
    return all(getattr(relu, setting) == value for setting, value in IDENTITY_RELU.items())


def _relu_text(relu):
    """`"relu"`, or with the settings of a `ReLU` layer that differ from a plain one:
    `"relu(max_value=6.0)"`."""
    plain = {"negative_slope": 0.0, "max_value": None, "threshold": 0.0}
    settings = [f"{key}={getattr(relu, key)}" for key, value in plain.items()
                if getattr(relu, key) != value]
    return f"relu({', '.join(settings)})" if settings else "relu"


ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.ReLU)


def _following_activation_layer(nodes, layer, kinds=ACTIVATION_LAYERS, through_batchnorm=True):
    """The layer of `kinds` (`Activation` / `ReLU`) that alone reads `layer`'s output,
    directly or (`through_batchnorm`) through one BatchNormalization that alone reads
    it; None if there is none."""
    index = next((i for i, node in enumerate(nodes) if node.layer is layer), None)
    for _ in range(2 if through_batchnorm else 1):
        if index is None:
            return None
        readers = [j for j, node in enumerate(nodes) if index in node.parents]
        if len(readers) != 1 or nodes[readers[0]].parents != [index]:
            return None
        index = readers[0]
        reader = nodes[index].layer
        if isinstance(reader, kinds):
            return reader
        if not isinstance(reader, keras.layers.BatchNormalization):
            return None
    return None


class ActivationReplacer:
    """Finds and replaces the activation after each solved layer of `model`."""

    def __init__(self, model, activation):
        self.model, self.activation = model, activation
        self._nodes = None

    def _targets(self, layer):
        """`[(layer holding an activation, its name or None)]` to replace: the solved
        layer's own activation and the `Activation` / `ReLU` layer after it (directly or
        through its BatchNormalization), each where it is not already the target."""
        if self.activation is None:
            return []
        targets = []
        own = getattr(layer, "activation", None)
        if own is not None and own is not keras.activations.linear and own is not self.activation:
            targets.append((layer, None))
        follower = self._follower(layer)
        if isinstance(follower, keras.layers.ReLU):
            if self.activation is keras.activations.linear and not _is_identity(follower):
                targets.append((follower, follower.name))
        elif follower is not None and follower.activation is not self.activation:
            targets.append((follower, follower.name))
        return targets

    def _follower(self, layer, kinds=ACTIVATION_LAYERS, through_batchnorm=True):
        """The `Activation` / `ReLU` layer after `layer` (`_following_activation_layer`)."""
        if self._nodes is None:
            self._nodes, _ = flatten_graph(self.model)
        return _following_activation_layer(self._nodes, layer, kinds, through_batchnorm)

    def would_replace(self, layer):
        """Whether `replace(layer)` changes something."""
        return bool(self._targets(layer))

    def sign_pairs(self, layer, through_batchnorm=True):
        """Whether the Dense rule's sign pairs suit solved `layer`: a rectifier follows
        it (its own activation, or an `Activation` / `ReLU` / `LeakyReLU` layer after
        it, directly or — `through_batchnorm` — through its BatchNormalization) and
        stays (not replaced). `through_batchnorm=False`: whether a convolution gets
        spare filters."""
        if self.would_replace(layer):
            return False  # after the replacement (the identity) pairs would be copies
        if rectifies(getattr(layer, "activation", None)):
            return True
        # A LeakyReLU layer rectifies as `activation="leaky_relu"` does (not replaced:
        # `solved_activation` replaces `Activation` / `ReLU` layers only).
        follower = self._follower(layer, ACTIVATION_LAYERS + (keras.layers.LeakyReLU,),
                                  through_batchnorm)
        if isinstance(follower, keras.layers.ReLU):
            return not _is_identity(follower)
        if isinstance(follower, keras.layers.LeakyReLU):
            return follower.negative_slope < 1.0
        return follower is not None and rectifies(follower.activation)

    def replace(self, layer):
        """Replace the activations after solved `layer`; returns what they were (e.g.
        `"relu"`, `"relu in 're_lu_2'"` for an activation layer, both joined by "; "
        for `Conv(activation="relu") -> BN -> ReLU`), or None."""
        replaced = []
        originals = _ORIGINALS.get(layer, [])
        for holder, name in self._targets(layer):
            before = activation_state(holder)
            if isinstance(holder, keras.layers.ReLU):
                was = _relu_text(holder)
                for setting, value in IDENTITY_RELU.items():
                    setattr(holder, setting, value)
            else:
                was = keras.activations.serialize(holder.activation)
                was = was if isinstance(was, str) else str(was)
                holder.activation = self.activation
            replaced.append(was if name is None else f"{was} in '{name}'")
            if not any(held is holder for held, _, _ in originals):
                originals.append((holder, before, activation_state(holder)))
        if originals:
            _ORIGINALS[layer] = originals
        if replaced:
            _forget_traced_functions(self.model)
        return "; ".join(replaced) or None


def _forget_traced_functions(model):
    # Functions Keras traced with the old activation would go on using it.
    for attribute in ("train_function", "test_function", "predict_function"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)


def _same_state(state, other):
    return state.keys() == other.keys() and all(
        state[key] is other[key] or state[key] == other[key] for key in state)


def restore_replaced(model, layers):
    """Put back the activations the package replaced after `layers` (an earlier
    `hybridize(solved_activation=...)` or `freeze_solved_layers`), where they still
    are as it left them. Returns `{layer name: what was put back}`."""
    restored = {}
    for layer in layers:
        for holder, before, after in _ORIGINALS.pop(layer, []):
            if not _same_state(activation_state(holder), after):
                continue  # changed by hand since: left as it is
            restore_activation(holder, before)
            value = before.get("activation")
            restored[layer.name] = ("relu" if value is None
                                    else keras.activations.serialize(value))
    if restored:
        _forget_traced_functions(model)
    return restored


def originals_snapshot(layers):
    """What `restore_replaced` would put back for `layers`, to `reset_originals` after
    a failed call."""
    return {layer: list(_ORIGINALS[layer]) for layer in layers if layer in _ORIGINALS}


def reset_originals(layers, snapshot):
    for layer in layers:
        if layer in snapshot:
            _ORIGINALS[layer] = snapshot[layer]
        else:
            _ORIGINALS.pop(layer, None)


def activation_state(layer):
    """What `restore_activation` needs to put `layer`'s activation back."""
    if isinstance(layer, keras.layers.ReLU):
        return {setting: getattr(layer, setting) for setting in RELU_SETTINGS}
    activation = getattr(layer, "activation", None)
    return None if activation is None else {"activation": activation}


def restore_activation(layer, state):
    for attribute, value in (state or {}).items():
        if getattr(layer, attribute) is not value:
            setattr(layer, attribute, value)
