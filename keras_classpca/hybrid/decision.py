"""`cutoff="auto"`: decide how many layers to solve before paying for the full solves.

On a small in-memory sample of the training data, layer after layer of the plan is
solved (with patch sub-sampling) and a leave-one-out ridge probe scores the features
before and after it (`probe.loo_ridge_accuracy`). The `AutoRule` keeps a layer while
its gain reaches the rule's threshold; the first rejected layer ends the decision.
Every weight it touches is put back: the caller then solves the kept layers from the
full data. A probe accuracy is at most 1, so a layer whose "before" probe leaves less
than its threshold to gain is rejected without solving it (a Dense layer, which is
never kept as lossless, is probed before it is solved).

Probe points are graph-aware: a layer's "after" features are the input of the next
step that reads a *new* tensor. In a residual block the shortcut projection reads the
same tensor as the branch's first convolution, so it is not a probe point of its own
(its gain would be zero by construction); the decision looks past it.
"""

import time
import warnings

import numpy as np

from keras_classpca.hybrid import policy
from keras_classpca.hybrid.probe import loo_ridge_accuracy, reduce_features
from keras_classpca.hybrid.report import format_share
from keras_classpca.hybrid.solver import adapt_batchnorm, solve_layer, stream
from keras_classpca.layers.adapt_mixin import solve_options
from keras_classpca.layers.geometry import UnsolvableDataError

DECISION_BATCH = 256


class _InMemory:
    """The decision sample as re-iterable batches (what the solver streams)."""

    def __init__(self, x, labels):
        self.x, self.labels = x, labels
        self.total = len(x)
        self.seen = None

    def __iter__(self):
        for start in range(0, len(self.x), DECISION_BATCH):
            stop = start + DECISION_BATCH
            yield self.x[start:stop], self.labels[start:stop]


class _Features:
    """Collects reduced features of one streamed pass."""

    def __init__(self, max_features):
        self.max_features = max_features
        self.parts = []

    def __call__(self, h, labels, end):
        self.parts.append(reduce_features(h, self.max_features))

    def value(self):
        return np.concatenate(self.parts)


def _tensor_key(tensor, scope):
    return (id(tensor), tuple(id(s) for s in scope))


def _say(verbose, name, message):
    if verbose:
        print(f"auto cutoff: {name}: {message}")


def _descendants(children, position):
    """Indices of the nodes downstream of node `position` (`children`: per node, the
    nodes reading its output)."""
    found, todo = set(), list(children[position])
    while todo:
        node = todo.pop()
        if node not in found:
            found.add(node)
            todo.extend(children[node])
    return found


def probe_points(plan):
    """For every step, the `(tensor, scope)` its gain is measured after: the input of
    the next step downstream of it that reads a new tensor, else the input of the first
    blocked layer if that is downstream of it, else the step's own output (a branch
    that merges with an unsolvable one: what comes after the merge is not solved)."""
    children = [[] for _ in plan.parents]  # the graph's edges, once for every step
    for child, parents in enumerate(plan.parents):
        for parent in parents:
            children[parent].append(child)
    points = []
    for j, step in enumerate(plan.steps):
        below = _descendants(children, step.position) if plan.parents else None
        seen = {_tensor_key(s.input, s.scope) for s in plan.steps[: j + 1]}
        after = next(((s.input, s.scope) for s in plan.steps[j + 1:]
                      if _tensor_key(s.input, s.scope) not in seen
                      and (below is None or s.position in below)), None)
        if after is None:
            top_downstream = below is None or plan.top_position is None or (
                plan.top_position in below)
            after = plan.top_input if top_downstream else (step.output, step.scope)
        points.append(after)
    return points


