"""The demo behind `make demo`, `examples/quickstart.py` and `keras-classpca demo`.

Builds the benchmark CNN, solves its bottom layers from 10 % of the training data with
`hybridize(cutoff="auto")`, trains the rest with `fit_top`, and prints the report, the
test accuracy and the timings.
"""

import time

import keras

from keras_classpca.datasets import load_dataset
from keras_classpca.hybrid.builder import hybridize
from keras_classpca.hybrid.training import fit_top


def benchmark_cnn(input_shape, n_classes, kernel_size=None):
    """Conv(32)–MaxPool–Conv(64)–MaxPool–Flatten–Dense(128)–Dense(n_classes).

    The benchmark's 5×5 'valid' convolutions for images of 16 pixels and more; for
    smaller images (8×8 digits) 3×3 'same' convolutions, so both poolings fit. The
    layers with weights are named `conv1`, `conv2`, `dense1`, `output` in every model
    built (reports and tables of several models name the same layer alike).
    """
    small = min(input_shape[:2]) < 16
    kernel_size = kernel_size or (3 if small else 5)
    padding = "same" if small else "valid"
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, kernel_size, padding=padding, activation="relu",
                                name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, kernel_size, padding=padding, activation="relu",
                                name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="dense1"),
            keras.layers.Dense(n_classes, activation="softmax", name="output"),
        ],
        name="benchmark_cnn",
    )


def run_demo(
    dataset="fashion_mnist",
    cutoff="auto",
    samples="auto",
    epochs=3,
    batch_size=128,
    seed=0,
    verbose=1,
):
    """The default path on `dataset`: `hybridize(model, data)` (which decides the
    cutoff and how many samples each layer reads), then train the rest; returns a dict
    of the numbers printed."""
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_dataset(dataset)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    model = benchmark_cnn(x_train.shape[1:], n_classes)
    print(
        f"{dataset}: {len(x_train)} training / {len(x_test)} test images; "
        f"cutoff={cutoff!r}, samples={samples!r}; Keras {keras.__version__} "
        f"on {keras.backend.backend()}"
    )

    solve_start = time.perf_counter()
    report = hybridize(
        model, (x_train, y_train), cutoff=cutoff, samples=samples, seed=seed, verbose=verbose
    )
    solve_seconds = time.perf_counter() - solve_start
    print(report)

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit_start = time.perf_counter()
    history = fit_top(
        model, x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=2 if verbose else 0
    )
    fit_seconds = time.perf_counter() - fit_start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    result = {
        "dataset": dataset,
        "backend": keras.backend.backend(),
        "cutoff": report.cutoff,
        "test_accuracy": float(accuracy),
        "solve_seconds": solve_seconds,
        "fit_seconds": fit_seconds,
        "cache_used": history.cache_used,
        "total_seconds": time.perf_counter() - start,
    }
    print(
        f"\ntest accuracy {accuracy:.4f} | solved {report.cutoff} layer(s) in "
        f"{solve_seconds:.1f} s "
        f"| trained the rest for {epochs} epoch(s) in {fit_seconds:.1f} s "
        f"({'prefix cached' if history.cache_used else 'prefix run every step'}) "
        f"| total {result['total_seconds']:.1f} s"
    )
    return result
