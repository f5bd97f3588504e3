"""What class-PCA needs to know about a Keras layer: can it be solved, what rows does
its input give, how many components, and how a solution becomes its weights.

Shared by the `ClassPCA*` layers' `adapt`, `ClassPCAInitializer` and `hybridize`.

Layer kinds and their rows (one `core.patches.extract_patches` for every convolution):

- `Dense`: the input vectors; on inputs of rank > 2 every position is a row.
- `Conv1D`, `Conv2D`, `Conv3D`: the layer's own patches (kernel size, strides,
  padding incl. `"causal"`, dilation, data format as configured). A grouped
  convolution (`groups=g`) is `g` class-PCA problems, one per group of channels,
  `filters / g` components each.
- `DepthwiseConv1D/2D`: one class-PCA per input channel over that channel's patches,
  `depth_multiplier` components each (the channel-wise transform of PixelHop++).
- `SeparableConv1D/2D`: two stages. The depthwise kernel as above; then the pointwise
  kernel and the bias from class-PCA of the depthwise output (a second pass).

`LayerStatistics` runs those stages for one layer: feed it batches of the layer's
input, call `end_pass()` after each pass over the data, then `assign()`.
"""

import functools
import math
import warnings

import keras
import numpy as np

from keras_classpca._warnings import warn
from keras_classpca.core.class_pca import ClassPCA, OvercompleteWarning, blas_threads_for
from keras_classpca.core.patches import extract_patches, patch_indices
from keras_classpca.core.statistics import _is_backend_tensor

# Patch rows materialised at once: bounds memory to 64 MB of float32 (128 MB of
# float64). Chunks this large reach ClassStatistics above its staging size (K·d rows for
# the benchmark CNN's conv2), so they are multiplied without another copy.
MAX_CHUNK_VALUES = 1 << 24

CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
SOLVABLE = (keras.layers.Dense,) + CONVOLUTIONS + DEPTHWISE + SEPARABLE
SOLVABLE_NAMES = ", ".join(kind.__name__ for kind in SOLVABLE)
KERNEL_PARTS = ("kernel", "depthwise_kernel", "pointwise_kernel")
# A Dense layer solved from at least this many rows per input feature gets sign-paired
# directions with the Fisher discriminant directions mixed in (`sign_pairs=True,
# discriminant="auto"`) unless the options set either: a frozen Dense layer then loses
# far less to SGD (digits MLP -4.5 -> -0.45 pp), while the Fisher directions need a
# well-estimated within-class covariance (from 600 Fashion-MNIST images over 784
# features they cost 0.8 pp). Chosen on bench_lossless's digits and Fashion-MNIST MLP
# cases (21 rows per feature: on; 7.7 and 0.8: off, where the pair was no better); its
# held-out cases are reported apart there. Convolutions get no Fisher directions (they
# cost the benchmark CNN's conv layers 0.5 pp). The sign pairs only
# where a rectifier follows (`rectifies`): after the identity or tanh the negative of a
# direction is a copy, and the layer would keep half as many directions.
DENSE_REMEDIES_MIN_ROWS_PER_FEATURE = 10
DENSE_REMEDY_OPTIONS = {"sign_pairs": True, "discriminant": "auto"}


class UnsolvableDataError(ValueError):
    """The data cannot give a layer its components (too few samples per class, too
    few distinct directions for its filters): raised by `LayerStatistics.end_pass`."""


def is_solvable_kind(layer):
    """Whether `layer` is of a kind class-PCA solves (see `unsolvable_reason`)."""
    return isinstance(layer, SOLVABLE)


def iter_layers(model):
    """All layers of `model` in order, descending into nested models."""
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from iter_layers(layer)


def unsolvable_reason(layer):
    """None if class-PCA can compute `layer`'s weights, else why not (one sentence)."""
    name = f"{type(layer).__name__} '{layer.name}'"
    if not is_solvable_kind(layer):
        return (
            f"{name} is not a layer kind class-PCA solves ({SOLVABLE_NAMES}); "
            "other layers with trainable weights end the solved prefix. One whose "
            "current weights are to stay (a pretrained `Embedding`) is passed once "
            "frozen: `layer.trainable = False` — not one still at its initial values "
            "(a `LayerScale` frozen at 1e-6 would silence the branch it scales)."
            + (" A Dense layer needs no TimeDistributed wrapper: on a sequence it "
               "applies to every step, and is solved so."
               if isinstance(layer, keras.layers.TimeDistributed)
               and isinstance(getattr(layer, "layer", None), keras.layers.Dense) else "")
        )
    if getattr(layer, "quantization_mode", None):
        return f"{name} is quantized ({layer.quantization_mode}); solve before quantizing."
    if getattr(layer, "lora_enabled", False):
        return f"{name} has LoRA enabled; class-PCA solves the full kernel only."
    return _own_computation(layer, name)