def decide_cutoff(plan, sample, options, *, n_classes, samples_per_class, rule, seed=0,
                  explore=False, max_layers=None, verbose=0, sign_pairs=None):
    """How many of `plan`'s layers to solve, and the evidence.

    Args:
        plan: a `Plan` (`plan_model`).
        sample: `(x, int labels)` in memory: the decision sample.
        options: `ClassPCA` options for every solved layer.
        n_classes: number of classes of the labels.
        samples_per_class: training samples per class of the whole data (the rule's
            measure of "small data").
        rule: an `AutoRule`.
        explore: go on past the first rejected layer (every gain is measured; the
            returned cutoff is still the rule's). For benchmarks.
        max_layers: look at most at this many layers.
        sign_pairs: `ActivationReplacer.sign_pairs`-like, `(layer,
            through_batchnorm=True) -> bool`: whether the Dense rule may pair signs
            there, and (`through_batchnorm=False`) whether a convolution gets spare
            filters; default: the layer's own activation.

    Returns:
        `(cutoff, evidence)`: evidence is a dict with a row per layer looked at (its
        name, the probe accuracies before and after, the gain, the threshold, kept,
        seconds), the decision samples and the total seconds. The model's weights are
        as before the call.
    """
    start = time.perf_counter()
    x, labels = sample
    data = _InMemory(x, labels)
    max_features = int(policy.PROBE_FEATURES)
    blocks = [step.layer for step in plan.steps] + [bn for bn, _, _ in plan.batchnorms_until(
        len(plan.steps))]
    saved = [(layer, layer.get_weights()) for layer in blocks]
    accuracy_at = {}

    def probe(tensor, scope, solved):
        key = _tensor_key(tensor, scope) + (solved,)
        if key not in accuracy_at:
            features = _Features(max_features)
            stream(data, plan.feature_model(tensor, scope), [features])
            accuracy_at[key] = loo_ridge_accuracy(features.value(), labels, n_classes)
        return accuracy_at[key]

    rows, cutoff, decided = [], 0, False
    points = probe_points(plan)
    try:
        steps = plan.steps if max_layers is None else plan.steps[:max_layers]
        for j, step in enumerate(steps):
            step_start = time.perf_counter()
            kind = policy.rule_kind(step.layer, tuple(step.input.shape))
            first = not step.depends_on  # reads the input through weightless layers
            threshold = rule.threshold(samples_per_class, kind, position=j)
            probe_times = {"before": 0.0, "after": 0.0}

            def timed_probe(part, tensor, scope, solved):
                probe_start = time.perf_counter()
                accuracy = probe(tensor, scope, solved)
                probe_times[part] = time.perf_counter() - probe_start
                return accuracy

            for bn, tensor, scope in (plan.leading_batchnorms if j == 0 else []):
                adapt_batchnorm(data, plan.batchnorm_features(bn, tensor, scope), bn)
            before = None
            if not explore and not rule.may_be_lossless(kind, first):
                # A probe accuracy is at most 1, so no gain can exceed 1 - before: when
                # that is below the threshold the layer is rejected without solving it
                # (the layer's input is upstream of it, so "before" needs no solve).
                before = timed_probe("before", step.input, step.scope, j)
                if 1.0 - before < threshold:
                    rows.append(dict(layer=step.name, kind=kind, first=first,
                                     before=before, after=None,
                                     gain=None, bound=1.0 - before, threshold=threshold,
                                     kept=False, explained_variance=None,
                                     seconds=time.perf_counter() - step_start,
                                     probe_seconds=probe_times))
                    _say(verbose, step.name, f"probe {before:.3f}: no gain can reach "
                         f"{threshold:+.3f}, not solved")
                    break
            try:
                features = plan.input_features(step.input, step.scope, step.input_mask)
                statistics, _ = solve_layer(
                    data, features, step.layer,
                    dict(solve_options(step.layer, options), eigen_solver="randomized"),
                    seed=seed, patches_per_image=policy.DECISION_PATCHES,
                    dense_sign_pairs=None if sign_pairs is None else sign_pairs(step.layer),
                    spare_filters=(None if sign_pairs is None
                                   else sign_pairs(step.layer, through_batchnorm=False)),
                )
            except UnsolvableDataError as error:
                rows.append(dict(layer=step.name, kind=kind, unsolvable=str(error)))
                break
            with warnings.catch_warnings():  # a constraint's projection: the final
                warnings.simplefilter("ignore", UserWarning)  # solve warns about it
                statistics.assign()
            explained = statistics.explained_variance()
            for bn, tensor, scope in step.batchnorms:
                adapt_batchnorm(data, plan.batchnorm_features(bn, tensor, scope), bn)
            lossless = rule.lossless(explained, kind, first)
            after = gain = bound = None
            if not lossless or explore:
                if before is None:
                    before = timed_probe("before", step.input, step.scope, j)
                bound = 1.0 - before
                if bound >= threshold or explore:
                    after = timed_probe("after", *points[j], j + 1)
                    gain = after - before
            keep = lossless or (gain is not None and gain >= threshold)
            rows.append(dict(layer=step.name, kind=kind, first=first,
                             before=before, after=after,
                             gain=gain, bound=bound, threshold=threshold,
                             kept=keep and not decided, explained_variance=explained,
                             seconds=time.perf_counter() - step_start,
                             probe_seconds=probe_times))
            _say(verbose, step.name,
                 ("lossless" if lossless and gain is None else
                  f"probe {before:.3f}: no gain can reach {threshold:+.3f}" if gain is None
                  else f"probe {before:.3f} -> {after:.3f} (gain {gain:+.3f}, needs "
                  f"{threshold:+.3f})")
                 + f", filters keep {format_share(explained)} of the variance")
            if keep and not decided:
                cutoff += 1
            else:
                decided = True
                if not explore:
                    break
    finally:
        for layer, weights in saved:
            if weights:
                layer.set_weights(weights)
    evidence = dict(
        layers=rows,
        rule=rule.describe(samples_per_class),
        decision_samples=len(x),
        # A quick solve: its convolutions see a few random patches per sample, so its
        # variance shares and probes describe a solve like, not equal to, the final one.
        decision_patches=policy.DECISION_PATCHES,
        samples_per_class=samples_per_class,
        seconds=time.perf_counter() - start,
    )
    return cutoff, evidence
