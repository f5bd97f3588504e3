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

Only the kept layers are then solved from the full data. The rule's two numbers
were tuned on one half of a 5-architecture × 5-fraction grid and checked on the other
(`benchmarks/bench_default.py`, docs/benchmarks.md).
"""

import dataclasses
import math

import numpy as np

DECISION_SAMPLES = 2000  # random training samples the "auto" decision solves and probes
DECISION_PATCHES = 8  # random patches per sample for the decision's convolution solves
PROBE_FEATURES = 1024  # probe features per sample (a fixed random projection)


def check_cutoff(cutoff):
    """Raise a `ValueError` unless `cutoff` is "auto" or a non-negative integer."""
    if isinstance(cutoff, str) and cutoff == "auto":
        return
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)) or cutoff < 0:
        raise ValueError(
            "`cutoff` must be 'auto' or a non-negative integer (layers to solve); received "
            f"{cutoff!r}."
        )


@dataclasses.dataclass(frozen=True)
class AutoRule:
    """`cutoff="auto"`'s rule: keep a layer if its probe gain reaches a threshold that
    grows with the training samples per class, and is higher for Dense layers.

    `threshold(n, kind) = base_gain + gain_per_decade * log10(n) (+ dense_gain for a
    Dense layer)`, for `n` training samples per class. A Dense layer gets the extra
    margin because the trainable alternative is strongest there: an unsolved Dense
    layer learns from every input at once, while a convolution sees a small patch,
    which class-PCA of the patches already describes well (measured: a solved first
    Dense layer raises the probe by 7–10 points and still trains worse than SGD).

    Example:

    >>> rule = AutoRule(base_gain=0.0, gain_per_decade=0.01, dense_gain=0.05)
    >>> rule.keep(gain=0.015, samples_per_class=10), rule.keep(0.015, 1000)
    (True, False)
    >>> rule.keep(0.015, 10, kind="Dense")
    False
    """

    base_gain: float = -0.018
    gain_per_decade: float = 0.009
    dense_gain: float = 0.0

    def threshold(self, samples_per_class, kind=None):
        extra = self.dense_gain if kind == "Dense" else 0.0
        return (self.base_gain + extra
                + self.gain_per_decade * math.log10(max(samples_per_class, 1.0)))

    def keep(self, gain, samples_per_class, kind=None):
        return gain >= self.threshold(samples_per_class, kind)

    def describe(self, samples_per_class):
        return (
            "solve a layer if a leave-one-out ridge probe on the features after it beats "
            f"the features before it by at least {self.threshold(samples_per_class):+.3f} "
            f"(= {self.base_gain:+.3f} {self.gain_per_decade:+.4f} × log10 of "
            f"{samples_per_class:,.0f} training samples per class; "
            f"{self.dense_gain:+.3f} more for a Dense layer)"
        )


DEFAULT_RULE = AutoRule()
