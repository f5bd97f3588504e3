"""A KerasTuner search of the cutoff with and without the prefix solve cache.

The same search twice in one run: `GridSearch` over `cutoff` in {0, 1, 2} (`--max-cutoff`)
and the learning rate in {1e-3, 3e-3} (6 trials) of the Fashion-MNIST benchmark CNN
(`benchmarks.common`), 10 % of the training data (solved on all of it,
`patches_per_image=16`), 2 epochs per trial, 2,000 validation images.

- "cache": `HybridHyperModel(...)` (the default: a `SolveCache` under the tuner's
  `directory/project_name`, and a `PrefixOutputCache` in memory); a trial with cutoff
  k reuses the layers solved by earlier trials and solves only what no trial has
  solved yet, and trains its top through `fit_top` on the prefix outputs an earlier
  trial with the same prefix computed (where `fit_top(cache="auto")` cached them).
- "no cache": `HybridHyperModel(..., cache=False)`: every trial solves its prefix and
  trains with a plain `model.fit`.

`--model resnet_3x2` searches the residual CNN of `benchmarks.grid_models` instead (3
stages × 2 basic blocks, Conv–BN–ReLU; cutoffs 0–6 by default), in its own section
`bench_tuner_resnet_3x2` with its own summary rows: a deeper solvable prefix, so more of
each trial is the prefix the caches share.

The machine is shared, so the two searches are interleaved trial by trial (the
tuners' `max_trials` is raised one at a time and `search` resumed; the arm that goes
first alternates). Search time of an arm = the wall time of its `search` calls.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_tuner
    ... --quick          # 2 epochs on 2 % of the data, 4 trials (smoke test)
    ... --model resnet_3x2 --max-cutoff 6
"""

import argparse
import os
import tempfile
import time

import keras
import keras_tuner
import numpy as np

from benchmarks import grid_models
from benchmarks._report import command_line, machine_line, markdown_table, met, write_section
from benchmarks.common import BATCH
from keras_classpca.datasets import load_dataset
from keras_classpca.tuner import HybridHyperModel

SECTION = "bench_tuner"
LEARNING_RATES = [1e-3, 3e-3]
MODELS = {"cnn": "the benchmark CNN", "resnet_3x2": "the residual CNN (3 stages × 2 blocks)"}


