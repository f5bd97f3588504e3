"""A warm start for the head when every layer below it is solved: linear probing first.

When `hybridize` solves every layer under the model's head, the head reads frozen
features only, and `fit` trains a linear classifier of them from a random start: at
Adam's step sizes it needs many epochs to reach the weights the features call for
(on the benchmark MLP at 1 % of Fashion-MNIST, cutoff 2 ended 7 pp below cutoff 1).
`warm_start_head` sets the head to the least-squares classifier of the solved
features instead — ridge regression on centred one-hot targets, its penalty and a
softmax temperature chosen by least leave-one-out cross-entropy (closed form, on up
to 2,048 of the samples) — which `fit` then refines: linear probing, then
fine-tuning (Kumar et al., *Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution*, ICLR 2022).

Heads it can start: one `Dense` on at most `MAX_DUAL_FEATURES` flat features, the
model's only output, with a softmax (or linear: logits) activation over as many units
as classes, or one sigmoid unit for two classes. Up to `MAX_FEATURES` features its
statistics are the `(d+1)²` Gram matrix of the features and their products with the
targets, accumulated in float64 over the stream: memory is bounded by them, not by
the data. Wider, it is fitted in the dual on a uniform sample of `KEPT_ROWS` rows
(their n × n kernel matrix), so neither memory nor the eigen-solve grows with d².

Example (a softmax head over 10 classes, on 8 solved features):

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = np.arange(300) % 10
>>> features = rng.normal(size=(300, 8)) + 2.0 * np.eye(10, 8)[labels]
>>> statistics = _HeadStatistics(10)
>>> statistics(features, labels, end=None)
>>> kernel, bias, details = statistics.solve()
>>> kernel.shape, bias.shape, details["fitted_on"]
((8, 10), (10,), 300)
"""

import keras
import numpy as np

from keras_classpca.core.class_pca import blas_threads_for
from keras_classpca.hybrid.solver import stream
from keras_classpca.layers.geometry import CONSTRAINT_TOLERANCE, constrained

# Ridge penalties tried, relative to the mean feature variance (trace / d): the one
# whose leave-one-out cross-entropy is least is kept. A fixed small penalty would
# interpolate features wider than the samples (training accuracy 1, a huge
# temperature) and leave `fit` nothing to learn from.
PENALTIES = np.geomspace(1e-4, 1e2, 13)
# Up to this width the head is fitted from the d x d Gram matrix of every streamed
# sample (its eigen-solve takes about 2 s at 2,048 on one core); wider features are
# fitted in the dual, from the kept rows' n x n kernel matrix.
MAX_FEATURES = 2048
# Wider than this the kept rows alone (KEPT_ROWS x d float64) would take more memory
# than the statistics of a solved layer: the head is not started.
MAX_DUAL_FEATURES = 8192
# Rows kept in memory (a uniform random sample of the stream, so that data ordered by
# class are sampled fairly) to score the penalties and temperatures out of sample,
# and to fit the wide heads.
KEPT_ROWS = 2048
TEMPERATURES = np.geomspace(0.25, 400.0, 49)


def _activation_name(layer):
    try:
        return keras.activations.serialize(layer.activation)
    except (TypeError, ValueError):
        return None


def reads_solved_only(plan, n_solved):
    """Whether the head reads solved layers only once `plan`'s first `n_solved` steps
    are solved (every layer with weights under it)."""
    return n_solved == len(plan.steps) and plan.top_is_head


def head_refusal(plan, n_solved, n_classes):
    """Why the head above `plan`'s first `n_solved` steps cannot be started (None: it
    can). `n_classes`: the classes of the labels (None: unknown)."""
    if not reads_solved_only(plan, n_solved):
        return "layers with weights below the head are left to training"
    model = plan.model
    if len(keras.tree.flatten(model.outputs)) != 1:
        return "the model has several outputs"
    head = plan.layers[plan.top_position]
    if hasattr(head, "adapt"):  # a ClassPCA* layer: its weights are its adapt's
        return f"the head '{head.name}' is a {type(head).__name__} (set by its `adapt`)"
    if not isinstance(head, keras.layers.Dense) or len(plan.top_input[0].shape) != 2:
        return f"the head '{head.name}' is not a Dense layer on flat features"
    features = plan.top_input[0].shape[-1]
    if features is None or features > MAX_DUAL_FEATURES:
        return (f"the head reads {features} features (at most {MAX_DUAL_FEATURES} are "
                "started)")
    activation = _activation_name(head)
    if activation in ("softmax", "linear") and head.units >= 2:
        if n_classes is not None and n_classes != head.units:
            return f"the head has {head.units} units for {n_classes} classes"
        return None
    if activation == "sigmoid" and head.units == 1:
        if n_classes is not None and n_classes != 2:
            return f"one sigmoid unit for {n_classes} classes"
        return None
    return (f"the head '{head.name}' has {head.units} unit(s) with activation "
            f"{activation!r} (a softmax or linear head over the classes, or one sigmoid "
            "unit, is started)")


