"""When a layer has settled during training: the criteria `fit_progressive` applies.

Under Adam every weight moves by about the learning rate per step whatever its layer,
so these measures ignore the step size:

* `SettleOnChange(measure="subspace")` (`settle="auto"`): one minus the overlap of the
  layer's leading filter subspace now and one epoch ago (mean squared cosine of the
  principal angles, `core.subspace`);
* `SettleOnChange(measure="output")`: one minus the linear CKA of the layer's output on
  a fixed probe sample now and one epoch ago;
* `FreezeOut`: a fixed schedule (Brock et al. 2017) that does not look at the layers.

`fit_progressive` (`hybrid/progressive.py`) measures and freezes; docs/progressive.md
has the numbers.
"""

import math
import numbers

import keras
import numpy as np

from keras_classpca.layers.geometry import DEPTHWISE, SEPARABLE

__all__ = ["SettleOnChange", "FreezeOut", "linear_cka"]

DEFAULT_THRESHOLDS = {"output": 0.002, "subspace": 0.01}
DEFAULT_PROBE_SAMPLES = 256


# ---------------------------------------------------------------------- measures
def linear_cka(a, b):
    """Linear CKA of two representations of the same samples (rows), in [0, 1].

    Each argument is `(n, ...)`; everything after the first axis is flattened. 1 when
    one is a rotation and/or isotropic scaling of the other (Kornblith et al. 2019).

    >>> import numpy as np
    >>> a = np.random.default_rng(0).normal(size=(50, 6))
    >>> q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    >>> round(linear_cka(a, 3.0 * a @ q), 6)
    1.0
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    ka, kb = a @ a.T, b @ b.T
    denominator = math.sqrt(float(np.sum(ka * ka)) * float(np.sum(kb * kb)))
    return float(np.sum(ka * kb)) / denominator if denominator > 0 else 1.0


def _numpy(weight):
    return np.asarray(keras.ops.convert_to_numpy(weight), dtype=np.float64)


def flat_kernel(layer):
    """A Dense or convolution kernel as `(inputs, filters)` float64."""
    kernel = _numpy(layer.kernel)
    return kernel.reshape(-1, kernel.shape[-1])


def _per_channel(weight):
    """A depthwise kernel `(*k, c, m)` as `(positions, c * m)`: each channel's filters."""
    kernel = _numpy(weight)
    return kernel.reshape(int(np.prod(kernel.shape[:-2])), -1)


def kernel_matrices(layer):
    """The filter matrices whose subspaces `SettleOnChange(measure="subspace")` follows:
    the kernel of a Dense or convolution, the per-channel filters of a depthwise one,
    both kernels of a separable one."""
    if isinstance(layer, SEPARABLE):
        pointwise = _numpy(layer.pointwise_kernel)
        return [_per_channel(layer.depthwise_kernel),
                pointwise.reshape(-1, pointwise.shape[-1])]
    if isinstance(layer, DEPTHWISE):
        return [_per_channel(layer.kernel)]
    return [flat_kernel(layer)]


