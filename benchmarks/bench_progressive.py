"""`fit_progressive` (freeze each bottom layer when it settles) against plain
SGD and a FreezeOut-style fixed schedule, on Fashion-MNIST.

Model (`--model`): the benchmark CNN (`keras_classpca.demo.benchmark_cnn`: Conv(32,5) -
MaxPool - Conv(64,5) - MaxPool - Flatten - Dense(128) - Dense(10)), or issue #15's
residual CNN (`benchmarks.grid_models`, "resnet_3x2": Conv-BN-ReLU stem, 3 stages × 2
basic blocks, GAP; its section is `bench_progressive_resnet_3x2`); Adam (lr 1e-3), batch 128,
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
- `progressive+snap`: `snap=True` (at `--snap-fractions` only, default 0.2);
- `hybrid+progressive`: the default `hybridize(model, (x, y))` first (its solve and
  decision inside the timed call), then `fit_progressive(settle="auto", cache="auto")`:
  the layers the solve kept stay frozen, the rest may freeze when they settle.

Wall time is that of the whole training call (checks, recompiles and snaps included).
Every run is appended to a JSON-lines file and the docs section is rewritten after
each run, so a partial run still yields a section.

    python -m benchmarks.bench_progressive --quick      # 20 %, 1 seed, 3 epochs
    python -m benchmarks.bench_progressive --model resnet_3x2 --fractions 0.2
    python -m benchmarks.bench_progressive              # 20 % and 100 %, 3 seeds, 8 epochs
    python -m benchmarks.bench_progressive --report-only
    ... --measure output --threshold 0.002   # the progressive contenders' criterion
"""

import argparse
import statistics
import time

import keras

from benchmarks import grid_models
from benchmarks._report import (
    add_report_options,
    default_results,
    load_records,
    machine_line,
    markdown_table,
    met,
    write_section,
)
from benchmarks.common import BATCH, fmt, rotated, run_benchmark, save_run, subset
from keras_classpca import hybridize
from keras_classpca.datasets import load_dataset
from keras_classpca.demo import benchmark_cnn
from keras_classpca.hybrid.progressive import FreezeOut, SettleOnChange, fit_progressive

SECTION = "bench_progressive"
MODELS = {
    "cnn": ("benchmark CNN", lambda: benchmark_cnn((28, 28, 1), 10)),
    "resnet_3x2": ("residual CNN", lambda: grid_models.build("resnet_3x2")),
}
HYBRID_FIRST = "hybrid+progressive"  # hybridize first, then fit_progressive
CONTENDERS = ("sgd", "freezeout", "progressive", "progressive+cache", "progressive+snap",
              HYBRID_FIRST)
ACCURACY_TARGET_PP = 0.3
TARGET_FRACTIONS = (0.2, 1.0)
TARGET_SEEDS = 3  # a cell with fewer seeds is reported but cannot meet a target
TIME_TARGET = 0.8


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self.start, 2))


def section(model_kind):
    return SECTION if model_kind == "cnn" else f"{SECTION}_{model_kind}"


def run_one(name, model_kind, initial_weights, data, test, epochs, criterion=None):
    x, y = data
    model = MODELS[model_kind][1]()
    model.set_weights(initial_weights)
    start = time.perf_counter()
    if name == HYBRID_FIRST:
        hybrid = hybridize(model, (x, y))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    if name == "sgd":
        timer = EpochTimer()
        history = model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=[timer])
        report = None
    else:
        settle = "freezeout" if name == "freezeout" else (criterion or "auto")
        history = fit_progressive(model, x, y, epochs=epochs, settle=settle,
                                  snap=name.endswith("+snap"),
                                  cache=("auto" if name.endswith("+cache")
                                         or name == HYBRID_FIRST else False),
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
    if name == HYBRID_FIRST:
        record.update(solved=hybrid.cutoff, solve_seconds=round(hybrid.seconds, 2))
    return record


def _paired(runs, reference):
    """Per-seed (Δ accuracy in pp, time ratio) of `runs` against `reference` {seed: run}."""
    pairs = [(100 * (r["test_accuracy"] - reference[r["seed"]]["test_accuracy"]),
              r["seconds"] / reference[r["seed"]]["seconds"])
             for r in runs if r["seed"] in reference]
    if not pairs:
        return None, None, 0
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            len(pairs))


