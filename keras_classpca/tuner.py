"""`HybridHyperModel`: search the cutoff (and class-PCA options) with KerasTuner.

Every trial builds the user's model, solves its bottom `cutoff` layers with
`hybridize` and trains the rest with `model.fit`. Trials that share a solved prefix
(same data, same prefix architecture, same class-PCA options and sampling settings)
reuse it from a `SolveCache`: a trial with cutoff 2 after one with cutoff 1 solves
only the second layer, a trial that changes only the learning rate or the top layers
solves nothing. The cache holds numpy arrays in memory and as `.npz` files under the
tuner's `directory/project_name/solve_cache`, so a search resumed with
`overwrite=False` keeps it (docs/tuner.md).

Trials also share the frozen prefix's *outputs*: the top of a trial is trained by
`fit_top` on the prefix outputs of the search's arrays, computed by the first trial
with that prefix and kept in a `PrefixOutputCache` (in memory) for the next ones.
"""

import inspect
import numbers
import os
import time
import warnings

import keras
import numpy as np

from keras_classpca._optional import import_optional
from keras_classpca.core.class_pca import ALLOCATIONS, SCALINGS, ClassPCA
from keras_classpca.core.data_adapter import readable_data, single_input
from keras_classpca.hybrid.activations import ActivationReplacer, activation_or_none
from keras_classpca.hybrid.builder import (
    CLASS_PCA_OPTIONS,
    check_settings,
    freeze_solved_layers,
    hybridize,
    output_classes,
    solved_layer_names,
)
from keras_classpca.hybrid.cache import SolveCache, data_fingerprint
from keras_classpca.hybrid.freezing import feasible_cutoff, too_wide_step
from keras_classpca.hybrid.graph import (
    ensure_built,
    has_layer_graph,
    no_graph_error,
)
from keras_classpca.hybrid.planner import plan_model
from keras_classpca.hybrid.training import (
    DEFAULT_MEMORY_LIMIT,
    PrefixOutputCache,
    _in_memory_arrays,
    compile_like,
    fit_top,
    is_array_data,
)

keras_tuner = import_optional("keras_tuner", "keras_classpca.tuner (HybridHyperModel)")

CUTOFF = "cutoff"
# Searched class-PCA options with `search_options=True`; the first value of each is
# the library default, so KerasTuner's default trial is `hybridize`'s default.
DEFAULT_SEARCH_SPACE = {
    "center": [True, False],
    "scaling": list(SCALINGS),
    "allocation": list(ALLOCATIONS),
}
HYBRIDIZE_SETTINGS = ("samples", "batch_size", "seed", "patches_per_image", "verbose",
                      "freeze", "solved_activation", "statistics_on", "strategy",
                      "initialize_above")
CACHE_SUBDIR = "solve_cache"
# Extra metrics added to every trial's History (one value per epoch).
SOLVE_SECONDS = "solve_seconds"
TRIAL_SECONDS = "trial_seconds"


def _one_choice_type(values):
    """Whether `hp.Choice` takes `values` as they are: all of one type among bool, int,
    float and str."""
    kinds = {type(v) for v in values}
    return len(kinds) == 1 and kinds <= {bool, int, float, str}


def _labelled(option, values):
    """`{label: value}` for a choice `hp.Choice` cannot take directly."""
    labels = {str(v): v for v in values}
    if len(labels) != len(values):
        raise ValueError(
            f"`search_options[{option!r}]` holds values with the same text ({values!r}): "
            "each searched value must be told apart by `str(value)`."
        )
    return labels


def _declared(value, values):
    """The declared choice equal to `value`: some oracles hand back `True` as `1`."""
    same_kind = (v for v in values if v == value and isinstance(v, bool) == isinstance(value, bool))
    return next(same_kind, next((v for v in values if v == value), value))


def _named_input(data):
    """`(x, y)` data with `x` given as `{"image": x}` (as `fit` takes it) unwrapped."""
    if (isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], dict)
            and len(data[0]) == 1):
        return (single_input(data[0]),) + tuple(data[1:])
    return data


def _from_tuner(callbacks):
    """Whether `fit` was called by a KerasTuner trial (its callbacks hold the tuner)."""
    return any(getattr(callback, "tuner", None) is not None for callback in callbacks or [])


def _user_options(hp, search_space):
    """Searched options the user declared in `hp` themselves (outside the `cutoff`
    condition, e.g. `hp.Fixed("scaling", "whiten")` passed as the tuner's
    `hyperparameters`): their values are used as given."""
    return {h.name for h in hp.space if h.name in search_space and not h.conditions}