def subspace_rank(kernel):
    """Rank of the filter subspace followed for a `(inputs, filters)` kernel."""
    d, n = kernel.shape
    return max(1, min(n, d // 2))


# ---------------------------------------------------------------------- criteria
class SettleOnChange:
    """A layer has settled when it changed by less than `threshold` over the last epoch.

    Args:
        threshold: largest change per epoch that counts as settled (default 0.01 for
            `"subspace"`, 0.002 for `"output"`).
        measure: `"subspace"` (default): 1 - overlap of the layer's leading filter
            subspace (rank `min(filters, inputs // 2)`), now vs one epoch ago;
            `"output"`: 1 - linear CKA of the layer's output on a fixed probe sample,
            now vs one epoch ago.
        patience: epochs in a row the change must stay below `threshold`.
        keep_top: the last `keep_top` bottom layers, where they are right below the
            model's last layer with weights, are measured but never frozen (under a
            layer that cannot be solved, an LSTM or attention block, they may
            freeze). Default 1: on the benchmark CNN the layer under the classifier
            (Dense 128) passes the threshold together with the conv layer below it,
            but freezing it saves little time (its back-propagation is a small share
            of a step) and cost about 1 pp of test accuracy (docs/progressive.md).
        samples: size of the probe sample (`"output"`), drawn once from the training
            data (the first `samples` of a dataset, a fixed random subset of arrays).
        probe: the probe inputs themselves, instead of drawing them from the data (for
            a model with several inputs, one array per input, as `fit` takes `x`).
        seed: seed of the probe draw.

    Example (`fit_progressive(model, x, y, epochs=8, settle=criterion)`):

    >>> SettleOnChange(0.02, patience=2)
    SettleOnChange(threshold=0.02, measure='subspace', patience=2, keep_top=1)
    """

    def __init__(
        self,
        threshold=None,
        *,
        measure="subspace",
        patience=1,
        keep_top=1,
        samples=DEFAULT_PROBE_SAMPLES,
        probe=None,
        seed=0,
    ):
        if measure not in DEFAULT_THRESHOLDS:
            raise ValueError(
                f"`measure` must be one of {sorted(DEFAULT_THRESHOLDS)}; received {measure!r}."
            )
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[measure]
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (
            0.0 < threshold < 1.0
        ):
            raise ValueError(f"`threshold` must be a number in (0, 1); received {threshold!r}.")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
            raise ValueError(f"`patience` must be a positive integer; received {patience!r}.")
        if isinstance(keep_top, bool) or not isinstance(keep_top, numbers.Integral) or keep_top < 0:
            raise ValueError(f"`keep_top` must be a non-negative integer; received {keep_top!r}.")
        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 2:
            raise ValueError(f"`samples` must be an integer >= 2; received {samples!r}.")
        self.threshold = float(threshold)
        self.measure = measure
        self.patience = int(patience)
        self.keep_top = int(keep_top)
        self.samples = int(samples)
        # A multi-input model's probe (a list, tuple or dict of arrays) stays as given:
        # packed with the model's inputs when training starts.
        several = isinstance(probe, (list, tuple, dict)) and not hasattr(probe, "shape") and (
            all(hasattr(part, "shape") for part in keras.tree.flatten(probe)))
        self.probe = (None if probe is None else
                      keras.tree.map_structure(np.asarray, probe) if several
                      else np.asarray(probe))
        self.seed = int(seed)

    def __repr__(self):
        return (
            f"SettleOnChange(threshold={self.threshold:g}, measure={self.measure!r}, "
            f"patience={self.patience}, keep_top={self.keep_top})"
        )


class FreezeOut:
    """Fixed schedule: freeze bottom layer `i` after a fraction `t_i` of the epochs.

    `t_i = t0 + (1 - t0) i / (L - 1)` for the `L` layers with weights that the walk
    from the input reaches plus the trained top (counted as one), as in FreezeOut
    (Brock et al. 2017, linear schedule; their per-layer learning-rate annealing is
    not reproduced). Layer `i` is frozen at the epoch boundary nearest to
    `t_i · epochs` (counted from `initial_epoch`).

    Args:
        t0: fraction of training after which the first layer freezes, in (0, 1].
        epochs: instead of `t0`, the epoch (counted from `initial_epoch`) after which
            each bottom layer freezes, bottom first, non-decreasing.

    Example: three bottom layers over 8 epochs freeze after epochs 4, 5 and 7.

    >>> FreezeOut(0.5).freeze_epochs(3, 8)
    [4, 5, 7]
    """

    def __init__(self, t0=0.5, *, epochs=None):
        if epochs is not None:
            epochs = list(epochs)
            if not epochs or any(
                isinstance(e, bool) or not isinstance(e, numbers.Integral) or e < 1
                for e in epochs
            ) or any(a > b for a, b in zip(epochs, epochs[1:])):
                raise ValueError(
                    "`epochs` of a fixed schedule must be a non-empty, non-decreasing list "
                    "of positive integers (a layer freezes after that many epochs of "
                    "training; to freeze one before training, set `layer.trainable = False` "
                    f"or solve it with hybridize); received {epochs!r}."
                )
            epochs = [int(e) for e in epochs]
        elif isinstance(t0, bool) or not isinstance(t0, numbers.Real) or not 0.0 < t0 <= 1.0:
            raise ValueError(f"`t0` must be a number in (0, 1]; received {t0!r}.")
        self.t0 = float(t0)
        self.fixed_epochs = epochs

    def freeze_epochs(self, n_units, n_epochs):
        """Epoch (from the start of this training) after which each unit freezes."""
        if self.fixed_epochs is not None:
            epochs = self.fixed_epochs[:n_units]
            return epochs + [None] * (n_units - len(epochs))
        layers = n_units + 1
        result = []
        for i in range(n_units):
            t = self.t0 + (1.0 - self.t0) * i / (layers - 1)
            epoch = max(1, int(math.floor(t * n_epochs + 0.5)))  # after >= 1 epoch
            result.append(epoch if epoch < n_epochs else None)
        return result

    def __repr__(self):
        if self.fixed_epochs is not None:
            return f"FreezeOut(epochs={self.fixed_epochs})"
        return f"FreezeOut(t0={self.t0:g})"


def resolve_settle(settle):
    """`fit_progressive`'s `settle` argument as a `SettleOnChange` or `FreezeOut`."""
    if isinstance(settle, (SettleOnChange, FreezeOut)):
        return settle
    if isinstance(settle, str):
        if settle == "auto":
            return SettleOnChange()
        if settle == "freezeout":
            return FreezeOut()
        raise ValueError(
            "`settle` must be 'auto', 'freezeout', a threshold in (0, 1), a list of "
            f"epochs, a SettleOnChange or a FreezeOut; received {settle!r}."
        )
    if isinstance(settle, numbers.Real) and not isinstance(settle, bool):
        return SettleOnChange(float(settle))
    if isinstance(settle, (list, tuple)):
        return FreezeOut(epochs=settle)
    raise TypeError(
        "`settle` must be 'auto', 'freezeout', a threshold in (0, 1), a list of epochs, "
        f"a SettleOnChange or a FreezeOut; received {type(settle).__name__}."
    )
