"""Issue 4, "making it good": which ClassPCA options give the best solved layers.

The CNN of `bench_hybrid.py` (Conv2D(32,5) - pool - Conv2D(64,5) - pool - Dense(128) -
Dense(10), Adam, batch 128, 3 epochs) on 10 % of Fashion-MNIST (6,000 training images,
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

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_options.py [--seeds 0 1] [--quick]
"""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
from _report import (  # noqa: E402
    add_report_options,
    append_record,
    load_records,
    machine_line,
    markdown_table,
    report_arguments,
    write_section,
)
from bench_hybrid import (  # noqa: E402
    BATCH,
    build,
    compile_model,
    evaluate,
    med,
    run_sgd,
    subset,
)

from keras_classpca.datasets import load_dataset  # noqa: E402
from keras_classpca.hybrid.builder import hybridize  # noqa: E402
from keras_classpca.hybrid.training import fit_top  # noqa: E402

SECTION = "bench_options"
DEFAULT_RESULTS = "/tmp/bench_options.jsonl"
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
    model = build("cnn")
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


def write_report(records, args_line, paragraph, print_only=False):
    seeds = sorted({r["seed"] for r in records})
    sgd = {r["seed"]: r for r in records if r["variant"] == "sgd"}
    rows = []
    if sgd:
        rows.append(["SGD (reference)", "–", "–", len(sgd),
                     f"{med([r['acc'] for r in sgd.values()]):.4f}", "–", "–",
                     f"{med([r['fit_s'] for r in sgd.values()]):.1f}", "–"])
    for cutoff in (1, 2):
        for name in VARIANTS:
            runs = [r for r in records if r["variant"] == name and r["cutoff"] == cutoff]
            if not runs:
                continue
            options, patches = VARIANTS[name]
            shown = dict(options, **({"patches_per_image": patches} if patches else {}))
            d_sgd = [100 * (r["acc"] - sgd[r["seed"]]["acc"]) for r in runs if r["seed"] in sgd]
            rows.append([
                name, cutoff, "`" + (", ".join(f"{k}={v!r}" for k, v in shown.items()) or "—") + "`",
                len(runs), f"{med([r['acc'] for r in runs]):.4f}",
                f"{med(d_sgd):+.2f}" if d_sgd else "–",
                f"{med([r['solve_s'] for r in runs]):.1f}",
                f"{med([r['fit_s'] for r in runs]):.1f}",
                "/".join(str(f) for f in runs[0]["filters"]),
            ])
    table = markdown_table(
        ["variant", "cutoff", "options (beyond defaults)", "seeds", "test acc (median)",
         "Δ vs SGD (pp)", "solve s", "fit s", "filters"],
        rows,
    )
    body = "\n".join([
        "## ClassPCA options on the CNN at 10 % data (`benchmarks/bench_options.py`)",
        "",
        machine_line(),
        "",
        f"Run: `{args_line}`; seeds finished: {seeds}. CNN of `bench_hybrid`, 6,000 training "
        "images (random subset per seed; the solve uses all of them), "
        f"{'/'.join(str(e) for e in sorted({r['epochs'] for r in records}))} epochs, Adam, batch "
        "128, top trained with `fit_top(cache=\"auto\")`; solves under one BLAS thread except "
        "where the variant says otherwise; test accuracy on the full 10,000-"
        "image test set; medians over seeds. Solve time = `hybridize` wall time.",
        "",
        table,
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
    add_report_options(parser, DEFAULT_RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
    paragraph, args_line = report_arguments(args, "bench_options.py")
    if args.report_only:
        write_report(load_records(args.results), args_line, paragraph, print_only=args.no_write)
        return
    if args.fresh and os.path.exists(args.results):
        os.remove(args.results)

    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist")
    jobs = [("sgd", None)] + [(v, c) for c in args.cutoffs for v in args.variants]
    for seed in args.seeds:
        x, y = subset(x_train, y_train, 0.1, seed)
        shift = (seed * 5) % len(jobs)
        for name, cutoff in jobs[shift:] + jobs[:shift]:
            if name == "sgd":
                record = run_sgd("cnn", seed, x, y, x_test, y_test, args.epochs)
                record.update(variant="sgd", cutoff=None)
            else:
                record = run_variant(name, cutoff, seed, x, y, x_test, y_test, args.epochs)
            record.update(seed=seed, n_train=len(x), epochs=args.epochs,
                          finished=time.strftime("%H:%M:%S"))
            append_record(args.results, record)
        if not args.no_write:
            write_report(load_records(args.results), args_line, paragraph)


if __name__ == "__main__":
    main()
