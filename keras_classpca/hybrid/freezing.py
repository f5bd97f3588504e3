"""What a solve freezes, and the checks before it: which layers a solve of `cutoff`
steps sets, freezing and releasing them (a later call with another cutoff), the
warnings about layers the user froze, and whether the classes can give a layer its
filters at all (`too_wide_step`)."""

import keras

from keras_classpca._warnings import warn
from keras_classpca.hybrid.training import compile_like
from keras_classpca.layers.adapt_mixin import ClassPCAAdaptMixin, record_solve_options
from keras_classpca.layers.geometry import CONVOLUTIONS, KERNEL_PARTS, stage_sizes

# Set on every layer hybridize solved or adapted: a later call may solve it again
# without the warning meant for layers the user froze (pretrained weights).
SOLVED_MARK = "_keras_classpca_solved"


def set_by_solve(plan, cutoff):
    """The layers a solve of `cutoff` steps sets: the solved layers and the
    BatchNormalization layers it adapts."""
    return [step.layer for step in plan.cut(cutoff)] + [
        bn for bn, _, _ in plan.batchnorms_until(cutoff)]


def frozen_by_solve(plan, cutoff):
    """What a solve of `cutoff` steps sets, and the other normalizations it freezes as
    they are (a LayerNormalization a solved layer reads)."""
    chosen = {id(layer) for layer in set_by_solve(plan, cutoff)} | {
        # One the user froze stays theirs (a later, lower cutoff must not release it).
        id(layer) for layer in plan.normalizations_read(plan.cut(cutoff))
        if layer.trainable or getattr(layer, SOLVED_MARK, False)}
    return [layer for layer in plan.layers if id(layer) in chosen]  # in graph order


def set_above(plan, cutoff):
    """What a solve of every step sets or freezes beyond what a solve of `cutoff`
    steps does."""
    kept = {id(layer) for layer in frozen_by_solve(plan, cutoff)}
    return [layer for layer in frozen_by_solve(plan, len(plan.steps))
            if id(layer) not in kept]


def _layer_named(plan, name):
    """The layer of `plan` named `name` (nested models' layers too)."""
    for layer in plan.layers:
        if layer.name == name:
            return layer
    raise KeyError(name)


def check_cutoff_fits(plan, cutoff):
    """Raise a `ValueError` if an integer `cutoff` exceeds the layers `plan` can solve."""
    if cutoff > len(plan.steps):
        raise ValueError(
            f"cutoff={cutoff} but only {len(plan.steps)} layer(s) of this model can be "
            f"solved ({', '.join(plan.names) or 'none'}); the prefix ends because "
            f"{plan.stop_reason}"
        )


def too_wide_step(plan, cutoff, n_classes, options, replacer=None):
    """The first of the first `cutoff` steps with more filters than `n_classes` classes
    can give over its input (`classes x features` class-PCA directions; twice as many
    with sign pairs, `n_classes - 1` more with Fisher directions): `(position, why)`,
    or None (also when `n_classes` is unknown). E.g. a squeeze-and-excitation expand
    layer, 192 filters over 12 values. `replacer` (the solve's `ActivationReplacer`)
    tells which convolutions get spare filters by default; without it none do."""
    if not n_classes:
        return None
    pairs = options.get("sign_pairs")
    for j, step in enumerate(plan.cut(cutoff)):
        layer = step.layer
        dense = isinstance(layer, keras.layers.Dense)
        # The Dense rule may add sign pairs and Fisher directions by itself; a
        # convolution a rectifier reads directly gets spare filters (negatives).
        paired = bool(pairs) or (pairs is None and (dense or (
            replacer is not None and isinstance(layer, CONVOLUTIONS)
            and replacer.sign_pairs(layer, through_batchnorm=False))))
        fisher = n_classes - 1 if (options.get("discriminant") or dense) else 0
        for components, features in stage_sizes(layer):
            limit = n_classes * features * (2 if paired else 1) + fisher
            if components > limit:
                return j, (
                    f"{type(layer).__name__} '{layer.name}': {components} "
                    f"{'units' if dense else 'filters'} over {features} input features, "
                    f"more than {n_classes} classes can give ({limit}"
                    + ("" if paired else f"; {2 * n_classes * features + fisher} with "
                       "sign_pairs=True") + ")"
                )
    return None