def summarize(records):
    """The table rows (medians over seeds, paired per seed) and the target statuses."""
    rows, cells = [], {}
    for fraction in sorted({r["fraction"] for r in records}):
        group = [r for r in records if r["fraction"] == fraction]
        by = {name: {r["seed"]: r for r in group if r["contender"] == name}
              for name in CONTENDERS}
        for name in CONTENDERS:
            runs = list(by[name].values())
            if not runs:
                continue
            d_acc, ratio, _ = _paired(runs, by["sgd"])
            late = [sum(r["epoch_seconds"][-3:]) / sum(by["sgd"][r["seed"]]["epoch_seconds"][-3:])
                    for r in runs
                    if r.get("epoch_seconds") and by["sgd"].get(r["seed"], {}).get("epoch_seconds")]
            fo_acc, fo_time, _ = _paired(runs, by["freezeout"])
            frozen = " / ".join(
                ",".join("–" if e is None else str(e) for e in r["frozen_at"].values())
                for r in sorted(runs, key=lambda r: r["seed"])) if "frozen_at" in runs[0] else ""
            rows.append([
                f"{fraction:g}", runs[0]["n_train"], name, len(runs),
                f"{statistics.median(r['test_accuracy'] for r in runs):.4f}",
                fmt(d_acc, "+.2f"), fmt(ratio, ".2f") + "×",
                f"{statistics.median(r['seconds'] for r in runs):.0f}",
                fmt(statistics.median(late) if late else None, ".2f") + "×",
                "" if name in ("sgd", "freezeout") else
                f"{fmt(fo_time, '.2f')}× / {fmt(fo_acc, '+.2f')}",
                frozen,
            ])
            cells[(fraction, name)] = (d_acc, ratio, fo_acc, fo_time, len(runs))
    return rows, cells


def target_statuses(cells, model_kind="cnn"):
    """Rows of the summary table for the two fit_progressive targets of `model_kind`."""
    fractions = sorted({f for f, _ in cells})
    time_parts, schedule_parts, time_ok, schedule_ok = [], [], [], []
    for fraction in fractions:
        for name in ("progressive", "progressive+cache", HYBRID_FIRST):
            if (fraction, name) not in cells:
                continue
            d_acc, ratio, fo_acc, fo_time, seeds = cells[(fraction, name)]
            if d_acc is None:
                continue
            ok = d_acc >= -ACCURACY_TARGET_PP and ratio <= TIME_TARGET and seeds >= TARGET_SEEDS
            time_ok.append((name, fraction, ok))
            time_parts.append(f"{100 * fraction:g} % `{name}`: {d_acc:+.2f} pp at {ratio:.2f}× "
                              f"({seeds} seed{'s' if seeds > 1 else ''})")
            if fo_acc is not None:
                ok = fo_time < 1.0 and fo_acc >= -ACCURACY_TARGET_PP and seeds >= TARGET_SEEDS
                schedule_ok.append((name, fraction, ok))
                schedule_parts.append(f"{100 * fraction:g} % `{name}`: {fo_time:.2f}× FreezeOut's "
                                      f"time, {fo_acc:+.2f} pp")
    def met_by_one(checks):
        """Met when one contender meets it at every target fraction (each measured)."""
        return met(any(
            all(any(m == name and f == fraction and ok for m, f, ok in checks)
                for fraction in TARGET_FRACTIONS)
            for name in {m for m, _, _ in checks}))

    targets = {}
    unmeasured = [f for f in TARGET_FRACTIONS if f not in fractions]
    if time_parts:
        targets["progressive_time"] = (
            f"{MODELS[model_kind][0]}: " + "; ".join(time_parts)
            + "".join(f"; {100 * f:g} % not measured" for f in unmeasured),
            met_by_one(time_ok))
    if schedule_parts:
        targets["progressive_schedule"] = ("; ".join(schedule_parts), met_by_one(schedule_ok))
    if model_kind != "cnn":
        targets = {f"{key}_{model_kind}": value for key, value in targets.items()}
    return targets


def _freezeout_line(records, epochs):
    """What the FreezeOut contender's schedule froze when, from a run's units."""
    units = next((list(r["frozen_at"]) for r in records if r.get("frozen_at")), None)
    if units is None:
        return ""
    names = ", ".join(units) if len(units) <= 4 else f"{units[0]}, …, {units[-1]}"
    return "; ".join(f"{e} epochs: {len(units)} bottom layers ({names}) after epochs "
                     + ", ".join(str(k) for k in FreezeOut(0.5).freeze_epochs(len(units), e)
                                 if k)
                     for e in epochs)