class _KeptRows:
    """A uniform random sample of at most `size` rows of a stream and their labels
    (reservoir sampling, Vitter's algorithm R, seeded): data ordered by class are
    sampled as fairly as shuffled data."""

    def __init__(self, size, seed=0):
        self.size, self.seen = size, 0
        self.rng = np.random.default_rng(seed)
        self.rows = self.labels = None

    def add(self, rows, labels):
        labels = np.asarray(labels)
        if self.rows is None:
            self.rows = np.empty((0, rows.shape[1]), dtype=rows.dtype)
            self.labels = np.empty((0,), dtype=labels.dtype)
        fill = min(len(rows), max(self.size - len(self.rows), 0))
        if fill:
            self.rows = np.concatenate([self.rows, rows[:fill]])
            self.labels = np.concatenate([self.labels, labels[:fill]])
        # Row t of the stream (t >= size) replaces a random slot with probability
        # size / (t + 1); of several rows of one batch drawing the same slot, the last
        # one stays, as if they had come one by one.
        positions = self.seen + np.arange(fill, len(rows))
        slots = self.rng.integers(0, positions + 1) if len(positions) else positions
        taken = np.nonzero(slots < self.size)[0][::-1]
        _, last = np.unique(slots[taken], return_index=True)
        chosen = taken[last]
        self.rows[slots[chosen]] = rows[fill + chosen]
        self.labels[slots[chosen]] = labels[fill + chosen]
        self.seen += len(rows)


class _HeadStatistics:
    """Streams `(features, labels)` and fits the head's ridge classifier.

    Up to `MAX_FEATURES` features (`dual=False`): the Gram matrix of the features
    (with a column of ones) and their products with the targets, in float64, over
    every streamed row. Wider (`dual=True`): the `KEPT_ROWS` kept rows only, solved
    through their n x n kernel matrix (the same classifier as the Gram matrix of those
    rows would give). Either way `KEPT_ROWS` rows, a uniform sample of the stream,
    score the penalties and temperatures by leave-one-out."""

    def __init__(self, n_outputs, bias=True, dual=False):
        self.n_outputs, self.bias, self.dual = n_outputs, bias, dual
        self.gram = self.cross = None
        self.kept = _KeptRows(KEPT_ROWS)

    def targets(self, labels):
        if self.n_outputs == 1:  # sigmoid: +-1/2 around the decision boundary
            return (np.asarray(labels, dtype=np.float64) - 0.5)[:, None]
        return np.eye(self.n_outputs)[labels] - 1.0 / self.n_outputs

    def __call__(self, h, labels, end):
        h = np.asarray(h, dtype=np.float64).reshape(len(h), -1)
        if not np.all(np.isfinite(h)):
            raise ValueError("The head's input features hold NaN or infinite values.")
        if not self.dual:
            a = np.hstack([h, np.ones((len(h), 1))])
            gram, cross = a.T @ a, a.T @ self.targets(labels)
            self.gram = gram if self.gram is None else self.gram + gram
            self.cross = cross if self.cross is None else self.cross + cross
        self.kept.add(h, labels)

    def _primal_basis(self, rows):
        """The ridge problem in the eigenbasis of the centred Gram matrix of every
        streamed row: `(n, mean, target mean, eigenvalues, kept rows' coordinates,
        the basis' products with the centred targets, basis weights -> kernel)`."""
        d = self.gram.shape[0] - 1
        n = self.gram[d, d]
        # With a bias the features are centred (the bias is not penalised).
        mean = self.gram[d, :d] / n if self.bias else np.zeros(d)
        target_mean = self.cross[d] / n if self.bias else np.zeros(self.cross.shape[1])
        gram = self.gram[:d, :d] - n * np.outer(mean, mean)
        cross = self.cross[:d] - n * np.outer(mean, target_mean)
        with blas_threads_for(d):
            eigenvalues, vectors = np.linalg.eigh(gram)
        return (n, mean, target_mean, np.clip(eigenvalues, 0.0, None), (rows - mean) @ vectors,
                vectors.T @ cross, lambda weights: vectors @ weights)

    def _dual_basis(self, rows, targets):
        """The same for the Gram matrix of the kept rows only, from the eigen-solve of
        their n x n kernel matrix `K = U diag(s) U.T`: the Gram matrix's eigenvectors
        of nonzero eigenvalue are `V = rows.T @ U / sqrt(s)` (a thin SVD), the rows'
        coordinates `U sqrt(s)`; `V` itself is never formed."""
        n = len(rows)
        mean = rows.mean(axis=0) if self.bias else np.zeros(rows.shape[1])
        target_mean = targets.mean(axis=0) if self.bias else np.zeros(targets.shape[1])
        centred = rows - mean
        with blas_threads_for(n):
            values, vectors = np.linalg.eigh(centred @ centred.T)
        keep = values > max(values[-1], 0.0) * n * np.finfo(np.float64).eps
        values, vectors = values[keep], vectors[:, keep]
        roots = np.sqrt(values)
        return (n, mean, target_mean, values, vectors * roots,
                roots[:, None] * (vectors.T @ (targets - target_mean)),
                lambda weights: centred.T @ (vectors @ (weights / roots[:, None])))

    def solve(self, temperatures=TEMPERATURES):
        """`(kernel, bias or None, details)`: the ridge classifier whose penalty and
        temperature (one of `temperatures`) give the least leave-one-out cross-entropy
        on the kept rows."""
        rows, labels = self.kept.rows, self.kept.labels
        targets = self.targets(labels)
        d = rows.shape[1]
        n, mean, target_mean, eigenvalues, projected, coefficients, to_kernel = (
            self._dual_basis(rows, targets) if self.dual else self._primal_basis(rows))
        scale = max(eigenvalues.sum() / max(d, 1), 1e-12)
        best = None
        for penalty in PENALTIES:
            inverse = 1.0 / (eigenvalues + penalty * scale)
            fitted = projected @ (inverse[:, None] * coefficients) + target_mean
            leverage = (projected ** 2) @ inverse + (1.0 / n if self.bias else 0.0)
            held_out = (fitted - leverage[:, None] * targets) / (1.0 - leverage)[:, None]
            losses = self._losses(held_out, labels, temperatures)
            at = int(np.argmin(losses))  # the first of equal losses, as before
            if best is None or losses[at] < best[0]:
                best = (losses[at], penalty, temperatures[at], held_out, inverse)
        _, penalty, temperature, held_out, inverse = best
        kernel = to_kernel(inverse[:, None] * coefficients)
        bias = target_mean - mean @ kernel if self.bias else None
        if self.n_outputs == 1:
            accuracy = np.mean((held_out[:, 0] > 0) == (labels == 1))
        else:
            accuracy = np.mean(np.argmax(held_out, axis=1) == labels)
        details = dict(penalty=float(penalty), temperature=float(temperature),
                       loo_accuracy=float(accuracy), fitted_on=int(n))
        return (kernel * temperature, None if bias is None else bias * temperature, details)

    def _losses(self, held_out, labels, temperatures):
        """The mean cross-entropy of `t * held_out` for every `t` in `temperatures`,
        a few temperatures at a time (at most about 2**16 logits: 0.5 MB a copy)."""
        step = max(1, 2 ** 16 // held_out.size)
        return np.concatenate([self._losses_at(temperatures[i:i + step], held_out, labels)
                               for i in range(0, len(temperatures), step)])

    def _losses_at(self, temperatures, held_out, labels):
        logits = temperatures[:, None, None] * held_out[None]
        if self.n_outputs == 1:  # binary cross-entropy of sigmoid(logit)
            signed = np.where(labels == 1, logits[..., 0], -logits[..., 0])
            return np.mean(np.logaddexp(0.0, -signed), axis=1)
        shifted = logits - logits.max(axis=2, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=2))
        return np.mean(log_norm - shifted[:, np.arange(len(labels)), labels], axis=1)


