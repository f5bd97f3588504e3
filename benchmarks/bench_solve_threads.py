"""ClassPCA's eigen-solve: the BLAS library's own thread count vs one thread.

`ClassPCA.solve` eigen-decomposes one d x d matrix per class. Up to
`SINGLE_THREAD_EIGH_MAX_DIM` it does so with one BLAS thread (threadpoolctl). This
benchmark measures why, on this machine, in two conditions:

- as found: whatever else the machine is running (load average printed);
- loaded: while this benchmark keeps two extra processes busy with single-threaded
  NumPy matrix products, as on a shared machine or next to a training job.

Per d, 10 classes with random covariances are fitted once; then `solve()` (all ten
`eigh` calls, cache cleared) is timed with the library's default threads and with one
thread, alternately, for `--rounds` rounds. Reported: medians and their ratio.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_solve_threads [--quick] [--no-write]
"""

import argparse
import contextlib
import multiprocessing
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import keras_classpca.core.class_pca as class_pca_module
from benchmarks._report import (
    add_report_options,
    machine_line,
    markdown_table,
    report_arguments,
    write_section,
)
from keras_classpca import ClassPCA

SECTION = "bench_solve_threads"
N_CLASSES = 10


def _busy(stop):
    """One core's worth of load: single-threaded matrix products until `stop` is set."""
    with threadpool_limits(1):
        a = np.random.default_rng(0).normal(size=(300, 300))
        while not stop.is_set():
            a = np.tanh(a @ a.T / 300.0)


@contextlib.contextmanager
def extra_load(n_processes):
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(n_processes)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def fitted(d, seed=0):
    rng = np.random.default_rng(seed)
    pca = ClassPCA(min(d, 64))
    for label in range(N_CLASSES):
        mixing = rng.normal(size=(d, d)) / np.sqrt(d)
        pca.partial_fit(rng.normal(size=(2 * d, d)) @ mixing, np.full(2 * d, label))
    return pca


def time_solve(pca, max_dim):
    """Seconds for one `solve()` with `SINGLE_THREAD_EIGH_MAX_DIM = max_dim`."""
    saved = class_pca_module.SINGLE_THREAD_EIGH_MAX_DIM
    class_pca_module.SINGLE_THREAD_EIGH_MAX_DIM = max_dim
    try:
        pca._solutions.clear()
        start = time.perf_counter()
        pca.solve()
        return time.perf_counter() - start
    finally:
        class_pca_module.SINGLE_THREAD_EIGH_MAX_DIM = saved


def measure(dims, rounds):
    rows = []
    for d in dims:
        pca = fitted(d)
        default, single = [], []
        for _ in range(rounds):
            default.append(time_solve(pca, -1))  # never limit: the library's threads
            single.append(time_solve(pca, 10**9))  # always one thread
        rows.append((d, statistics.median(default), statistics.median(single)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    add_report_options(parser)
    args = parser.parse_args()
    paragraph, command = report_arguments(args, SECTION)
    dims = (25, 288) if args.quick else (25, 288, 800, 1600)
    rounds = 2 if args.quick else args.rounds
    blas = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()
            if p["user_api"] == "blas"]
    load = os.getloadavg()[0]

    results = {"as found": measure(dims, rounds)}
    with extra_load(2):
        results["loaded (+2 busy processes)"] = measure(dims, rounds)

    table = []
    for condition, rows in results.items():
        for d, default, single in rows:
            table.append((condition, d, f"{default * 1e3:.1f}", f"{single * 1e3:.1f}",
                          f"{default / single:.2f}"))
    limit = class_pca_module.SINGLE_THREAD_EIGH_MAX_DIM
    body = "\n".join([
        "## ClassPCA eigen-solve: BLAS threads (`bench_solve_threads`)",
        "",
        machine_line(),
        "",
        f"Command: `{command.strip()}`. BLAS: "
        + ", ".join(f"{api} ({threads} threads)" for api, threads in blas)
        + f"; load average at the start {load:.2f}; {rounds} rounds, medians.",
        "",
        f"`solve()` of {N_CLASSES} classes (one `eigh` of d x d each), in ms. The library "
        f"uses one thread up to d = {limit}.",
        "",
        markdown_table(["condition", "d", "default threads ms", "1 thread ms",
                        "default / 1 thread"], table),
        "",
        paragraph.strip(),
    ])
    write_section(SECTION, body, print_only=args.no_write)
    if not args.no_write:
        print(body)


if __name__ == "__main__":
    main()
