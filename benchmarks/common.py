"""What the benchmarks share: the models, the SGD baseline, data subsets and the
`main()` skeleton of a benchmark that appends its runs to a results file.

Models (Adam, sparse categorical cross-entropy, batch 128 in every benchmark):

- "cnn": the benchmark CNN, `keras_classpca.demo.benchmark_cnn` — Conv2D(32, 5, relu) -
  MaxPool - Conv2D(64, 5, relu) - MaxPool - Flatten - Dense(128, relu) - Dense(10,
  softmax) on 28×28×1 images (3×3 'same' convolutions below 16×16 pixels);
- "mlp": Flatten - Dense(256, relu) - Dense(128, relu) - Dense(10, softmax).
"""

import os
import statistics
import time

import keras
import numpy as np

from benchmarks._report import append_record, load_records, report_arguments
from keras_classpca.demo import benchmark_cnn

BATCH = 128
FASHION_MNIST_SHAPE = (28, 28, 1)


def mlp(input_shape, n_classes):
    """The benchmark MLP: Flatten - Dense(256) - Dense(128) - Dense(n_classes)."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="benchmark_mlp")


def build_model(kind, input_shape=FASHION_MNIST_SHAPE, n_classes=10):
    """A fresh benchmark model, "cnn" or "mlp" (seed first for repeatable weights)."""
    if kind == "cnn":
        return benchmark_cnn(tuple(input_shape), n_classes)
    if kind == "mlp":
        return mlp(tuple(input_shape), n_classes)
    raise ValueError(f"unknown model kind {kind!r}: 'cnn' or 'mlp'")


def compile_model(model):
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def evaluate(model, x_test, y_test, batch_size=1024):
    """Test accuracy."""
    return float(model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0)[1])


def run_sgd(kind, seed, x, y, x_test, y_test, epochs, eval_batch_size=1024):
    """The reference: a fresh `kind` model trained end to end by `model.fit`. Timed:
    compile + fit (evaluation is not)."""
    keras.utils.set_random_seed(seed)
    model = build_model(kind, x.shape[1:], int(max(y.max(), y_test.max())) + 1)
    start = time.perf_counter()
    compile_model(model)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    fit_s = time.perf_counter() - start
    return dict(contender="sgd", acc=evaluate(model, x_test, y_test, eval_batch_size),
                solve_s=0.0, fit_s=fit_s, wall_s=fit_s)


def subset(x, y, fraction, seed):
    """A random `fraction` of (x, y), the same for a given seed (all of it at 1.0)."""
    if fraction >= 1.0:
        return x, y
    n = int(round(fraction * len(x)))
    keep = np.sort(np.random.default_rng(1000 + seed).choice(len(x), n, replace=False))
    return x[keep], y[keep]


def rotated(items, shift):
    """`items` rotated left by `shift`: the order of the contenders changes per seed or
    round, because the machine is shared."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def save_run(path, record, echo=True, **fields):
    """Append `record`, with `fields` and the time it finished, to the results `path`."""
    record.update(fields, finished=time.strftime("%H:%M:%S"))
    append_record(path, record, echo=echo)


def med(values):
    """Median of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def run_benchmark(args, module, write_report, run):
    """The `main()` of a benchmark that appends its runs to `args.results`.

    `--report-only` rebuilds the section from the results and runs nothing. Otherwise
    the results file is emptied (with `--fresh`; always for a benchmark without that
    option) and `run(checkpoint)` runs the benchmark; it calls `checkpoint()` whenever
    the results are worth a report (after each seed or round), which rewrites the
    section, so a partial run still leaves its numbers. With `--no-write` nothing is
    written and the section is printed at the end.

    `write_report(records, command, paragraph, print_only=False)` builds and writes the
    section.
    """
    paragraph, command = report_arguments(args, module)

    def report(print_only=False):
        records = load_records(args.results)
        if not records:
            print(f"no results in {args.results}: nothing to report")
            return
        write_report(records, command, paragraph, print_only=print_only)

    if args.report_only:
        report(print_only=args.no_write)
        return
    if getattr(args, "fresh", True) and os.path.exists(args.results):
        os.remove(args.results)

    def checkpoint():
        if not args.no_write:
            report()

    run(checkpoint)
    if args.no_write:
        report(print_only=True)