def warm_start_head(plan, passes, limit=None, verbose=0, sharpen=True):
    """Set the head above `plan`'s solved steps to the least-squares classifier of its
    input features (streamed from `passes`, its first `limit` samples), with the ridge
    penalty and temperature of least leave-one-out cross-entropy. Call
    `head_refusal` first.

    `sharpen=False` keeps the temperature at 1 (the ridge classifier as fitted): for a
    head above layers that train too (`hybridize(initialize_above=True)`). A sharp
    head multiplies the gradients that reach those layers by its temperature: a GELU
    network trained with SGD (momentum 0.9, learning rate 0.05) diverged from every
    start sharpened by 2 or more, and trained from the unsharpened one
    (docs/benchmarks.md, `bench_initialize_above`).

    Returns `(details, None)`, or `(None, reason)` when the head's kernel or bias
    constraint would move the start (the head is then left as it was). `details`, a
    dict for `HybridReport.head`: the head's name, the `samples` read, the
    rows it was `fitted_on` (all of them; for features wider than `MAX_FEATURES`, a
    uniform sample of 2,048), the ridge `penalty` (relative to the mean feature
    variance), the `temperature`, and the start's leave-one-out accuracy
    (`loo_accuracy`, on up to 2,048 samples).
    """
    head = plan.layers[plan.top_position]
    tensor, scope = plan.top_input
    statistics = _HeadStatistics(head.units, bias=head.use_bias,
                                 dual=tensor.shape[-1] > MAX_FEATURES)
    seen = stream(passes, plan.feature_model(tensor, scope), [statistics],
                  f"Starting the head '{head.name}'", verbose, limit=limit)
    kernel, bias, details = statistics.solve(TEMPERATURES if sharpen else np.ones(1))
    values = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
    for name, value in values.items():
        variable = getattr(head, name)
        values[name] = value.astype(keras.backend.standardize_dtype(variable.dtype))
        # Training projects the head by its constraint after every step: a start the
        # projection moves would be undone (a NonNeg kernel loses its negative weights),
        # so such a head is left as it was.
        _, change = constrained(variable, values[name])
        if change > CONSTRAINT_TOLERANCE:
            return None, (
                f"its {name} constraint ({type(variable.constraint).__name__}) would "
                f"change the least-squares start by {change:.0%} (training projects it "
                "after every step)")
    for name, value in values.items():
        getattr(head, name).assign(value)
    return dict(layer=head.name, samples=int(seen), **details), None