def section(model_kind):
    return SECTION if model_kind == "cnn" else f"{SECTION}_{model_kind}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn",
                        help="the model searched (each has its own section)")
    parser.add_argument("--max-cutoff", type=int, default=2)
    parser.add_argument("--learning-rates", default=",".join(f"{lr:g}" for lr in LEARNING_RATES),
                        help="comma-separated learning rates searched (trials = cutoffs × these)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.fraction = 0.02
        args.max_cutoff = 1

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist")
    keep = np.random.default_rng(0).choice(len(x_train), int(args.fraction * len(x_train)),
                                           replace=False)
    x, y = x_train[keep], y_train[keep]
    x_val, y_val = x_test[:2000], y_test[:2000]
    learning_rates = [float(v) for v in args.learning_rates.split(",")]
    n_trials = (args.max_cutoff + 1) * len(learning_rates)

    def build_hypermodel(hp):
        model = grid_models.build(args.model)
        model.compile(keras.optimizers.Adam(hp.Choice("learning_rate", learning_rates)),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    workdir = tempfile.mkdtemp(prefix="bench_tuner_")
    arms = {}
    for arm, cache in (("cache", True), ("no cache", False)):
        hypermodel = HybridHyperModel(build_hypermodel, (x, y), max_cutoff=args.max_cutoff,
                                      search_options=False, cache=cache,
                                      patches_per_image=16, seed=0)
        tuner = keras_tuner.GridSearch(hypermodel, objective="val_accuracy", max_trials=0,
                                       directory=workdir, project_name=arm.replace(" ", "_"),
                                       overwrite=True)
        arms[arm] = {"hypermodel": hypermodel, "tuner": tuner, "seconds": 0.0}

    load_before = os.getloadavg()
    print(f"{len(x)} training images, {n_trials} trials per search, {args.epochs} epoch(s); "
          f"load average {load_before[0]:.1f}")
    for k in range(1, n_trials + 1):
        order = list(arms) if k % 2 else list(reversed(arms))
        for arm in order:
            entry = arms[arm]
            entry["tuner"].oracle.max_trials = k
            start = time.perf_counter()
            entry["tuner"].search(x, y, validation_data=(x_val, y_val), epochs=args.epochs,
                                  batch_size=BATCH, verbose=0)
            entry["seconds"] += time.perf_counter() - start
            print(f"  trial {k}/{n_trials} {arm:>8}: search time so far {entry['seconds']:.1f} s")
    load_after = os.getloadavg()

    rows, summary = [], {}
    for arm, entry in arms.items():
        trials = [t for t in entry["tuner"].oracle.trials.values() if t.status == "COMPLETED"]
        solve = sum(t.metrics.get_best_value("solve_seconds") for t in trials)
        trial_total = sum(t.metrics.get_best_value("trial_seconds") for t in trials)
        best = entry["tuner"].oracle.get_best_trials(1)[0]
        cache = entry["hypermodel"].solve_cache
        outputs = entry["hypermodel"].output_cache
        summary[arm] = {"seconds": entry["seconds"], "solve": solve}
        rows.append([
            arm, len(trials), f"{entry['seconds']:.1f}", f"{solve:.1f}",
            f"{trial_total - solve:.1f}",
            f"{cache.misses} solved / {cache.hits} reused" if cache is not None
            else f"{sum(t.hyperparameters.get('cutoff') for t in trials)} solved / 0 reused",
            f"{outputs.misses} computed / {outputs.hits} reused" if outputs is not None
            else "–",
            f"cutoff {best.hyperparameters.get('cutoff')}, "
            f"lr {best.hyperparameters.get('learning_rate'):g}: {best.score:.4f}",
        ])
        print(f"{arm}: search {entry['seconds']:.1f} s, solve {solve:.1f} s, best {rows[-1][-1]}")
    per_cutoff = []
    for cutoff in range(args.max_cutoff + 1):
        cells = [str(cutoff)]
        for arm, entry in arms.items():
            trials = [t for t in entry["tuner"].oracle.trials.values()
                      if t.status == "COMPLETED" and t.hyperparameters.get("cutoff") == cutoff]
            cells.append(" / ".join(
                f"{t.metrics.get_best_value('solve_seconds'):.1f} s of "
                f"{t.metrics.get_best_value('trial_seconds'):.1f} s, {t.score:.3f}"
                for t in sorted(trials, key=lambda t: t.trial_id)))
        per_cutoff.append(cells)
    ratio = summary["no cache"]["seconds"] / summary["cache"]["seconds"]
    # The most any prefix cache could gain: the cache arm with every trial that solves
    # something made free, keeping its end-to-end trials (cutoff 0) and the tuner's
    # own work between trials.
    cache_trials = [t for t in arms["cache"]["tuner"].oracle.trials.values()
                    if t.status == "COMPLETED"]
    prefixed = sum(t.metrics.get_best_value("trial_seconds") for t in cache_trials
                   if t.hyperparameters.get("cutoff") > 0)
    ceiling = summary["no cache"]["seconds"] / max(summary["cache"]["seconds"] - prefixed, 1e-9)
    solve_ratio = summary["no cache"]["solve"] / max(summary["cache"]["solve"], 1e-9)
    print(f"speed-up of the search with the cache: {ratio:.2f}x "
          f"(solving alone: {solve_ratio:.1f}x; ceiling {ceiling:.2f}x)")

    body = "\n".join([
        "## KerasTuner: searching the cutoff with and without the prefix cache"
        + ("" if args.model == "cnn" else f" — {MODELS[args.model].split(' (')[0][4:]}")
        + f" (`{section(args.model)}`)",
        "",
        f"{machine_line()}. Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(shared machine).",
        "",
        f"Command: `{command_line(SECTION)}`. GridSearch over cutoff 0–{args.max_cutoff} × "
        f"learning rate {', '.join(f'{lr:g}' for lr in learning_rates)} ({n_trials} trials) of "
        f"{MODELS[args.model]} on {len(x):,} Fashion-MNIST training images ({args.fraction:.0%}, "
        "solved with the default `samples=\"auto\"`, 16 patches per image), "
        f"{args.epochs} epoch(s) per trial, "
        "2,000 validation images; the two searches interleaved trial by trial.",
        "",
        markdown_table(["search", "trials", "search time (s)", "solving (s)",
                        "training + rest (s)", "layer solves", "prefix outputs",
                        "best trial (val accuracy)"],
                       rows),
        "",
        f"With the caches the search was {ratio:.2f}× faster (solving alone "
        f"{solve_ratio:.1f}× faster). The solve cache removes repeated solves; the output "
        "cache (a trial's training and validation outputs of the frozen prefix, counted "
        "separately in the table) removes the prefix's forward passes from the trials "
        "after the first with that prefix. Trials with cutoff 0 train end to end in both "
        "searches: they bound what any prefix cache can gain. Had every trial with a "
        f"solved prefix cost nothing at all ({prefixed:.1f} s of the cache search), the "
        f"search would have been {ceiling:.2f}× faster than without the caches: the rest "
        "is the cutoff-0 trials and the tuner's own work between trials.",
        "",
        "Per cutoff — solve time of trial time, and val accuracy, of each trial (learning rate "
        + " / ".join(f"{lr:g}" for lr in learning_rates) + "):",
        "",
        markdown_table(["cutoff"] + [f"{arm}" for arm in arms], per_cutoff),
    ])
    measured = (f"{ratio:.2f}× ({n_trials} trials; solving alone {solve_ratio:.1f}×)",
                met(ratio >= 2))
    targets = {} if args.quick else {"tuner_cache": measured}
    if n_trials >= 12 and not args.quick:
        targets["tuner_cache_12"] = measured
    if args.model != "cnn":
        targets = {f"{key}_{args.model}": value for key, value in targets.items()}
    write_section(section(args.model), body, print_only=args.no_write, targets=targets)


if __name__ == "__main__":
    main()