def _in_space(hp, name):
    """The hyperparameter `name` declared in `hp`'s space, or None."""
    return next((h for h in hp.space if h.name == name), None)


def solved_layers(model, cutoff):
    """Names of the layers `hybridize(model, ..., cutoff)` solves and freezes."""
    return solved_layer_names(model, cutoff)


def _in_memory_pair(data):
    """Whether `data` is `(x, y)` (or with sample weights) in memory: arrays, one per
    input for a multi-input model, that the tuner fingerprints and checks itself."""
    return (isinstance(data, (tuple, list)) and len(data) in (2, 3)
            and _in_memory_arrays(data[0], data[1]))


def _uncompiled_error():
    return ValueError(
        "`build_model(hp)` must return a compiled model (call `model.compile(...)` in "
        "it; a tuner's own `optimizer`/`loss` arguments replace those of a compiled "
        "model only): HybridHyperModel recompiles it with the same arguments after "
        "freezing the solved layers."
    )


def _recompile(model):
    """Compile `model` again after freezing (see `hybrid.training.compile_like`)."""
    try:
        compile_like(model, model)
    except ValueError as error:
        raise _uncompiled_error() from error


class HybridHyperModel(keras_tuner.HyperModel):
    """A KerasTuner `HyperModel` whose trials solve the bottom layers by class-PCA.

    `build(hp)` calls `build_model(hp)` (the user's hyperparameters keep working; it
    must compile the model) and registers `hp.Int("cutoff", 0, max_cutoff)` plus, for
    `cutoff >= 1`, `hp.Choice`s for the searched class-PCA options. `fit(hp, model,
    ...)` solves the bottom `cutoff` layers with `hybridize` on `data`, recompiles the
    model (same arguments and optimizer object: trainable variables are fixed at
    compile time) and runs `model.fit(...)` with the arguments given to
    `tuner.search(...)`. The History gets two extra metrics per epoch,
    `solve_seconds` and `trial_seconds` (solve + training); the tuner's objective
    (e.g. `val_accuracy`) still drives the search.

    Solved prefixes are cached (`SolveCache`) and shared by trials: keys hold a data
    fingerprint, the prefix architecture (layer classes and configs, without names
    and initializers), the class-PCA options and the sampling settings. A Hyperband
    trial that continues an earlier one (`"tuner/trial_id"` in `hp`, and the
    `initial_epoch > 0` Hyperband passes to `fit`) solves nothing: its weights, solved
    and trained, come from the checkpoint; only the solved layers (and the
    BatchNormalization below them) are frozen again. The best hyperparameters
    retrained by hand (`hypermodel.fit(best_hp, hypermodel.build(best_hp), x, y)`) are
    solved afresh.

    With the cache, a trial given `(x, y)` arrays trains through `fit_top`: the frozen
    prefix's outputs on those arrays (and on array validation data) are computed once
    per prefix and kept for the next trials in a `PrefixOutputCache`
    (`output_memory_limit` bytes, in memory), so a trial whose prefix an earlier
    trial already ran trains only its top. The first trial with a prefix caches its
    outputs only where `fit_top(cache="auto")` predicts that pays.

    Args:
        build_model: `build_model(hp) -> keras.Model`, compiled, built (give it a
            `keras.Input`), cheap and data-free: tuners call it at construction time.
        data: the data the layers are solved on, as `hybridize` takes it: `(x, y)`
            arrays, a `tf.data.Dataset`, a `PyDataset` or a callable returning a
            fresh iterable of `(x, y)` batches.
        max_cutoff: the largest cutoff searched; `None` means every solvable layer
            of the model `build_model` returns first. A larger value than that
            model's solvable layers raises a `ValueError` when it is built.
        search_options: `True` searches `center`, `scaling` and `allocation`
            (`DEFAULT_SEARCH_SPACE`); `False` searches none; a dict
            `{option: [values]}` searches those `ClassPCA` options. Options also
            given as fixed keyword arguments are not searched.
        cache: reuse solved prefixes and their outputs across trials (`False`: solve
            every trial and train it with a plain `model.fit`).
        cache_dir: `"auto"` (default) keeps the cache in
            `<tuner directory>/<project_name>/solve_cache`, found through the tuner's
            callback in `fit`; a path puts it there; `None` keeps it in memory only.
        data_fingerprint: a string that changes whenever `data` changes; computed from
            arrays when omitted, required with a cache for other data.
        output_memory_limit: bytes of prefix outputs kept across trials (default
            2 GiB; 0 keeps none: each trial's `fit_top` decides alone).
        name, tunable: as in `keras_tuner.HyperModel`.
        **hybridize_options: fixed `hybridize` settings (`samples`, `batch_size`,
            `seed`, `patches_per_image`, `verbose`, `freeze`, `solved_activation`,
            `statistics_on`, `strategy`, `initialize_above`; default `verbose=0`) and
            fixed class-PCA options (`center`, `variance_share`, ...). With
            `freeze=False` (solved layers trained too) the trials train with `fit`: no
            prefix is shared. With `initialize_above=True` every trial, cutoff 0
            included, starts the layers above its cutoff from their solution.

    Attributes:
        solve_cache: the `SolveCache` of the latest trial (`hits`, `misses`), or None.
        output_cache: the `PrefixOutputCache` shared by the trials, or None.
        last_report: the `HybridReport` of the latest solving trial.

    Example:

    >>> import numpy as np, keras, keras_tuner
    >>> x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> def build_model(hp):
    ...     model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
    ...                               keras.layers.Dense(2, activation="softmax")])
    ...     model.compile(keras.optimizers.Adam(hp.Float("lr", 1e-3, 1e-2, sampling="log")),
    ...                   "sparse_categorical_crossentropy", metrics=["accuracy"])
    ...     return model
    >>> hypermodel = HybridHyperModel(build_model, (x, y), search_options=False)
    >>> tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy",
    ...     max_trials=2, directory="/tmp/doctest_tuner", overwrite=True)  # doctest: +SKIP
    >>> tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)  # doctest: +SKIP
    >>> tuner.get_best_hyperparameters()[0].get("cutoff") in (0, 1)  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        build_model,
        data,
        *,
        max_cutoff=None,
        search_options=True,
        cache=True,
        cache_dir="auto",
        data_fingerprint=None,
        output_memory_limit=DEFAULT_MEMORY_LIMIT,
        name=None,
        tunable=True,
        **hybridize_options,
    ):
        super().__init__(name=name, tunable=tunable)
        if not callable(build_model):
            raise TypeError(
                f"`build_model` must be callable as build_model(hp); received {build_model!r}."
            )
        if max_cutoff is not None and (
            isinstance(max_cutoff, bool)
            or not isinstance(max_cutoff, (int, np.integer))
            or max_cutoff < 0
        ):
            raise ValueError(
                f"`max_cutoff` must be a non-negative integer or None; received {max_cutoff!r}."
            )
        unknown = sorted(set(hybridize_options) - set(HYBRIDIZE_SETTINGS) - set(CLASS_PCA_OPTIONS))
        if unknown:
            raise TypeError(
                f"Unknown option(s) {unknown}; HybridHyperModel takes the hybridize settings "
                f"{list(HYBRIDIZE_SETTINGS)} and the ClassPCA options {list(CLASS_PCA_OPTIONS)}."
            )
        if search_options is True:
            space = dict(DEFAULT_SEARCH_SPACE)
        elif search_options in (False, None):
            space = {}
        elif isinstance(search_options, dict):
            space = {name: list(values) for name, values in search_options.items()}
        else:
            raise TypeError(
                f"`search_options` must be True, False or a dict {{option: [values]}}; "
                f"received {search_options!r}."
            )
        for option, values in space.items():
            if option not in CLASS_PCA_OPTIONS or option == "n_classes":
                raise ValueError(
                    f"Cannot search {option!r}: searchable ClassPCA options are "
                    f"{[o for o in CLASS_PCA_OPTIONS if o != 'n_classes']}."
                )
            if not values:
                raise ValueError(f"`search_options[{option!r}]` must list at least one value.")
        # Fixed settings and every searched value are checked now, not in each trial:
        # a bad one would fail every trial that solves while the search returns normally.
        settings = {k: v for k, v in hybridize_options.items() if k in HYBRIDIZE_SETTINGS}
        fixed_options = {k: v for k, v in hybridize_options.items() if k in CLASS_PCA_OPTIONS}
        checked = {k: v for k, v in settings.items()
                   if k in inspect.signature(check_settings).parameters}
        normalized = dict(zip(("samples", "batch_size", "patches_per_image"),
                              check_settings(**checked, **fixed_options)))
        hybridize_options.update({k: v for k, v in normalized.items() if k in settings})
        for option, values in space.items():
            if option in hybridize_options:
                continue  # fixed: not searched
            for value in values:
                try:
                    ClassPCA(1, **dict(fixed_options, **{option: value})).check_params()
                except (TypeError, ValueError) as error:
                    raise ValueError(
                        f"`search_options[{option!r}]` holds an invalid value {value!r}: {error}"
                    ) from None
        if cache_dir not in ("auto", None) and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"`cache_dir` must be 'auto', a path or None; received {cache_dir!r}.")
        self.build_model = build_model
        self.data = data
        self.max_cutoff = None if max_cutoff is None else int(max_cutoff)
        self._max_cutoff_checked = False
        self._data_checked = None  # the `data` the first model built was checked with
        self.search_space = {k: v for k, v in space.items() if k not in hybridize_options}
        # KerasTuner's `hp.Choice` takes values of one type and no None: other lists
        # (`sign_pairs` over False, True and "spare") are searched by their labels.
        self._labels = {option: _labelled(option, values)
                        for option, values in self.search_space.items()
                        if not _one_choice_type(values)}
        self.cache = bool(cache)
        self.cache_dir = cache_dir
        self.hybridize_options = dict({"verbose": 0}, **hybridize_options)
        # Arrays (one per input for a multi-input model) the tuner fingerprints itself.
        if self.cache and data_fingerprint is None and not _in_memory_pair(data):
            raise ValueError(
                "`data_fingerprint` is required with `cache=True` when `data` is not "
                "(x, y) arrays: a string that changes whenever the data changes."
            )
        self._user_fingerprint = data_fingerprint
        self._fingerprint, self._fingerprint_of = None, None
        self._caches = {}
        self.output_cache = PrefixOutputCache(output_memory_limit) if self.cache else None
        self.solve_cache = None
        self.last_report = None

    # ------------------------------------------------------------------ build
    def _plan(self, model):
        """`plan_model(model)`, the model built from the data's shape first if need be;
        None for a model without inputs when the data are no arrays to build it from."""
        if not has_layer_graph(model):
            raise no_graph_error(model, "HybridHyperModel")
        if not model.built or not getattr(model, "inputs", None):
            if not is_array_data(self.data):
                return None
            ensure_built(model, np.asarray(self.data[0]).shape[1:], what="HybridHyperModel")
        return plan_model(model)

    def _solvable_layers(self, model):
        plan = self._plan(model)
        if plan is None:
            raise ValueError(
                "The model `build_model(hp)` returns is not built: give it a "
                "`keras.Input(...)`, or pass `max_cutoff`."
            )
        # Not past a layer wider than the head's classes can solve (a squeeze-and-
        # excitation expand layer): every trial beyond it would fail.
        return feasible_cutoff(plan, output_classes(model), self._fixed_options(),
                               self._replacer(model))

    def _replacer(self, model):
        """The trials' `ActivationReplacer`: which convolutions get spare filters."""
        return ActivationReplacer(model, activation_or_none(
            self.hybridize_options.get("solved_activation")))

    def _fixed_options(self, widest=False):
        """The class-PCA options every trial solves with; `widest`: with the searched
        `sign_pairs` / `discriminant` that give a layer the most directions, so a cutoff
        above the feasible one under them fails in every trial."""
        options = {k: v for k, v in self.hybridize_options.items() if k in CLASS_PCA_OPTIONS}
        if widest:
            for option in ("sign_pairs", "discriminant"):
                if any(value is True for value in self.search_space.get(option, ())):
                    options[option] = True
        return options

    def _check_max_cutoff(self, model):
        """A `ValueError` when the given `max_cutoff` exceeds the solvable layers of the
        first model built: every trial above them would fail inside the tuner, and the
        search would end as if cutoff 0 were best. Not clipped: the user asked for more."""
        plan = self._plan(model)
        if plan is None:
            return  # nothing to plan before the model is built
        solvable = len(plan.steps)
        if self.max_cutoff > solvable:
            reason = plan.reason_after(solvable)
            raise ValueError(
                f"`max_cutoff={self.max_cutoff}` exceeds the layers this model can solve: "
                f"the model `build_model(hp)` returns has {solvable} solvable layer(s) "
                f"({', '.join(plan.names) or 'none'})"
                + (f"; the prefix ends because {reason}" if reason else ".")
                + f" Pass `max_cutoff` <= {solvable}, or `max_cutoff=None` to search "
                "every solvable layer."
            )
        wide = too_wide_step(plan, self.max_cutoff, output_classes(model),
                             self._fixed_options(widest=True), self._replacer(model))
        if wide is not None:
            raise ValueError(
                f"`max_cutoff={self.max_cutoff}` reaches {wide[1]}: every trial with a "
                f"cutoff above {wide[0]} would fail. Pass `max_cutoff` <= {wide[0]}, or "
                "`max_cutoff=None` to search every layer the classes can solve."
            )
        self._max_cutoff_checked = True

    def _check_data(self, model):
        """Raise the error every trial's solve would raise for in-memory `data` the
        model cannot be solved from (samples of another shape, regression targets,
        labels beyond the head's classes), when the tuner builds its first model: a
        solve of no layer runs `hybridize`'s checks of the data, in milliseconds, and
        leaves the model as it was. Other data are read by the trials only."""
        if not _in_memory_pair(self.data):
            return
        settings = dict(self.hybridize_options, verbose=0, warm_head=False,
                        initialize_above=False)  # a solve of nothing: checks only
        with warnings.catch_warnings():  # each trial's solve warns as it should
            warnings.simplefilter("ignore")
            hybridize(model, self.data, 0, **settings)
        self._data_checked = self.data

    def build(self, hp):
        """The user's model, with `cutoff` and the class-PCA options registered in `hp`."""
        declared_before = _in_space(hp, CUTOFF)  # the tuner's `hyperparameters=` or ours
        model = self.build_model(hp)
        own = None if declared_before else _in_space(hp, CUTOFF)
        if own is not None and type(own).__name__ != "Fixed":
            raise ValueError(
                f"The build function registers its own hyperparameter {CUTOFF!r} "
                f"({type(own).__name__}), but HybridHyperModel registers {CUTOFF!r} (how "
                "many layers are solved) and would take its values as the cutoff: rename "
                f"the build function's hyperparameter (fixing the cutoff, "
                f"`hp.Fixed({CUTOFF!r}, 2)`, is fine)."
            )
        if not isinstance(model, keras.Model):
            return model  # the tuner reports a build function that returns no model
        if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
            # Here, when the tuner builds its first model, not in every trial's fit.
            raise _uncompiled_error()
        if self._data_checked is not self.data:
            self._check_data(model)
        max_cutoff = self.max_cutoff
        if max_cutoff is None:
            max_cutoff = self._solvable_layers(model)
        elif not self._max_cutoff_checked:
            # Checked on the first model built (at the tuner's construction), so a bad
            # value fails before any trial runs; a search over depth may build others.
            self._check_max_cutoff(model)
        cutoff = hp.Int(CUTOFF, 0, max_cutoff)
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Integral) or cutoff < 0:
            raise ValueError(
                f"HybridHyperModel registers the hyperparameter {CUTOFF!r} (how many "
                f"layers are solved), but the build function's hyperparameters hold "
                f"{CUTOFF!r} = {cutoff!r}: rename the build function's hyperparameter "
                f"(fixing it to an integer, `hp.Fixed({CUTOFF!r}, 2)`, is fine)."
            )
        user_fixed = _user_options(hp, self.search_space)
        if self.search_space and max_cutoff >= 1:
            # The options only matter when something is solved. One the user declared
            # (`hyperparameters=` of the tuner, or the build function) is theirs.
            with hp.conditional_scope(CUTOFF, list(range(1, max_cutoff + 1))):
                for option, values in self.search_space.items():
                    if option in user_fixed:
                        continue
                    if all(isinstance(v, bool) for v in values) and set(values) == {False, True}:
                        hp.Boolean(option, default=values[0])
                    elif option in self._labels:
                        hp.Choice(option, list(self._labels[option]))
                    else:
                        hp.Choice(option, values)
        # As the trial's `fit` leaves it (frozen, activations replaced): a model rebuilt
        # to load a trial's checkpoint (`get_best_models`, `load_model`) is the model
        # the trial trained, not the builder's (a compiled model is compiled again).
        self._prepare_solved(model, cutoff)
        return model

    def _prepare_solved(self, model, cutoff):
        return freeze_solved_layers(
            model, cutoff, freeze=self.hybridize_options.get("freeze", True),
            solved_activation=self.hybridize_options.get("solved_activation"))

    # ------------------------------------------------------------------ fit
    def _cache_directory(self, callbacks):
        if self.cache_dir != "auto":
            return None if self.cache_dir is None else os.fspath(self.cache_dir)
        for callback in callbacks or []:
            # KerasTuner passes a callback holding the tuner to every trial's fit.
            project_dir = getattr(getattr(callback, "tuner", None), "project_dir", None)
            if project_dir is not None:
                return os.path.join(str(project_dir), CACHE_SUBDIR)
        return None

    def _get_cache(self, callbacks):
        if not self.cache:
            return None
        directory = self._cache_directory(callbacks)
        if directory is not None:
            if not os.path.isdir(directory):
                # The tuner removed its project directory (overwrite=True): the entries
                # kept in memory for it are gone with it.
                self._caches.pop(directory, None)
            os.makedirs(directory, exist_ok=True)
        if directory not in self._caches:
            self._caches[directory] = SolveCache(directory)
        return self._caches[directory]

    def _data_fingerprint(self):
        if self._user_fingerprint is not None or not self.cache:
            return self._user_fingerprint
        # Computed once per data object: `hypermodel.data = new_data` gives another.
        # (Arrays changed in place keep their fingerprint: pass new arrays.)
        identity = tuple(id(part) for part in self.data)
        if self._fingerprint is None or self._fingerprint_of != identity:
            x, y = readable_data(tuple(_named_input(self.data)[:2]))
            self._fingerprint = data_fingerprint(x, np.asarray(y))
            self._fingerprint_of = identity
        return self._fingerprint

    def _fit(self, model, cutoff, args, kwargs):
        """`model.fit(*args, **kwargs)`, through `fit_top` and the shared prefix outputs
        when something is frozen and the data are arrays."""
        try:
            arguments = inspect.signature(model.fit).bind(*args, **kwargs).arguments
        except TypeError:
            return model.fit(*args, **kwargs)  # let Keras word the error
        x, y = arguments.pop("x", None), arguments.pop("y", None)
        if (
            cutoff == 0
            or self.hybridize_options.get("freeze", True) is False  # nothing to share
            or self.output_cache is None
            or not is_array_data((x, y))
            or arguments.get("steps_per_epoch") is not None
        ):
            return model.fit(*args, **kwargs)
        arguments.update(arguments.pop("kwargs", {}))
        return fit_top(model, x, y, cache="auto", output_cache=self.output_cache,
                       **arguments)

    def fit(self, hp, model, *args, **kwargs):
        """Solve the bottom `hp["cutoff"]` layers, recompile, `model.fit(*args, **kwargs)`."""
        start = time.perf_counter()
        solvable = len(plan_model(model).steps)
        # `max_cutoff` comes from the first model built; a model with fewer solvable
        # layers (another user hyperparameter) solves all it has.
        cutoff = min(int(hp.get(CUTOFF)) if CUTOFF in hp else 0, solvable)
        solve_seconds = 0.0
        if cutoff > 0 or self.hybridize_options.get("initialize_above"):
            if ("tuner/trial_id" in hp.values and kwargs.get("initial_epoch", 0) > 0
                    and _from_tuner(kwargs.get("callbacks"))):
                # Hyperband continues a trial: its checkpoint (solved prefix and trained
                # top) is already loaded. Solving again would overwrite the trained
                # BatchNormalization statistics after the prefix; only freeze. (The
                # same `hp` retrained by hand, `hypermodel.fit(best_hp, fresh_model,
                # ...)`, passes no tuner callback, with or without `initial_epoch`:
                # its fresh model is solved.)
                self._prepare_solved(model, cutoff)
            else:
                user_fixed = _user_options(hp, self.search_space)
                options = {
                    option: (hp.get(option) if option in user_fixed
                             else self._labels[option][hp.get(option)]
                             if option in self._labels
                             else _declared(hp.get(option), values))
                    for option, values in self.search_space.items()
                    if option in hp
                }
                self.solve_cache = self._get_cache(kwargs.get("callbacks"))
                self.last_report = hybridize(
                    model,
                    self.data,
                    cutoff,
                    solve_cache=self.solve_cache,
                    data_fingerprint=self._data_fingerprint(),
                    **self.hybridize_options,
                    **options,
                )
                solve_seconds = time.perf_counter() - start
            _recompile(model)
        history = self._fit(model, cutoff, args, kwargs)
        if isinstance(history, keras.callbacks.History):
            epochs = max((len(v) for v in history.history.values()), default=1)
            trial_seconds = time.perf_counter() - start
            history.history[SOLVE_SECONDS] = [solve_seconds] * epochs
            history.history[TRIAL_SECONDS] = [trial_seconds] * epochs
        return history
