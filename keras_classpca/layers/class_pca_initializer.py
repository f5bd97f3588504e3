"""`ClassPCAInitializer`: a Keras initializer whose values come from `(x, y)` data."""

import warnings

import keras
import numpy as np

from keras_classpca._warnings import warn
from keras_classpca.core.class_pca import ClassPCA, OvercompleteWarning, labels_to_int
from keras_classpca.core.data_adapter import (
    is_infinite,
    is_unlabeled,
    iter_batches,
    labels_optional,
    never_ends_error,
    readable_data,
)
from keras_classpca.core.patches import extract_patches

PARTS = ("kernel", "bias")


def _loading_saved_model():
    """Whether Keras is inside `load_model`, which loads the weights after building.

    `keras.saving.load_model` deserializes the model inside an object-sharing scope
    (`keras/src/saving/saving_lib.py`); `clone_model` and `from_config` do not.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - another Keras: rather warn once too often
        return False
    return global_state.get_global_attribute("shared_objects/id_to_obj_map") is not None


def _tensor_in_range(values, dtype):
    """`values` as a tensor of `dtype`; a `ValueError` where float16 would make them inf."""
    from keras_classpca.layers.geometry import check_float16_range

    check_float16_range(values, "The class-PCA weights", {dtype})
    return keras.ops.convert_to_tensor(values, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_classpca")
class ClassPCAInitializer(keras.initializers.Initializer):
    """Initializes a Dense or Conv2D kernel (or bias) with class-PCA weights.

    Build it from a fitted `ClassPCA`, or from data with `from_data`. Called with a
    Dense kernel shape `(d, units)` or a Conv2D kernel shape `(kh, kw, c, filters)`, it
    solves for `shape[-1]` components over the `d = prod(shape[:-1])` features the
    statistics were gathered on (for Conv2D: `kh*kw*c`-dimensional patches).
    `bias_initializer()` gives the matching bias initializer.

    Only hyperparameters go into `get_config()`. When Keras rebuilds a saved model
    (`load_model`) it calls the initializer without data; a restored initializer then
    returns zeros, which the saved weights overwrite. Rebuilt from its config anywhere
    else (`keras.models.clone_model`, `from_config`, `model_from_json`), there are no
    weights to come: the kernel gets `glorot_uniform` values (Keras' default) with a
    warning, never a dead all-zero layer; the bias gets zeros. A freshly constructed
    initializer without statistics raises instead, so a forgotten fit never goes
    unnoticed.

    Args:
        class_pca: a fitted `ClassPCA`.
        part: `"kernel"` or `"bias"`.

    Example:

    >>> import numpy as np, keras
    >>> x = np.random.default_rng(0).normal(size=(200, 10)).astype("float32")
    >>> y = np.arange(200) % 4
    >>> init = ClassPCAInitializer.from_data(x, y)
    >>> layer = keras.layers.Dense(8, kernel_initializer=init,
    ...                            bias_initializer=init.bias_initializer())
    >>> layer.build((None, 10)); tuple(layer.kernel.shape)
    (10, 8)
    """

    def __init__(self, class_pca=None, *, part="kernel"):
        if class_pca is not None and not isinstance(class_pca, ClassPCA):
            raise TypeError(
                "`class_pca` must be a fitted ClassPCA or None; received "
                f"{type(class_pca).__name__}."
            )
        if part not in PARTS:
            raise ValueError(f"`part` must be one of {PARTS}; received {part!r}.")
        self.class_pca = class_pca
        self.part = part
        self._params = class_pca.get_params() if class_pca is not None else {}
        self._restored = False
        self._groups = None  # per-group ClassPCAs of a grouped or depthwise kernel
        # from_data's options of a Dense kernel: the Dense rule applies at the solve
        # (`layers.geometry.dense_remedies`), as in `ClassPCADense.adapt` and `hybridize`,
        # with sign pairs only for a layer whose activation rectifies.
        self._dense_options = None
        self._dense_sign_pairs = False
        # from_data's geometry: () for flattened samples (a Dense kernel), the spatial
        # kernel size of a convolution's patches; None when not known.
        self._kernel_size = None
        self._depthwise = None  # with `_groups`: depthwise (True) or grouped statistics

    def __repr__(self):
        if self._groups:
            state = f"fitted per group: {len(self._groups)} groups"
        elif self.class_pca is None:
            state = "restored from its config: no statistics" if self._restored else "not fitted"
        else:
            statistics = self.class_pca.__dict__.get("_statistics")
            state = ("not fitted" if statistics is None else
                     f"fitted on {statistics.n_samples:,} rows of {len(statistics)} classes")
        return f"ClassPCAInitializer(part={self.part!r}, {state})"

    @classmethod
    def from_data(
        cls,
        x,
        y=None,
        *,
        kernel_size=None,
        strides=1,
        padding="valid",
        dilation_rate=1,
        batch_size=None,
        groups=1,
        depthwise=False,
        activation=None,
        **class_pca_options,
    ):
        """Fit class-PCA statistics on data and return the kernel initializer.

        Args:
            x: inputs (`y` given separately), or any data `ClassPCA.fit` accepts;
                inputs alone (no `y`: an array, or a dataset / iterable of `x`
                batches) give the label-free initializer (the PCA of the inputs).
            y: labels (integers or one-hot).
            kernel_size, strides, padding, dilation_rate: for a convolution
                initializer, the statistics are over the inputs' patches with this
                geometry (Conv1D on `(n, steps, c)`, Conv2D on `(n, h, w, c)`, Conv3D
                on `(n, d, h, w, c)`; padding `"causal"` for 1-D); leave
                `kernel_size=None` for a Dense initializer (samples flattened).
            batch_size: batch size when slicing arrays.
            groups: for a grouped convolution, one class-PCA per group of channels.
            depthwise: for a `DepthwiseConv*` kernel: one class-PCA per input channel,
                `depth_multiplier` components each (set by the kernel shape).
            activation: the activation of the layer it is for (as given to the
                layer; an initializer cannot see its layer). Dense: where rows are
                plentiful (the Dense rule of `ClassPCADense.adapt`), a layer a
                rectifier follows (`"relu"`, `"gelu"`, ...) gets sign pairs `(w, -w)`
                and others (None, `"tanh"`, ...) distinct directions only, for which
                pairs would be copies. Convolution: a rectifier gets spare filters
                (`sign_pairs="spare"`: the filters beyond the patch features are
                negatives of the leading directions). Pass it to get what `adapt` and
                `hybridize` solve for that layer.
            **class_pca_options: `ClassPCA` arguments (`center`, `allocation`, ...).
                The number of components is the kernel's (set when Keras builds the
                layer): no `units` / `filters` here.
        """
        options = sorted(ClassPCA().get_params())  # (`n_components`: checked against the
        unknown = sorted(set(class_pca_options) - set(options)  # kernel when built)
                         - {"units", "filters"})
        if unknown:
            raise TypeError(
                f"`ClassPCAInitializer.from_data` got unknown argument(s) {unknown}: it "
                "takes the geometry (`kernel_size`, `strides`, `padding`, "
                "`dilation_rate`, `groups`, `depthwise`), `batch_size`, `activation` and "
                f"the ClassPCA options {options}. It reads every "
                "sample and patch of `x`: pass a subset for fewer (the layers' `adapt` "
                "takes `patches_per_image` and `steps`)."
            )
        for size in ("units", "filters"):
            if size in class_pca_options:
                raise TypeError(
                    f"`from_data` takes no `{size}`: the number of components is the "
                    "kernel's (`Dense(units, kernel_initializer=init)`), set when Keras "
                    "builds the layer."
                )
        if activation is not None and not callable(activation):
            try:  # a misspelt name would otherwise count as a rectifier
                keras.activations.get(activation)
            except (ValueError, TypeError):
                raise ValueError(
                    "`activation` must be None, the name of a Keras activation (\"relu\", "
                    f"\"gelu\", \"tanh\", ...) or a callable; received {activation!r}."
                ) from None
        if y is not None and isinstance(x, tuple) and len(x) in (2, 3):
            raise TypeError(
                "`x` is an `(x, y)` pair and `y` was also given: pass "
                "`from_data(x, y)` or `from_data((x, y))`."
            )
        x, y = readable_data(x), readable_data(y)
        if (kernel_size is not None and not depthwise and "sign_pairs" not in class_pca_options
                and activation is not None):
            from keras_classpca.layers.geometry import rectifies

            if rectifies(activation):
                # A convolution its rectifier reads: spare filters, as its `adapt` and
                # `hybridize` give it (`layers.geometry.LayerStatistics`).
                class_pca_options = dict(class_pca_options, sign_pairs="spare")
        class_pca = ClassPCA(**class_pca_options)
        if y is None:  # inputs alone (an array, or batches of x): label-free, one class
            if is_unlabeled(x) and (class_pca.n_classes or 1) > 1:
                raise ValueError(
                    "`x` holds inputs alone, which give the label-free initializer (the "
                    f"PCA of the inputs, one class), but n_classes={class_pca.n_classes}: "
                    "pass `y`, or leave out `n_classes`."
                )
            x = labels_optional(x)
        if is_infinite(x):
            raise never_ends_error("pass a finite dataset, e.g. `ds.take(n_batches)`.", "x")
        group_pcas = None  # one ClassPCA per group of channels (created at the first batch)
        seen = False
        for x_batch, y_batch in iter_batches(x, y, batch_size=batch_size):
            labels = labels_to_int(y_batch, class_pca.n_classes)
            if kernel_size is not None:
                if x_batch.ndim not in (3, 4, 5):
                    raise ValueError(
                        "`x` must be 4-D images (batch, height, width, channels) — or 3-D "
                        "sequences, 5-D volumes for Conv1D, Conv3D — when `kernel_size` is "
                        f"given; received shape {x_batch.shape}."
                    )
                n_groups = x_batch.shape[-1] if depthwise else groups
                patches = extract_patches(
                    x_batch,
                    kernel_size,
                    strides,
                    padding,
                    dilation_rate,
                    groups=n_groups,
                    rank=x_batch.ndim - 2,
                )
                rows = patches.reshape(-1, n_groups, patches.shape[-1])
                labels = np.repeat(labels, len(rows) // len(x_batch))
                if group_pcas is None:
                    group_pcas = [class_pca] + [
                        ClassPCA(**class_pca_options) for _ in range(n_groups - 1)
                    ]
                for group_pca, group_rows in zip(group_pcas, rows.transpose(1, 0, 2)):
                    group_pca.partial_fit(group_rows, labels)
            else:
                class_pca.partial_fit(x_batch.reshape(len(x_batch), -1), labels)
            seen = True
        if not seen:
            raise ValueError("`x` is empty: no samples to compute the initializer from.")
        initializer = cls(class_pca)
        if group_pcas is not None and (len(group_pcas) > 1 or depthwise):
            initializer._groups, initializer._depthwise = group_pcas, bool(depthwise)
        if kernel_size is None:
            initializer._kernel_size = ()
        else:
            rank = x_batch.ndim - 2
            initializer._kernel_size = (
                (int(kernel_size),) * rank if isinstance(kernel_size, (int, np.integer))
                else tuple(int(k) for k in kernel_size))
        if kernel_size is None:
            initializer._dense_options = dict(class_pca_options)
            from keras_classpca.layers.geometry import rectifies

            initializer._dense_sign_pairs = rectifies(activation)
        return initializer

    @classmethod
    def separable_from_data(
        cls,
        x,
        y=None,
        *,
        kernel_size,
        depth_multiplier=1,
        strides=1,
        padding="valid",
        dilation_rate=1,
        batch_size=None,
        **class_pca_options,
    ):
        """The three initializers of a `SeparableConv1D/2D`, solved from data.

        The depthwise kernel is class-PCA per input channel (`depth_multiplier`
        components each); the pointwise kernel and the bias are class-PCA of the
        depthwise output (a second pass over `x`, which must be re-iterable).

        Returns:
            `{"depthwise_initializer", "pointwise_initializer", "bias_initializer"}`,
            to pass as keyword arguments to the layer.

        Example:

        >>> import numpy as np, keras
        >>> x = np.random.default_rng(0).normal(size=(40, 9, 9, 3)).astype("float32")
        >>> inits = ClassPCAInitializer.separable_from_data(x, np.arange(40) % 2, kernel_size=3)
        >>> layer = keras.layers.SeparableConv2D(4, 3, **inits)
        >>> tuple(layer(x).shape)
        (40, 7, 7, 4)
        """
        from keras_classpca.layers.geometry import depthwise_kernel, iter_group_rows

        depthwise = cls.from_data(
            x,
            y,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            batch_size=batch_size,
            depthwise=True,
            **class_pca_options,
        )
        solutions = [pca.solve(depth_multiplier) for pca in depthwise._groups]
        pointwise = ClassPCA(**class_pca_options)
        probe = kernel = None  # a layer with this geometry, to read the depthwise output
        for x_batch, y_batch in iter_batches(x, y, batch_size=batch_size):
            if probe is None:
                kinds = {3: keras.layers.SeparableConv1D, 4: keras.layers.SeparableConv2D}
                if x_batch.ndim not in kinds:
                    raise ValueError(
                        "`x` must be 3-D sequences or 4-D images for a separable "
                        f"convolution; received shape {x_batch.shape}."
                    )
                probe = kinds[x_batch.ndim](
                    1,
                    kernel_size,
                    strides=strides,
                    padding=padding,
                    dilation_rate=dilation_rate,
                    depth_multiplier=depth_multiplier,
                )
                kernel = depthwise_kernel(probe, solutions)
            labels = labels_to_int(y_batch, pointwise.n_classes)
            for rows, row_labels in iter_group_rows(
                probe, x_batch, labels, stage=1, depthwise_kernel=kernel
            ):
                pointwise.partial_fit(rows[0], row_labels)
        pointwise_initializer = cls(pointwise)
        return {
            "depthwise_initializer": depthwise,
            "pointwise_initializer": pointwise_initializer,
            "bias_initializer": pointwise_initializer.bias_initializer(),
        }

    def bias_initializer(self):
        """The initializer of the matching bias (same statistics)."""
        twin = ClassPCAInitializer(self.class_pca, part="bias")
        twin._params, twin._restored = self._params, self._restored
        twin._groups, twin._dense_options = self._groups, self._dense_options
        twin._dense_sign_pairs, twin._kernel_size = self._dense_sign_pairs, self._kernel_size
        twin._depthwise = self._depthwise
        return twin

    def __call__(self, shape, dtype=None):
        # As Keras' own initializers: `None` means `keras.config.floatx()`, on every
        # backend (JAX without x64 has no float64 and would silently give float32).
        dtype = keras.backend.standardize_dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if self.class_pca is None or not self.class_pca.is_fitted:
            if self._restored:
                return self._without_statistics(shape, dtype)
            raise ValueError(
                "This ClassPCAInitializer has no statistics: build it from a fitted "
                "ClassPCA (`ClassPCAInitializer(ClassPCA(...).fit(x, y))`) or with "
                "`ClassPCAInitializer.from_data(x, y)`."
            )
        if self._groups is not None:
            values = self._grouped_values(shape)  # (its own shape checks first)
            self._check_kernel_size(shape)
            return _tensor_in_range(values, dtype)
        if self.part == "bias":
            if len(shape) != 1:
                raise ValueError(f"A bias initializer needs a 1-D shape; received {shape}.")
            return _tensor_in_range(self._solve(shape[0]).bias, dtype)
        if len(shape) not in (2, 3, 4, 5):
            raise ValueError(
                "ClassPCAInitializer handles Dense kernels (d, units) and Conv2D kernels "
                "(kh, kw, channels, filters) — and Conv1D, Conv3D kernels; received shape "
                f"{shape}."
            )
        n_features = int(np.prod(shape[:-1]))
        if n_features != self.class_pca.n_features_in_:
            # The hint names this kernel's kind (from its rank), not always Conv2D's.
            hint = {
                2: "for Dense: the layer's input features",
                3: "for Conv1D: kernel_size * channels",
                4: "for Conv2D: kernel_height * kernel_width * channels",
                5: "for Conv3D: kernel_depth * kernel_height * kernel_width * channels",
            }[len(shape)]
            raise ValueError(
                f"Kernel shape {shape} needs statistics over {n_features} features, but "
                f"the class-PCA statistics have {self.class_pca.n_features_in_} "
                f"({hint})."
                + (" `from_data` reads images channels last: for channels-first images "
                   "pass `np.moveaxis(x, 1, -1)`." if len(shape) > 2 else "")
            )
        self._check_kernel_size(shape)
        kernel = self._solve(shape[-1]).kernel.reshape(shape)
        return _tensor_in_range(kernel, dtype)

    def _check_kernel_size(self, shape):
        """A `ValueError` when a kernel's spatial size is not that of the statistics'
        patches (or a Dense kernel's, for flattened samples)."""
        if self.part == "kernel" and self._kernel_size is not None and (
                tuple(shape[:-2]) != self._kernel_size):
            raise ValueError(
                f"Kernel shape {shape} does not match the statistics: they are of "
                + ("flattened samples, for a Dense kernel (d, units)" if not self._kernel_size
                   else f"patches of kernel_size={self._kernel_size}, for a kernel "
                   f"{self._kernel_size + ('channels', 'filters')}")
                + ". Compute the initializer with the layer's own kernel_size."
            )

    def _grouped_values(self, shape):
        """Kernel or bias of a grouped convolution (`(*k, c_g, filters)`: `filters / g`
        components per group) or of a depthwise one (`(*k, channels, multiplier)`)."""
        from keras_classpca.layers.geometry import grouped_kernel

        groups = len(self._groups)
        if self.part == "bias":
            if len(shape) != 1 or shape[0] % groups:
                raise ValueError(
                    f"A bias for {groups} groups needs a 1-D shape divisible by {groups}; "
                    f"received {shape}."
                )
            per_group = shape[0] // groups
            return np.concatenate([pca.solve(per_group).bias for pca in self._groups])
        window = int(np.prod(shape[:-2]))
        depthwise = self._depthwise if self._depthwise is not None else (
            shape[-2] == groups and window == self._groups[0].n_features_in_)
        per_group = shape[-1] if depthwise else shape[-1] // groups
        features = window if depthwise else window * shape[-2]
        if (
            len(shape) < 3
            or features != self._groups[0].n_features_in_
            or (not depthwise and shape[-1] % groups)
        ):
            raise ValueError(
                f"Kernel shape {shape} does not fit statistics of {groups} groups over "
                f"{self._groups[0].n_features_in_} features each (a depthwise kernel is "
                "(*kernel_size, channels, depth_multiplier), a grouped one "
                "(*kernel_size, channels / groups, filters))."
            )
        return grouped_kernel([pca.solve(per_group).kernel for pca in self._groups], shape)

    def _without_statistics(self, shape, dtype):
        """Values of a rebuilt initializer, which has hyperparameters but no data."""
        if self.part == "bias" or _loading_saved_model():
            # A zero bias is the usual start; in `load_model` the weight file overwrites all.
            return keras.ops.zeros(shape, dtype=dtype)
        warn(
            "ClassPCAInitializer rebuilt from its config (keras.models.clone_model, "
            "from_config, model_from_json) has no class statistics: a config keeps "
            f"hyperparameters only. The kernel of shape {shape} gets glorot_uniform values "
            "instead. Copy the solved weights (`clone.set_weights(model.get_weights())`) "
            "or solve again (`hybridize`, `ClassPCAInitializer.from_data`)."
        )
        return keras.initializers.GlorotUniform()(shape, dtype=dtype)

    def _solve(self, n_components):
        from keras_classpca.layers.geometry import apply_dense_remedies

        pca = self.class_pca
        expected = pca.n_components
        if expected is not None and expected != n_components:
            raise ValueError(
                f"The ClassPCA was configured for {expected} components but the layer "
                f"asks for {n_components}."
            )
        if self._dense_options is not None:
            # The Dense rule decides for this layer's units, from the parameters the
            # statistics were gathered with (a previous call's remedies are undone).
            pca.set_params(**self._params)
            apply_dense_remedies(pca, n_components, self._dense_options,
                                 sign_pairs=self._dense_sign_pairs)
        with warnings.catch_warnings():  # more filters than inputs: the layer's shape
            warnings.simplefilter("ignore", OvercompleteWarning)
            return pca.solve(n_components)

    def get_config(self):
        return {"part": self.part, "class_pca_params": dict(self._params)}

    @classmethod
    def from_config(cls, config):
        initializer = cls(part=config.get("part", "kernel"))
        initializer._params = dict(config.get("class_pca_params", {}))
        initializer._restored = True
        return initializer
