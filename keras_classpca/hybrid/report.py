"""`HybridReport`: what `hybridize` did, readable by people and by code."""

import dataclasses
import math

from keras_classpca.hybrid.policy import PER_STEP_DENSE
from keras_classpca.layers.geometry import DENSE_REMEDIES_MIN_ROWS_PER_FEATURE


def format_share(share):
    """A share as a percentage with one decimal, rounded down: 0.98996 reads 98.9 %, not
    99.0 %, next to the rule "keep 99 % or more".

    >>> format_share(0.98996), format_share(0.99), format_share(0.99999999)
    ('98.9%', '99.0%', '100.0%')
    """
    return f"{math.floor(share * 1000 + 1e-4) / 10:.1f}%"  # (round-off of 1.0 is 100 %)


def _head_rows(head):
    """The samples a warm head was fitted on, for the report's text."""
    fitted_on = head.get("fitted_on", head["samples"])  # absent in older reports
    if fitted_on >= head["samples"]:
        return f"{head['samples']} samples"
    return f"fitted on {fitted_on:,} of {head['samples']:,} samples"


def _known_fields(kind, data, what):
    """`data` (a dict) checked against the fields of dataclass `kind`."""
    if not isinstance(data, dict):
        raise TypeError(f"{what} must be a dict; received {type(data).__name__}.")
    fields = {field.name for field in dataclasses.fields(kind)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(
            f"{what} has fields {kind.__name__} does not know: {unknown} (written by "
            "another release of keras-classpca?).")
    missing = sorted(field.name for field in dataclasses.fields(kind)
                     if field.name not in data and field.default is dataclasses.MISSING
                     and field.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{what} lacks the required fields {missing}.")
    return dict(data)


@dataclasses.dataclass
class SolvedLayer:
    """One layer computed by class-PCA.

    Attributes:
        name: the layer's name.
        kind: its class name (`Dense`, `Conv2D`, ...).
        samples: training samples streamed to solve it.
        rows: rows of statistics (samples for Dense, patches for Conv2D).
        seconds: wall time of its pass over the data and its eigen-solve.
        explained_variance: share of the total variance of the layer's input that the
            span of its solved filters captures (0..1).
        n_components: filters / units solved.
        adapted_batchnorms: BatchNormalization layers after it whose moving statistics
            were set from its solved output.
        sample_checks: with `samples="auto"`, `(samples, change)` at each check point:
            how much its class subspaces moved since the previous one.
        converged: with `samples="auto"`, whether it stopped because they settled
            (False: the data ran out first); None otherwise.
        fisher_sign_pairs: for a Dense layer without explicit `sign_pairs` /
            `discriminant` options, whether it was solved from enough rows per feature
            to get the Dense rule (`DENSE_REMEDIES_MIN_ROWS_PER_FEATURE` in
            `layers/geometry.py`): Fisher directions, and sign pairs where a rectifier
            follows it (`sign_paired`); None for other layers.
        sign_paired: whether the Dense rule gave the layer sign pairs (a rectifier
            follows it and stays); None where the rule did not apply.
        replaced_activation: with `hybridize(solved_activation=...)`, the name of the
            activation the layer had before (e.g. `"relu"`); None if it kept its own.
        sketch_size: the rows per class of the Frequent Directions sketch it was
            solved from, when its exact class statistics did not fit in memory
            (`ClassPCA(sketch_size="auto")`: its leading directions are approximate);
            None: exact statistics.
        classes_without_filters: labels of the classes none of its filters was
            computed for (fewer filters than classes: the slots go to the classes whose
            leading direction holds most of their variance; or a class's directions
            duplicated another's).
        spare_filters: how many of its filters are the negatives of its leading
            directions (a convolution a rectifier reads directly, with more filters
            than patch features: `sign_pairs="spare"` unless given); 0 if none.
    """

    name: str
    kind: str
    samples: int
    rows: int
    seconds: float
    explained_variance: float
    n_components: int
    adapted_batchnorms: list = dataclasses.field(default_factory=list)
    sample_checks: list = dataclasses.field(default_factory=list)
    converged: bool = None
    fisher_sign_pairs: bool = None
    replaced_activation: str = None
    sign_paired: bool = None
    sketch_size: int = None
    classes_without_filters: list = dataclasses.field(default_factory=list)
    spare_filters: int = 0


@dataclasses.dataclass
class HybridReport:
    """The result of `hybridize`.

    Attributes:
        cutoff: the number of layers solved and frozen (the bottom ones).
        cutoff_mode: `"auto"` or `"fixed"`.
        layers: a `SolvedLayer` per solved layer, bottom first (with
            `hybridize(initialize_above=True)`, those above the cutoff too).
        initialized: names of the layers solved above the cutoff as a start only:
            they train (`hybridize(initialize_above=True)`); else empty.
        evidence: for `cutoff="auto"`, the decision: a row per layer looked at (probe
            accuracy before and after it, gain, threshold, kept, seconds), the rule,
            the decision samples (`decision_patches`: the random patches per sample
            its quick solve of a convolution reads, so its variance shares and probes
            describe a solve like the final one, not equal to it) and its seconds
            (`hybrid/decision.py`). A layer whose
            "before" probe leaves less than the threshold to gain (`bound`,
            `1 - before`) is rejected unsolved: its `after`, `gain` and
            `explained_variance` are None. `class_pca_layer`: when the model holds a
            `ClassPCA*` layer above the rule's cutoff, that layer, the cutoff that
            reaches it (used) and the rule's (`rule_cutoff`).
        candidates: names of all layers that could have been solved.
        stopped_because: why no further layer can be solved (the first layer with
            weights the plan cannot take, and why).
        next_not_taken: why the next solvable layer was not solved (the cutoff, or the
            "auto" rule); None when every solvable layer was solved.
        frozen: names of the layers set to `trainable=False`.
        restored_activations: `{layer name: activation}` put back after layers an
            earlier `hybridize(solved_activation=...)` had solved and this call does not
            solve, or solves keeping their own activation.
        label_free: the data had no labels: every layer was solved from the
            covariance eigenvectors of its input (one class).
        recompiled: the model was compiled before `hybridize`, and was compiled again
            (its own arguments and optimizer) so that the freeze holds.
        seed: the seed the sampling used (`hybridize(seed=None)` draws one).
        seconds: total wall time.
        head: when every layer under the head was solved and `warm_head` set the head
            to the least-squares classifier of the solved features: its `layer`
            name, the `samples` read, the rows it was `fitted_on` (a uniform sample
            of 2,048 when the head reads more than 2,048 features), the ridge
            `penalty` and softmax `temperature` chosen, and the start's leave-one-out
            accuracy `loo_accuracy` (on up to 2,048 of the samples); None otherwise.
        head_not_started: when every layer under the head was solved but the head
            could not be started (`warm_head`), why (e.g. too many features, an
            activation other than softmax, linear or one sigmoid unit); else None.
    """

    cutoff: int
    cutoff_mode: str
    layers: list = dataclasses.field(default_factory=list)
    evidence: dict = dataclasses.field(default_factory=dict)
    candidates: list = dataclasses.field(default_factory=list)
    stopped_because: str = None
    next_not_taken: str = None
    frozen: list = dataclasses.field(default_factory=list)
    initialized: list = dataclasses.field(default_factory=list)
    restored_activations: dict = dataclasses.field(default_factory=dict)
    recompiled: bool = False
    label_free: bool = False
    seed: int = None
    seconds: float = 0.0
    head: dict = None
    head_not_started: str = None

    def to_dict(self):
        """Plain-Python dict (JSON-serializable); `HybridReport.from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """The report `to_dict` gave (also after a JSON round trip: a tuning log, a
        model's metadata). Fields a later release added take their defaults.

        Example:

        >>> report = HybridReport(cutoff=1, cutoff_mode="fixed", layers=[SolvedLayer(
        ...     "conv", "Conv2D", samples=600, rows=9600, seconds=0.2,
        ...     explained_variance=0.97, n_components=8, sample_checks=[(256, 0.1)])])
        >>> import json
        >>> HybridReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
        True
        """
        if not isinstance(data, dict):
            raise TypeError(
                f"`data` must be a dict, as `HybridReport.to_dict()` returns; received "
                f"{type(data).__name__}.")
        report = _known_fields(cls, data, "HybridReport")
        layers = []
        for layer in report.get("layers", []):
            if isinstance(layer, SolvedLayer):
                layers.append(layer)
                continue
            layer = _known_fields(SolvedLayer, layer, "a solved layer")
            layer["sample_checks"] = [tuple(check) for check in layer.get("sample_checks", [])]
            layers.append(SolvedLayer(**layer))
        report["layers"] = layers
        return cls(**report)

    def __str__(self):
        solved = (f"{self.cutoff} of {len(self.candidates)} solvable layer(s) solved"
                  + (f" and frozen, {len(self.initialized)} above solved as a start"
                     if self.initialized else "")
                  if self.candidates else
                  # (the prefix ends at the first layer with weights: `prefix ends`)
                  "nothing solved: no layer can be solved at the bottom")
        lines = [
            f"HybridReport: {solved} (cutoff={self.cutoff_mode}), {self.seconds:.1f} s"
            + (", label-free (PCA of each layer's input)" if self.label_free else ""),
        ]
        if self.layers:
            # Columns as wide as the longest name and kind (keras.applications names
            # run to 40 characters).
            name_w = max([24] + [len(layer.name) + 2 for layer in self.layers])
            kind_w = max([10] + [len(layer.kind) + 2 for layer in self.layers])
            header = (
                f"  {'layer':<{name_w}}{'kind':<{kind_w}}{'filters':>8}{'samples':>9}"
                f"{'rows':>11}{'expl.var':>9}{'sec':>7}"
            )
            lines.append(header)
            for layer in self.layers:
                lines.append(
                    f"  {layer.name:<{name_w}}{layer.kind:<{kind_w}}{layer.n_components:>8}"
                    f"{layer.samples:>9}{layer.rows:>11}{layer.explained_variance:>9.3f}"
                    f"{layer.seconds:>7.1f}"
                )
                if layer.fisher_sign_pairs:
                    paired = ", sign-paired" if layer.sign_paired else ""
                    lines.append(f"    + Fisher directions{paired} (rows >= "
                                 f"{DENSE_REMEDIES_MIN_ROWS_PER_FEATURE} x features)")
                if layer.spare_filters:
                    lines.append(f"    + {layer.spare_filters} spare filters: negatives of its "
                                 "leading directions (a rectifier reads the layer)")
                for bn in layer.adapted_batchnorms:
                    lines.append(f"    + adapted {bn}")
                if layer.replaced_activation:
                    lines.append(f"    + activation replaced: {layer.replaced_activation}")
                if layer.classes_without_filters:
                    unserved = layer.classes_without_filters
                    listed = ", ".join(str(label) for label in unserved[:10])
                    more = f", ... ({len(unserved)})" if len(unserved) > 10 else ""
                    # Fewer filters than classes, or a class whose directions other
                    # classes' filters already hold (duplicates are not kept twice).
                    why = ("its filters span all of its input: nothing is lost"
                           if layer.explained_variance >= 1 - 1e-6 else
                           "fewer filters than classes, or directions other classes' "
                           "filters already hold")
                    lines.append(f"    + no filter of its own for class(es) {listed}{more} "
                                 f"({why})")
                if layer.sketch_size is not None:
                    lines.append(f"    + from a sketch of {layer.sketch_size} rows per class "
                                 "(exact statistics did not fit in memory)")
        if self.evidence:
            solved_convolutions = any(row.get("kind") not in (None, "Dense", PER_STEP_DENSE)
                                      and row.get("explained_variance") is not None
                                      for row in self.evidence["layers"])
            patches = solved_convolutions and self.evidence.get("decision_patches")
            lines.append(
                f"  auto decision on {self.evidence['decision_samples']} samples"
                + (f" (a quick solve: convolutions from {patches} random patches per "
                   "sample; the final solve reads more)" if patches else "")
                + f", {self.evidence['seconds']:.1f} s:"
            )
            for row in self.evidence["layers"]:
                if "unsolvable" in row:
                    lines.append(f"    {row['layer']:<24} cannot be solved: {row['unsolvable']}")
                    continue
                if row["gain"] is not None:
                    probe = (f"probe {row['before']:.3f} -> {row['after']:.3f} "
                             f"(gain {row['gain']:+.3f}, needs {row['threshold']:+.3f})")
                elif row["before"] is not None:  # rejected by the bound 1 - before
                    probe = (f"probe {row['before']:.3f}: no gain can reach "
                             f"{row['threshold']:+.3f}")
                else:
                    probe = "not probed"
                variance = ("not solved" if row["explained_variance"] is None else
                            f"filters keep {format_share(row['explained_variance'])} of its input "
                            "variance")
                lines.append(
                    f"    {row['layer']:<24} {probe}; {variance}: "
                    f"{'kept' if row['kept'] else 'not kept'}"
                )
            lines.append(f"  rule: {self.evidence['rule']}")
            asked = self.evidence.get("class_pca_layer")
            if asked:
                lines.append(
                    f"  {asked['layer']} is a ClassPCA layer: solved, with every layer below "
                    f"it (cutoff {asked['cutoff']}; the rule alone: {asked['rule_cutoff']})")
        if self.head:
            lines.append(
                f"  head {self.head['layer']} started as the least-squares classifier of "
                f"the solved features ({_head_rows(self.head)}, leave-one-out "
                f"accuracy {self.head['loo_accuracy']:.3f}); it trains")
        if self.head_not_started:
            lines.append(f"  head not started: {self.head_not_started}")
        if self.frozen:
            lines.append(f"  frozen: {', '.join(self.frozen)}")
        if self.initialized:
            lines.append(f"  solved as a start, trainable: {', '.join(self.initialized)}")
        if self.restored_activations:
            put_back = ", ".join(f"{name} ({activation})"
                                 for name, activation in self.restored_activations.items())
            lines.append(f"  activations put back (an earlier hybridize replaced them): {put_back}")
        if self.recompiled:
            lines.append("  recompiled with its own compile arguments, so the freeze holds")
        if self.next_not_taken:
            lines.append(f"  next layer not taken: {self.next_not_taken}")
        if self.stopped_because:
            lines.append(f"  prefix ends: {self.stopped_because}")
        return "\n".join(lines)
