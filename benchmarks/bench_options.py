"""Which ClassPCA options give the best solved layers.

The benchmark CNN of `benchmarks.common` (Adam, batch 128, 3 epochs) on 10 % of
Fashion-MNIST (6,000 training images,
a random subset per seed; the solve uses all of them), cutoff 1 and cutoff 2, for:

- naive: the authors' recipe (center=False, scaling="unit", offset="zero",
  dedup_threshold=None)
- center only: naive + center=True
- standardize only: naive + scaling="standardize"
- defaults: center=True, scaling="standardize", offset="center", dedup_threshold=0.9
- whiten: defaults + scaling="whiten"
- adaptive: defaults + allocation="adaptive"
- ppi16: defaults + patches_per_image=16 (fewer patch rows: faster solves)
- defaults, default BLAS threads: the defaults again, but with OpenBLAS's own thread
  count during the solve (same numbers; shows the cost of BLAS thread oversubscription
  on a busy machine)

Every other solve runs under `threadpoolctl.threadpool_limits(1)` (one BLAS thread):
on the shared 2-core machine NumPy's multi-threaded `eigh` was 15-25x slower than
single-threaded, which would swamp the differences between options.

plus full SGD on the same subset as the reference. The top is trained with
`fit_top(cache="auto")`. Variants are interleaved (order rotated per seed).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_options [--seeds 0 1] [--quick]
"""

import argparse
import contextlib
import time

import keras

from benchmarks._report import (
    add_report_options,
    default_results,
    machine_line,
    markdown_table,
    write_section,
)
from benchmarks.common import (
    BATCH,
    build_model,
    compile_model,
    evaluate,
    med,
    rotated,
    run_benchmark,
    run_sgd,
    save_run,
    subset,
)
from keras_classpca.datasets import load_dataset
from keras_classpca.hybrid.builder import hybridize
from keras_classpca.hybrid.training import fit_top

SECTION = "bench_options"
NAIVE = dict(center=False, scaling="unit", offset="zero", dedup_threshold=None)
VARIANTS = {
    "naive (authors')": (NAIVE, None),
    "center only": (dict(NAIVE, center=True), None),
    "standardize only": (dict(NAIVE, scaling="standardize"), None),
    "defaults": ({}, None),
    "whiten": (dict(scaling="whiten"), None),
    "adaptive": (dict(allocation="adaptive"), None),
    "ppi16": ({}, 16),
    "defaults, default BLAS threads": ({}, None),
}


def run_variant(name, cutoff, seed, x, y, x_test, y_test, epochs):
    options, patches = VARIANTS[name]
    keras.utils.set_random_seed(seed)
    model = build_model("cnn")
    limit = contextlib.nullcontext()
    if not name.endswith("default BLAS threads"):
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1)
    start = time.perf_counter()
    with limit:
        report = hybridize(model, (x, y), cutoff=cutoff, samples=len(x), verbose=0, seed=seed,
                           patches_per_image=patches, **options)
    solve_s = time.perf_counter() - start
    start = time.perf_counter()
    compile_model(model)
    history = fit_top(model, x, y, batch_size=BATCH, epochs=epochs, cache="auto", verbose=0)
    fit_s = time.perf_counter() - start
    return dict(
        variant=name, cutoff=cutoff, acc=evaluate(model, x_test, y_test), solve_s=solve_s,
        fit_s=fit_s, cache_used=bool(history.cache_used),
        filters=[layer.n_components for layer in report.layers],
        captured=[round(layer.explained_variance, 4) for layer in report.layers],
        layer_s=[round(layer.seconds, 2) for layer in report.layers],
    )


def _options(name):
    options, patches = VARIANTS[name]
    shown = dict(options, **({"patches_per_image": patches} if patches else {}))
    return ", ".join(f"{k}={v!r}" for k, v in shown.items())


def write_report(records, command, paragraph, print_only=False):
    seeds = sorted({r["seed"] for r in records})
    sgd = {r["seed"]: r for r in records if r["variant"] == "sgd"}
    rows, filters = [], {}
    if sgd:
        rows.append(["SGD (reference)", "–", f"{med([r['acc'] for r in sgd.values()]):.4f}",
                     "–", "–", f"{med([r['fit_s'] for r in sgd.values()]):.1f}"])
    for cutoff in (1, 2):
        for name in VARIANTS:
            runs = [r for r in records if r["variant"] == name and r["cutoff"] == cutoff]
            if not runs:
                continue
            filters[cutoff] = "/".join(str(f) for f in runs[0]["filters"])
            d_sgd = [100 * (r["acc"] - sgd[r["seed"]]["acc"]) for r in runs if r["seed"] in sgd]
            label = name if len(runs) == len(seeds) else f"{name} ({len(runs)} seeds)"
            rows.append([
                label, cutoff, f"{med([r['acc'] for r in runs]):.4f}",
                f"{med(d_sgd):+.2f}" if d_sgd else "–",
                f"{med([r['solve_s'] for r in runs]):.1f}",
                f"{med([r['fit_s'] for r in runs]):.1f}",
            ])
    shown = [name for name in VARIANTS if any(r["variant"] == name for r in records)]
    body = "\n".join([
        "## ClassPCA options on the CNN at 10 % data (`bench_options`)",
        "",
        machine_line(),
        "",
        f"Command: `{command}`. Seeds {', '.join(str(s) for s in seeds)}. Benchmark CNN, "
        "6,000 training images (a random subset per seed; the solve uses all of them), "
        f"{'/'.join(str(e) for e in sorted({r['epochs'] for r in records}))} epochs, Adam, "
        "batch 128, top trained with `fit_top(cache=\"auto\")`; solves under one BLAS thread "
        "except where the variant says otherwise; test accuracy on the full 10,000-image test "
        "set; medians over seeds. Solve s = `hybridize` wall time. Filters solved: "
        + "; ".join(f"{f} at cutoff {c}" for c, f in filters.items()) + ".",
        "",
        "Variants and their options beyond the defaults:",
        "",
        markdown_table(["variant", "options"],
                       [[name, f"`{_options(name)}`" if _options(name) else "—"]
                        for name in shown]),
        "",
        markdown_table(["variant", "cutoff", "test acc", "Δ vs SGD (pp)", "solve s", "fit s"],
                       rows),
        "",
        paragraph.strip(),
    ])
    write_section(SECTION, body, print_only=print_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cutoffs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    add_report_options(parser, default_results(SECTION))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1

    def run(checkpoint):
        (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist")
        jobs = [("sgd", None)] + [(v, c) for c in args.cutoffs for v in args.variants]
        for seed in args.seeds:
            x, y = subset(x_train, y_train, 0.1, seed)
            for name, cutoff in rotated(jobs, seed * 5):
                if name == "sgd":
                    record = dict(run_sgd("cnn", seed, x, y, x_test, y_test, args.epochs),
                                  variant="sgd", cutoff=None)
                else:
                    record = run_variant(name, cutoff, seed, x, y, x_test, y_test, args.epochs)
                save_run(args.results, record, seed=seed, n_train=len(x), epochs=args.epochs)
            checkpoint()

    run_benchmark(args, SECTION, write_report, run)


if __name__ == "__main__":
    main()
