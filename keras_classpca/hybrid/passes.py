"""The training data as re-iterable passes, for `hybridize` and its decision.

`DataPasses` reads arrays, tf.data datasets, PyDatasets, generators (or callables
returning them) batch by batch, a random subset where `samples` asks for one, and turns
labels into integer classes, checking them against the model's head as it goes.
"""

import numpy as np

from keras_classpca._warnings import warn
from keras_classpca.core.class_pca import labels_to_int
from keras_classpca.core.data_adapter import (
    as_arrays,
    concatenate_batches,
    is_infinite,
    iter_batches,
    known_batches,
    never_ends_error,
    warn_sample_weights_ignored,
)


class DataPasses:
    """Re-iterable `(x, labels)` batches of the (sub-sampled) training data."""

    def __init__(self, data, samples, batch_size, seed, n_classes, inputs=None):
        self.n_classes = n_classes
        self.inputs = inputs  # a multi-input model's InputPacking: `x` packed
        self.label_width = None  # columns of one-hot labels, once seen
        self.model_classes = None  # classes the model's head predicts, if it says
        self.label_free = False  # labels are zeros (one class) by design
        self.regression_head = False  # one linear output unit, no class loss
        self.first_rows = None  # samples in a dataset's first batch, once read
        self.warned_classes = False
        self.warned_weights = False
        self.batch_size = batch_size
        self.auto = samples == "auto"  # stop each layer's pass once it has converged
        samples = None if self.auto else samples
        self.samples = samples
        self.seed = seed
        self.passes = 0
        self.order = None  # samples="auto" on arrays: a random order, so any head is a
        arrays = None  # random subset (data sets are often sorted by class)
        pair = as_arrays(data, inputs=inputs)  # (x, y) in memory; warns about weights
        if pair is not None:
            arrays = (np.asarray(pair[0]), np.asarray(pair[1]))
            if len(arrays[0]) != len(arrays[1]):
                raise ValueError(
                    f"`data` must hold x and y with the same number of samples; received "
                    f"{len(arrays[0])} and {len(arrays[1])}."
                )
            if self.auto:
                self.order = np.random.default_rng(seed).permutation(len(arrays[0]))
        self.drawn = arrays is not None and samples is not None and samples < len(arrays[0])
        if self.drawn:
            # A random subset, not the first rows: data sets are often sorted by class.
            keep = np.random.default_rng(seed).choice(len(arrays[0]), samples, replace=False)
            keep = np.sort(keep)
            arrays = (arrays[0][keep], arrays[1][keep])
        self.data = arrays if arrays is not None else data
        self.in_memory = arrays is not None  # `data` is the pair `(x, y)` of arrays
        if arrays is not None:
            self._see_labels(arrays[1])
        self.total = len(arrays[0]) if arrays is not None else samples
        self.one_shot = (
            arrays is None and iter(data) is data if hasattr(data, "__iter__") else False
        )
        self._peeked = None  # (first batch, rest of the pass) of a one-shot iterator
        self.seen = None  # samples in the last complete pass

    def peek(self):
        """The first batch, without spending a pass: a one-shot iterator keeps it."""
        batches = iter(self)
        first = next(batches, None)
        if first is None:
            raise ValueError("`data` is empty: no samples to solve the layers on.")
        self.passes = 0
        if self.one_shot:
            self._peeked = (first, batches)
        return first

    def _weights_ignored(self):
        """The data's sample weights are ignored: say so once per hybridize call, not
        once per pass over the data."""
        if not self.warned_weights:
            self.warned_weights = True
            warn_sample_weights_ignored()

    def __iter__(self):
        if self._peeked is not None:
            first, rest = self._peeked
            self._peeked = None
            self.passes = 1
            yield first
            yield from rest
            return
        if self.passes and self.one_shot:
            raise TypeError(
                "`data` is a one-shot iterator but hybridize needs one pass per solved "
                "layer: pass arrays, a tf.data.Dataset, a keras PyDataset, or a callable "
                "returning a fresh generator."
            )
        self.passes += 1
        if self.order is not None:
            x, y = self.data
            for start in range(0, len(self.order), self.batch_size):
                rows = self.order[start:start + self.batch_size]
                yield x[rows], self.int_labels(y[rows])
            return
        source = self.data() if callable(self.data) else self.data
        if self.samples is None and is_infinite(source):
            raise infinite_data_error()
        classes = set()
        for x, y in iter_batches(source, batch_size=self.batch_size, max_samples=self.samples,
                                 inputs=None if self.in_memory else self.inputs,
                                 on_ignored_weights=self._weights_ignored):
            self.first_rows = self.first_rows or len(x)
            self._see_labels(y)
            labels = self.int_labels(y)
            classes.update(np.unique(labels).tolist())
            if self.regression_head:
                self.check_classes(len(classes))
            yield x, labels
        expected = self.expected_classes()
        if not (self.samples is not None and expected):
            self.check_classes(len(classes))  # (else the warning below is the precise one)
        if (self.samples is not None and expected and len(classes) < expected
                and not self.warned_classes):
            self.warned_classes = True
            warn(
                f"The first {self.samples} samples of `data` hold {len(classes)} of the "
                f"{expected} classes: the layers are solved without the others. "
                "Shuffle the dataset (`ds.shuffle(...)`), or pass `samples='auto'` (it "
                "reads on until every class has come).",
                UserWarning
            )

    def check_classes(self, n_classes_seen, where="the samples read"):
        """Warn (once) when labelled data shows a single class: class-PCA then is plain
        PCA, and a classifier's data sorted by class (or a head the planner cannot
        read, e.g. logits) is the likely cause. Raise for more than two "classes" under
        a regression head (whole-number targets are not classes)."""
        if self.regression_head and n_classes_seen > 2 and not self.label_free:
            raise ValueError(
                f"`y` holds {n_classes_seen} distinct values but the model's output is one "
                "linear unit (a regression head): class-PCA needs class labels. For a "
                "regression model solve label-free, `hybridize(model, x, cutoff=k)` (the "
                "PCA of each layer's input); for a classifier give the head its classes "
                "(softmax, or compile with a cross-entropy loss)."
            )
        if self.label_free or self.warned_classes:
            return
        expected = self.expected_classes()
        if n_classes_seen > 1 and expected and n_classes_seen < expected:
            self.warned_classes = True
            warn(
                f"The labels of {where} hold {n_classes_seen} of the {expected} classes the "
                "model predicts: the layers are solved without the others (they get no "
                "filters of their own).",
                UserWarning
            )
            return
        if n_classes_seen != 1:
            return
        self.warned_classes = True
        warn(
            f"The labels of {where} hold a single class: the layers are solved from it "
            "alone (its plain PCA). If `data` is sorted by class, shuffle it "
            "(`ds.shuffle(...)`) or pass `n_classes=` so that reading goes on until "
            "every class has come; for label-free solving pass `x` alone.",
            UserWarning
        )

    def int_labels(self, y):
        """`y` as integer class labels; raises when they do not fit the classes the
        model's head predicts (Keras' own error would come later, inside `fit`)."""
        labels = labels_to_int(y, self.n_classes)
        head = None if self.label_free or self.n_classes else self.model_classes
        if head and self.label_width and self.label_width != head:
            raise ValueError(
                f"`y` holds one-hot rows of {self.label_width} classes but the model's head "
                f"predicts {head}: give the head {self.label_width} units, or pass labels "
                f"of {head} classes."
            )
        if head and labels.size and labels.max() >= head:
            raise ValueError(
                f"`y` holds the label {int(labels.max())}, but the model's head predicts "
                f"{head} classes (labels 0 to {head - 1}): number the classes from 0, or "
                "give the head one unit per class."
            )
        return labels

    def _see_labels(self, y):
        if np.ndim(y) == 2 and np.shape(y)[1] > 1:
            self.label_width = int(np.shape(y)[1])

    def expected_classes(self):
        """How many classes the labels hold, if known without reading them all:
        `n_classes`, the width of one-hot labels, or the classes the model's head
        predicts (`model_classes`: a softmax's width, 2 for one sigmoid unit, ...)."""
        return self.n_classes or self.label_width or self.model_classes

    def head(self, n, expected_classes=None):
        """Up to `n` samples in memory, `(x, int labels)`: a random subset of arrays;
        of a dataset its first `n` — or, when those hold fewer than `expected_classes`
        classes (a dataset sorted by class), a uniform random subset drawn in one full
        pass (memory: `n` samples and a batch)."""
        if self.in_memory:
            x, y = self.data
            order = self.order  # samples="auto" drew it already, with the same seed
            if order is None:
                order = np.random.default_rng(self.seed).permutation(len(x))
            rows = np.sort(order[:n])
            return x[rows], self.int_labels(y[rows])
        xs, ys, count = [], [], 0
        for x, labels in self:
            xs.append(x[: n - count])
            ys.append(labels[: n - count])
            count += len(xs[-1])
            if count >= n:
                break
        if not xs:
            raise ValueError("`data` is empty: no samples to solve the layers on.")
        x, labels = concatenate_batches(xs), np.concatenate(ys)
        if count < n or not expected_classes or len(np.unique(labels)) >= expected_classes:
            return x, labels
        return self._random_subset(n)

    def _random_subset(self, n):
        """A uniform random subset of `n` samples of one pass, in stream order: every
        sample draws a random key and the `n` smallest keys are kept."""
        rng = np.random.default_rng(self.seed)
        kept, seen = None, 0
        for x, labels in self:
            keys = rng.random(len(x))
            batch = (keys, seen + np.arange(len(x)), x, labels)
            seen += len(x)
            if kept is not None:
                batch = tuple(concatenate_batches(pair) for pair in zip(kept, batch))
            best = np.argsort(batch[0], kind="stable")[:n]
            kept = tuple(part[best] for part in batch)
        self.seen = seen
        order = np.argsort(kept[1])
        return kept[2][order], kept[3][order]

    def estimated_size(self):
        """`size()`, or for a dataset of known length its batches × the first batch's
        size (None if unknown)."""
        size = self.size()
        if size is not None:
            return size
        batches = known_batches(self.data, self.batch_size)
        if batches is None:
            return None
        return batches * (self.first_rows or len(self.peek()[0]))

    def size(self):
        """Training samples a pass reads, or None if unknown without reading it."""
        if self.in_memory:
            return len(self.data[0])
        if self.samples is not None:
            return self.samples
        return self.seen  # a complete pass was read (None before)


def infinite_data_error():
    return never_ends_error(
        "pass `samples=` (how many samples to solve the layers on), or a finite dataset.")
