"""The label-free mode when few images carry labels (Fashion-MNIST).

Only a fraction of the training images is labelled. Contenders, each trained on the
labelled images only (Adam, 3 epochs, batch 128) and tested on the full test set:

- SGD: the benchmark CNN trained end to end;
- class-based: `hybridize(model, (x_labelled, y_labelled), cutoff=k)`, then the top;
- label-free: `hybridize(model, x_all, cutoff=k, samples=12000)` on 12,000 of the
  60,000 images, without their labels (the covariance eigenvectors of each layer's
  input), then the top.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_label_free [--quick]
"""

import argparse
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
    fmt,
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

SECTION = "bench_label_free"
# Unlabelled images the label-free solve uses: many more than the labelled ones, few
# enough that the second conv layer's statistics stay cheap.
UNLABELLED_SAMPLES = 12000


def run_solved(mode, cutoff, seed, x_all, x, y, x_test, y_test, epochs):
    keras.utils.set_random_seed(seed)
    model = build_model("cnn")
    start = time.perf_counter()
    data = x_all if mode == "label-free" else (x, y)
    hybridize(model, data, cutoff=cutoff, samples=min(UNLABELLED_SAMPLES, len(x_all)),
              seed=seed, verbose=0)
    solve_s = time.perf_counter() - start
    compile_model(model)
    fit_top(model, x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return dict(contender=f"{mode} c{cutoff}", acc=evaluate(model, x_test, y_test),
                solve_s=solve_s, wall_s=time.perf_counter() - start)


def write_report(records, command, paragraph, print_only=False):
    rows = []
    for fraction in sorted({r["fraction"] for r in records}):
        names = ["sgd"] + sorted({r["contender"] for r in records} - {"sgd"})
        sgd = {r["seed"]: r["acc"] for r in records
               if r["fraction"] == fraction and r["contender"] == "sgd"}
        for name in names:
            runs = [r for r in records if r["fraction"] == fraction and r["contender"] == name]
            if not runs:
                continue
            delta = med([100 * (r["acc"] - sgd[r["seed"]]) for r in runs if r["seed"] in sgd])
            rows.append([f"{fraction:.0%} ({runs[0]['n_labelled']:,})", name, len(runs),
                         fmt(med([r["acc"] for r in runs]), ".4f"),
                         "–" if name == "sgd" else fmt(delta, "+.2f"),
                         fmt(med([r["solve_s"] for r in runs]), ".1f")])
    body = [
        "## Label-free solving when few images are labelled (`bench_label_free`)",
        "",
        machine_line(),
        "",
        f"Command: `{command}`. Benchmark CNN; every contender trains on the labelled "
        "images only (Adam, 3 epochs, batch 128); the label-free solve sees 12,000 of the "
        "60,000 training images without labels, the class-based one the labelled ones. Medians "
        "over seeds; Δ paired per seed against SGD.",
        "",
        markdown_table(["labelled", "contender", "seeds", "test acc", "Δ vs SGD (pp)",
                        "solve s"], rows),
        "",
        paragraph.strip(),
    ]
    write_section(SECTION, "\n".join(body), print_only=print_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 %% labelled, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--cutoffs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    add_report_options(parser, default_results(SECTION))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.fractions, args.cutoffs = args.seeds[:1], [0.01], [1]

    def run(checkpoint):
        (x_all, y_all), (x_test, y_test) = load_dataset("fashion_mnist")
        contenders = ["sgd"] + [(mode, k) for k in args.cutoffs
                                for mode in ("class-based", "label-free")]
        for seed in args.seeds:
            for fraction in args.fractions:
                x, y = subset(x_all, y_all, fraction, seed)
                for contender in rotated(contenders, seed):
                    if contender == "sgd":
                        record = run_sgd("cnn", seed, x, y, x_test, y_test, args.epochs)
                    else:
                        record = run_solved(*contender, seed, x_all, x, y, x_test, y_test,
                                            args.epochs)
                    save_run(args.results, record, seed=seed, fraction=fraction,
                             n_labelled=len(x))
                checkpoint()

    run_benchmark(args, SECTION, write_report, run)


if __name__ == "__main__":
    main()
