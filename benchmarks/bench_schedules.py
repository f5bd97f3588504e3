"""Fixed freezing schedules with the prefix cache, against SGD: what any settling
criterion of `fit_progressive` could reach on the benchmark CNN.

A criterion only chooses *when* each bottom layer freezes. This benchmark tries the
choices directly: `fit_progressive(settle=[e1, e2], cache="auto")` — conv1 frozen after
epoch e1, conv2 after e2, Dense 128 trained to the end, the epochs after the last
freeze trained on the cached prefix output — for every schedule given, next to SGD
(`model.fit`), from the same initial weights and subset per seed (the recipe of
`bench_progressive`: Adam 1e-3, batch 128, `--epochs` epochs, contenders rotated per
seed). If no schedule is within 0.3 pp of SGD at ≤ 0.8× its time, no criterion is.

    python -m benchmarks.bench_schedules                       # 20 %, 3 seeds
    python -m benchmarks.bench_schedules --schedules 4,5 6,6 --fraction 1.0
    python -m benchmarks.bench_schedules --report-only

Writes the `bench_schedules` section of docs/benchmarks.md (no summary row: it bounds
the `fit_progressive` targets, which `bench_progressive` measures).
"""

import argparse
import statistics

import keras

from benchmarks._report import (
    add_report_options,
    default_results,
    machine_line,
    markdown_table,
    write_section,
)
from benchmarks.bench_progressive import MODELS, run_one
from benchmarks.common import BATCH, rotated, run_benchmark, save_run, subset
from keras_classpca.datasets import load_dataset

SECTION = "bench_schedules"
SCHEDULES = ("4,5", "3,4", "3,5", "2,4", "4,4", "2,5")  # 4,5 = FreezeOut's at 8 epochs
ACCURACY_PP, TIME_RATIO = 0.3, 0.8  # the fit_progressive target (issue #19)


def run(args, checkpoint):
    (x_train, y_train), test = load_dataset("fashion_mnist")
    for seed in args.seeds:
        data = subset(x_train, y_train, args.fraction, seed)
        keras.utils.set_random_seed(seed)
        initial = MODELS["cnn"][1]().get_weights()
        for name in rotated(["sgd", *args.schedules], seed):
            keras.utils.set_random_seed(seed)
            if name == "sgd":
                record = run_one("sgd", "cnn", initial, data, test, args.epochs)
            else:
                schedule = [int(epoch) for epoch in name.split(",")]
                record = run_one("progressive+cache", "cnn", initial, data, test,
                                 args.epochs, criterion=schedule)
            save_run(args.results, record, name=name, seed=seed, fraction=args.fraction,
                     epochs=args.epochs, n_train=len(data[0]))
        checkpoint()


def write_report(records, command, paragraph, print_only=False):
    rows = []
    for fraction in sorted({r["fraction"] for r in records}):
        group = [r for r in records if r["fraction"] == fraction]
        sgd = {r["seed"]: r for r in group if r["name"] == "sgd"}
        names = ["sgd"] + sorted({r["name"] for r in group} - {"sgd"},
                                 key=lambda n: [int(e) for e in n.split(",")])
        for name in names:
            runs = [r for r in group if r["name"] == name and r["seed"] in sgd]
            if not runs:
                continue
            d_acc = [100 * (r["test_accuracy"] - sgd[r["seed"]]["test_accuracy"]) for r in runs]
            ratio = [r["seconds"] / sgd[r["seed"]]["seconds"] for r in runs]
            meets = (statistics.median(d_acc) >= -ACCURACY_PP
                     and statistics.median(ratio) <= TIME_RATIO)
            rows.append([
                f"{fraction:g}", runs[0]["n_train"],
                "SGD" if name == "sgd" else f"conv1 after {name.split(',')[0]}, "
                f"conv2 after {name.split(',')[1]}",
                len(runs), f"{statistics.median(r['test_accuracy'] for r in runs):.4f}",
                f"{statistics.median(d_acc):+.2f}",
                " / ".join(f"{d:+.2f}" for d in d_acc),
                f"{statistics.median(ratio):.2f}×",
                " / ".join(f"{t:.2f}" for t in ratio),
                "" if name == "sgd" else ("yes" if meets else "no"),
            ])
    epochs = sorted({r["epochs"] for r in records})
    body = "\n".join([
        "## Fixed freezing schedules with the cache (`bench_schedules`)",
        "",
        f"{machine_line()}",
        "",
        f"Command: `{command}`. Benchmark CNN on Fashion-MNIST, Adam 1e-3, batch {BATCH}, "
        f"{', '.join(map(str, epochs))} epochs; each schedule is "
        "`fit_progressive(settle=[e1, e2], cache=\"auto\")` (Dense 128 trains to the end; "
        "the epochs after conv2 froze train on the cached prefix output), SGD is "
        "`model.fit`, both from the same initial weights and subset per seed; Δ and time "
        "ratios are per-seed against that seed's SGD run (seeds in order), medians. "
        f"\"Meets\": within {ACCURACY_PP} pp of SGD at ≤ {TIME_RATIO}× its time (the "
        "`fit_progressive` target of issue #19), which no settling criterion can reach "
        "on this cell if no schedule does.",
        "",
        markdown_table(["fraction", "n_train", "schedule", "seeds", "test acc",
                        "Δ SGD (pp)", "per seed", "time / SGD", "per seed", "meets"], rows),
        "",
        paragraph.strip(),
    ])
    write_section(SECTION, body, print_only=print_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES),
                        help="e1,e2: conv1 frozen after epoch e1, conv2 after e2")
    add_report_options(parser, default_results(SECTION))
    args = parser.parse_args()
    run_benchmark(args, SECTION, write_report, lambda checkpoint: run(args, checkpoint))


if __name__ == "__main__":
    main()