def _own_computation(layer, name):
    """Why a subclass of a solvable kind is not solved as that kind, or None: its own
    `call()` (a weight-standardized convolution, `abs(kernel)`) computes something
    else than the linear map the solved weights stand for, and a trainable weight of
    its own (a gain) would be frozen as it was initialised."""
    kind = next(c for c in type(layer).__mro__ if c in SOLVABLE)
    if type(layer).call is not kind.call:
        return (
            f"{name} is a {kind.__name__} with a `call()` of its own, which need not "
            f"compute the {kind.__name__} the solved weights stand for; it is left to "
            "training (initialize it with `ClassPCAInitializer` if its kernel is used "
            "as a plain one)."
        )
    known = {id(getattr(layer, part, None)) for part in ("bias",) + KERNEL_PARTS}
    extra = [v.name for v in layer.trainable_weights if id(v) not in known]
    if extra:
        return (
            f"{name} has trainable weights of its own ({', '.join(extra)}) besides the "
            f"{kind.__name__}'s, which a solve would freeze as initialised; it is left "
            "to training."
        )
    return None


def spatial_rank(layer):
    """0 for Dense, else the number of spatial axes of the convolution."""
    return 0 if isinstance(layer, keras.layers.Dense) else len(layer.kernel_size)


def n_stages(layer):
    """Passes over the data a solve takes: 2 for separable convolutions, else 1."""
    return 2 if isinstance(layer, SEPARABLE) else 1


def input_channels(layer):
    """Channels (features) of the layer's input, from its built kernel."""
    kernel = layer.depthwise_kernel if isinstance(layer, SEPARABLE) else layer.kernel
    if isinstance(layer, DEPTHWISE + SEPARABLE):
        return kernel.shape[-2]
    if isinstance(layer, CONVOLUTIONS):
        return kernel.shape[-2] * layer.groups
    return kernel.shape[0]


def output_size(layer):
    """Outputs of the layer: units, filters, or channels × depth_multiplier (built)."""
    if isinstance(layer, keras.layers.Dense):
        return layer.units
    if isinstance(layer, DEPTHWISE):
        return layer.kernel.shape[-2] * layer.depth_multiplier if layer.built else None
    return layer.filters


def groups_and_components(layer, channels, stage=0):
    """`(groups, components per group)` of one solve stage for inputs of `channels`."""
    if isinstance(layer, DEPTHWISE) or (isinstance(layer, SEPARABLE) and stage == 0):
        return channels, layer.depth_multiplier
    if isinstance(layer, CONVOLUTIONS):
        return layer.groups, layer.filters // layer.groups
    return 1, output_size(layer)


