"""Issue 4: the paper's claim on real data — hybrid (class-PCA bottom + trained top)
vs full SGD on Fashion-MNIST, at 100 %, 10 % and 1 % of the training data.

Models (both: Adam, batch 128, `--epochs` epochs, default 3):

- CNN: Conv2D(32,5,relu) - MaxPool - Conv2D(64,5,relu) - MaxPool - Flatten -
  Dense(128,relu) - Dense(10,softmax)
- MLP: Flatten - Dense(256,relu) - Dense(128,relu) - Dense(10,softmax)

Contenders per model, data fraction and seed: full SGD; hybrid with cutoff 1, 2 and
"auto". The solve sees at most the data the SGD run gets: `samples=min(6000, n_train)`
(6,000 of 60,000 at 100 %, all of it at 10 % and 1 %). The training subset of a
fraction is a random subset drawn per seed; every contender of that seed uses it.

For cutoff 1 and 2 the top is trained twice from the same solved weights and the same
initial top: `fit_top(cache=True)` and `fit_top(cache=False)` (a plain `model.fit`);
the decision `cache="auto"` would take is computed with fit_top's own rule
(`predict_cache_speedup(...) < CACHE_IF_BELOW`, timed on the same batch it would use),
and the headline wall time and accuracy of the hybrid are those of the fit auto would
have chosen plus the time of that decision. Cutoff "auto" is run with
`fit_top(cache="auto")` itself.

Contenders are interleaved within a seed (order rotated per seed) because the machine
is shared. Every finished run is appended to a JSON-lines file, and the report section
is rewritten after every seed, so a partial run still leaves its numbers.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_hybrid.py            # full
    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/bench_hybrid.py --quick    # smoke
    ... --seeds 0 1 2 --fractions 0.01 0.1 1.0 --models cnn mlp
    ... --report-only --results /tmp/bench_hybrid.jsonl   # rebuild the doc section
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _report import (  # noqa: E402
    add_report_options,
    append_record,
    load_records,
    machine_line,
    markdown_table,
    report_arguments,
    write_section,
)

from keras_classpca.core.data_adapter import iter_batches  # noqa: E402
from keras_classpca.datasets import load_dataset  # noqa: E402
from keras_classpca.hybrid.builder import hybridize  # noqa: E402
from keras_classpca.hybrid.training import fit_top  # noqa: E402

# `keras_classpca.hybrid.training` the attribute is the function; the module is in sys.modules.
fit_top_module = sys.modules["keras_classpca.hybrid.training"]

SECTION = "bench_hybrid"
BATCH = 128
SOLVE_MAX_SAMPLES = 6000
DEFAULT_RESULTS = "/tmp/bench_hybrid.jsonl"


def build(kind):
    layers = keras.layers
    if kind == "cnn":
        body = [
            layers.Conv2D(32, 5, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 5, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
        ]
    else:
        body = [
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(128, activation="relu"),
        ]
    return keras.Sequential(
        [keras.Input((28, 28, 1))] + body + [layers.Dense(10, activation="softmax")]
    )


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def evaluate(model, x_test, y_test):
    return float(model.evaluate(x_test, y_test, batch_size=1024, verbose=0)[1])


def run_sgd(kind, seed, x, y, x_test, y_test, epochs):
    keras.utils.set_random_seed(seed)
    model = build(kind)
    start = time.perf_counter()
    compile_model(model)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    fit_s = time.perf_counter() - start
    return dict(contender="sgd", acc=evaluate(model, x_test, y_test), solve_s=0.0,
                fit_s=fit_s, wall_s=fit_s)


def auto_decision(model, x, y, epochs):
    """What fit_top(cache="auto") would decide for this compiled model, and its cost."""
    start = time.perf_counter()
    point = fit_top_module.cache_point(model)
    if point is None:
        return False, None, time.perf_counter() - start
    prefix = keras.Model(model.inputs[0], point)
    x_batch, _ = next(iter_batches(x, y, batch_size=BATCH, steps=1))
    ratio = fit_top_module.predict_cache_speedup(model, prefix, x_batch, epochs)
    return bool(ratio < fit_top_module.CACHE_IF_BELOW), float(ratio), time.perf_counter() - start


def run_hybrid(kind, cutoff, seed, x, y, x_test, y_test, epochs, solve_samples, order_flip,
               options=None, patches_per_image=None):
    options = options or {}
    keras.utils.set_random_seed(seed)
    model = build(kind)
    start = time.perf_counter()
    report = hybridize(model, (x, y), cutoff=cutoff, samples=solve_samples, verbose=0,
                       seed=seed, patches_per_image=patches_per_image, **options)
    solve_s = time.perf_counter() - start
    record = dict(
        contender=f"hybrid c{cutoff}",
        cutoff_used=report.cutoff,
        solve_s=solve_s,
        solve_samples=report.layers[0].samples if report.layers else 0,
        probe=(report.evidence or {}).get("probe_accuracy"),
    )
    if cutoff == "auto":
        start = time.perf_counter()
        compile_model(model)
        history = fit_top(model, x, y, batch_size=BATCH, epochs=epochs, cache="auto", verbose=0)
        fit_s = time.perf_counter() - start
        record.update(acc=evaluate(model, x_test, y_test), fit_s=fit_s,
                      wall_s=solve_s + fit_s, cache_auto=bool(history.cache_used))
        return record

    # Same solved bottom and same initial top for both fits.
    weights = model.get_weights()
    # Layer names differ between builds: remember the frozen layers by position.
    frozen = [i for i, layer in enumerate(model.layers) if layer.name in report.frozen]
    fits = {}
    modes = [True, False] if not order_flip else [False, True]
    decision = None
    for mode in modes:
        if mode == modes[0]:
            twin = model
        else:
            keras.utils.set_random_seed(seed)
            twin = build(kind)
            twin.set_weights(weights)
            for i in frozen:
                twin.layers[i].trainable = False
        start = time.perf_counter()
        compile_model(twin)
        history = fit_top(twin, x, y, batch_size=BATCH, epochs=epochs, cache=mode, verbose=0)
        fit_s = time.perf_counter() - start
        assert history.cache_used == mode
        fits[mode] = dict(fit_s=fit_s, acc=evaluate(twin, x_test, y_test))
        if decision is None:
            # The rule fit_top(cache="auto") applies, on a fresh compiled twin.
            keras.utils.set_random_seed(seed)
            probe_model = build(kind)
            probe_model.set_weights(weights)
            for i in frozen:
                probe_model.layers[i].trainable = False
            compile_model(probe_model)
            decision = auto_decision(probe_model, x, y, epochs)
    chosen, predicted, decision_s = decision
    pick = fits[chosen]
    record.update(
        acc=pick["acc"],
        fit_s=pick["fit_s"] + decision_s,
        wall_s=solve_s + pick["fit_s"] + decision_s,
        cache_auto=chosen,
        cache_predicted_ratio=predicted,
        decision_s=decision_s,
        fit_cache_s=fits[True]["fit_s"],
        fit_plain_s=fits[False]["fit_s"],
        acc_cache=fits[True]["acc"],
        acc_plain=fits[False]["acc"],
    )
    return record


def subset(x, y, fraction, seed):
    if fraction >= 1.0:
        return x, y
    n = int(round(fraction * len(x)))
    keep = np.sort(np.random.default_rng(1000 + seed).choice(len(x), n, replace=False))
    return x[keep], y[keep]


# ---------------------------------------------------------------------- report
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def build_report(records, args_line):
    contenders = ["sgd", "hybrid c1", "hybrid c2", "hybrid cauto"]
    keys = sorted({(r["model"], r["fraction"]) for r in records},
                  key=lambda k: (k[0], -k[1]))
    rows, cache_rows = [], []
    summary = {}
    for model, fraction in keys:
        group = [r for r in records if r["model"] == model and r["fraction"] == fraction]
        sgd = {r["seed"]: r for r in group if r["contender"] == "sgd"}
        for name in contenders:
            runs = [r for r in group if r["contender"] == name]
            if not runs:
                continue
            d_acc = [100 * (r["acc"] - sgd[r["seed"]]["acc"]) for r in runs if r["seed"] in sgd]
            ratio = [r["wall_s"] / sgd[r["seed"]]["wall_s"] for r in runs if r["seed"] in sgd]
            extra = ""
            if name == "hybrid cauto":
                used = sorted({r["cutoff_used"] for r in runs})
                extra = "cutoff " + "/".join(str(u) for u in used)
            if name != "sgd":
                choices = [r.get("cache_auto") for r in runs]
                extra = (extra + "; " if extra else "") + "cache " + "/".join(
                    sorted({"on" if c else "off" for c in choices}))
            summary[(model, fraction, name)] = (med(d_acc), med(ratio))
            rows.append([
                model.upper(), f"{fraction:g}", runs[0]["n_train"],
                "–" if name == "sgd" else runs[0]["solve_samples"],
                name.replace("cauto", "auto"), len(runs),
                fmt(med([r["acc"] for r in runs]), ".4f"),
                "–" if name == "sgd" else fmt(med(d_acc), "+.2f"),
                fmt(med([r["wall_s"] for r in runs]), ".1f"),
                "–" if name == "sgd" else fmt(med([r["solve_s"] for r in runs]), ".1f"),
                "–" if name == "sgd" else fmt(med(ratio), ".2f") + "×",
                extra,
            ])
            if name in ("hybrid c1", "hybrid c2"):
                plain = [r["fit_plain_s"] for r in runs]
                cached = [r["fit_cache_s"] for r in runs]
                wins = sum(c < p for c, p in zip(cached, plain))
                cache_rows.append([
                    model.upper(), f"{fraction:g}", name.split()[1].replace("c", ""),
                    fmt(med(plain), ".1f"), fmt(med(cached), ".1f"),
                    fmt(med([c / p for c, p in zip(cached, plain)]), ".2f") + "×",
                    f"{wins}/{len(runs)}",
                    fmt(med([r["cache_predicted_ratio"] for r in runs]), ".2f"),
                    "/".join(sorted({"on" if r["cache_auto"] else "off" for r in runs})),
                    fmt(med([100 * (r["acc_cache"] - r["acc_plain"]) for r in runs]), "+.2f"),
                ])
    table = markdown_table(
        ["model", "fraction", "n_train", "solve samples", "contender", "seeds",
         "test acc (median)", "Δ acc vs SGD (pp)", "wall s (solve+fit)", "solve s",
         "time vs SGD", "auto chose"],
        rows,
    )
    cache_table = markdown_table(
        ["model", "fraction", "cutoff", "fit s, cache=False", "fit s, cache=True",
         "cached / plain", "cache faster (seeds)", "auto's predicted ratio", "auto chose",
         "Δ acc cached−plain (pp)"],
        cache_rows,
    )
    return table, cache_table, summary


def target_lines(summary):
    lines = []
    for model in ("cnn", "mlp"):
        s = summary.get((model, 1.0, "hybrid c1"))
        if s and s[0] is not None:
            ok_acc, ok_time = s[0] >= -0.3, s[1] <= 0.6
            lines.append(
                f"- {model.upper()}, 100 % data, cutoff 1 within 0.3 pp of SGD at ≤ 0.6× its "
                f"wall time: Δ acc {s[0]:+.2f} pp ({'met' if ok_acc else 'missed by %.2f pp' % (-0.3 - s[0])}), "
                f"time {s[1]:.2f}× ({'met' if ok_time else 'missed by %.2f×' % (s[1] - 0.6)}) → "
                f"**{'met' if ok_acc and ok_time else 'missed'}**."
            )
        parts = []
        for name in ("hybrid c1", "hybrid c2", "hybrid cauto"):
            s = summary.get((model, 0.01, name))
            if s and s[0] is not None:
                parts.append(f"{name.replace('hybrid c', 'cutoff ')} {s[0]:+.2f} pp")
        if parts:
            better = [p for p in parts if not p.split()[-2].startswith("-")]
            lines.append(
                f"- {model.upper()}, 1 % data, hybrid better than SGD: " + ", ".join(parts)
                + f" → **{'met' if better else 'missed'}**"
                + (f" ({len(better)}/{len(parts)} cutoffs)." if parts else ".")
            )
    return lines


def write_report(records, args_line, paragraph, print_only=False):
    table, cache_table, summary = build_report(records, args_line)
    seeds = sorted({r["seed"] for r in records})
    body = "\n".join([
        "## Hybrid vs SGD on Fashion-MNIST (`benchmarks/bench_hybrid.py`)",
        "",
        machine_line(),
        "",
        f"Run: `{args_line}`; seeds finished: {seeds}; "
        f"{'/'.join(str(e) for e in sorted({r['epochs'] for r in records}))} epochs, Adam, "
        "batch 128. Medians over seeds; Δ and time ratios "
        "are medians of per-seed paired values (each seed's SGD run is the reference). "
        "Test accuracy on the full 10,000-image test set. Wall time = `hybridize` + compile + "
        "fit (for cutoff 1/2: the fit `cache=\"auto\"` would pick, plus the cost of that "
        "decision); SGD = compile + fit. Evaluation is not timed. The solve uses "
        f"`samples=min({SOLVE_MAX_SAMPLES}, n_train)`: 6,000 of the 60,000 images at 100 %, "
        "all of the subset at 10 % and 1 %.",
        "",
        table,
        "",
        "Training the top with the frozen prefix's output cached (`fit_top(cache=True)`) vs a "
        "plain `model.fit` (`cache=False`), same solved weights and initial top:",
        "",
        cache_table,
        "",
        "Targets:",
        "",
        *target_lines(summary),
        "",
        paragraph.strip(),
    ])
    write_section(SECTION, body, print_only=print_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 1 seed, 1 fraction (0.1), 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--epochs", type=int, default=3)
    add_report_options(parser, DEFAULT_RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.fractions, args.epochs = args.seeds[:1], [0.1], 1
    paragraph, args_line = report_arguments(args, "bench_hybrid.py")

    if args.report_only:
        write_report(load_records(args.results), args_line, paragraph, print_only=args.no_write)
        return

    if args.fresh and os.path.exists(args.results):
        os.remove(args.results)
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist")
    contenders = ["sgd", 1, 2, "auto"]
    for seed in args.seeds:
        for fraction in args.fractions:
            x, y = subset(x_train, y_train, fraction, seed)
            solve_samples = min(SOLVE_MAX_SAMPLES, len(x))
            for model_kind in args.models:
                shift = seed % len(contenders)
                order = contenders[shift:] + contenders[:shift]
                for contender in order:
                    if contender == "sgd":
                        record = run_sgd(model_kind, seed, x, y, x_test, y_test, args.epochs)
                    else:
                        record = run_hybrid(model_kind, contender, seed, x, y, x_test, y_test,
                                            args.epochs, solve_samples, order_flip=seed % 2 == 1)
                    record.update(model=model_kind, fraction=fraction, seed=seed,
                                  n_train=len(x), epochs=args.epochs,
                                  finished=time.strftime("%H:%M:%S"))
                    append_record(args.results, record)
        if not args.no_write:
            write_report(load_records(args.results), args_line, paragraph)


if __name__ == "__main__":
    main()
