"""The cutoff policy of `hybridize`: how many of a plan's layers to solve.

`cutoff=k` solves the first `k` layers of the plan. `cutoff="auto"` solves layer after
layer while a ridge probe on the features each new layer's pass sees gains at least
`AUTO_MIN_GAIN` held-out accuracy over the previous probe (docs/cutoff.md); the probe
rides the pass that streams the next layer's input, so it costs no extra pass except
the last one (the input of the trained top).
"""

import numpy as np

from keras_classpca.hybrid.probe import RidgeProbe, reduce_features

# `cutoff="auto"`: another layer is solved only if a linear probe on the features
# after it beats the features before it by this much (measured: docs/cutoff.md).
AUTO_MIN_GAIN = 0.02
PROBE_HOLDOUT_EVERY = 5  # every 5th streamed sample is held out to score the probe
PROBE_MAX_SAMPLES = 10_000


def check_cutoff(cutoff):
    """Raise a `ValueError` unless `cutoff` is "auto" or a non-negative integer."""
    if isinstance(cutoff, str) and cutoff == "auto":
        return
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)) or cutoff < 0:
        raise ValueError(
            "`cutoff` must be 'auto' or a non-negative integer (layers to solve); received "
            f"{cutoff!r}."
        )


class ProbeConsumer:
    """Fits a ridge probe on 4/5 of the streamed samples and scores it on the rest."""

    def __init__(self):
        self.train = []
        self.held_out = []

    def __call__(self, h, labels, offset):
        if offset >= PROBE_MAX_SAMPLES:
            return
        h, labels = h[: PROBE_MAX_SAMPLES - offset], labels[: PROBE_MAX_SAMPLES - offset]
        features = reduce_features(h)
        held_out = (offset + np.arange(len(h))) % PROBE_HOLDOUT_EVERY == 0
        self.train.append((features[~held_out], labels[~held_out]))
        self.held_out.append((features[held_out], labels[held_out]))

    def accuracy(self):
        labels = np.concatenate([y for _, y in self.train])
        probe = RidgeProbe(int(labels.max()) + 1 if labels.size else 1)
        for features, y in self.train:
            if len(y):
                probe.partial_fit(features, y)
        correct = sum(probe.score(f, y) * len(y) for f, y in self.held_out if len(y))
        total = sum(len(y) for _, y in self.held_out)
        return correct / max(total, 1)


class CutoffPolicy:
    """Decides, layer by layer, whether `hybridize` keeps solving.

    Args:
        cutoff: an int (solve exactly that many) or "auto".
        min_gain: for "auto", the probe accuracy a layer must add (default
            `AUTO_MIN_GAIN`, read at construction so tests can change it).
    """

    def __init__(self, cutoff, min_gain=None):
        check_cutoff(cutoff)
        self.auto = cutoff == "auto"
        self.cutoff = cutoff
        self.min_gain = AUTO_MIN_GAIN if min_gain is None else min_gain
        self.probe_accuracy = []

    def target(self, n_solvable):
        """How many layers to attempt."""
        return n_solvable if self.auto else self.cutoff

    def probe(self):
        """A fresh probe consumer for the next pass (None when not "auto")."""
        return ProbeConsumer() if self.auto else None

    def record(self, accuracy):
        """Record a probe accuracy; True if the layer solved before it is rejected."""
        if not self.auto:
            return False
        self.probe_accuracy.append(accuracy)
        return len(self.probe_accuracy) > 1 and (
            self.probe_accuracy[-1] < self.probe_accuracy[-2] + self.min_gain
        )

    def evidence(self, probe_samples):
        return {
            "probe_accuracy": self.probe_accuracy,
            "rule": (
                "solve the next layer only if a ridge probe on the features after it "
                f"gains at least {self.min_gain:.3f} held-out accuracy over the features "
                "before it"
            ),
            "probe_samples": probe_samples,
        }