def feasible_cutoff(plan, n_classes, options=None, replacer=None):
    """The largest cutoff of `plan` whose layers `n_classes` classes can solve (see
    `too_wide_step`); all the steps when `n_classes` is unknown."""
    wide = too_wide_step(plan, len(plan.steps), n_classes, options or {}, replacer)
    return len(plan.steps) if wide is None else wide[0]


def check_capacity(plan, cutoff, n_classes, options, replacer):
    """Refuse a fixed cutoff through a layer too wide for the classes, before any solve."""
    wide = too_wide_step(plan, cutoff, n_classes, options, replacer)
    if wide is not None:
        raise ValueError(
            f"cutoff={cutoff} reaches {wide[1]}. With this data the cutoff can be at most "
            f"{wide[0]}: a layer this wide is left to training."
        )


def apply_freeze(plan, cutoff, freeze):
    """Freeze what a solve of `cutoff` steps sets: `True`, whole layers; `"kernel"`,
    the solved layers' kernels (their biases train). Returns the frozen names."""
    solved = {step.name for step in plan.steps[:cutoff]}
    frozen = []
    for name in plan.frozen_names(cutoff):
        layer = _layer_named(plan, name)
        if freeze == "kernel" and name in solved and getattr(layer, "bias", None) is not None:
            # The solved directions stay; the bias (where each unit cuts) trains.
            for variable in layer.weights:
                if variable is not layer.bias:
                    variable.trainable = False
        else:
            layer.trainable = False
        frozen.append(name)
    return frozen


def unfreeze(layer):
    """Undo `apply_freeze` on `layer` (whole layer or, `"kernel"`, its kernels);
    whether anything was frozen."""
    kernels = [getattr(layer, name, None) for name in KERNEL_PARTS]
    frozen_kernels = [v for v in kernels if v is not None and not v.trainable]
    if layer.trainable and not frozen_kernels:
        return False
    layer.trainable = True
    for variable in frozen_kernels:
        variable.trainable = True
    return True


def release_earlier_solves(plan, cutoff, restored=None):
    """Make the layers an earlier hybridize solved and froze above `cutoff` trainable
    again (with a warning, naming the activations put back, `restored`): they were
    solved from the layers below as they were then. Returns their names."""
    stale = [layer for layer in set_above(plan, cutoff) if getattr(layer, SOLVED_MARK, False)]
    released = []
    for layer in stale:
        setattr(layer, SOLVED_MARK, False)
        if unfreeze(layer):
            released.append(layer.name)
    if released:
        warn(
            f"An earlier hybridize solved and froze {', '.join(released)}, above the new "
            f"cutoff ({cutoff}): trainable again, their solved weights kept as a start "
            "(they were solved from the layers below as those were then)"
            + "".join(f"; {name}'s activation put back ({value})"
                      for name, value in (restored or {}).items() if name in released)
            + ".",
            UserWarning
        )
    return released


