"""Issue 19: `fit_progressive` (freeze each bottom layer when it settles) against plain
SGD and a FreezeOut-style fixed schedule, on Fashion-MNIST.

Model: the benchmark CNN (`keras_classpca.demo.benchmark_cnn`: Conv(32,5) - MaxPool -
Conv(64,5) - MaxPool - Flatten - Dense(128) - Dense(10)), Adam (lr 1e-3), batch 128,
`--epochs` epochs (default 8), on a random `--fractions` subset of the 60,000
training images (drawn per seed), evaluated on the 10,000 test images.

Contenders, all from the same initial weights within a seed, interleaved (order
rotated per seed) because the machine is shared:

- `sgd`: `model.fit`;
- `freezeout`: `fit_progressive(settle="freezeout")` — layer i frozen after a fraction
  t_i = 0.5 + 0.5 i / (L - 1) of the epochs (Brock et al. 2017, linear schedule);
- `progressive`: `fit_progressive(settle="auto")` — frozen when its leading filter
  subspace moved by less than 0.01 (1 - overlap) over the last epoch;
- `progressive+cache`: the same with `cache="auto"`: once nothing more can freeze, the
  remaining epochs go to `fit_top`, which trains the rest on the frozen prefix's
  output computed once (if its timing says so);
- `progressive+snap`: `snap=True` (at `--snap-fractions` only, default 0.2).

Wall time is that of the whole training call (checks, recompiles and snaps included).
Every run is appended to a JSON-lines file and the docs section is rewritten after
each run, so a partial run still yields a section.

    python -m benchmarks.bench_progressive --quick      # 20 %, 1 seed, 3 epochs
    python -m benchmarks.bench_progressive              # 20 % and 100 %, 3 seeds, 8 epochs
    python -m benchmarks.bench_progressive --report-only
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._report import (  # noqa: E402
    add_report_options,
    append_record,
    load_records,
    machine_line,
    markdown_table,
    report_arguments,
    write_section,
)
from keras_classpca.datasets import load_dataset  # noqa: E402
from keras_classpca.demo import benchmark_cnn  # noqa: E402
from keras_classpca.hybrid.progressive import SettleOnChange, fit_progressive  # noqa: E402

SECTION = "bench_progressive"
BATCH = 128
DEFAULT_RESULTS = "/tmp/bench_progressive.jsonl"
CONTENDERS = ("sgd", "freezeout", "progressive", "progressive+cache", "progressive+snap")
ACCURACY_TARGET_PP = 0.3
TIME_TARGET = 0.8


def subset(x, y, fraction, seed):
    if fraction >= 1.0:
        return x, y
    n = int(round(fraction * len(x)))
    keep = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[keep], y[keep]


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self.start, 2))


def run_one(name, initial_weights, data, test, epochs, criterion=None):
    x, y = data
    model = benchmark_cnn(x.shape[1:], 10)
    model.set_weights(initial_weights)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    if name == "sgd":
        timer = EpochTimer()
        history = model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=[timer])
        report = None
    else:
        settle = "freezeout" if name == "freezeout" else (criterion or "auto")
        history = fit_progressive(model, x, y, epochs=epochs, settle=settle,
                                  snap=name.endswith("+snap"),
                                  cache="auto" if name.endswith("+cache") else False,
                                  batch_size=BATCH, verbose=0)
        report = history.progressive
        record_criterion = report.criterion
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(*test, batch_size=512, verbose=0)
    record = {
        "contender": name,
        "test_accuracy": float(accuracy),
        "seconds": seconds,
        "train_loss": float(history.history["loss"][-1]),
    }
    if report is None:
        record["epoch_seconds"] = timer.seconds
    else:
        record.update(
            criterion=record_criterion,
            frozen_at=report.frozen_at,
            epoch_seconds=[round(s, 2) for s in report.epoch_seconds],
            check_seconds=round(sum(report.check_seconds), 2),
            changes={k: [None if c is None else round(c, 5) for c in v]
                     for k, v in report.changes.items()},
            snapped=report.snapped,
            cached=report.cached,
        )
    return record


def summarize(records):
    """Per (fraction, contender): medians over seeds of Δaccuracy vs SGD and time ratio."""
    rows, headline = [], []
    fractions = sorted({r["fraction"] for r in records})
    for fraction in fractions:
        group = [r for r in records if r["fraction"] == fraction]
        sgd = {r["seed"]: r for r in group if r["contender"] == "sgd"}
        freezeout = {r["seed"]: r for r in group if r["contender"] == "freezeout"}
        for name in CONTENDERS:
            runs = [r for r in group if r["contender"] == name and r["seed"] in sgd]
            if not runs:
                continue
            d_acc = [100 * (r["test_accuracy"] - sgd[r["seed"]]["test_accuracy"]) for r in runs]
            ratio = [r["seconds"] / sgd[r["seed"]]["seconds"] for r in runs]
            frozen = ""
            if "frozen_at" in runs[0]:
                frozen = " / ".join(
                    ",".join("–" if r["frozen_at"][k] is None else str(r["frozen_at"][k])
                             for k in r["frozen_at"])
                    for r in runs
                )
            vs_fo = ""
            paired = [r for r in runs if r["seed"] in freezeout]
            if name.startswith("progressive") and paired:
                time_fo = statistics.median(
                    r["seconds"] / freezeout[r["seed"]]["seconds"] for r in paired)
                acc_fo = statistics.median(
                    100 * (r["test_accuracy"] - freezeout[r["seed"]]["test_accuracy"])
                    for r in paired)
                vs_fo = f"{time_fo:.2f}× / {acc_fo:+.2f}"
            late = [
                sum(r["epoch_seconds"][-3:]) / sum(sgd[r["seed"]]["epoch_seconds"][-3:])
                for r in runs
                if r.get("epoch_seconds") and sgd[r["seed"]].get("epoch_seconds")
            ]
            late = f"{statistics.median(late):.2f}×" if late else ""
            rows.append([
                f"{fraction:g}", runs[0]["n_train"], name, len(runs),
                f"{statistics.median(r['test_accuracy'] for r in runs):.4f}",
                f"{statistics.median(d_acc):+.2f}", f"{statistics.median(ratio):.2f}×",
                f"{statistics.median(r['seconds'] for r in runs):.0f}", late, vs_fo, frozen,
            ])
            if name.startswith("progressive"):
                met_acc = statistics.median(d_acc) >= -ACCURACY_TARGET_PP
                met_time = statistics.median(ratio) <= TIME_TARGET
                headline.append(
                    f"- {fraction:g} of the data, `{name}`: {statistics.median(d_acc):+.2f} pp "
                    f"vs SGD (target ≥ −{ACCURACY_TARGET_PP} pp: "
                    f"{'met' if met_acc else 'missed'}), "
                    f"{statistics.median(ratio):.2f}× SGD's wall time (target ≤ {TIME_TARGET}×: "
                    f"{'met' if met_time else 'missed'}); {len(runs)} seed(s)."
                )
    table = markdown_table(
        ["fraction", "n_train", "contender", "seeds", "test acc (median)", "Δ acc vs SGD (pp)",
         "time vs SGD", "seconds", "last 3 epochs' time vs SGD", "vs FreezeOut: time / Δ acc (pp)",
         "frozen after epoch (conv1,conv2,dense128; per seed)"],
        rows,
    )
    return table, headline


def write_report(records, args, as_run, paragraph):
    if not records:
        print("no records yet")
        return
    table, headline = summarize(records)
    epochs = sorted({r["epochs"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    criteria = " / ".join(sorted({r["criterion"] for r in records if "criterion" in r
                                  and r["contender"] != "freezeout"})) or "'auto'"
    body = "\n".join([
        "## fit_progressive: freeze each layer when it settles (issue 19)",
        "",
        f"Benchmark CNN on Fashion-MNIST, Adam 1e-3, batch 128, {epochs} epoch(s), seeds "
        f"{seeds}; contenders interleaved within a seed from the same initial weights; "
        "wall time of the whole training call (checks, recompiles, snaps included); "
        "medians over seeds of per-seed differences and ratios against SGD. "
        "`freezeout`: fixed schedule t_i = 0.5 + 0.5·i/(L−1); `progressive`: "
        f"`settle={criteria}`; `+cache`: the same with `cache=\"auto\"` (the epochs "
        "after the last possible freeze trained on the frozen prefix's output, computed "
        "once, by `fit_top`); `+snap`: with `snap=True`. "
        "`–` = trained to the end.",
        "",
        table,
        "",
        "Against the targets (within 0.3 pp of SGD in ≤ 0.8× its time):",
        "",
        *headline,
        "",
        f"Machine: {machine_line()} (shared with other jobs: wall times are noisy).",
        f"As run: `{as_run}`.",
        "",
        paragraph,
    ])
    write_section(SECTION, body, print_only=args.no_write)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 20 %% of the data, 1 seed, 3 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=CONTENDERS)
    parser.add_argument("--snap-fractions", type=float, nargs="*", default=[0.2],
                        help="fractions the progressive+snap contender runs at")
    parser.add_argument("--measure", choices=("output", "subspace"), default=None,
                        help="criterion of the progressive contenders (default: settle='auto')")
    parser.add_argument("--threshold", type=float, default=None,
                        help="threshold of that criterion (default: its default)")
    add_report_options(parser, results=DEFAULT_RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.fractions, args.epochs = args.seeds[:1], [0.2], 3
    paragraph, as_run = report_arguments(args, "bench_progressive.py")
    if args.fresh and Path(args.results).exists():
        Path(args.results).unlink()
    if args.report_only:
        write_report(load_records(args.results), args, as_run, paragraph)
        return
    criterion = None
    if args.measure or args.threshold:
        criterion = SettleOnChange(args.threshold, measure=args.measure or "output")
    (x_train, y_train), test = load_dataset("fashion_mnist")
    done = {(r["seed"], r["fraction"], r["contender"], r["epochs"])
            for r in load_records(args.results)}
    for fraction in args.fractions:  # all seeds of the small fraction first: a partial
        for seed in args.seeds:      # run still has complete medians for it
            data = subset(x_train, y_train, fraction, seed)
            keras.utils.set_random_seed(seed)
            initial = benchmark_cnn(x_train.shape[1:], 10).get_weights()
            order = [name for name in args.contenders
                     if not name.endswith("+snap") or fraction in args.snap_fractions]
            shift = seed % len(order)
            for name in order[shift:] + order[:shift]:
                if (seed, fraction, name, args.epochs) in done:
                    continue
                keras.utils.set_random_seed(seed)
                record = run_one(name, initial, data, test, args.epochs, criterion)
                record.update(seed=seed, fraction=fraction, epochs=args.epochs,
                              n_train=len(data[0]), backend=keras.backend.backend())
                append_record(args.results, record)
                write_report(load_records(args.results), args, as_run, paragraph)


if __name__ == "__main__":
    main()
