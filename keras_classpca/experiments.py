"""Reusable experiments behind `keras-classpca` and the benchmarks.

Each function runs one experiment on in-memory data and returns plain numbers (dicts,
lists, arrays); printing, files and argument errors are the caller's business (the
command-line tool in `cli.py`, the scripts in `benchmarks/`).
"""

import time

import numpy as np

from keras_classpca.datasets import load_dataset
from keras_classpca.demo import benchmark_cnn

OPTIMIZERS = ("adam", "sgd")


def load_images(dataset, train_samples=None, seed=0):
    """`((x_train, y_train), (x_test, y_test), n_classes)` of an image data set.

    `train_samples` keeps a random subset (seeded) of the training images. Raises a
    `ValueError` naming the data set when it is unknown or not made of images.
    """
    (x_train, y_train), (x_test, y_test) = load_dataset(dataset)
    if x_train.ndim != 4:
        raise ValueError(
            f"data set {dataset!r}: expected images, got training data of shape "
            f"{x_train.shape}."
        )
    y_train, y_test = np.asarray(y_train).astype("int64"), np.asarray(y_test).astype("int64")
    if train_samples is not None and train_samples < len(x_train):
        keep = np.sort(
            np.random.default_rng(seed).choice(len(x_train), train_samples, replace=False)
        )
        x_train, y_train = x_train[keep], y_train[keep]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    return (x_train, y_train), (x_test, y_test), n_classes


def make_optimizer(name="adam", learning_rate=None, momentum=0.0):
    """A fresh Keras optimizer: `"adam"` or plain `"sgd"` (with `momentum`); Keras'
    default learning rate unless one is given."""
    import keras

    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}; received {name!r}.")
    options = {} if learning_rate is None else {"learning_rate": learning_rate}
    if name == "sgd":
        return keras.optimizers.SGD(momentum=momentum, **options)
    return keras.optimizers.Adam(**options)


