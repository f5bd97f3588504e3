"""The default path `hybridize(model, data)` on a grid of architectures × data fractions.

Each cell (architecture, fraction of Fashion-MNIST, seed) trains, in one run and in a
rotated order: end-to-end SGD, and every fixed cutoff k (`hybridize(cutoff=k)` with
the default `samples="auto"`, then compile and fit as the architecture's user does).
It also records the `cutoff="auto"` decision with every layer's probe gain and cost
(`decide_cutoff(..., explore=True)`), so that a rule can be replayed on the cell: the
default path is the decision (up to the first layer the rule rejects) followed by the
fixed cutoff it picks, which is exactly what `hybridize(model, data)` runs. `--verify`
also runs the default path itself, to check the replay.

The library's rule is selected on every cell of this grid and of the three other
Fashion-MNIST grids (`default_report.select_rule`); the report also gives the rule the
benchmark CNN and MLP cells alone select (`default_report.TUNE_ARCHITECTURES`, how it
was chosen until 2026-11-29) and both halves apart.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_default [--seeds 3]

Writes the `bench_default` section of docs/benchmarks.md and its summary rows.
"""

import argparse
import itertools
import time

import keras

from benchmarks import default_report, grid_models
from benchmarks._report import add_report_options, default_results, load_records
from benchmarks.common import rotated, run_benchmark, save_run, subset
from keras_classpca import hybridize
from keras_classpca.datasets import load_dataset
from keras_classpca.hybrid import policy
from keras_classpca.hybrid.activations import ActivationReplacer
from keras_classpca.hybrid.decision import decide_cutoff
from keras_classpca.hybrid.inputs import input_packing
from keras_classpca.hybrid.passes import DataPasses
from keras_classpca.hybrid.planner import plan_model

SECTION = "bench_default"
FRACTIONS = (0.01, 0.02, 0.1, 0.3, 1.0)
MAX_FIXED_CUTOFF = 6  # fixed cutoffs run per cell (the small resnet has 6 solvable layers)


def run_sgd(arch, x, y, test, epochs, seed):
    keras.utils.set_random_seed(seed)
    model = grid_models.build(arch)
    x = grid_models.inputs_for(arch, x)
    start = time.perf_counter()
    grid_models.compile_and_fit(arch, model, x, grid_models.labels_for(arch, y), epochs)
    wall = time.perf_counter() - start
    return dict(contender="sgd", k=0, acc=_test_accuracy(arch, model, test),
                solve_s=0.0, wall_s=wall)


def _test_accuracy(arch, model, test):
    return grid_models.test_accuracy(model, grid_models.inputs_for(arch, test[0]), test[1])


def run_hybrid(arch, x, y, test, epochs, seed, cutoff, name=None, train=None, **options):
    """`hybridize(cutoff=cutoff, **options)` then fit; the record is named `name`
    (default "default" for "auto", else "k<cutoff>"). `train(model, x, labels, epochs)`
    compiles and trains instead of the architecture's `compile_and_fit`."""
    keras.utils.set_random_seed(seed)
    model = grid_models.build(arch)
    labels = grid_models.labels_for(arch, y)
    x = grid_models.inputs_for(arch, x)
    start = time.perf_counter()
    report = hybridize(model, (x, labels), cutoff=cutoff, seed=seed, verbose=0, **options)
    solve = time.perf_counter() - start
    if train is None:
        grid_models.compile_and_fit(arch, model, x, labels, epochs)
    else:
        train(model, x, labels, epochs)
    wall = time.perf_counter() - start
    name = name or ("default" if cutoff == "auto" else f"k{cutoff}")
    return dict(contender=name, k=report.cutoff,
                acc=_test_accuracy(arch, model, test), solve_s=solve, wall_s=wall,
                samples=[layer.samples for layer in report.layers],
                evidence=report.evidence or None)


def run_grid_cells(args, checkpoint, architectures, contenders, train):
    """Every seed × fraction × architecture cell (on the data set each architecture
    names, `grid_models.dataset_for`), the `contenders` rotated per seed: `train(name,
    arch, x, y, test, epochs, seed)` returns a record, saved to `args.results` with its
    cell (`args.seeds`, `args.first_seed`, `args.fractions`); a checkpoint after each
    fraction."""
    datasets = {name: load_dataset(name)
                for name in sorted({grid_models.dataset_for(arch) for arch in architectures})}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for fraction in args.fractions:
            for arch in architectures:
                (x_all, y_all), test = datasets[grid_models.dataset_for(arch)]
                x, y = subset(x_all, y_all, fraction, seed)
                epochs = epochs_for(len(x))
                cell = dict(arch=arch, fraction=fraction, seed=seed, n=len(x), epochs=epochs)
                for name in rotated(list(contenders), seed + len(arch)):
                    save_run(args.results, train(name, arch, x, y, test, epochs, seed), **cell)
            checkpoint()