def mark_and_freeze(model, plan, report, freeze, class_pca_options, frozen_count):
    """Mark what the solve set, freeze (`freeze`) its bottom `frozen_count` solved
    layers (those above were solved as a start), release what an earlier call froze
    beyond it, and compile a compiled model again so that this holds."""
    released = release_earlier_solves(plan, len(report.layers), report.restored_activations)
    chosen = frozen_by_solve(plan, len(report.layers))
    # What an earlier call froze of these is frozen anew as this call's `freeze` says
    # (`freeze=False` after `freeze=True`: trainable); what the user froze stays so,
    # as does a `ClassPCA*` layer (frozen from construction, as on a first call).
    unfrozen = False
    for layer in chosen:
        if getattr(layer, SOLVED_MARK, False) and not isinstance(layer, ClassPCAAdaptMixin):
            unfrozen = unfreeze(layer) or unfrozen
    for layer in chosen:
        setattr(layer, SOLVED_MARK, True)
        if isinstance(layer, ClassPCAAdaptMixin):
            layer._adapted.assign(1)  # solved from data: `is_adapted`, as after adapt()
            record_solve_options(layer, class_pca_options)
    if freeze:
        report.frozen.extend(apply_freeze(plan, frozen_count, freeze))
    # (`freeze` True or "kernel" freezes again what was unfrozen: `report.frozen`.)
    if report.frozen or released or unfrozen or report.restored_activations:
        report.recompiled = compile_again(model, "hybridize")


def compile_again(model, what):
    """Compile a compiled `model` again with its own arguments (True), so that a freeze
    holds: Keras fixes the trainable variables at compile(), and a model compiled (or
    fitted) before would go on training the "frozen" layers."""
    if not getattr(model, "compiled", False):
        return False
    try:
        compile_like(model, model)
    except ValueError:
        raise ValueError(
            f"`model` was compiled before {what} but its compile arguments are unknown, "
            f"so it cannot be compiled again to make the freeze hold: call {what} "
            "before compile()."
        ) from None
    return True


def frozen_not_by_a_solve(layer):
    """Frozen, though no hybridize of this model froze it. (A ClassPCA layer is frozen
    from construction: only once adapted does it hold weights of its own.)"""
    return (not layer.trainable and not getattr(layer, SOLVED_MARK, False)
            and not (isinstance(layer, ClassPCAAdaptMixin) and not layer.is_adapted))


def warn_if_frozen_before(plan, cutoff):
    """Warn when the layers about to be solved (or BatchNormalization layers about to
    be adapted) were frozen by the user, not by an earlier hybridize: pretrained
    weights would be replaced."""
    frozen = [layer for layer in set_by_solve(plan, cutoff) if frozen_not_by_a_solve(layer)]
    adapted = [layer.name for layer in frozen if isinstance(layer, ClassPCAAdaptMixin)]
    frozen = [layer.name for layer in frozen if not isinstance(layer, ClassPCAAdaptMixin)]
    if adapted:
        warn(
            f"hybridize solves {', '.join(adapted)} again from the data given: their "
            "earlier `adapt` is replaced (the same data give the same weights). To keep "
            "that solution, solve fewer layers (`cutoff=`).",
            UserWarning
        )
    if frozen:
        warn(
            f"hybridize replaces the weights (or BatchNormalization statistics) of "
            f"{', '.join(frozen)}, which were frozen before the call (trainable=False: "
            "pretrained weights?). To keep them, solve fewer layers (`cutoff=`) or leave "
            "a pretrained part out of the model given to hybridize.",
            UserWarning
        )
    if cutoff:  # (an explicit cutoff=0 warns in its own branch)
        warn_if_frozen_above(plan, cutoff)


def warn_if_frozen_above(plan, cutoff):
    """Warn about frozen layers above the cutoff that no hybridize of this model froze:
    their weights were fitted to the output of the layers solved now, or, with
    `cutoff=0`, they may be an earlier solve that should train again (e.g. solved by a
    hybridize before a `.keras` reload or `clone_model`, which keep no mark of it)."""
    above = [layer.name for layer in set_above(plan, cutoff)
             if layer.weights and frozen_not_by_a_solve(layer)]
    if not above:
        return
    where = (f"above the {cutoff} layer(s) solved now, with weights fitted to what those "
             "layers computed before" if cutoff else "with cutoff=0 (nothing solved now)")
    warn(
        f"{', '.join(above)} stay(s) frozen {where}. If an earlier hybridize solved them "
        "(its mark is not kept by a .keras reload or clone_model), make them trainable "
        "(`layer.trainable = True`)"
        + (" or solve them too (a larger `cutoff`)." if cutoff else "."),
        UserWarning
    )
