"""`AlignmentMonitor`: the layer alignment of Ji & Telgarsky (ICLR 2019), measured.

Ji & Telgarsky ("Gradient descent aligns the layers of deep linear networks")
prove that for a deep linear network ``x -> W_N ... W_1 x`` trained by gradient
descent with the logistic loss on linearly separable data, as the loss goes to
0:

* every ``W_i`` tends to rank one: ``||W_i||_2 / ||W_i||_F -> 1``;
* adjacent layers align: ``|v_{i+1}^T u_i| -> 1``, where ``u_i`` is the top
  *left* singular vector of ``W_i`` (its output side) and ``v_{i+1}`` the top
  *right* singular vector of ``W_{i+1}`` (its input side).

Orientation in Keras.  A ``Dense`` kernel ``K`` is stored ``(in, out)`` and the
layer computes ``x @ K``, so the paper's matrix is ``W = K^T`` (``out x in``).
With ``K = U S V^T``: ``W = V S U^T``, hence ``u_i`` (output side of ``W_i``) is
the first column of ``V`` of ``K_i`` -- the *right* singular vector of the
kernel -- and ``v_{i+1}`` (input side of ``W_{i+1}``) is the first column of
``U`` of ``K_{i+1}`` -- the *left* singular vector of the next kernel.  Both
live in the ``out_i == in_{i+1}`` dimensional space between the two layers.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_classpca.diagnostics.tensorboard import ScalarWriter
from keras_classpca.layers.geometry import iter_layers

__all__ = ["AlignmentMonitor", "spectral_frobenius_ratio", "layer_alignment"]


def _as_matrix(kernel, name):
    k = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    if k.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D Dense kernel (in, out); received shape {k.shape}.")
    return k


def spectral_frobenius_ratio(kernel):
    """``||W||_2 / ||W||_F`` of a Dense kernel: 1 exactly when it has rank one.

    Lies in ``[1 / sqrt(rank), 1]``; transposition does not change it.

    Example:
        >>> import numpy as np
        >>> from keras_classpca.diagnostics.alignment_monitor import spectral_frobenius_ratio
        >>> round(spectral_frobenius_ratio(np.outer([1.0, 2.0], [3.0, 0.0, 1.0])), 6)
        1.0
        >>> round(spectral_frobenius_ratio(np.eye(4)), 6)
        0.5
    """
    k = _as_matrix(kernel, "kernel")
    fro = np.linalg.norm(k)
    if fro == 0:
        return float("nan")
    return float(np.linalg.norm(k, 2) / fro)


def layer_alignment(kernel, next_kernel):
    """``|v_{i+1}^T u_i|`` between two consecutive Dense kernels ``(in, out)``.

    ``u_i`` is the top right singular vector of ``kernel`` (= top left singular
    vector of the paper's ``W_i = kernel.T``) and ``v_{i+1}`` the top left
    singular vector of ``next_kernel`` (= top right singular vector of
    ``W_{i+1}``).

    Example:
        >>> import numpy as np
        >>> from keras_classpca.diagnostics.alignment_monitor import layer_alignment
        >>> a = np.array([0.6, 0.8])                    # the shared direction
        >>> k1 = np.outer([1.0, 0.0, 2.0], a)           # x @ k1 lands on a
        >>> k2 = np.outer(a, [1.0, -1.0])               # x @ k2 reads along a
        >>> round(layer_alignment(k1, k2), 6)
        1.0
    """
    k1 = _as_matrix(kernel, "kernel")
    k2 = _as_matrix(next_kernel, "next_kernel")
    if k1.shape[1] != k2.shape[0]:
        raise ValueError(
            f"kernel outputs ({k1.shape[1]}) must match next_kernel inputs ({k2.shape[0]})."
        )
    _, _, vt1 = np.linalg.svd(k1, full_matrices=False)
    u2, _, _ = np.linalg.svd(k2, full_matrices=False)
    return float(abs(vt1[0] @ u2[:, 0]))



def _feeding_pairs(model, layers):
    """`(a, b)` pairs of `layers` where `b` reads `a`'s output through layers without
    weights only (activations, dropout, reshapes); None without a layer graph."""
    from keras_classpca.hybrid.graph import has_layer_graph
    from keras_classpca.hybrid.planner import flatten_graph

    if not has_layer_graph(model):
        return None
    nodes = flatten_graph(model)[0]
    wanted = {id(layer) for layer in layers}
    pairs = []
    for node in nodes:
        if id(node.layer) not in wanted:
            continue
        parents = node.parents
        while len(parents) == 1 and not getattr(nodes[parents[0]].layer, "weights", None):
            parents = nodes[parents[0]].parents
        if len(parents) == 1 and id(nodes[parents[0]].layer) in wanted:
            pairs.append((nodes[parents[0]].layer, node.layer))
    return pairs


class AlignmentMonitor(keras.callbacks.Callback):
    """Record rank-one-ness and alignment of Dense layers during training.

    At the end of every ``every`` epochs (and once before training) it records,
    for each monitored Dense layer ``i``, ``||W_i||_2 / ||W_i||_F`` and, for each
    consecutive pair, ``|v_{i+1}^T u_i|`` (see the module docstring for which
    singular vector is which with Keras' ``(in, out)`` kernels).  Ji & Telgarsky
    predict that both tend to 1 for deep linear networks trained with the
    logistic loss on separable data.

    Args:
        layers: names or Dense layer objects to monitor, a chain in forward order
            (each consecutive pair aligned); default: every Dense layer of the model
            (``model.layers`` order, nested models flattened), pairs aligned where
            one feeds the next through layers without weights with matching widths.
        every: record every ``every`` epochs.
        log: also add the smallest ratio / alignment to the epoch ``logs``
            (``min_spectral_ratio``, ``min_alignment``) so they appear in
            ``History``: NaN on the epochs between records, so every History list
            stays as long as the loss's.
        log_dir: also write every record to TensorBoard there, as
            ``keras.callbacks.TensorBoard`` writes its epoch scalars (run
            ``<log_dir>/train``, step = epoch index, -1 before training): tags
            ``alignment/ratio/<layer>`` and ``alignment/alignment/<a>-><b>``.
            Needs TensorFlow whatever the backend (the ``tensorflow`` extra);
            without it the constructor raises `ImportError`.

    Attributes:
        epochs: list of the recorded epoch indices (-1: before training).
        ratios: ``dict`` layer name -> list of ``||W||_2 / ||W||_F``.
        alignments: ``dict`` ``"a->b"`` -> list of ``|v_b^T u_a|``.

    Example:

    >>> import numpy as np, keras
    >>> from keras_classpca.diagnostics import AlignmentMonitor
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(4, use_bias=False, name="a"),
    ...     keras.layers.Dense(1, use_bias=False, name="b")])
    >>> model.compile("sgd", "mse")
    >>> monitor = AlignmentMonitor()
    >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=2, verbose=0,
    ...               callbacks=[monitor])
    >>> sorted(monitor.ratios), list(monitor.alignments), len(monitor.epochs)
    (['a', 'b'], ['a->b'], 3)
    """

    def __init__(self, layers=None, every=1, log=False, log_dir=None):
        super().__init__()
        if int(every) != every or every < 1:
            raise ValueError(f"`every` must be a positive integer; received {every!r}.")
        if layers is not None and isinstance(layers, (str, keras.layers.Layer)):
            layers = [layers]
        self.layer_spec = None if layers is None else list(layers)
        self.every = int(every)
        self.log = bool(log)
        self.log_dir = log_dir
        self._tensorboard = None if log_dir is None else ScalarWriter(log_dir)
        self.epochs = []
        self.ratios = {}
        self.alignments = {}
        self._layers = None
        self._pairs = []

    # -- helpers -----------------------------------------------------------
    def _resolve_layers(self):
        model = self.model
        dense = [l for l in iter_layers(model) if isinstance(l, keras.layers.Dense)]
        if self.layer_spec is None:
            chosen = dense
        else:
            by_name = {l.name: l for l in dense}
            chosen = []
            for item in self.layer_spec:
                if isinstance(item, str):
                    if item not in by_name:
                        raise ValueError(
                            f"layers: no Dense layer named {item!r} in the model "
                            f"(Dense layers: {sorted(by_name)})."
                        )
                    chosen.append(by_name[item])
                elif isinstance(item, keras.layers.Dense):
                    chosen.append(item)
                else:
                    raise TypeError(
                        "layers must contain Dense layer names or keras.layers.Dense "
                        f"objects; received {type(item).__name__}."
                    )
        if not chosen:
            raise ValueError("AlignmentMonitor: the model has no Dense layers to monitor.")
        if self.layer_spec is None:
            # Every Dense layer; pairs only where one feeds the next (through layers
            # without weights) with matching widths: W_b W_a is then the product.
            pairs = _feeding_pairs(model, chosen)
            if pairs is None:  # no layer graph (subclassed): list order
                pairs = list(zip(chosen[:-1], chosen[1:]))
            self._pairs = [(a, b) for a, b in pairs if a.kernel.shape[1] == b.kernel.shape[0]]
            return chosen
        for a, b in zip(chosen[:-1], chosen[1:]):
            if a.kernel.shape[1] != b.kernel.shape[0]:
                raise ValueError(
                    f"`layers`: {a.name!r} -> {b.name!r} are not consecutive: outputs "
                    f"{a.kernel.shape[1]} != inputs {b.kernel.shape[0]}. List a chain of "
                    "Dense layers, each feeding the next, or leave `layers` out (every "
                    "Dense layer, pairs where one feeds the next)."
                )
        self._pairs = list(zip(chosen[:-1], chosen[1:]))
        return chosen

    def measure(self):
        """Current ``(ratios, alignments)`` as two dicts of floats."""
        if self._layers is None:
            self._layers = self._resolve_layers()
        kernels = [np.asarray(keras.ops.convert_to_numpy(l.kernel)) for l in self._layers]
        ratios = {l.name: spectral_frobenius_ratio(k) for l, k in zip(self._layers, kernels)}
        by_layer = {id(l): k for l, k in zip(self._layers, kernels)}
        aligns = {
            f"{a.name}->{b.name}": layer_alignment(by_layer[id(a)], by_layer[id(b)])
            for a, b in self._pairs
        }
        return ratios, aligns

    def _record(self, epoch):
        ratios, aligns = self.measure()
        self.epochs.append(int(epoch))
        for k, v in ratios.items():
            self.ratios.setdefault(k, []).append(v)
        for k, v in aligns.items():
            self.alignments.setdefault(k, []).append(v)
        if self._tensorboard is not None:
            scalars = {f"alignment/ratio/{k}": v for k, v in ratios.items()}
            scalars.update({f"alignment/alignment/{k}": v for k, v in aligns.items()})
            self._tensorboard.write(epoch, scalars)
        return ratios, aligns

    # -- callback hooks ----------------------------------------------------
    def on_train_begin(self, logs=None):
        if not getattr(self.model, "inputs", None):
            raise ValueError(
                "AlignmentMonitor reads the model's weights before training, but the "
                "model is not built: give it a `keras.Input` (or call `model.build(...)`) "
                "before fit."
            )
        self._layers = None
        self._record(-1)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            if self.log and logs is not None:
                # NaN between records: every History list as long as the loss's, so
                # that `pd.DataFrame(history.history)` and the plotting tools work.
                logs["min_spectral_ratio"] = float("nan")
                if getattr(self, "_pairs", None):
                    logs["min_alignment"] = float("nan")
            return
        ratios, aligns = self._record(epoch)
        if self.log and logs is not None:
            logs["min_spectral_ratio"] = min(ratios.values())
            if aligns:
                logs["min_alignment"] = min(aligns.values())

    def on_train_end(self, logs=None):
        if self._tensorboard is not None:
            self._tensorboard.close()
