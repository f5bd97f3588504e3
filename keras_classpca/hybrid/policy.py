"""The cutoff policy of `hybridize`: how many of a plan's layers to solve.

`cutoff=k` solves the first `k` layers of the plan. `cutoff="auto"` decides *before*
paying for the full solves (`hybrid/decision.py`): on a small random sample of the
training data (`DECISION_SAMPLES`, patch-subsampled), it solves layer after layer and
scores a leave-one-out ridge probe on the features before and after each one. A layer
is kept while its probe gain reaches `AutoRule.threshold(samples per class)`: a
threshold that grows with the training data, because

- a probe of *unsolved* features is pessimistic: the trained top can still learn
  those layers, and with much data it learns them better than class-PCA solves them;
- with little data the trained top learns little, and a solved layer helps most.

Only the kept layers are then solved from the full data. The rule's numbers were
selected on four Fashion-MNIST grids of architectures × data fractions and checked on
8×8 digits, which the selection did not read (`benchmarks/default_report.py`,
docs/cutoff.md, docs/benchmarks.md).
"""

import dataclasses
import math
import numbers

import keras
import numpy as np

DECISION_SAMPLES = 2000  # random training samples the "auto" decision solves and probes
DECISION_PATCHES = 8  # random patches per sample for the decision's convolution solves
PROBE_FEATURES = 1024  # probe features per sample (a fixed count sketch of longer ones)


def check_cutoff(cutoff):
    """Raise a `ValueError` unless `cutoff` is "auto", an `AutoRule` or a non-negative
    integer."""
    if is_auto(cutoff):
        return
    if isinstance(cutoff, (list, tuple)) or len(getattr(cutoff, "shape", ())) > 0:
        raise TypeError(
            f"`cutoff` received {type(cutoff).__name__} (labels?): hybridize takes the "
            "data as one argument, `hybridize(model, (x, y))`, not `hybridize(model, x, "
            "y)`."
        )
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)) or cutoff < 0:
        raise ValueError(
            "`cutoff` must be 'auto', an `AutoRule` or a non-negative integer (layers to "
            f"solve); received {cutoff!r}."
        )


def is_auto(cutoff):
    """Whether `cutoff` asks for a decision: "auto" (`DEFAULT_RULE`) or an `AutoRule`."""
    return (isinstance(cutoff, str) and cutoff == "auto") or isinstance(cutoff, AutoRule)


def rule_of(cutoff):
    """The `AutoRule` a decision with `cutoff` uses."""
    return cutoff if isinstance(cutoff, AutoRule) else DEFAULT_RULE


# The rule's kind of a Dense layer applied to every step or position of its input (a
# sequence's tokens, an image's pixels): it reads one step's features at a time, as a
# convolution with a kernel of one does, and is judged as a convolution.
PER_STEP_DENSE = "Dense per step"


def rule_kind(layer, input_shape):
    """The kind the rule judges `layer` (with input of `input_shape`, batch axis
    included) as: "Dense" for a Dense layer on flat features (a `ClassPCADense`, a
    Dense subclass, too), `PER_STEP_DENSE` for one on a sequence or image, else the
    layer's class name.

    >>> import keras
    >>> dense = keras.layers.Dense(4)
    >>> rule_kind(dense, (None, 12)), rule_kind(dense, (None, 28, 12))
    ('Dense', 'Dense per step')
    """
    if isinstance(layer, keras.layers.Dense):
        return "Dense" if len(input_shape) <= 2 else PER_STEP_DENSE
    return type(layer).__name__