def write_report(records, command, paragraph, print_only=False):
    kinds = {r.get("model", "cnn") for r in records}
    if len(kinds) != 1:
        raise ValueError(f"one model per results file; found {sorted(kinds)}")
    model_kind = kinds.pop()
    rows, cells = summarize(records)
    targets = target_statuses(cells, model_kind)
    epochs = sorted({r["epochs"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    criteria = " / ".join(sorted({r["criterion"] for r in records if "criterion" in r
                                  and r["contender"] != "freezeout"})) or "'auto'"
    table = markdown_table(
        ["fraction", "n_train", "contender", "seeds", "test acc (median)", "Δ acc vs SGD (pp)",
         "time vs SGD", "seconds", "last 3 epochs' time vs SGD",
         "vs FreezeOut: time / Δ acc (pp)", "frozen after epoch (bottom layer by layer), per seed"],
        rows,
    )
    body = "\n".join([
        "## fit_progressive: freeze each layer when it settles"
        + ("" if model_kind == "cnn" else f" — {MODELS[model_kind][0]}"),
        "",
        f"{MODELS[model_kind][0][0].upper()}{MODELS[model_kind][0][1:]} on Fashion-MNIST, "
        f"Adam 1e-3, batch {BATCH}, "
        f"{', '.join(map(str, epochs))} epochs, seeds {', '.join(map(str, seeds))}; "
        "contenders interleaved within a seed (order rotated per seed) from the same "
        "initial weights; wall time of the whole training call (checks, recompiles, snaps "
        "and caching included); medians over seeds of per-seed differences and ratios. "
        "`freezeout`: fixed schedule t_i = 0.5 + 0.5·i/(L−1) ("
        + _freezeout_line(records, epochs)
        + "); `progressive`: "
        f"`settle={criteria}`; `+cache`: the same with `cache=\"auto\"` (the epochs "
        "after the last possible freeze trained on the frozen prefix's output, computed "
        "once, by `fit_top`); `+snap`: with `snap=True`. `–` = trained to the end.",
        "",
        table,
        "",
        "Targets (within 0.3 pp of SGD's test accuracy in ≤ 0.8× its wall time; beat the "
        "fixed schedule on time at equal accuracy, i.e. within 0.3 pp of it):",
        "",
        *[f"- `{key}`: {measured} → **{status}**" for key, (measured, status) in targets.items()],
        "",
        f"Machine: {machine_line()} (shared with other jobs: wall times are noisy).",
        f"As run: `{command}`.",
        "",
        paragraph,
    ])
    write_section(section(model_kind), body, print_only=print_only, targets=targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 20 %% of the data, 1 seed, 3 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn",
                        help="the model trained (each has its own section and results)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=CONTENDERS)
    parser.add_argument("--snap-fractions", type=float, nargs="*", default=[0.2],
                        help="fractions the progressive+snap contender runs at")
    parser.add_argument("--measure", choices=("output", "subspace"), default=None,
                        help="criterion of the progressive contenders (default: settle='auto')")
    parser.add_argument("--threshold", type=float, default=None,
                        help="threshold of that criterion (default: its default)")
    add_report_options(parser, "")  # default: the model's own results file
    args = parser.parse_args()
    args.results = args.results or default_results(section(args.model))
    if args.quick:
        args.seeds, args.fractions, args.epochs = args.seeds[:1], [0.2], 3
    criterion = None
    if args.measure or args.threshold:
        criterion = SettleOnChange(args.threshold, measure=args.measure or "subspace")

    def run(checkpoint):
        (x_train, y_train), test = load_dataset("fashion_mnist")
        done = {(r["seed"], r["fraction"], r["contender"], r["epochs"])
                for r in load_records(args.results)}
        for fraction in args.fractions:  # every seed of the small fraction first: a
            for seed in args.seeds:      # partial run still has its medians
                data = subset(x_train, y_train, fraction, seed)
                keras.utils.set_random_seed(seed)
                initial = MODELS[args.model][1]().get_weights()
                names = [n for n in args.contenders
                         if not n.endswith("+snap") or fraction in args.snap_fractions]
                for name in rotated(names, seed):
                    if (seed, fraction, name, args.epochs) in done:
                        continue
                    keras.utils.set_random_seed(seed)
                    record = run_one(name, args.model, initial, data, test, args.epochs,
                                     criterion)
                    save_run(args.results, record, model=args.model, seed=seed, fraction=fraction,
                             epochs=args.epochs, n_train=len(data[0]),
                             backend=keras.backend.backend())
                    checkpoint()

    run_benchmark(args, SECTION, write_report, run)


if __name__ == "__main__":
    main()
