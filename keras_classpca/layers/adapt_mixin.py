"""The part `ClassPCADense` and `ClassPCAConv2D` share: options, `adapt`, saved state."""

import numpy as np

from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.data_adapter import is_infinite, iter_batches
from keras_classpca.layers.geometry import assign_solution, check_input, iter_rows, output_size

CLASS_PCA_DEFAULTS = {
    "n_classes": None,
    "center": True,
    "allocation": "equal",
    "scaling": "standardize",
    "offset": "center",
    "variance_share": 0.95,
    "dedup_threshold": 0.9,
}


class ClassPCAAdaptMixin:
    """Adds `adapt(data)` to a Dense/Conv2D subclass, in the style of `Normalization`.

    The layer's kernel and bias are computed by `ClassPCA` from `(x, y)` data; a
    non-trainable `adapted` flag is saved with the weights so that `is_adapted`
    survives `.keras` round trips.
    """

    def _set_class_pca_options(self, options):
        for name, default in CLASS_PCA_DEFAULTS.items():
            setattr(self, name, options.get(name, default))
        # Validate now, at construction, not at the first adapt.
        self._new_class_pca()
        self._adapted = None
        self.class_pca_ = None

    def _new_class_pca(self):
        options = {name: getattr(self, name) for name in CLASS_PCA_DEFAULTS}
        return ClassPCA(output_size(self), **options)

    def _class_pca_config(self):
        return {name: getattr(self, name) for name in CLASS_PCA_DEFAULTS}

    def build(self, input_shape):
        # Created before the parent's build: Keras locks a layer's state after build.
        self._adapted = self.add_weight(
            name="adapted", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        super().build(input_shape)

    @property
    def is_adapted(self):
        """Whether `adapt` has set the weights (kept across save/load)."""
        return self._adapted is not None and bool(np.asarray(self._adapted.numpy()))

    def _row_options(self):
        return {}

    def adapt(self, data, batch_size=None, steps=None, strategy=None):
        """Compute the kernel and bias from labelled data with class-PCA.

        Statistics are accumulated batch by batch in float64; the data set is never
        held in memory. The weights change only if the whole pass succeeds.

        Args:
            data: `(x, y)` arrays or tensors, a `tf.data.Dataset` of `(x, y)` batches
                (TFDS with `as_supervised=True`), a `keras.utils.PyDataset`, or any
                iterable (e.g. a generator) of `(x, y)` batches. `x` is this layer's
                input; `y` holds integer labels or one-hot rows.
            batch_size: batch size used when `data` is arrays (default 1024).
            steps: use at most this many batches (required for a dataset that
                never ends, `ds.repeat()`).
            strategy: a `tf.distribute.Strategy` to spread the statistics pass over
                (needs `n_classes`; see docs/distributed.md).
        """
        if steps is None and is_infinite(data):
            raise ValueError(
                "`data` never ends (a tf.data.Dataset repeated without a count): pass "
                "`steps=` (how many batches to adapt on), or a finite dataset."
            )
        if strategy is not None:
            from keras_classpca.distributed import adapt_with_strategy

            adapt_with_strategy(self, data, strategy=strategy, batch_size=batch_size, steps=steps)
            return
        class_pca = self._new_class_pca()
        row_options = self._row_options()
        input_shape = None
        for x, y in iter_batches(data, batch_size=batch_size, steps=steps):
            check_input(self, x)
            if input_shape is None:
                input_shape = (None,) + tuple(x.shape[1:])
            labels = class_pca_labels(class_pca, y, len(x))
            for rows, row_labels in iter_rows(self, x, labels, **row_options):
                class_pca.partial_fit(rows, row_labels)
        if input_shape is None:
            raise ValueError("`data` is empty: no samples to adapt the layer on.")
        solution = class_pca.solve()
        if not self.built:  # only now: a failed adapt leaves an unbuilt layer unbuilt
            self.build(input_shape)
        assign_solution(self, solution.kernel, solution.bias)
        self._adapted.assign(1)
        self.class_pca_ = class_pca

    # The parent saves its kernel and bias under "0", "1"; the flag goes last.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store[str(len(store.keys()))] = np.asarray(self._adapted.numpy())

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built:
            self._adapted.assign(store[str(len(store.keys()) - 1)])


def class_pca_labels(class_pca, y, n_samples):
    """Validated int labels for one batch (errors name `y`)."""
    from keras_classpca.core.class_pca import labels_to_int

    labels = labels_to_int(y, class_pca.n_classes)
    if len(labels) != n_samples:
        raise ValueError(
            f"`x` and `y` must have the same number of samples; received {n_samples} and {len(labels)}."
        )
    return labels