def grid_cells_main(doc, section, architectures, fractions, contenders, train, write_report):
    """The `main()` of a benchmark that trains `contenders` on grid cells
    (`run_grid_cells`): `--seeds`, `--first-seed`, `--architectures`, `--fractions`
    and the report options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--architectures", default=",".join(architectures))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(fractions))
    parser.add_argument("--contenders", nargs="+", default=list(contenders),
                        help="the contenders to run (default: all)")
    add_report_options(parser, default_results(section))
    args = parser.parse_args()
    run_benchmark(args, section, write_report, lambda checkpoint: run_grid_cells(
        args, checkpoint, args.architectures.split(","), args.contenders, train))


def epochs_for(n, min_epochs=3, min_steps=300):
    """At least `min_epochs` epochs and `min_steps` optimizer steps of batch 128: with 3
    epochs of 600 images (15 steps) a network with BatchNormalization has not even
    settled its moving statistics."""
    return max(min_epochs, -(-min_steps // -(-n // grid_models.BATCH)))


def run_contenders(results, contenders, arch, x, y, test, epochs, seed, cell):
    """Train each contender ("sgd", a cutoff k, or "auto") on the cell and save it."""
    for contender in contenders:
        if contender == "sgd":
            record = run_sgd(arch, x, y, test, epochs, seed)
        else:
            record = run_hybrid(arch, x, y, test, epochs, seed, contender)
        save_run(results, record, **cell)


def run_decision(arch, x, y, seed):
    """The "auto" decision on every solvable layer (explore), with its per-layer cost."""
    keras.utils.set_random_seed(seed)
    model = grid_models.build(arch)
    start = time.perf_counter()
    passes = DataPasses((grid_models.inputs_for(arch, x), y), "auto", 256, seed, None,
                         inputs=input_packing(model))
    sample = passes.head(policy.DECISION_SAMPLES)
    head_s = time.perf_counter() - start
    # As hybridize decides: the rules' sign pairs and spare filters see activation
    # layers after a layer too (e.g. Conv -> ReLU(6) layer), not only its own.
    sign_pairs = ActivationReplacer(model, None).sign_pairs
    _, evidence = decide_cutoff(
        plan_model(model), sample, {}, n_classes=10, samples_per_class=len(x) / 10,
        rule=policy.DEFAULT_RULE, seed=seed, explore=True, sign_pairs=sign_pairs)
    evidence["head_s"] = head_s
    # The library's own decision (stops at the first rejection, skips the probes of
    # lossless layers): its cost is what the default path pays with DEFAULT_RULE.
    cutoff, library = decide_cutoff(
        plan_model(model), sample, {}, n_classes=10, samples_per_class=len(x) / 10,
        rule=policy.DEFAULT_RULE, seed=seed, sign_pairs=sign_pairs)
    evidence["library"] = dict(rule=repr(policy.DEFAULT_RULE), cutoff=cutoff,
                               seconds=library["seconds"] + head_s)
    return dict(contender="decision", evidence=evidence,
                n_solvable=len(plan_model(model).steps))


def run(args, checkpoint):
    architectures = args.architectures.split(",")
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    datasets = {name: load_dataset(name)
                for name in sorted({grid_models.dataset_for(arch) for arch in architectures})}
    for seed, fraction in itertools.product(seeds, fractions):
        for arch in rotated(architectures, seed):
            (x_all, y_all), test = datasets[grid_models.dataset_for(arch)]
            x, y = subset(x_all, y_all, fraction, seed)
            epochs = epochs_for(len(x), args.epochs, args.min_steps)
            cell = dict(arch=arch, fraction=fraction, seed=seed, n=len(x), epochs=epochs)
            if args.contenders:  # more training runs for cells already recorded
                contenders = [c if c == "sgd" else int(c) for c in args.contenders.split(",")]
            else:
                decision = run_decision(arch, x, y, seed)
                save_run(args.results, decision, **cell)
                if args.decisions_only:
                    continue
                n_fixed = min(decision["n_solvable"], args.max_cutoff)
                contenders = ["sgd"] + list(range(1, n_fixed + 1)) + (
                    ["auto"] if args.verify else [])
            run_contenders(args.results, rotated(contenders, seed + len(arch)), arch, x, y,
                           test, epochs, seed, cell)
        checkpoint()


def grid_parser(doc, section, architectures, fractions, seeds=3):
    """The options of a benchmark of this grid's cells (`run`): seeds, epochs,
    architectures, fractions, `--decisions-only` and the report options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed, ..., first-seed + seeds - 1 (runs split "
                        "across calls append to the same --results)")
    parser.add_argument("--epochs", type=int, default=3, help="at least this many epochs")
    parser.add_argument("--min-steps", type=int, default=300,
                        help="and at least this many optimizer steps (more epochs on less data)")
    parser.add_argument("--architectures", default=",".join(architectures))
    parser.add_argument("--fractions", default=",".join(str(f) for f in fractions))
    parser.add_argument("--decisions-only", action="store_true",
                        help="record only the decisions (e.g. after the probe changed); the "
                        "report replays them on the training runs")
    parser.add_argument("--max-cutoff", type=int, default=MAX_FIXED_CUTOFF,
                        help="fixed cutoffs 1..max-cutoff run per cell (at most the model's "
                        "solvable layers)")
    parser.add_argument("--contenders", default=None,
                        help="only these training runs, e.g. 'sgd,5,6', no decision: "
                        "adds to cells already in --results (a rerun replaces a record)")
    add_report_options(parser, default_results(section))
    return parser


def grid_main(doc, section, architectures, fractions, write_report, seeds=3):
    """The `main()` of a benchmark of other architectures on this grid's cells."""
    args = grid_parser(doc, section, architectures, fractions, seeds).parse_args()
    args.verify = False
    run_benchmark(args, section, write_report, lambda checkpoint: run(args, checkpoint))


def main():
    parser = grid_parser(__doc__, SECTION, grid_models.ARCHITECTURES, FRACTIONS)
    parser.add_argument("--verify", action="store_true",
                        help="also run the default path itself in every cell")
    parser.add_argument("--runs", default=None,
                        help="results file holding the training runs (default: --results)")
    args = parser.parse_args()

    def write_report(records, command, paragraph, print_only=False):
        # Training runs first: a decision recorded later (--decisions-only) replaces
        # the one recorded with them.
        runs = load_records(args.runs) if args.runs else []
        default_report.write_report(runs + records, command, paragraph, print_only)

    run_benchmark(args, SECTION, write_report, lambda checkpoint: run(args, checkpoint))


if __name__ == "__main__":
    main()