def stage_sizes(layer):
    """`[(components per group, features per group)]` of each solve stage of the built
    `layer`: a separable convolution's depthwise stage, then its pointwise stage over
    the depthwise maps."""
    channels = input_channels(layer)
    if isinstance(layer, keras.layers.Dense):
        return [(layer.units, channels)]
    groups, components = groups_and_components(layer, channels)
    sizes = [(components, math.prod(layer.kernel_size) * channels // groups)]
    if n_stages(layer) == 2:
        sizes.append((layer.filters, channels * layer.depth_multiplier))
    return sizes


def _channels_axis(layer):
    if isinstance(layer, keras.layers.Dense) or layer.data_format == "channels_last":
        return -1
    return 1


def _batch_of(x):
    """`x`'s shape for an error: data arrive in batches, so the first axis is the
    batch's size, not the data's (1,024 of 1,797 samples)."""
    if not x.ndim:
        return "a scalar"
    axes = ["batch", *map(str, x.shape[1:])]
    return f"batches of shape ({', '.join(axes)}{',' if len(axes) == 1 else ''})"


def check_input(layer, x, argument="x"):
    """Raise a `ValueError` naming `argument` if `x` cannot feed `layer`."""
    name = f"{type(layer).__name__} '{layer.name}'"
    rank = spatial_rank(layer)
    if rank and x.ndim != rank + 2:
        axes = ", ".join(["batch"] + [f"spatial {a + 1}" for a in range(rank)] + ["channels"])
        raise ValueError(
            f"`{argument}` for {name} must be {rank + 2}-D ({axes}); received "
            f"{_batch_of(x)}."
        )
    if not rank and x.ndim < 2:
        raise ValueError(
            f"`{argument}` for {name} must be at least 2-D (batch, ..., features); "
            f"received {_batch_of(x)}."
        )
    if x.dtype.kind not in "biuf":
        raise TypeError(f"`{argument}` must be numeric; received dtype {x.dtype}.")
    channels = x.shape[_channels_axis(layer)]
    if layer.built and channels != input_channels(layer):
        unit = "channels" if rank else "features"
        raise ValueError(
            f"`{argument}` has {channels} {unit} but {name} expects {input_channels(layer)}."
        )
    if rank and isinstance(layer, CONVOLUTIONS) and channels % layer.groups:
        raise ValueError(
            f"`{argument}` has {channels} channels, not a multiple of groups={layer.groups} "
            f"of {name}."
        )


def _channels_last(layer, x):
    return np.moveaxis(x, 1, -1) if _channels_axis(layer) == 1 else x


# Activations that keep a projection's sign information (odd or monotone-symmetric:
# f(-z) is a function of f(z)), after which a direction's negative would be a copy.
SIGN_KEEPING_ACTIVATIONS = frozenset({
    "linear", "tanh", "sigmoid", "hard_sigmoid", "softsign", "hard_tanh", "tanh_shrink",
    "soft_shrink", "hard_shrink", "softmax", "log_softmax", "sparsemax",
})


def rectifies(activation):
    """Whether `activation` discards (most of) the negative half of each projection, so
    a direction and its negative carry different information (ReLU and its smooth
    relatives); False for None, the identity and odd/sigmoidal functions. Unknown
    callables count as rectifying.

    >>> rectifies("relu"), rectifies(keras.activations.gelu), rectifies("linear")
    (True, True, False)
    """
    if activation is None:
        return False
    try:
        with warnings.catch_warnings():  # Keras warns that a lambda would not reload:
            warnings.simplefilter("ignore")  # only its name is read here
            name = keras.activations.serialize(keras.activations.get(activation))
    except (ValueError, TypeError):
        return True
    name = name if isinstance(name, str) else str(name)
    return name not in SIGN_KEEPING_ACTIVATIONS


def dense_remedies(rows, n_features, n_classes, units, options=None):
    """Whether a Dense layer of `units` solved from `rows` rows gets
    `DENSE_REMEDY_OPTIONS`: True or False by the rows-per-feature rule; None where the
    rule does not apply: the `options` set `sign_pairs` or `discriminant`, one class
    (no Fisher direction), or `units >= n_features` (the layer is not a compression:
    its plain components already span the input, sign pairs would halve them).

    >>> dense_remedies(1347, 64, 10, 40), dense_remedies(6000, 784, 10, 128)
    (True, False)
    """
    if (n_classes < 2 or units is None or units >= n_features
            or set(DENSE_REMEDY_OPTIONS) & set(options or {})):
        return None
    return rows >= DENSE_REMEDIES_MIN_ROWS_PER_FEATURE * n_features


def apply_dense_remedies(class_pca, units, options=None, sign_pairs=True):
    """`dense_remedies` for a Dense layer of `units` and its fitted `class_pca` (its
    counts, features and classes); applies `DENSE_REMEDY_OPTIONS` when True, without
    the sign pairs for `sign_pairs=False` (a layer no ReLU follows). The verdict."""
    verdict = dense_remedies(int(class_pca.n_samples_seen_.sum()), class_pca.n_features_in_,
                             len(class_pca.classes_), units, options)
    if verdict:
        remedies = dict(DENSE_REMEDY_OPTIONS)
        if not sign_pairs:
            del remedies["sign_pairs"]
        class_pca.set_params(**remedies)
    return verdict


def _depthwise_by_channel(kernel):
    """A depthwise kernel `(*k, c, m)` as `(c, prod(k), m)`."""
    c, m = kernel.shape[-2:]
    return np.asarray(kernel).reshape(-1, c, m).transpose(1, 0, 2)


def sample_rows(layer, x, *, stage=0, depthwise_kernel=None, positions=None):
    """The rows of a batch `x` of `layer`'s input: an array `(n, rows, groups, d)`.

    `stage=1` of a separable convolution gives the depthwise output at every
    position (one row per position), computed with `depthwise_kernel`. `positions`
    (`(n, p)`, convolutions only): only the rows at those output positions.
    """
    x = np.asarray(x)
    n = len(x)
    if isinstance(layer, keras.layers.Dense):
        return x.reshape(n, -1, 1, x.shape[-1])
    x = _channels_last(layer, x)
    groups, _ = groups_and_components(layer, x.shape[-1])
    patches = extract_patches(
        x, layer.kernel_size, layer.strides, layer.padding, layer.dilation_rate,
        groups=groups, rank=spatial_rank(layer), positions=positions,
    )
    patches = patches.reshape(n, -1, groups, patches.shape[-1])
    if stage == 1:
        kernel = _depthwise_by_channel(depthwise_kernel)  # (c, k, m)
        outputs = np.einsum("npck,ckm->npcm", patches, kernel)
        return outputs.reshape(n, patches.shape[1], 1, -1)
    return patches


def _values_per_sample(layer, x):
    if isinstance(layer, keras.layers.Dense):
        return max(1, math.prod(x.shape[1:]))
    return max(1, math.prod(x.shape[1:]) * math.prod(layer.kernel_size))


def _patch_positions(layer, n, positions, patches_per_image, rng):
    """`(n, patches_per_image)` random positions per sample of a convolution's patches
    (None: keep them all). One draw per sample in order, so the host and device row
    paths sub-sample alike for the same `rng`."""
    if not spatial_rank(layer) or patches_per_image is None or patches_per_image >= positions:
        return None
    return np.stack([rng.choice(positions, patches_per_image, replace=False) for _ in range(n)])


def iter_group_rows(
    layer, x, labels, *, stage=0, depthwise_kernel=None, patches_per_image=None, rng=None
):
    """Yield `(rows, row_labels)` chunks of `layer`'s input `x` (numpy).

    `rows` has shape `(groups, m, d)`: `m` rows of every group (the same positions),
    `row_labels` `(m,)`. See `sample_rows` for the stages.

    Args:
        layer: a layer of a solvable kind.
        x: a batch of that layer's input.
        labels: int labels of the batch's samples; repeated for each row of a sample.
        patches_per_image: for convolutions, keep this many random positions per sample.
        rng: `np.random.Generator` for that sub-sampling.
    """
    step = max(1, MAX_CHUNK_VALUES // _values_per_sample(layer, x))
    grid = None  # output positions per sample of a convolution
    if patches_per_image is not None and spatial_rank(layer) and len(x):
        grid = sample_rows(layer, x[:1], stage=stage,
                           depthwise_kernel=depthwise_kernel).shape[1]
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        # Sub-sampled patches: draw the positions first and extract only those.
        keep = (None if grid is None else
                _patch_positions(layer, len(chunk), grid, patches_per_image, rng))
        rows = sample_rows(layer, chunk, stage=stage, depthwise_kernel=depthwise_kernel,
                           positions=keep)
        n, positions, groups, d = rows.shape
        chunk_labels = np.repeat(labels[start : start + step], rows.shape[1])
        yield rows.reshape(-1, groups, d).transpose(1, 0, 2), chunk_labels


def iter_device_rows(layer, x, labels, *, patches_per_image=None, rng=None):
    """`iter_group_rows` (first stage) for a backend tensor `x`: the rows stay a tensor
    on its device — gathered by `backend_rows` at the same random positions
    `iter_group_rows` draws from the same `rng` — and never exist at full size on the
    host. Rows `(groups, m, d)`, labels `(m,)` NumPy."""
    n = int(x.shape[0])
    step = max(1, MAX_CHUNK_VALUES // _values_per_sample(layer, x))
    for start in range(0, n, step):
        chunk = x[start : start + step]
        m = int(chunk.shape[0])
        keep = None
        if spatial_rank(layer):
            spatial = tuple(chunk.shape[2:] if _channels_axis(layer) == 1
                            else chunk.shape[1:-1])
            positions = len(_patch_table(layer, spatial)[1])
            keep = _patch_positions(layer, m, positions, patches_per_image, rng)
        rows = backend_rows(layer, chunk, positions=keep)  # (m * positions, groups, d)
        chunk_labels = np.repeat(labels[start : start + step], int(rows.shape[0]) // m)
        yield keras.ops.transpose(rows, (1, 0, 2)), chunk_labels


def iter_rows(layer, x, labels, *, patches_per_image=None, rng=None):
    """Yield `(rows, row_labels)` chunks, rows `(m, d)`, of a one-group layer's input.

    Dense and ungrouped Conv1D/2D/3D layers; `LayerStatistics` handles every kind.
    """
    if not isinstance(layer, (keras.layers.Dense,) + CONVOLUTIONS) or (
        not isinstance(layer, keras.layers.Dense) and layer.groups != 1
    ):
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' is solved per group of channels: "
            "use `LayerStatistics`."
        )
    for rows, row_labels in iter_group_rows(
        layer, x, labels, patches_per_image=patches_per_image, rng=rng
    ):
        yield rows[0], row_labels


def grouped_kernel(parts, shape):
    """Per-group kernels `(prod(k) * c_g, f_g)` -> one kernel of `shape`.

    `shape` is `(*k, c_g, groups * f_g)` for a convolution or `(*k, c, m)` for a
    depthwise kernel (`c` groups of one channel): both are the `(*k, c_g, g, f_g)`
    array of the stacked parts, reshaped.
    """
    stacked = np.stack([np.asarray(p) for p in parts])  # (g, prod(k) * c_g, f_g)
    g, rows, f = stacked.shape
    per_group = rows // math.prod(shape[:-2])
    return stacked.reshape(g, -1, per_group, f).transpose(1, 2, 0, 3).reshape(shape)


def solution_weights(layer, solutions, depthwise_solutions=None):
    """The layer's weights `{attribute: array}` from per-group `Solution`s.

    `solutions` are the last stage's (one per group); for a separable convolution
    `depthwise_solutions` are the first stage's (one per input channel).
    """
    if isinstance(layer, SEPARABLE):
        depthwise = depthwise_kernel(layer, depthwise_solutions)
        weights = {
            "depthwise_kernel": depthwise,
            "pointwise_kernel": np.asarray(solutions[0].kernel).reshape(
                tuple(layer.pointwise_kernel.shape)
            ),
        }
    elif isinstance(layer, keras.layers.Dense):
        weights = {"kernel": np.asarray(solutions[0].kernel).reshape(tuple(layer.kernel.shape))}
    else:
        weights = {"kernel": grouped_kernel([s.kernel for s in solutions],
                                             tuple(layer.kernel.shape))}
    if layer.use_bias:
        weights["bias"] = np.concatenate([np.asarray(s.bias) for s in solutions])
    return weights


def depthwise_kernel(layer, solutions):
    """A depthwise kernel `(*k, c, m)` from one solution `(prod(k), m)` per channel."""
    m = np.asarray(solutions[0].kernel).shape[1]
    return grouped_kernel([s.kernel for s in solutions],
                           tuple(layer.kernel_size) + (len(solutions), m))


def assign_weights(layer, weights):
    """Write `{attribute: array}` (from `solution_weights`) into a built layer."""
    for attribute, value in weights.items():  # all checked before any is written
        _check_range(layer, attribute, value)
    for attribute, value in weights.items():
        _assign_constrained(layer, attribute, value)


_FLOAT16_MAX = float(np.finfo(np.float16).max)  # bfloat16 has float32's range


def check_float16_range(value, what, dtypes):
    """Raise a `ValueError` if `value` exceeds float16's range while one of `dtypes` (the
    dtypes it is stored or computed in) is float16: it would give inf."""
    value = np.asarray(value)
    largest = float(np.abs(value).max()) if value.size else 0.0
    if "float16" in dtypes and largest > _FLOAT16_MAX:
        raise ValueError(
            f"{what} reaches {largest:.3g}, beyond the largest float16 value "
            f"{_FLOAT16_MAX:.6g}: in float16 it would give inf. Scale the input up "
            "(standardize it), use scaling='unit', or make the layer float32."
        )


def _check_range(layer, attribute, value):
    """`check_float16_range` of a solved weight of `layer` (a float16 layer stores it,
    mixed_float16 computes with it, in float16)."""
    check_float16_range(
        value, f"The solved {attribute} of {type(layer).__name__} '{layer.name}'",
        {keras.backend.standardize_dtype(getattr(layer, attribute).dtype),
         keras.backend.standardize_dtype(layer.compute_dtype)})


# A relative change by a weight's constraint above this moved a computed weight.
CONSTRAINT_TOLERANCE = 1e-6


def constrained(variable, value):
    """`(value projected by variable's constraint, relative change)`: what Keras makes
    of a weight after every training step (`kernel_constraint`, ...); `value` itself
    and 0.0 for a variable without constraint. `value`: an array of its dtype."""
    constraint = getattr(variable, "constraint", None)
    if constraint is None:
        return value, 0.0
    projected = keras.ops.convert_to_numpy(constraint(keras.ops.convert_to_tensor(value)))
    before, after = (np.asarray(v, dtype=np.float64) for v in (value, projected))
    return projected, np.linalg.norm(after - before) / max(np.linalg.norm(before), 1e-30)


def _assign_constrained(layer, attribute, value):
    """Assign `value` to `layer.<attribute>`, projected by the variable's constraint
    as Keras projects a trained weight after every step: a solved weight never passes
    through an optimizer step. Warns when that moved it."""
    variable = getattr(layer, attribute)
    projected, change = constrained(variable, np.asarray(value).astype(variable.dtype))
    variable.assign(projected)
    if change > CONSTRAINT_TOLERANCE:
        constraint = variable.constraint
        warn(
            f"{type(layer).__name__} '{layer.name}' has a constraint on its {attribute} "
            f"({type(constraint).__name__}): the solved {attribute} was projected by it, "
            f"as training projects every step, and changed by {change:.1%} (relative). "
            "The layer no longer computes its class-PCA solution; drop the constraint to "
            "keep it."
        )


def kernel_from_solution(layer, kernel):
    """Reshape a `(d, n)` solution kernel to a one-group layer's kernel shape."""
    return np.asarray(kernel).reshape(tuple(layer.kernel.shape))


def assign_solution(layer, kernel, bias):
    """Write a solved `(d, n)` kernel and `(n,)` bias into a built one-group layer."""
    _check_range(layer, "kernel", kernel)
    if layer.use_bias:
        _check_range(layer, "bias", bias)
    _assign_constrained(layer, "kernel", kernel_from_solution(layer, kernel))
    if layer.use_bias:
        _assign_constrained(layer, "bias", bias)


def start_initializer(layer):
    """The initializer of the kernel that produces `layer`'s outputs (a separable
    convolution's pointwise one): the scale a start keeps
    (`LayerStatistics.match_initializer_scale`)."""
    return (getattr(layer, "pointwise_initializer", None)
            or getattr(layer, "kernel_initializer", None)
            or layer.depthwise_initializer)


class LayerStatistics:
    """Class-PCA of one layer's input, for every kind in `SOLVABLE`.

    Feed batches of the layer's input with `update(x, labels)`; after each complete
    pass over the data call `end_pass()`, which solves the current stage and returns
    True while another pass is needed (the pointwise stage of a separable
    convolution); then `assign()` writes the weights.

    Args:
        layer: the layer to solve (built or not; `assign` needs it built).
        options: `ClassPCA` options (`center`, `allocation`, ...).
        patches_per_image: for convolutions, use this many random positions per sample.
        rng: `np.random.Generator` for that sub-sampling.

    Example:

    >>> import numpy as np, keras
    >>> x = np.random.default_rng(0).normal(size=(60, 10, 4)).astype("float32")
    >>> y = np.arange(60) % 3
    >>> layer = keras.layers.SeparableConv1D(6, 3, depth_multiplier=2)
    >>> statistics = LayerStatistics(layer)
    >>> while True:
    ...     statistics.update(x, y)
    ...     if not statistics.end_pass():
    ...         break
    >>> layer.build(x.shape); statistics.assign(); tuple(layer(x).shape)
    (60, 8, 6)
    """

    def __init__(self, layer, options=None, *, patches_per_image=None, rng=None,
                 dense_sign_pairs=None, spare_filters=None):
        self.layer = layer
        self.options = dict(options or {})
        # A convolution a rectifier reads directly gets spare filters (its filters
        # beyond the patch features: the negatives of its leading directions, so the
        # rectifier passes both halves of them) unless `sign_pairs` is given:
        # measured better on every such first layer of bench_spare and
        # bench_spare_rule, worse with BatchNormalization between. None: whether the
        # layer's own activation rectifies (`hybridize` also looks at the layer after).
        if spare_filters is None:
            spare_filters = rectifies(getattr(layer, "activation", None))
        self.spare_filters = bool(spare_filters and isinstance(layer, CONVOLUTIONS)
                                  and self.options.get("sign_pairs") is None)
        if self.spare_filters:
            self.options["sign_pairs"] = "spare"
        # False: the Dense rule mixes in Fisher directions without sign pairs (no
        # rectifier follows the layer: a direction's negative would be a copy). None:
        # whether the layer's own activation rectifies (`hybridize` also looks at the
        # activation layer after it).
        if dense_sign_pairs is None:
            dense_sign_pairs = rectifies(getattr(layer, "activation", None))
        self.dense_sign_pairs = dense_sign_pairs
        self.patches_per_image = patches_per_image
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.stage = 0
        self.stages = n_stages(layer)
        self.class_pcas = None  # of the current stage, one per group
        self.solved_stages = []  # (class_pcas, solutions) of finished stages
        self.rows = 0
        self.dense_remedies = None  # see `_dense_remedies`, set by the first `end_pass`

    def update(self, x, labels):
        """Accumulate one batch `x` of the layer's input with its int `labels`.

        `x` is a NumPy array, or a tensor of the running backend: then the first stage's
        rows (patches) are extracted and multiplied on its device (`iter_device_rows`);
        only the `d x d` products reach the host.
        """
        labels = np.asarray(labels)
        on_device = _is_backend_tensor(x) and self.stage == 0
        if not on_device and not isinstance(x, np.ndarray):
            x = np.asarray(keras.ops.convert_to_numpy(x))
        if len(labels) > 1 and np.any(labels[1:] < labels[:-1]):
            # Samples grouped by class: their rows (every patch of a sample has its label)
            # then reach the statistics grouped, which multiply them without a gather.
            order = np.argsort(labels, kind="stable")
            x = keras.ops.take(x, order.astype(np.int32), axis=0) if on_device else x[order]
            labels = labels[order]
        depthwise = None
        if self.stage == 1:
            depthwise = depthwise_kernel(self.layer, self.solved_stages[0][1])
        channels = tuple(x.shape)[_channels_axis(self.layer)]
        if on_device:
            chunks = iter_device_rows(self.layer, x, labels,
                                      patches_per_image=self.patches_per_image, rng=self.rng)
        else:
            chunks = iter_group_rows(
                self.layer, x, labels, stage=self.stage, depthwise_kernel=depthwise,
                patches_per_image=self.patches_per_image, rng=self.rng,
            )
        for rows, row_labels in chunks:
            if self.class_pcas is None:
                if self.stage == 1:
                    channels = rows.shape[-1]
                groups, components = groups_and_components(self.layer, channels, self.stage)
                self.class_pcas = [ClassPCA(components, **self.options) for _ in range(groups)]
            for group, class_pca in enumerate(self.class_pcas):
                class_pca.partial_fit(rows[group], row_labels)
            if self.stage == self.stages - 1:
                self.rows += rows.shape[1]

    def end_pass(self):
        """Solve the current stage; True if the layer needs another pass."""
        if self.class_pcas is None:
            raise ValueError("`data` is empty: no samples to solve the layer on.")
        if self.stage == 0:
            self.dense_remedies = self._dense_remedies()
        try:
            with warnings.catch_warnings():
                # More filters than patch values (a 3x3 first conv with 32 filters) is
                # the model's shape, not the user's request: no warning per solve.
                warnings.simplefilter("ignore", OvercompleteWarning)
                solutions = [class_pca.solve() for class_pca in self.class_pcas]
        except ValueError as error:
            raise UnsolvableDataError(str(error)) from error
        self.solved_stages.append((self.class_pcas, solutions))
        self.class_pcas = None
        self.stage += 1
        return self.stage < self.stages

    def _dense_remedies(self):
        """Apply `dense_remedies` to a Dense layer's ClassPCA; its verdict."""
        if not isinstance(self.layer, keras.layers.Dense):
            return None
        class_pca = self.class_pcas[0]
        return apply_dense_remedies(class_pca, class_pca.n_components, self.options,
                                    sign_pairs=self.dense_sign_pairs)

    @property
    def done(self):
        return self.stage == self.stages

    @property
    def class_pca(self):
        """The `ClassPCA` of a one-group, one-stage layer (else of its last stage's first group)."""
        return self.solved_stages[-1][0][0]

    @property
    def n_components(self):
        return sum(s.kernel.shape[1] for s in self.solved_stages[-1][1])

    @property
    def classes_without_filters(self):
        """Labels of the classes none of the layer's filters was computed for (its last
        stage, every group): where it has fewer filters than classes, or a class's
        directions were duplicates of another's."""
        unserved = set()
        for class_pca, solution in zip(*self.solved_stages[-1]):
            served = set(np.asarray(solution.component_classes).tolist())
            unserved |= set(class_pca.classes_.tolist()) - served
        return sorted(int(label) for label in unserved)

    @property
    def spare_filter_count(self):
        """How many filters are negatives of leading directions (spare filters: those
        beyond the patch features of a convolution a rectifier reads); 0 if none."""
        if not self.spare_filters or not self.solved_stages:
            return 0
        # Beyond twice the features, half the filters are negatives (ClassPCA's rule).
        return sum(solution.components.shape[1]
                   - class_pca._paired_directions(solution.components.shape[1])
                   for class_pca, solution in zip(*self.solved_stages[-1]))

    @property
    def sketch_size(self):
        """Rows per class of the Frequent Directions sketch a stage was solved from
        (the smallest, if several), or None: every statistic was exact."""
        sizes = [class_pca.sketch_size_ for class_pcas, _ in self.solved_stages
                 for class_pca in class_pcas if class_pca.sketch_size_ is not None]
        return min(sizes) if sizes else None

    def weights(self):
        """`{attribute: array}` of the solved layer."""
        if not self.done:
            raise ValueError("The layer is not solved yet: call `end_pass()` after each pass.")
        depthwise = self.solved_stages[0][1] if self.stages == 2 else None
        return solution_weights(self.layer, self.solved_stages[-1][1], depthwise)

    def match_initializer_scale(self):
        """Scale each filter and its bias so that its output (before the activation) has
        the root mean square the layer's own initializer gives on the data seen:
        `sqrt(v · E‖x‖²)` for kernel entries of mean square `v` (a draw of the
        initializer) and the layer's inputs `x`. The directions stay class-PCA's; the
        scale is the one the user's learning rate was chosen for. For a layer solved as
        a start that then trains (`hybridize(initialize_above=True)`): whitened
        filters gave a GELU network's layers outputs 2–4× the initializer's, and SGD
        with momentum diverged from them. A filter silent on the data, or an
        initializer of zeros, leaves the scale as solved. The layer must be built."""
        if not self.done:
            raise ValueError("The layer is not solved yet: call `end_pass()` after each pass.")
        variable = getattr(self.layer, "pointwise_kernel", None)
        if variable is None:
            variable = self.layer.kernel
        initializer = start_initializer(self.layer)
        fresh = type(initializer).from_config(initializer.get_config())
        draw = keras.ops.convert_to_numpy(fresh(tuple(variable.shape), dtype="float32"))
        mean_square = float(np.mean(np.square(draw.astype(np.float64))))
        if mean_square <= 0.0:
            return
        class_pcas, solutions = self.solved_stages[-1]
        scaled = []
        for class_pca, solution in zip(class_pcas, solutions):
            mean = class_pca.mean_
            target = np.sqrt(mean_square * (class_pca.total_variance() + float(mean @ mean)))
            kernel = np.asarray(solution.kernel, dtype=np.float64)
            deviation = np.sqrt(np.maximum(class_pca.variance_along(kernel), 0.0))
            scale = np.where(deviation > 1e-12, target / np.maximum(deviation, 1e-12), 1.0)
            scaled.append(solution._replace(kernel=kernel * scale,
                                            bias=np.asarray(solution.bias) * scale))
        self.solved_stages[-1] = (class_pcas, scaled)

    def assign(self):
        """Write the solved weights into the (built) layer."""
        assign_weights(self.layer, self.weights())

    def explained_variance(self):
        """Share of the input variance the span of the filters captures. For a separable
        convolution, the product of its stages' shares: what the depthwise filters keep
        of the patches, times what the pointwise filters keep of the depthwise outputs
        (exact for orthonormal depthwise filters): the pointwise stage alone can keep
        all of its input after the depthwise stage dropped most of the patch."""
        share = 1.0
        for class_pcas, _ in self.solved_stages:
            share *= _captured_share(class_pcas)
        return share


def _captured_share(class_pcas):
    """Share of the summed input variance of `class_pcas` (one per group) that the
    spans of their components capture."""
    captured = total = 0.0
    for class_pca in class_pcas:
        with blas_threads_for(class_pca.n_features_in_):
            # An orthonormal basis of the span: sign pairs and spare filters repeat
            # directions, which a QR factorisation would extend with unrelated ones.
            vectors, values, _ = np.linalg.svd(class_pca.components_, full_matrices=False)
            basis = vectors[:, values > 1e-8 * values.max()]
            captured += float(np.sum(class_pca.variance_along(basis)))
            total += class_pca.total_variance()
    return captured / total if total > 0 else 0.0


def backend_rows(layer, x, positions=None):
    """Rows of `layer`'s input with `keras.ops` on the backend's device (no NumPy).

    Returns a tensor `(n * positions, groups, d)` equal to `sample_rows(layer, x,
    positions=positions)` reshaped (first stage only). A convolution's patches are
    gathered from the zero-padded input by index (`patch_indices`), only at
    `positions` (`(n, p)` output positions per sample) when given: no arithmetic, and
    no rows at positions that are not kept. (A convolution with an identity kernel,
    the earlier way, multiplied every value of the patches by a `d x d` identity at
    every position: several times the flops of the statistics themselves.)
    """
    x = keras.ops.convert_to_tensor(x)
    if isinstance(layer, keras.layers.Dense):
        return keras.ops.reshape(x, (-1, 1, x.shape[-1]))
    if _channels_axis(layer) == 1:
        x = keras.ops.moveaxis(x, 1, -1)
    n, spatial, channels = int(x.shape[0]), tuple(x.shape[1:-1]), int(x.shape[-1])
    groups, _ = groups_and_components(layer, channels)
    pads, indices = _patch_table(layer, spatial)
    if any(before or after for before, after in pads):
        x = keras.ops.pad(x, [(0, 0)] + [list(p) for p in pads] + [(0, 0)])
    pixels = math.prod(int(size) for size in x.shape[1:-1])
    chosen = indices[None] if positions is None else indices[np.asarray(positions)]
    flat_index = (np.arange(n)[:, None, None] * pixels + chosen).reshape(-1)
    index_dtype = np.int32 if n * pixels < 2**31 else np.int64
    rows = keras.ops.take(keras.ops.reshape(x, (n * pixels, channels)),
                          keras.ops.convert_to_tensor(flat_index.astype(index_dtype)), axis=0)
    kernel_values = indices.shape[1]
    if groups == 1:  # (kernel position, channel) order is already the rows' order
        return keras.ops.reshape(rows, (-1, 1, kernel_values * channels))
    rows = keras.ops.reshape(rows, (-1, kernel_values, groups, channels // groups))
    return keras.ops.reshape(keras.ops.transpose(rows, (0, 2, 1, 3)),
                             (-1, groups, kernel_values * (channels // groups)))


def _patch_table(layer, spatial):
    """`patch_indices` for `layer`'s convolution of channels-last inputs of `spatial`
    shape (computed once per layer geometry and input shape)."""
    return _cached_patch_table(tuple(layer.kernel_size), tuple(layer.strides),
                               layer.padding, tuple(layer.dilation_rate),
                               tuple(int(size) for size in spatial))


@functools.lru_cache(maxsize=64)
def _cached_patch_table(kernel_size, strides, padding, dilation_rate, spatial):
    return patch_indices(spatial, kernel_size, strides, padding, dilation_rate)
