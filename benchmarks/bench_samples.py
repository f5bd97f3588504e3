"""How many samples does each layer need? `samples="auto"` against all of the data.

Part 1: every solvable layer of the benchmark CNN and MLP is solved with
`samples="auto"` on Fashion-MNIST (60,000 images) and digits (1,352 training images):
the samples each layer read before its class subspaces settled (or the data ran out);
for digits also with check points from 128 samples, since the default first check
point (1,024) leaves a single one below 1,352.

Part 2: the benchmark CNN on all of Fashion-MNIST, cutoff 1 and 2, solved with
`samples="auto"` and with `samples=None` (all 60,000 images), then trained for 3
epochs: test accuracy and solve time, seed by seed.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_samples [--seeds 3]

Writes the `bench_samples` section of docs/benchmarks.md and its summary row.
"""

import argparse
import statistics
import time

import keras

from benchmarks._report import (
    add_report_options,
    default_results,
    machine_line,
    markdown_table,
    met,
    write_section,
)
from benchmarks.common import BATCH, build_model, compile_model, evaluate, run_benchmark, save_run
from keras_classpca import hybridize
from keras_classpca.core import convergence
from keras_classpca.datasets import load_dataset
from keras_classpca.hybrid.planner import plan_model

SECTION = "bench_samples"


def layer_needs(dataset, kind, seed, first=None):
    """Every solvable layer solved with samples="auto" (check points from `first`)."""
    (x, y), _ = load_dataset(dataset)
    keras.utils.set_random_seed(seed)
    model = build_model(kind, x.shape[1:], int(y.max()) + 1)
    cutoff = len(plan_model(model).steps)
    default_first = convergence.DEFAULT_FIRST
    convergence.DEFAULT_FIRST = first or default_first
    try:
        report = hybridize(model, (x, y), cutoff=cutoff, seed=seed, verbose=0)
    finally:
        convergence.DEFAULT_FIRST = default_first
    return dict(part="needs", dataset=dataset + (f" (checks from {first})" if first else ""),
                kind=kind, seed=seed, n=len(x),
                layers=[dict(name=l.kind, samples=l.samples, converged=l.converged,
                             checks=l.sample_checks) for l in report.layers])


def trained(cutoff, samples, seed, epochs, data):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build_model("cnn")
    start = time.perf_counter()
    report = hybridize(model, (x, y), cutoff=cutoff, samples=samples, seed=seed, verbose=0)
    solve_s = time.perf_counter() - start
    compile_model(model)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return dict(part="trained", cutoff=cutoff, samples_mode=str(samples), seed=seed,
                acc=evaluate(model, x_test, y_test), solve_s=solve_s,
                samples=[l.samples for l in report.layers])


def run(args, checkpoint):
    parts = args.parts.split(",")
    for seed in range(args.seeds):
        for dataset in ("fashion_mnist", "digits"):
            for kind in ("cnn", "mlp"):
                if "needs" in parts:
                    save_run(args.results, layer_needs(dataset, kind, seed))
                if "digits128" in parts and dataset == "digits":
                    # 1,352 digits leave one check point at the default first (1,024).
                    save_run(args.results, layer_needs(dataset, kind, seed, first=128))
    checkpoint()
    if "trained" not in parts:
        return
    data = load_dataset("fashion_mnist")
    for seed in range(args.seeds):
        for cutoff in (1, 2):
            for samples in (("auto", None) if seed % 2 == 0 else (None, "auto")):
                save_run(args.results, trained(cutoff, samples, seed, args.epochs, data))
        checkpoint()


def write_report(records, command, paragraph, print_only=False):
    needs = [r for r in records if r["part"] == "needs"]
    rows = []
    for dataset in ("fashion_mnist", "digits", "digits (checks from 128)"):
        for kind in ("cnn", "mlp"):
            runs = [r for r in needs if r["dataset"] == dataset and r["kind"] == kind]
            if not runs:
                continue
            for i, layer in enumerate(runs[0]["layers"]):
                used = [r["layers"][i]["samples"] for r in runs]
                settled = sum(bool(r["layers"][i]["converged"]) for r in runs)
                rows.append([f"{kind} / {dataset}", f"{i + 1}: {layer['name']}",
                             f"{runs[0]['n']:,}", ", ".join(f"{u:,}" for u in used),
                             f"{statistics.median(used) / runs[0]['n']:.1%}",
                             f"{settled}/{len(runs)}"])
    body = (
        "## How many samples each layer needs: `samples=\"auto\"` (`bench_samples`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Each layer streams the training data "
        "in a random order and stops when its class subspaces moved less than the "
        "tolerance (1 %) between check points at 1,024, 2,048, 4,096, ... samples "
        "(`core/convergence.py`). All solvable layers solved, one run per seed.\n\n"
        + markdown_table(["model / data", "layer", "training samples",
                          "samples read (per seed)", "median share", "settled"], rows)
    )
    targets = {}
    trained_runs = [r for r in records if r["part"] == "trained"]
    if trained_runs:
        table = []
        for cutoff in (1, 2):
            runs = [r for r in trained_runs if r["cutoff"] == cutoff]
            auto = [r for r in runs if r["samples_mode"] == "auto"]
            full = [r for r in runs if r["samples_mode"] == "None"]
            if not auto or not full:
                continue
            acc_auto = statistics.median(r["acc"] for r in auto)
            acc_full = statistics.median(r["acc"] for r in full)
            share = max(max(r["samples"]) for r in auto) / 60_000
            table.append([cutoff, ", ".join(f"{r['acc']:.4f}" for r in auto),
                          ", ".join(f"{r['acc']:.4f}" for r in full),
                          f"{(acc_auto - acc_full) * 100:+.2f}",
                          "; ".join(" / ".join(f"{s:,}" for s in r["samples"]) for r in auto),
                          f"{statistics.median(r['solve_s'] for r in auto):.1f}",
                          f"{statistics.median(r['solve_s'] for r in full):.1f}"])
            if cutoff == 1:
                targets["samples_auto"] = (
                    f"cutoff 1: {share:.1%} of the images, {(acc_auto - acc_full) * 100:+.2f} pp",
                    met(share <= 0.10 and acc_auto >= acc_full - 0.002))
        body += (
            "\n\nThe benchmark CNN on all of Fashion-MNIST, 3 epochs after the solve: "
            "`samples=\"auto\"` against all 60,000 images (medians of the seeds).\n\n"
            + markdown_table(["cutoff", "test acc. auto (per seed)", "test acc. all",
                              "Δ median (pp)", "samples per layer (auto, per seed)",
                              "solve s auto", "solve s all"], table)
        )
    write_section(SECTION, body + "\n\n" + paragraph.strip(), print_only=print_only,
                  targets=targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--parts", default="needs,digits128,trained",
                        help="needs (samples per layer), digits128 (digits with check "
                        "points from 128), trained (accuracy with auto vs all samples)")
    add_report_options(parser, default_results(SECTION))
    args = parser.parse_args()
    run_benchmark(args, SECTION, write_report, lambda checkpoint: run(args, checkpoint))


if __name__ == "__main__":
    main()
