"""The part every `ClassPCA*` layer shares: options, `adapt`, saved state."""

import inspect

import keras
import numpy as np

from keras_classpca._settings import checked_seed
from keras_classpca._warnings import warn
from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.data_adapter import (
    is_infinite,
    is_unlabeled,
    iter_batches,
    labels_optional,
    never_ends_error,
    readable_data,
)
from keras_classpca.layers.geometry import (
    CONVOLUTIONS,
    LayerStatistics,
    check_input,
    groups_and_components,
    n_stages,
    output_size,
)

# Kinds the tf.distribute pass can adapt (one class-PCA per layer).
ONE_GROUP_KINDS = (keras.layers.Dense,) + CONVOLUTIONS

# Every `ClassPCA` option but `n_components` (the layer's units / filters), with its default.
CLASS_PCA_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(ClassPCA).parameters.items()
    if name != "n_components"
}


def warn_unadapted_layers(model, where, remedy="`hybridize(model, data)` or "
                                             "`layer.adapt(data)`"):
    """Warn if `model` holds `ClassPCA*` layers that are frozen but were never adapted
    (nor solved by `hybridize`, nor loaded adapted): training would keep their
    initializer's random weights. `where` names the caller (e.g. "fit_top"), `remedy`
    the ways to solve them."""
    pending, names = list(getattr(model, "layers", [])), []
    while pending:
        layer = pending.pop(0)
        pending.extend(getattr(layer, "layers", []))  # nested models
        if (isinstance(layer, ClassPCAAdaptMixin) and layer.built and not layer.trainable
                and not layer.is_adapted):
            names.append(f"{type(layer).__name__} '{layer.name}'")
    if names:
        warn(
            f"{where}: {', '.join(names)} {'was' if len(names) == 1 else 'were'} never "
            "adapted: a ClassPCA layer is frozen from construction, so it would keep its "
            f"initializer's random weights. Solve it first ({remedy}), or set "
            "`layer.trainable = True` to train it.",
            UserWarning
        )


def solve_options(layer, options):
    """The `ClassPCA` options `layer` is solved with by `hybridize`: `options` (those
    given to the call), over a `ClassPCA*` layer's own (its constructor's)."""
    if not isinstance(layer, ClassPCAAdaptMixin):
        return dict(options)
    return {**layer._solve_options(), **options}


def record_solve_options(layer, options):
    """After `hybridize` solved a `ClassPCA*` layer with `options` (`solve_options`):
    its attributes, and so its config, say what its weights were solved with."""
    if isinstance(layer, ClassPCAAdaptMixin):
        for name, value in options.items():
            if name in CLASS_PCA_DEFAULTS:
                setattr(layer, name, value)


