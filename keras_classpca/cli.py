"""`keras-classpca`: the command-line tool (demo, time scales, cutoff sweep, filters, export).

Examples::

    keras-classpca demo --epochs 2
    keras-classpca timescales --epochs 8 --out runs/ts
    keras-classpca sweep --cutoffs 0,1,2 --fraction 0.1 --out runs/sweep
    keras-classpca filters --layer 1 --out runs/filters
    keras-classpca export model.keras models/digits

Every subcommand takes `--dataset fashion_mnist|digits|<local TFDS name>`. The model is
the benchmark CNN of `keras_classpca.demo.benchmark_cnn` (kernel 5); for images smaller
than 16×16 (the 8×8 `digits`) the same architecture with kernel 3 and 'same' padding,
since two 'valid' 3×3 convolutions and two poolings do not fit in 8×8.

Bad arguments end with exit code 2 and a one-line message (no traceback).
"""

import argparse
import json
import os
import sys
import time
import zipfile

import numpy as np

PROG = "keras-classpca"


class _UsageError(Exception):
    """A bad argument found after parsing (unknown data set, layer out of range, ...)."""


# ---------------------------------------------------------------------- argument types
def _checked(convert, valid, expected):
    """An argparse `type`: `convert(text)`, kept only if `valid`; else "expected ..."."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_seed = _checked(int, lambda v: 0 <= v < 2**32, "an integer in 0..4294967295")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_fraction = _checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")
_cutoff = _checked(
    lambda text: text if text == "auto" else int(text),
    lambda v: v == "auto" or v >= 0,
    "'auto' or a non-negative integer",
)


def _cutoff_list(text):
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected comma-separated non-negative integers such as 0,1,2; got {text!r}"
            )
        values.append(int(part))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"cutoffs repeat a value: {text!r}")
    return values


# ---------------------------------------------------------------------- shared helpers
def _load(args):
    from keras_classpca.datasets import load_dataset

    try:
        (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise _UsageError(f"--dataset {args.dataset!r}: {error}") from None
    if x_train.ndim != 4:
        raise _UsageError(
            f"--dataset {args.dataset!r}: expected images, got training data of shape "
            f"{x_train.shape}."
        )
    y_train, y_test = np.asarray(y_train).astype("int64"), np.asarray(y_test).astype("int64")
    limit = getattr(args, "train_samples", None)
    if limit is not None and limit < len(x_train):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(x_train), limit, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    return (x_train, y_train), (x_test, y_test), n_classes


def build_model(input_shape, n_classes):
    """The benchmark CNN for `input_shape` (kernel 3, 'same' padding below 16×16)."""
    import keras

    from keras_classpca.demo import benchmark_cnn

    if min(input_shape[:2]) >= 16:
        return benchmark_cnn(input_shape, n_classes, 5)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ],
        name="benchmark_cnn_small",
    )


def _compiled_model(input_shape, n_classes, seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(input_shape, n_classes)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _out_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise _UsageError(
            f"--out {path!r}: cannot create the directory ({error.strerror})."
        ) from None
    return path


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0]


def _write_json(path, value):
    with open(path, "w") as handle:
        json.dump(value, handle, indent=1)


def _settings(args):
    return {k: v for k, v in vars(args).items() if k != "func"}


def _conv_layers(model):
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


# ---------------------------------------------------------------------- subcommands
def cmd_demo(args):
    from keras_classpca.demo import run_demo

    try:
        run_demo(
            dataset=args.dataset,
            cutoff=args.cutoff,
            fraction=args.fraction,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            verbose=args.verbose,
        )
    except FileNotFoundError as error:
        raise _UsageError(f"--dataset {args.dataset!r}: {error}") from None
    except ValueError as error:
        # Everything the demo is given comes from the arguments: an unknown data set,
        # or a --cutoff beyond what the model for that data set can solve.
        if "data set" in str(error):  # load_dataset's "Unknown or unavailable data set"
            raise _UsageError(f"--dataset {args.dataset!r}: {error}") from None
        raise _UsageError(f"--dataset {args.dataset!r} --cutoff {args.cutoff}: {error}") from None
    return 0


def cmd_timescales(args):
    from keras_classpca.diagnostics import TimescaleMonitor
    from keras_classpca.diagnostics.plots import plot_timescales

    out = _out_dir(args.out)
    (x_train, y_train), (x_test, y_test), n_classes = _load(args)
    fit_kwargs = dict(epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose)
    result = {
        "dataset": args.dataset,
        "train_samples": len(x_train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }

    plain_model = None
    if args.measure_overhead:
        print(f"[1/2] plain fit(): {args.epochs} epoch(s) on {len(x_train)} images")
        plain_model = _compiled_model(x_train.shape[1:], n_classes, args.seed)
        start = time.perf_counter()
        plain_model.fit(x_train, y_train, **fit_kwargs)
        result["plain_fit_seconds"] = time.perf_counter() - start

    print(
        f"{'[2/2] ' if args.measure_overhead else ''}fit() with TimescaleMonitor: "
        f"{args.epochs} epoch(s) on {len(x_train)} images"
    )
    model = _compiled_model(x_train.shape[1:], n_classes, args.seed)
    monitor = TimescaleMonitor(
        (x_train, y_train),
        every=args.every,
        samples=args.monitor_samples,
        patches_per_image=args.patches_per_image,
        settle_threshold=args.settle_threshold,
        seed=args.seed,
        noise_ceiling=args.noise_ceiling,
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, callbacks=[monitor], **fit_kwargs)
    result["monitored_fit_seconds"] = time.perf_counter() - start
    result["monitor_seconds"] = float(sum(monitor.history["check_seconds"]))
    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    result["test_accuracy"] = float(accuracy)
    if plain_model is not None:
        result["overhead_ratio"] = result["monitored_fit_seconds"] / result["plain_fit_seconds"]
        result["max_weight_difference_vs_plain"] = float(
            max(
                np.max(np.abs(np.asarray(a) - np.asarray(b)))
                for a, b in zip(plain_model.get_weights(), model.get_weights())
            )
        )
    result["history"] = monitor.history
    json_path = os.path.join(out, "timescales.json")
    _write_json(json_path, result)
    png_path = os.path.join(out, "timescales_curves.png")
    plot_timescales(
        monitor.history,
        png_path,
        title=f"{args.dataset}, {len(x_train)} training images, batch {args.batch_size}, Adam",
    )
    print(monitor.format_table())
    print(
        f"test accuracy {accuracy:.4f}; monitor checks took {result['monitor_seconds']:.1f} s "
        f"of {result['monitored_fit_seconds']:.1f} s"
    )
    if plain_model is not None:
        print(
            f"overhead: {result['monitored_fit_seconds']:.1f} s / "
            f"{result['plain_fit_seconds']:.1f} s "
            f"= {result['overhead_ratio']:.3f}x plain fit(); max |weight difference| "
            f"{result['max_weight_difference_vs_plain']:.3g}"
        )
    print(f"wrote {json_path} and {png_path}")
    return 0


def cmd_sweep(args):
    import keras

    from keras_classpca.diagnostics.plots import plot_cutoff_sweep
    from keras_classpca.hybrid.builder import hybridize
    from keras_classpca.hybrid.training import fit_top

    out = _out_dir(args.out)
    (x_train, y_train), (x_test, y_test), n_classes = _load(args)
    samples = max(10 * n_classes, int(args.fraction * len(x_train)))
    rows = []
    progress = keras.utils.Progbar(len(args.cutoffs), unit_name="cutoff") if args.verbose else None
    for i, cutoff in enumerate(args.cutoffs):
        start = time.perf_counter()
        keras.utils.set_random_seed(args.seed)
        model = build_model(x_train.shape[1:], n_classes)
        solved, note = [], ""
        if cutoff:
            solve = dict(
                cutoff=cutoff,
                samples=samples,
                patches_per_image=args.patches_per_image,
                seed=args.seed,
                verbose=1 if args.verbose > 1 else 0,
            )
            try:
                report = hybridize(model, (x_train, y_train), **solve)
            except ValueError as error:
                if "distinct non-degenerate" not in str(error):
                    raise _UsageError(f"--cutoffs: cutoff {cutoff}: {error}") from None
                # More filters than the patches have distinct directions (e.g. 32 filters
                # of 3x3x1 on 8x8 digits): solve again without deduplication.
                note = "dedup_threshold=None"
                print(f"cutoff {cutoff}: {error} Solving again with {note}.")
                keras.utils.set_random_seed(args.seed)
                model = build_model(x_train.shape[1:], n_classes)
                try:
                    report = hybridize(model, (x_train, y_train), dedup_threshold=None, **solve)
                except ValueError as error2:
                    raise _UsageError(f"--cutoffs: cutoff {cutoff}: {error2}") from None
            solved = [layer.name for layer in report.layers]
        solve_seconds = time.perf_counter() - start
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        fit_start = time.perf_counter()
        fit_top(
            model,
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            verbose=2 if args.verbose > 1 else 0,
        )
        fit_seconds = time.perf_counter() - fit_start
        _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
        rows.append(
            {
                "cutoff": cutoff,
                "solved_layers": solved,
                "note": note,
                "test_accuracy": float(accuracy),
                "solve_seconds": solve_seconds,
                "fit_seconds": fit_seconds,
                "total_seconds": time.perf_counter() - start,
            }
        )
        if progress is not None:
            progress.update(
                i + 1, values=[("accuracy", float(accuracy))], finalize=i + 1 == len(args.cutoffs)
            )

    header = (
        f"{args.dataset}: {len(x_train)} training images, statistics from {samples} "
        f"({args.fraction:.0%}), {args.epochs} epoch(s), batch {args.batch_size}, seed {args.seed}"
    )
    table = [
        "| cutoff | solved layers | test accuracy | solve s | fit s | total s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        solved = ", ".join(row["solved_layers"]) or "— (plain SGD)"
        table.append(
            f"| {row['cutoff']} | {solved}{' (' + row['note'] + ')' if row['note'] else ''} | "
            f"{row['test_accuracy']:.4f} | {row['solve_seconds']:.1f} | {row['fit_seconds']:.1f} | "
            f"{row['total_seconds']:.1f} |"
        )
    text = header + "\n\n" + "\n".join(table) + "\n"
    print(text)
    with open(os.path.join(out, "sweep.md"), "w") as handle:
        handle.write(text)
    _write_json(
        os.path.join(out, "sweep.json"),
        {
            "settings": _settings(args) | {"samples": samples, "train_samples": len(x_train)},
            "rows": rows,
        },
    )
    plot_cutoff_sweep(
        rows, os.path.join(out, "sweep.png"), title=f"{args.dataset}: accuracy vs cutoff"
    )
    print(f"wrote {os.path.join(out, 'sweep.md')}, sweep.json and sweep.png")
    return 0


def cmd_filters(args):
    from keras_classpca.diagnostics import TimescaleMonitor
    from keras_classpca.diagnostics.plots import plot_filter_grid

    out = _out_dir(args.out)
    (x_train, y_train), (x_test, y_test), n_classes = _load(args)
    model = _compiled_model(x_train.shape[1:], n_classes, args.seed)
    convs = _conv_layers(model)
    if not 1 <= args.layer <= len(convs):
        raise _UsageError(
            f"--layer {args.layer}: the model has {len(convs)} Conv2D layer(s); "
            f"use 1..{len(convs)}."
        )
    layer = convs[args.layer - 1]
    print(f"training the CNN with SGD (Adam) for {args.epochs} epoch(s) on {len(x_train)} images")
    model.fit(
        x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose
    )

    samples = max(10 * n_classes, int(args.fraction * len(x_train)))
    monitor = TimescaleMonitor(
        (x_train, y_train),
        layers=[layer.name],
        samples=samples,
        patches_per_image=args.patches_per_image,
        seed=args.seed,
    )
    monitor.set_model(model)
    overlap, sgd_kernel, d, rank, _ = monitor.measure()[layer.name]

    import keras

    from keras_classpca.core.class_pca import ClassPCA
    from keras_classpca.layers.geometry import iter_rows

    inputs = keras.Model(model.inputs[0], layer.input)(monitor._x, training=False)
    rows_labels = list(
        iter_rows(
            layer,
            np.asarray(inputs),
            monitor._y,
            patches_per_image=args.patches_per_image,
            rng=np.random.default_rng(args.seed),
        )
    )
    rows = np.concatenate([r for r, _ in rows_labels])
    labels = np.concatenate([lab for _, lab in rows_labels])
    components = ClassPCA(layer.filters).fit(rows, labels).components_
    shape = tuple(layer.kernel.shape)
    png = os.path.join(out, f"filters_layer{args.layer}.png")
    plot_filter_grid(
        components.reshape(shape),
        sgd_kernel.reshape(shape),
        png,
        suptitle=(
            f"{args.dataset}, conv layer {args.layer} ('{layer.name}'): class-PCA of its "
            f"input ({samples} images)\nvs Adam after {args.epochs} epoch(s); "
            f"subspace overlap {overlap:.2f} (rank {rank} of {d}, chance {rank / d:.2f})"
        ),
    )
    np.savez(
        os.path.join(out, f"filters_layer{args.layer}.npz"),
        class_pca=components.reshape(shape),
        sgd=sgd_kernel.reshape(shape),
    )
    summary = {
        "dataset": args.dataset,
        "layer": args.layer,
        "layer_name": layer.name,
        "epochs": args.epochs,
        "samples": samples,
        "overlap": overlap,
        "rank": rank,
        "input_dim": d,
        "chance_overlap": rank / d,
    }
    _write_json(os.path.join(out, f"filters_layer{args.layer}.json"), summary)
    print(
        f"conv layer {args.layer} ('{layer.name}'): overlap of the SGD filters with the class-PCA "
        f"subspace {overlap:.3f} (rank {rank} of {d}; chance {rank / d:.3f})"
    )
    print(f"wrote {png}")
    return 0


def cmd_export(args):
    """Load a `.keras` file and write it as a TF Serving version directory."""
    import keras

    import keras_classpca  # noqa: F401  (registers the package's layers for loading)
    from keras_classpca.serving.export import export_for_serving, signature_info

    if not os.path.isfile(args.model):
        raise _UsageError(f"{args.model}: no such file (expected a .keras model file)")
    if not args.model.endswith(".keras"):
        raise _UsageError(f"{args.model}: expected a .keras model file")
    if not zipfile.is_zipfile(args.model):
        # (Keras would report such a file as "File not found".)
        raise _UsageError(
            f"{args.model}: not a .keras archive (not a zip file; truncated or corrupt?)"
        )
    try:
        model = keras.saving.load_model(args.model)
    except Exception as error:  # whatever a damaged archive raises: one line, exit 2
        raise _UsageError(
            f"{args.model}: cannot load it as a Keras model ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from None
    try:
        path = export_for_serving(
            model, args.base_dir, version=args.version, signature_name=args.signature_name
        )
    except (ValueError, TypeError, OSError) as error:
        raise _UsageError(str(error)) from None
    info = signature_info(path, args.signature_name)
    print(f"wrote {path} (backend {keras.backend.backend()})")
    print(json.dumps({"signature": args.signature_name, **info}, indent=1))
    return 0


# ---------------------------------------------------------------------- parser
def build_parser():
    from keras_classpca import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Class-based PCA weights for Keras: demo, time-scale monitor, cutoff "
        "sweep, filters, export for TF Serving.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, train_samples=True):
        p.add_argument(
            "--dataset",
            default="fashion_mnist",
            help="fashion_mnist (default), digits (scikit-learn's 8x8 set) or a TFDS "
            "data set prepared locally",
        )
        p.add_argument(
            "--batch-size", type=_positive_int, default=128, help="training batch size (128)"
        )
        p.add_argument("--seed", type=_seed, default=0, help="random seed (0)")
        p.add_argument(
            "--verbose",
            type=int,
            choices=(0, 1, 2),
            default=1,
            help="0 silent, 1 progress bars (default), 2 one line per epoch",
        )
        if train_samples:
            p.add_argument(
                "--train-samples",
                type=_positive_int,
                default=None,
                help="train on a random subset of this many training images (default: all)",
            )

    p = sub.add_parser(
        "demo",
        help="solve the bottom layers, train the rest, print the report",
        description="Run keras_classpca.demo.run_demo: hybridize the benchmark CNN "
        "from a fraction of the data and train the rest.",
    )
    common(p, train_samples=False)
    p.add_argument(
        "--cutoff", type=_cutoff, default="auto", help="layers to solve: 'auto' (default) or N"
    )
    p.add_argument(
        "--fraction",
        type=_fraction,
        default=0.1,
        help="share of the training images the statistics use (0.1)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=3, help="epochs for the layers above (3)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "timescales",
        help="train the CNN with TimescaleMonitor; JSON history + PNG",
        description="Train the benchmark CNN with SGD (Adam) and TimescaleMonitor: "
        "per-layer weight change, overlap with the class-PCA subspace "
        "of the layer's current input, settling epochs.",
    )
    common(p)
    p.add_argument("--epochs", type=_positive_int, default=8, help="training epochs (8)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--every", type=_positive_int, default=1, help="check every N epochs (1)")
    p.add_argument(
        "--monitor-samples",
        type=_positive_int,
        default=512,
        help="images the overlap is computed on (512)",
    )
    p.add_argument(
        "--patches-per-image",
        type=_positive_int,
        default=1,
        help="random conv patches per image for the overlap (1)",
    )
    p.add_argument(
        "--settle-threshold",
        type=_positive_float,
        default=0.05,
        help="per-epoch relative weight change below which a layer has settled (0.05)",
    )
    p.add_argument(
        "--noise-ceiling",
        action="store_true",
        help="also record the overlap of class-PCA subspaces of two halves of the "
        "monitor's sample (how precisely the sample fixes the subspace)",
    )
    p.add_argument(
        "--measure-overhead",
        action="store_true",
        help="also train without the monitor (same seed) and report the time ratio",
    )
    p.set_defaults(func=cmd_timescales)

    p = sub.add_parser(
        "sweep",
        help="hybrid accuracy and time vs cutoff: table + PNG",
        description="For each cutoff, solve that many bottom layers with class-PCA "
        "(hybridize), train the rest (fit_top), evaluate; cutoff 0 is "
        "plain SGD. Writes sweep.md, sweep.json and sweep.png.",
    )
    common(p)
    p.add_argument(
        "--cutoffs", type=_cutoff_list, default=[0, 1, 2], help="comma-separated, e.g. 0,1,2"
    )
    p.add_argument(
        "--fraction",
        type=_fraction,
        default=0.1,
        help="share of the training images the statistics use (0.1)",
    )
    p.add_argument("--epochs", type=_positive_int, default=3, help="training epochs per cutoff (3)")
    p.add_argument(
        "--patches-per-image",
        type=_positive_int,
        default=16,
        help="random conv patches per image for the solve (16)",
    )
    p.add_argument("--out", required=True, help="output directory (created)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "filters",
        help="class-PCA filters of conv layer N next to SGD-trained ones",
        description="Train the CNN briefly with SGD (Adam), then compute class-PCA "
        "of conv layer N's input and plot both filter sets as a grid "
        "(SGD filters matched to their closest class-PCA filter).",
    )
    common(p)
    p.add_argument("--layer", type=_positive_int, default=1, help="conv layer, counted from 1 (1)")
    p.add_argument(
        "--epochs", type=_positive_int, default=1, help="SGD epochs before comparing (1)"
    )
    p.add_argument(
        "--fraction",
        type=_fraction,
        default=0.05,
        help="share of the training images the class-PCA uses (0.05)",
    )
    p.add_argument(
        "--patches-per-image",
        type=_positive_int,
        default=16,
        help="random conv patches per image (16)",
    )
    p.add_argument("--out", required=True, help="output directory (created)")
    p.set_defaults(func=cmd_filters)

    p = sub.add_parser(
        "export",
        help="write a .keras model as a TF Serving version directory",
        description="Load MODEL (a .keras file) and write BASE_DIR/<version>/, a "
        "SavedModel with a serving_default signature (keras_classpca.export_for_serving). "
        "Runs under KERAS_BACKEND=tensorflow (default) or jax; a model trained under "
        "torch exports from its .keras file under either.",
    )
    p.add_argument("model", help="the .keras file")
    p.add_argument("base_dir", help="the model's directory, TF Serving's --model_base_path")
    p.add_argument(
        "--version",
        type=_non_negative_int,
        default=None,
        help="version number (default: one more than the largest existing)",
    )
    p.add_argument(
        "--signature-name",
        default="serving_default",
        help="SignatureDef key of the endpoint (serving_default)",
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None):
    """Entry point of `keras-classpca`; returns 0, or exits with 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2, f"{PROG}: error: a command is required (demo, timescales, sweep, filters, export)\n")
    try:
        return args.func(args)
    except _UsageError as error:
        message = " ".join(str(error).split())  # one line, whatever the message held
        parser.exit(2, f"{PROG} {args.command}: error: {message}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
