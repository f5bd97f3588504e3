"""Class statistics on 1 vs 2 local MultiWorkerMirroredStrategy workers.

Workload: N rows x d features, K classes, generated inside the tf.data pipeline from
stateless seeds (chunk i is the same on every run and every worker), so no worker
holds the data set. Each worker reads only its own chunks
(`distribute_datasets_from_function` + `Dataset.shard`), accumulates per-class float64
statistics with `keras_classpca.distributed.class_statistics`, and the workers
all-reduce once. Timed per worker: the whole `class_statistics` call (tf.function trace,
pass, one all-reduce), median of `--repeats` calls, the slowest worker counting; the
configurations run in `--rounds` interleaved rounds and the table gives the median and
range over rounds.

Reference rows in the same table: the single-process TF pass (default strategy) and
`ClassPCA.partial_fit` (NumPy) fed the same chunks.

The local workers share the machine's cores; on a 2-core machine that is busy with
other jobs, 2 workers cannot be expected to halve the time. The numbers show the
overhead of the cluster (start-up excluded, one collective) more than a speed-up.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_distributed [--quick] [--write]

`--write` replaces the section between `<!-- bench_distributed:start -->` and
`<!-- bench_distributed:end -->` in docs/distributed.md (without it the section is
printed).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

from benchmarks._report import ROOT, write_section

DOC = ROOT / "docs" / "distributed.md"

WORKER = """
import json, statistics, sys, time
import numpy as np
import tensorflow as tf

n_rows, d, k, chunk, repeats, threads = (int(v) for v in sys.argv[1:7])
single = sys.argv[7] == "single"
if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
if single:
    strategy = tf.distribute.get_strategy()
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
from keras_classpca.distributed import class_statistics

def make_chunk(i):
    seed = tf.stack([tf.cast(i, tf.int32), 7])
    x = tf.random.stateless_normal([chunk, d], seed=seed, dtype=tf.float32)
    y = tf.random.stateless_uniform([chunk], seed=seed + 1, maxval=k, dtype=tf.int32)
    # Class structure: a class-dependent mean shift.
    x = x + tf.cast(tf.expand_dims(y, 1), tf.float32) * 0.1
    return x, y

def dataset_fn(context):
    ids = tf.data.Dataset.range(n_rows // chunk)
    ids = ids.shard(context.num_input_pipelines, context.input_pipeline_id)
    return ids.map(make_chunk).prefetch(2)

times = []
for _ in range(repeats):
    start = time.perf_counter()
    count, total, outer = class_statistics(dataset_fn, k, strategy=strategy, n_features=d)
    times.append(time.perf_counter() - start)
out = {"median": statistics.median(times), "times": times, "rows": float(count.sum()),
       "outer_checksum": float(np.sum(outer)), "trace": float(np.trace(outer.sum(0)))}
if single:  # the NumPy reference on the same chunks
    from keras_classpca import ClassPCA
    ds = dataset_fn(tf.distribute.InputContext())
    chunks = list(ds.as_numpy_iterator())
    np_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pca = ClassPCA(k)
        for x, y in chunks:
            pca.partial_fit(x, y)
        np_times.append(time.perf_counter() - start)
    out["numpy_median"] = statistics.median(np_times)
    out["numpy_trace"] = float(sum(np.trace(m) for m in pca._moments.outer.values()))
print(json.dumps(out))
"""


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run(n_workers, args, timeout=900):
    # Local workers share the cores: each gets its share of threads (all for 1 process).
    threads = max(1, (os.cpu_count() or 1) // max(1, n_workers))
    argv = [str(v) for v in (args.rows, args.features, args.classes, args.chunk, args.repeats,
                             threads)]
    code = textwrap.dedent(WORKER)
    if n_workers == 0:
        procs = [subprocess.Popen([sys.executable, "-c", code, *argv, "single"], env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        # Imported only for multi-worker runs: the package loads TensorFlow, which
        # the parent otherwise does not need.
        from keras_classpca.distributed import local_tf_configs

        procs = []
        for tf_config in local_tf_configs(n_workers):
            procs.append(subprocess.Popen([sys.executable, "-c", code, *argv, "multi"],
                                          env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"worker failed ({proc.returncode}):\n{stderr[-4000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.features, args.repeats, args.rounds = 20_000, 64, 1, 1

    from benchmarks._report import machine_line

    names = [
        "1 process, default strategy (TF ops)",
        "1 process, `ClassPCA.partial_fit` (NumPy)",
        "1 local worker (MultiWorkerMirroredStrategy)",
        "2 local workers (MultiWorkerMirroredStrategy)",
    ]
    seconds = {name: [] for name in names}
    traces = {}
    # Rounds interleave the configurations (order rotated): the machine is shared.
    for round_index in range(args.rounds):
        order = [0, 1, 2]
        order = order[round_index % 3 :] + order[: round_index % 3]
        for n in order:
            results = run(n, args)
            assert all(r["rows"] == args.rows for r in results), results
            if n == 0:
                seconds[names[0]].append(results[0]["median"])
                seconds[names[1]].append(results[0]["numpy_median"])
                traces[names[0]] = results[0]["trace"]
                traces[names[1]] = results[0]["numpy_trace"]
            else:
                seconds[names[n + 1]].append(max(r["median"] for r in results))
                traces[names[n + 1]] = results[0]["trace"]
        print(f"round {round_index + 1}: "
              + ", ".join(f"{v[-1]:.2f}" for v in seconds.values()), flush=True)
    rows = [(name, statistics.median(seconds[name]), min(seconds[name]), max(seconds[name]),
             traces[name]) for name in names]
    k, d = args.classes, args.features
    payload = 8 * (k * (1 + d + d * d) + 3)
    lines = [
        f"N = {args.rows:,} rows × d = {d}, K = {k} classes, chunks of {args.chunk} rows. "
        f"Per configuration and round: median of {args.repeats} calls (slowest worker); "
        f"table: median [min–max] over {args.rounds} interleaved rounds. TF intra/inter-op "
        "threads per process: all cores / number of local workers. "
        f"Machine: {machine_line()} (shared with other jobs).",
        "",
        f"All-reduced payload: {payload / 1e6:.2f} MB (K·(1 + d + d²) + 3 float64), whatever N.",
        "",
        "| run | seconds | relative difference of Σ tr(M_c) to NumPy |",
        "|---|---:|---:|",
    ]
    reference = traces[names[1]]
    for name, median, low, high, trace in rows:
        lines.append(f"| {name} | {median:.2f} [{low:.2f}–{high:.2f}] | "
                     f"{abs(trace - reference) / abs(reference):.1e} |")
    write_section("bench_distributed", "\n".join(lines), print_only=not args.write, doc=DOC)


if __name__ == "__main__":
    main()
