"""The hybrid workflow under each Keras backend (TensorFlow, JAX, PyTorch), side by side.

Per backend and round, one fresh subprocess with `KERAS_BACKEND` set runs the workflow of
`keras_classpca.demo.run_demo` on Fashion-MNIST (`datasets.load_fashion_mnist()`, scaled
to float32 in [0, 1], shape (N, 28, 28, 1)) with the benchmark CNN of
`benchmarks.common`:

- solve: `hybridize(model, (x_solve, y_solve), cutoff=1, verbose=0, seed=round)` on
  `--solve` images (default 6,000, the first of the training subset);
- top fit: `model.compile("adam", "sparse_categorical_crossentropy")` + `fit_top(model,
  x_train, y_train, epochs=--epochs, batch_size=128)` (`cache="auto"`, as the demo) on
  `--train` images (default 12,000, a fixed random subset of the 60,000);
- SGD: a fresh identical CNN (same seed), compiled the same way, trained end to end with
  a plain `model.fit` for the same epochs on the same images (the within-backend
  reference; "SGD" means full backpropagation, with Adam as in the demo);
- test accuracy of both models on the full 10,000-image test set (not timed).

Times are wall times in the worker and include each backend's tracing / JIT
compilation on first use, but not process start-up, imports and data loading. The
hybrid/SGD ratio is (solve + top fit) / SGD fit of the same round. The backends run in
interleaved rounds (tensorflow, jax, torch, tensorflow, jax, torch, ...) because the
machine is shared; the report gives the median and [min–max] over rounds. Thread
counts are left at each library's defaults (TF's, XLA's and PyTorch's own thread
pools, NumPy's BLAS threads for the solve); nothing is pinned.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_backends            # full
    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_backends --quick    # smoke
    ... --rounds 3 --epochs 3 --train 12000 --solve 6000 --backends tensorflow jax torch
    ... --no-write                                    # print the section, leave the doc
    ... --report-only --paragraph @notes.txt          # rebuild the section from --results

Every run (or failure, with the tail of its stderr) is written to `--results` (a
JSON-lines file, emptied at the start of a run) and the `bench_backends` section of
docs/benchmarks.md is rewritten after every round, so a partial run still leaves its
numbers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks._report import (
    ROOT,
    add_report_options,
    default_results,
    machine_line,
    markdown_table,
    write_section,
)
from benchmarks.common import BATCH, run_benchmark, save_run

SECTION = "bench_backends"
BACKENDS = ("tensorflow", "jax", "torch")
LIBRARY_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


# ---------------------------------------------------------------------- worker
def backend_library_version(backend):
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.__version__
    if backend == "jax":
        import jax

        return jax.__version__
    if backend == "torch":
        import torch

        return torch.__version__
    return "n/a"


def worker(args):
    """One backend, one round: runs in a subprocess with KERAS_BACKEND set."""
    import keras
    import numpy as np

    from benchmarks.common import build_model, compile_model, evaluate, run_sgd
    from keras_classpca.datasets import load_fashion_mnist
    from keras_classpca.hybrid.builder import hybridize
    from keras_classpca.hybrid.training import fit_top

    backend = keras.backend.backend()
    if backend != args.worker:
        raise RuntimeError(f"asked for backend {args.worker!r}, Keras runs {backend!r}")
    (x_all, y_all), (x_test, y_test) = load_fashion_mnist()

    def prepare(images):
        return (np.asarray(images, dtype="float32") / 255.0)[..., None]

    # The same subsets in every process: the training subset is a fixed random draw,
    # the solve subset its first `--solve` images.
    keep = np.sort(np.random.default_rng(0).choice(len(x_all), args.train, replace=False))
    x_train, y_train = prepare(x_all[keep]), np.asarray(y_all[keep])
    x_solve, y_solve = x_train[: args.solve], y_train[: args.solve]
    x_test, y_test = prepare(x_test), np.asarray(y_test)
    n_classes = int(max(y_all.max(), y_test.max())) + 1

    keras.utils.set_random_seed(args.seed)
    model = build_model("cnn", x_train.shape[1:], n_classes)
    start = time.perf_counter()
    report = hybridize(model, (x_solve, y_solve), cutoff=1, verbose=0, seed=args.seed,
                       patches_per_image=args.patches_per_image)
    solve_s = time.perf_counter() - start
    start = time.perf_counter()
    compile_model(model)
    history = fit_top(model, x_train, y_train, epochs=args.epochs, batch_size=BATCH, verbose=0)
    top_s = time.perf_counter() - start
    acc_hybrid = evaluate(model, x_test, y_test, batch_size=512)

    sgd = run_sgd("cnn", args.seed, x_train, y_train, x_test, y_test, args.epochs,
                  eval_batch_size=512)
    sgd_s, acc_sgd = sgd["fit_s"], sgd["acc"]

    print(json.dumps(dict(
        backend=backend,
        keras_version=keras.__version__,
        backend_version=backend_library_version(backend),
        solve_s=solve_s,
        top_fit_s=top_s,
        sgd_fit_s=sgd_s,
        ratio=(solve_s + top_s) / sgd_s,
        acc_hybrid=acc_hybrid,
        acc_sgd=acc_sgd,
        cutoff=report.cutoff,
        frozen=list(report.frozen),
        cache_used=bool(history.cache_used),
    )), flush=True)


# ---------------------------------------------------------------------- runner
def _env(backend):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_backend(backend, seed, args):
    """The worker's JSON record, or a record with `error` (stderr tail) if it failed."""
    argv = [sys.executable, "-m", f"benchmarks.{SECTION}", "--worker", backend,
            "--seed", str(seed), "--epochs", str(args.epochs), "--train", str(args.train),
            "--solve", str(args.solve)]
    if args.patches_per_image:
        argv += ["--patches-per-image", str(args.patches_per_image)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=_env(backend), capture_output=True, text=True,
                              timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(backend=backend, error=f"timed out after {args.timeout} s",
                    process_s=time.perf_counter() - start)
    process_s = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return dict(backend=backend, error=f"exit code {proc.returncode}:\n{proc.stderr[-6000:]}",
                    process_s=process_s)
    record = json.loads(lines[-1])
    record["process_s"] = process_s
    return record


# ---------------------------------------------------------------------- report
def spread(values, spec, suffix=""):
    """`median [min–max]` of `values` (just the value for one)."""
    if not values:
        return "–"
    median = format(statistics.median(values), spec) + suffix
    if len(values) == 1:
        return median
    return f"{median} [{format(min(values), spec)}–{format(max(values), spec)}]"


def build_table(records, backends):

    rows, notes = [], []
    for backend in backends:
        runs = [r for r in records if r["backend"] == backend and "error" not in r]
        failed = [r for r in records if r["backend"] == backend and "error" in r]
        name = backend
        if runs:
            name += f" ({LIBRARY_NAMES[backend]} {runs[0]['backend_version']})"
        if failed:
            name += f", failed {len(failed)}/{len(runs) + len(failed)}"
        rows.append([
            name,
            spread([r["solve_s"] for r in runs], ".1f"),
            spread([r["top_fit_s"] for r in runs], ".1f"),
            spread([r["sgd_fit_s"] for r in runs], ".1f"),
            spread([r["ratio"] for r in runs], ".2f", "×"),
            spread([r["acc_hybrid"] for r in runs], ".4f"),
            spread([r["acc_sgd"] for r in runs], ".4f"),
        ])
        if runs:
            cache = sorted({"on" if r["cache_used"] else "off" for r in runs})
            notes.append(f"{backend}: {len(runs)} round(s), `fit_top` prefix cache "
                         f"{'/'.join(cache)}, process wall time "
                         f"{spread([r['process_s'] for r in runs], '.0f')} s")
        for r in failed:
            first = r["error"].strip().splitlines()
            notes.append(f"{backend} failed in round {r.get('round', '?')}: "
                         f"`{first[-1] if first else r['error']}`")
    table = markdown_table(
        ["backend", "solve s", "top fit s", "SGD fit s", "hybrid/SGD", "test acc hybrid",
         "test acc SGD"], rows)
    return table, notes


def write_report(records, args_line, paragraph, print_only=False):

    backends = [b for b in BACKENDS if any(r["backend"] == b for r in records)]
    versions = {r["backend"]: r["backend_version"] for r in records if "error" not in r}
    machine = machine_line()
    import keras

    # machine_line names this (reporting) process's backend; the rows name their own.
    machine = machine.replace(f"({keras.backend.backend()})", "(backend per row)")
    extra = [f"{LIBRARY_NAMES[b]} {versions[b]}" for b in ("jax", "torch") if b in versions]
    if extra:
        machine += " · " + " · ".join(extra)
    config = records[0] if records else {}
    rounds = sorted({r["round"] for r in records})
    table, notes = build_table(records, backends)
    body = "\n".join([
        "## The hybrid workflow under each Keras backend (`bench_backends`)",
        "",
        machine,
        "",
        f"Command: `{args_line}`; rounds finished: {len(rounds)}. Fashion-MNIST, benchmark CNN, "
        f"cutoff 1 solved from {config.get('solve', '?'):,} images, "
        f"top (`fit_top`, cache \"auto\") and the SGD reference (plain `model.fit` of a fresh "
        f"identical CNN, end-to-end backprop) trained for {config.get('epochs', '?')} epoch(s) "
        f"on {config.get('train', '?'):,} images, Adam, batch {BATCH}; test accuracy on the "
        "10,000 test images. One fresh subprocess per backend and round, backends interleaved "
        "per round (tensorflow, jax, torch); cells are the median [min–max] over rounds, "
        "hybrid/SGD is the median of per-round (solve + top fit) / SGD fit. Times include "
        "compile and each backend's tracing/JIT, not imports or data loading. Thread counts "
        "are every library's defaults (nothing pinned), on a shared, noisy 2-core machine.",
        "",
        table,
        "",
        *[f"- {note}" for note in notes],
        "",
        paragraph.strip(),
    ])
    write_section(SECTION, body, print_only=print_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 1 round, 1 epoch, 1,000 solve / 2,000 train images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=12_000, help="training images")
    parser.add_argument("--solve", type=int, default=6_000,
                        help="images the solve uses (the first of the training subset)")
    parser.add_argument("--patches-per-image", type=int, default=None,
                        help="hybridize's patches_per_image (default: all patches)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per worker")
    add_report_options(parser, default_results(SECTION), appends=False)
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.rounds, args.epochs, args.train, args.solve = 1, 1, 2_000, 1_000
    args.solve = min(args.solve, args.train)

    def run(checkpoint):
        for round_index in range(args.rounds):
            for backend in args.backends:
                record = run_backend(backend, round_index, args)
                save_run(args.results, record, echo=False, round=round_index, seed=round_index,
                         epochs=args.epochs, train=args.train, solve=args.solve)
                if "error" in record:
                    print(f"round {round_index + 1}, {backend} FAILED: {record['error']}",
                          flush=True)
                else:
                    print(f"round {round_index + 1}, {backend}: solve {record['solve_s']:.1f} s, "
                          f"top fit {record['top_fit_s']:.1f} s, SGD {record['sgd_fit_s']:.1f} s, "
                          f"ratio {record['ratio']:.2f}, acc {record['acc_hybrid']:.4f} / "
                          f"{record['acc_sgd']:.4f}", flush=True)
            checkpoint()

    run_benchmark(args, SECTION, write_report, run)


if __name__ == "__main__":
    main()
