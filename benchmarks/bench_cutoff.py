"""Evidence for `cutoff="auto"`: probe accuracy vs the accuracy a trained model reaches.

For each model and data set, `hybridize(cutoff="auto")` records the held-out accuracy
of a ridge probe on the features after 0, 1, 2, ... solved layers. Then the model is
trained with every fixed cutoff k (solve k layers, train the rest) and tested. The
auto rule is good if the k it picks is the one with the best trained accuracy, or a
larger k that costs little accuracy (more solved layers = cheaper training).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_cutoff [--quick] [--seeds 2]

Writes the `bench_cutoff` section of docs/benchmarks.md.
"""

import argparse
import statistics

import keras
import numpy as np

from benchmarks._report import (
    add_report_options,
    machine_line,
    markdown_table,
    report_arguments,
    write_section,
)
from benchmarks.common import BATCH, build_model
from keras_classpca import hybridize
from keras_classpca.datasets import load_dataset
from keras_classpca.experiments import solve_and_train

SECTION = "bench_cutoff"


def run_case(kind, dataset, fraction, epochs, seed):
    (x, y), (x_test, y_test) = load_dataset(dataset)
    n_classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(x), int(fraction * len(x)), replace=False)
    x, y = x[keep], y[keep]
    keras.utils.set_random_seed(seed)
    model = build_model(kind, x.shape[1:], n_classes)
    report = hybridize(model, (x, y), cutoff="auto", seed=seed, verbose=0)
    probe = report.evidence["probe_accuracy"]
    n_candidates = len(report.candidates)
    trained = []
    for k in range(n_candidates + 1):
        row = solve_and_train(lambda: build_model(kind, x.shape[1:], n_classes), (x, y),
                              (x_test, y_test), k, epochs=epochs, batch_size=BATCH, seed=seed)
        trained.append((row["test_accuracy"], row["total_seconds"]))
    return report.cutoff, probe, trained


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, one seed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    add_report_options(parser)
    args = parser.parse_args()
    paragraph, command = report_arguments(args, SECTION)
    cases = [("cnn", "digits", 1.0), ("mlp", "digits", 1.0)]
    if not args.quick:
        cases += [("cnn", "fashion_mnist", 0.1), ("mlp", "fashion_mnist", 0.1)]
    seeds = range(1 if args.quick else args.seeds)
    rows = []
    for kind, dataset, fraction in cases:
        results = [run_case(kind, dataset, fraction, args.epochs, seed) for seed in seeds]
        picks = [r[0] for r in results]
        for k in range(len(results[0][2])):
            # auto stops probing at the first rejected layer: deeper k have no probe.
            probes = [r[1][k] for r in results if k < len(r[1])]
            probe = f"{statistics.median(probes):.3f}" if probes else "—"
            accuracy = statistics.median(r[2][k][0] for r in results)
            seconds = statistics.median(r[2][k][1] for r in results)
            rows.append([f"{kind} / {dataset} {fraction:.0%}", k, probe,
                         f"{accuracy:.4f}", f"{seconds:.1f}",
                         ", ".join(str(p) for p in picks) if k == 0 else ""])
            print(rows[-1], flush=True)
    table = markdown_table(
        ["model / data", "solved layers k", "probe acc. (features after k)",
         f"test acc. after {args.epochs} epochs", "solve+fit s", "auto picked (per seed)"],
        rows,
    )
    body = (
        "## Choosing the cutoff: probe vs trained accuracy (`bench_cutoff`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Benchmark CNN and MLP, "
        f"Adam, batch 128; medians over {len(seeds)} seed(s). The probe is a ridge classifier "
        "on the features after k solved layers (held-out fifth of the solve samples); the "
        "test accuracy is that of the model trained with cutoff k.\n\n" + table
        + "\n\n" + paragraph.strip()
    )
    write_section(SECTION, body, print_only=args.no_write)


if __name__ == "__main__":
    main()