class ClassPCAAdaptMixin:
    """Adds `adapt(data)` to a subclass of a solvable Keras layer, in the style of
    `Normalization` (Dense, ConvND, depthwise and separable convolutions: see
    `keras_classpca.layers.geometry`).

    The layer's kernel and bias are computed by `ClassPCA` from `(x, y)` data; a
    non-trainable `adapted` flag is saved with the weights so that `is_adapted`
    survives `.keras` round trips.
    """

    # Options left to a per-kind rule when not given (None): the Dense rule of
    # `layers.geometry.dense_remedies` for ClassPCADense.
    RULE_DECIDED_OPTIONS = ()

    def _set_class_pca_options(self, options):
        for name, default in CLASS_PCA_DEFAULTS.items():
            if name in self.RULE_DECIDED_OPTIONS:
                default = None
            setattr(self, name, options.get(name, default))
        # Validate now, at construction, not at the first adapt.
        self._new_class_pca().check_params()
        self._adapted = None
        self.class_pca_ = None
        self.statistics_ = None

    def _solve_options(self):
        """The ClassPCA options this layer sets (rule-decided ones only when given)."""
        return {name: getattr(self, name) for name in CLASS_PCA_DEFAULTS
                if not (name in self.RULE_DECIDED_OPTIONS and getattr(self, name) is None)}

    def _new_class_pca(self):
        options = self._solve_options()
        n_components = output_size(self)
        if n_components is None:  # depthwise, unbuilt: components per input channel
            n_components = groups_and_components(self, 1)[1]
        return ClassPCA(n_components, **options)

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
                (TFDS with `as_supervised=True`), a `keras.utils.PyDataset`, any
                iterable (e.g. a generator) of `(x, y)` batches, or a function returning
                one (called once per pass). `x` is this layer's
                input; `y` holds integer labels or one-hot rows. Inputs alone (an
                array `x`, or a dataset, PyDataset or iterable of `x` batches, as
                `keras.layers.Normalization.adapt` takes them) solve the layer
                label-free: the leading covariance eigenvectors of its input (one
                class).
            batch_size: batch size used when `data` is arrays (default 1024).
            steps: use at most this many batches (required for a dataset that
                never ends, `ds.repeat()`).
            strategy: a `tf.distribute.Strategy` to spread the statistics pass over
                (needs `n_classes`; see docs/distributed.md).
        """
        self._refuse_unsolvable_kernel()
        data = readable_data(data)
        if steps is None and is_infinite(data):
            raise never_ends_error(
                "pass `steps=` (how many batches to adapt on), or a finite dataset.")
        if hasattr(batch_size, "shape") or isinstance(batch_size, (list, tuple)):
            raise TypeError(
                "`adapt` takes the data as one argument: `adapt((x, y))`, not "
                "`adapt(x, y)` (its second argument is `batch_size`)."
            )
        label_free = is_unlabeled(data)
        # Batches of x alone: the PCA of the input (one class). Single samples of a
        # dataset are batched: a convolution knows the rank of its batches; a Dense
        # batch has rank 2 or more, so rank-1 elements are samples (like
        # `Normalization.adapt`), and higher ones are read as batches of rows, which
        # give the same rows as samples of a sequence would.
        rank = getattr(self, "rank", None)
        data = labels_optional(data, 2 if rank is None else rank + 2)
        if label_free and (self.n_classes or 1) > 1:
            raise ValueError(
                f"`data` holds inputs alone, which solve the layer label-free (the PCA of "
                f"its input, one class), but the layer has n_classes={self.n_classes}: "
                "pass `(x, y)` with labels, or make the layer without `n_classes`."
            )
        if strategy is not None:
            if not isinstance(self, ONE_GROUP_KINDS) or getattr(self, "groups", 1) != 1:
                raise NotImplementedError(
                    f"{type(self).__name__}.adapt(strategy=...) covers one-group layers "
                    "(Dense, ConvND with groups=1) only."
                )
            from keras_classpca.distributed import adapt_with_strategy

            adapt_with_strategy(self, data, strategy=strategy, batch_size=batch_size, steps=steps)
            return
        statistics = LayerStatistics(self, self._solve_options(), **self._row_options())
        input_shape = None
        while True:
            if statistics.stage and not callable(data) and iter(data) is data:
                raise TypeError(
                    f"{type(self).__name__}.adapt needs {n_stages(self)} passes over `data` "
                    "(the pointwise kernel is solved on the solved depthwise output), but "
                    "`data` is a one-shot iterator: pass arrays, a tf.data.Dataset, a keras "
                    "PyDataset, a function returning a fresh generator, or another "
                    "re-iterable source."
                )
            for x, y in iter_batches(data, batch_size=batch_size, steps=steps):
                check_input(self, x)
                if input_shape is None:
                    input_shape = (None,) + tuple(x.shape[1:])
                statistics.update(x, class_pca_labels(self.n_classes, y, len(x)))
            if input_shape is None:
                raise ValueError("`data` is empty: no samples to adapt the layer on.")
            if not statistics.end_pass():
                break
        self._take_statistics(statistics, input_shape)

    def set_class_pca(self, class_pca, input_shape):
        """Take the kernel and bias from a fitted `ClassPCA`'s solution; mark adapted.

        What `adapt` does once the statistics are in, for a one-group layer (Dense,
        ConvND with `groups=1`; also used by the distributed pass). `input_shape`
        builds the layer if it is not built yet. Raises, leaving the layer unchanged,
        if `class_pca` cannot be solved.
        """
        statistics = LayerStatistics(self, self._solve_options())
        statistics.class_pcas = [class_pca]
        statistics.end_pass()  # solves; raises before anything changes
        self._take_statistics(statistics, input_shape)

    def _refuse_unsolvable_kernel(self):
        if getattr(self, "quantization_mode", None):
            # Its kernel is int8 (or int4, float8) values with scales: the solved float
            # kernel would be cast to it (to zeros).
            raise ValueError(
                f"{type(self).__name__} '{self.name}' is quantized "
                f"({self.quantization_mode}); adapt it before quantizing."
            )
        if getattr(self, "lora_enabled", False):
            # Its kernel is the frozen base plus the trained low-rank update: the solved
            # kernel would be the base only, shifted by whatever LoRA has learned.
            raise ValueError(
                f"{type(self).__name__} '{self.name}' has LoRA enabled; adapt it before "
                "`enable_lora` (class-PCA solves the full kernel)."
            )

    def _take_statistics(self, statistics, input_shape):
        self._refuse_unsolvable_kernel()
        if not self.built:  # only now: a failed adapt leaves an unbuilt layer unbuilt
            self.build(input_shape)
        statistics.assign()
        self._adapted.assign(1)
        self.class_pca_ = statistics.class_pca
        self.statistics_ = statistics

    # Dense and ConvND save only their kernel and bias ("0", "1"): the flag goes last.
    # Layers on Keras' default (depthwise, separable) save every variable, the flag
    # included, and load them back in the same order.
    def _parent_saves_all_variables(self):
        parent = super(ClassPCAAdaptMixin, self).save_own_variables
        return getattr(parent, "__func__", None) is keras.layers.Layer.save_own_variables

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built and not self._parent_saves_all_variables():
            store[str(len(store.keys()))] = np.asarray(self._adapted.numpy())

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and not self._parent_saves_all_variables():
            self._adapted.assign(store[str(len(store.keys()) - 1)])


def class_pca_labels(n_classes, y, n_samples):
    """Validated int labels for one batch (errors name `y`)."""
    from keras_classpca.core.class_pca import labels_to_int

    labels = labels_to_int(y, n_classes)
    if len(labels) != n_samples:
        raise ValueError(
            "`x` and `y` must have the same number of samples; received "
            f"{n_samples} and {len(labels)}."
        )
    return labels


class ClassPCAConvMixin(ClassPCAAdaptMixin):
    """`ClassPCAAdaptMixin` for convolutions: options and config of patch sampling.

    Args (keyword-only, besides the Keras layer's own and the `ClassPCA` options):
        patches_per_image: if set, use this many random patches (positions) of each
            sample (fewer rows, faster adapt on large inputs); `None` uses them all.
        seed: seed of that sub-sampling (the same seed and the same batches give the
            same filters: positions are drawn batch by batch, so another batch size or
            data source draws others).

    `sign_pairs` not given (None): a Conv1D/2D/3D layer whose activation rectifies
    (`"relu"`, `"gelu"`, ...) gets spare filters (`"spare"`: the filters beyond its
    patch features are negatives of its leading directions); other activations, and
    depthwise and separable layers, plain class-PCA.
    """

    # sign_pairs not given: spare filters where a Conv1D/2D/3D layer's activation
    # rectifies (`LayerStatistics`), else plain class-PCA.
    RULE_DECIDED_OPTIONS = ("sign_pairs",)

    def __init__(self, *args, patches_per_image=None, seed=0, **kwargs):
        options = {name: kwargs.pop(name) for name in CLASS_PCA_DEFAULTS if name in kwargs}
        kwargs.setdefault("trainable", False)
        super().__init__(*args, **kwargs)
        if patches_per_image is not None and (
            isinstance(patches_per_image, bool)
            or not isinstance(patches_per_image, int)
            or patches_per_image < 1
        ):
            raise ValueError(
                "`patches_per_image` must be a positive integer or None; received "
                f"{patches_per_image!r}."
            )
        self.patches_per_image = patches_per_image
        self.seed = checked_seed(seed)
        self._set_class_pca_options(options)

    def _row_options(self):
        return {
            "patches_per_image": self.patches_per_image,
            "rng": np.random.default_rng(self.seed),
        }

    def get_config(self):
        config = super().get_config()
        config.update(self._class_pca_config())
        config.update({"patches_per_image": self.patches_per_image, "seed": self.seed})
        return config