@dataclasses.dataclass(frozen=True)
class AutoRule:
    """`cutoff="auto"`'s rule: keep a layer if solving it loses nothing, or if its probe
    gain reaches a threshold.

    **Lossless**: a first layer — one that reads the model's input through layers
    without weights only — that is a convolution whose solved filters capture at least
    `lossless_share` of its input's variance (e.g. 32 filters on 5×5 = 25-value
    patches) keeps everything a trained version could use; it is kept whatever the
    probe says (the probe of a first layer compares with raw pixels, which a trained
    first layer would not keep either). A layer above a solved one is always probed:
    its probe compares with solved features, and a spanning layer there adds nothing a
    probe could not see (two stacked per-step Dense(64) layers under attention pooling,
    both kept as lossless, trained 8–9 points below SGD; the first alone beat it). Not a
    Dense layer on flat features: one with more units than
    inputs spans its input too, but its class directions can be nearly parallel (a
    tabular Dense(16) over 12 features had kernel singular values down to 1e-3 of the
    largest and trained at chance), so such a layer is always probed. A Dense layer
    applied to every step of a sequence (`PER_STEP_DENSE`, a token projection) is
    judged as a convolution with a kernel of one: lossless when its units span a step's
    features, and without `dense_gain` (measured in `bench_sequence`, where the Dense
    rule rejected every one of them; cutoff 1 beat SGD in 15 of 18 runs).

    **Threshold**, for the layer at position `j` of the plan (0 = the first solvable layer), of kind
    `kind`, with `n` training samples per class:

        threshold = base_gain + gain_per_layer * j + gain_per_decade * log10(n)
                    (+ dense_gain for a Dense layer on flat features)

    - `gain_per_layer`: a deeper layer needs more. The time scales the method rests on
      run bottom-up: the first layer is the one SGD brings to class-PCA first, and the
      one a solve loses least by; above it the trained alternative gains more.
    - `gain_per_decade`: more data, more to gain from training instead (the probe of
      an unsolved layer's input is pessimistic about what training it would give).
    - `dense_gain`: an unsolved Dense layer learns from every input at once, while a
      convolution sees a small patch that class-PCA of the patches describes well
      (measured: a solved first Dense layer raises the probe by 7–10 points and still
      trains worse than SGD).

    Example:

    >>> rule = AutoRule(base_gain=0.0, gain_per_layer=0.0, gain_per_decade=0.01)
    >>> rule.keep(gain=0.015, samples_per_class=10), rule.keep(0.015, 1000)
    (True, False)
    >>> AutoRule(0.0, 0.0, 0.01, dense_gain=0.05).keep(0.015, 10, kind="Dense")
    False
    """

    # Selected on the 52 cells of the four Fashion-MNIST grids (`bench_default`,
    # `bench_held_out`, `bench_sequence`, `bench_multi_input`) and checked on the 8×8
    # digits (`bench_held_out_digits`, `bench_fresh_digits`); docs/cutoff.md.
    base_gain: float = 0.0
    gain_per_layer: float = 0.04
    gain_per_decade: float = 0.03
    dense_gain: float = 0.15
    lossless_share: float = 0.99

    def __post_init__(self):
        # A frozen dataclass keeps what it is given: check it here, not at the first
        # decision deep inside `hybridize`.
        for field in ("base_gain", "gain_per_layer", "gain_per_decade", "dense_gain"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    math.isfinite(value)):
                raise TypeError(
                    f"AutoRule's `{field}` must be a finite number (a probe accuracy "
                    f"gain, e.g. 0.03); received {value!r}.")
        share = self.lossless_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, numbers.Real)
                                  or not 0.0 < share <= 1.0):
            raise ValueError(
                "AutoRule's `lossless_share` must be a share of variance in (0, 1], or "
                f"None to probe every layer; received {share!r}.")

    def threshold(self, samples_per_class, kind=None, position=0):
        return (self.base_gain + self.gain_per_layer * position
                + (self.dense_gain if kind == "Dense" else 0.0)
                + self.gain_per_decade * math.log10(max(samples_per_class, 1.0)))

    def may_be_lossless(self, kind=None, first=True):
        """Whether a layer of `kind` can be kept as lossless: a `first` layer (no
        layer with weights below it), not a Dense layer on flat features."""
        return self.lossless_share is not None and kind != "Dense" and first

    def lossless(self, explained_variance, kind=None, first=True):
        """Whether a layer of `kind` whose filters capture this share of its input's
        variance is kept without a probe (a `first` layer; never a Dense layer on flat
        features)."""
        return (self.may_be_lossless(kind, first)
                and explained_variance >= self.lossless_share)

    def keep(self, gain, samples_per_class, kind=None, position=0, explained_variance=0.0,
             first=True):
        return self.lossless(explained_variance, kind, first) or gain >= self.threshold(
            samples_per_class, kind, position)

    def describe(self, samples_per_class):
        return (
            "solve a layer if a leave-one-out ridge probe on the features after it beats "
            f"the features before it by at least {self.threshold(samples_per_class):+.3f} "
            f"(= {self.base_gain:+.3f} {self.gain_per_decade:+.4f} × log10 of "
            f"{samples_per_class:,.0f} training samples per class), "
            f"{self.gain_per_layer:+.3f} more per layer above the first and "
            f"{self.dense_gain:+.3f} more for a Dense layer on flat features"
            + ("" if self.lossless_share is None else
               f"; or, for a first layer (no layer with weights below it), if a "
               f"convolution's (or a per-step Dense layer's) filters capture ≥ "
               f"{self.lossless_share:.0%} of its input's variance (lossless)")
        )


DEFAULT_RULE = AutoRule()