def compiled_cnn(input_shape, n_classes, seed, optimizer=None):
    """The benchmark CNN, seeded and compiled (Adam unless `optimizer` is given)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = benchmark_cnn(input_shape, n_classes)
    model.compile(
        optimizer=optimizer or make_optimizer(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def run_timescales(train, test, n_classes, *, epochs, batch_size=128, seed=0,
                   optimizer="adam", learning_rate=None, momentum=0.0,
                   measure_overhead=False, verbose=0, **monitor_options):
    """Train the benchmark CNN with `TimescaleMonitor`; returns `(result, monitor)`.

    `result` holds the settings, timings, test accuracy and the monitor's history;
    with `measure_overhead`, the same seed is also trained without the monitor and the
    time ratio and the largest weight difference are recorded. `monitor_options` go to
    `TimescaleMonitor` (`every`, `samples`, `patches_per_image`, `settle_threshold`,
    `noise_ceiling`, `log_dir`, ...).
    """
    from keras_classpca.diagnostics import TimescaleMonitor

    (x_train, y_train), (x_test, y_test) = train, test
    fit_kwargs = dict(epochs=epochs, batch_size=batch_size, verbose=verbose)
    result = {
        "train_samples": len(x_train),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "momentum": momentum,
    }

    def model():
        opt = make_optimizer(optimizer, learning_rate, momentum)
        return compiled_cnn(x_train.shape[1:], n_classes, seed, opt)

    plain_model = None
    if measure_overhead:
        plain_model = model()
        start = time.perf_counter()
        plain_model.fit(x_train, y_train, **fit_kwargs)
        result["plain_fit_seconds"] = time.perf_counter() - start
    monitored = model()
    monitor = TimescaleMonitor((x_train, y_train), seed=seed, **monitor_options)
    start = time.perf_counter()
    monitored.fit(x_train, y_train, callbacks=[monitor], **fit_kwargs)
    result["monitored_fit_seconds"] = time.perf_counter() - start
    result["monitor_seconds"] = float(sum(monitor.history["check_seconds"]))
    result["test_accuracy"] = float(
        monitored.evaluate(x_test, y_test, batch_size=512, verbose=0)[1]
    )
    if plain_model is not None:
        result["overhead_ratio"] = result["monitored_fit_seconds"] / result["plain_fit_seconds"]
        result["max_weight_difference_vs_plain"] = float(
            max(
                np.max(np.abs(np.asarray(a) - np.asarray(b)))
                for a, b in zip(plain_model.get_weights(), monitored.get_weights())
            )
        )
    result["history"] = monitor.history
    return result, monitor


def solve_and_train(build_model, train, test, cutoff, *, epochs, batch_size=128, seed=0,
                    verbose=0, **hybridize_options):
    """Solve `cutoff` bottom layers of `build_model()` (0: none), train the rest with
    `fit_top`, test. Returns a dict: cutoff, solved layer names, test accuracy, solve /
    fit / total seconds (compile included in fit, evaluation not timed)."""
    import keras

    from keras_classpca.hybrid.builder import hybridize
    from keras_classpca.hybrid.training import fit_top

    (x_train, y_train), (x_test, y_test) = train, test
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build_model()
    solved = []
    if cutoff:
        report = hybridize(model, (x_train, y_train), cutoff=cutoff, seed=seed,
                           verbose=verbose, **hybridize_options)
        solved = [layer.name for layer in report.layers]
    solve_seconds = time.perf_counter() - start
    fit_start = time.perf_counter()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit_top(model, x_train, y_train, epochs=epochs, batch_size=batch_size,
            verbose=2 if verbose else 0)
    fit_seconds = time.perf_counter() - fit_start
    accuracy = float(model.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])
    return {
        "cutoff": cutoff,
        "solved_layers": solved,
        "test_accuracy": accuracy,
        "solve_seconds": solve_seconds,
        "fit_seconds": fit_seconds,
        "total_seconds": solve_seconds + fit_seconds,
    }


def run_cutoff_sweep(train, test, n_classes, cutoffs, *, epochs, samples, batch_size=128,
                     patches_per_image=None, seed=0, verbose=0, on_row=None):
    """`solve_and_train` of the benchmark CNN for every cutoff in `cutoffs`.

    A cutoff whose layers have more filters than their patches have distinct
    directions (32 filters of 3×3×1 on 8×8 digits) is solved again without
    deduplication; its row says so in `note`. `on_row(i, row)` is called after each.
    A cutoff the model cannot take raises a `ValueError` that names it.
    """
    input_shape = train[0].shape[1:]
    rows = []
    for i, cutoff in enumerate(cutoffs):
        options = dict(epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose)
        if cutoff:
            options.update(samples=samples, patches_per_image=patches_per_image)

        def run(**extra):
            return solve_and_train(lambda: benchmark_cnn(input_shape, n_classes), train, test,
                                   cutoff, **options, **extra)

        try:
            try:
                row, note = run(), ""
            except ValueError as error:
                if "distinct non-degenerate" not in str(error):
                    raise
                row, note = run(dedup_threshold=None), "dedup_threshold=None"
        except ValueError as error:
            raise ValueError(f"cutoff {cutoff}: {error}") from None
        row["note"] = note
        rows.append(row)
        if on_row is not None:
            on_row(i, row)
    return rows


def compare_filters(train, n_classes, *, layer_index, epochs, samples, batch_size=128,
                    patches_per_image=None, seed=0, verbose=0):
    """Train the benchmark CNN briefly (Adam), then compare conv layer `layer_index`
    (from 1) with the class-PCA of its current input.

    Returns a dict with the layer's name, the overlap of its filters with the
    class-PCA subspace (rank, input dimension, chance level) and both filter banks in
    the kernel's shape (`class_pca`, `sgd`). Raises a `ValueError` for a layer index
    out of range.
    """
    import keras

    from keras_classpca.core.class_pca import ClassPCA
    from keras_classpca.diagnostics import TimescaleMonitor
    from keras_classpca.hybrid.planner import call_tensors
    from keras_classpca.layers.geometry import iter_rows

    x_train, y_train = train
    model = compiled_cnn(x_train.shape[1:], n_classes, seed)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not 1 <= layer_index <= len(convs):
        raise ValueError(
            f"the model has {len(convs)} Conv2D layer(s); use 1..{len(convs)}."
        )
    layer = convs[layer_index - 1]
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=verbose)
    keep = np.random.default_rng(seed).choice(len(x_train), min(samples, len(x_train)),
                                              replace=False)
    keep = np.sort(keep)
    x, y = x_train[keep], y_train[keep]
    monitor = TimescaleMonitor((x, y), layers=[layer.name], samples=len(x),
                               patches_per_image=patches_per_image, seed=seed)
    monitor.set_model(model)
    overlap, sgd_kernel, d, rank, _ = monitor.measure()[layer.name]
    layer_input = call_tensors(model, layer)[0][0]
    inputs = keras.ops.convert_to_numpy(keras.Model(model.inputs[0], layer_input)(x))
    chunks = list(iter_rows(layer, inputs, y, patches_per_image=patches_per_image,
                            rng=np.random.default_rng(seed)))
    rows = np.concatenate([r for r, _ in chunks])
    labels = np.concatenate([lab for _, lab in chunks])
    components = ClassPCA(layer.filters).fit(rows, labels).components_
    shape = tuple(layer.kernel.shape)
    return {
        "layer_name": layer.name,
        "samples": len(x),
        "overlap": float(overlap),
        "rank": int(rank),
        "input_dim": int(d),
        "chance_overlap": rank / d,
        "class_pca": components.reshape(shape),
        "sgd": np.asarray(sgd_kernel).reshape(shape),
    }
