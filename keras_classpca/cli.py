"""`keras-classpca`: the command-line tool (demo, time scales, cutoff sweep, filters, export).

Examples::

    keras-classpca demo --epochs 2
    keras-classpca timescales --epochs 8 --out runs/ts
    keras-classpca timescales --optimizer sgd --learning-rate 0.05 --momentum 0.9 --out runs/sgd
    keras-classpca sweep --cutoffs 0,1,2 --fraction 0.1 --out runs/sweep
    keras-classpca filters --layer 1 --out runs/filters
    keras-classpca export model.keras models/digits

Every subcommand takes `--dataset fashion_mnist|digits|<local TFDS name>`. The model is
the benchmark CNN of `keras_classpca.demo.benchmark_cnn` (kernel 5); for images smaller
than 16×16 (the 8×8 `digits`) the same architecture with kernel 3 and 'same' padding,
since two 'valid' 3×3 convolutions and two poolings do not fit in 8×8.

The experiments themselves are functions of `keras_classpca.experiments`, which the
benchmarks share. Bad arguments end with exit code 2 and a one-line message (no traceback).
"""

import argparse
import json
import os
import sys
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
_at_least_two = _checked(int, lambda v: v >= 2, "an integer >= 2")
_fraction = _checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")
_momentum = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
_cutoff = _checked(
    lambda text: text if text == "auto" else int(text),
    lambda v: v == "auto" or v >= 0,
    "'auto' or a non-negative integer",
)

_samples = _checked(
    lambda text: text if text == "auto" else int(text),
    lambda v: v == "auto" or v >= 1,
    "'auto' or a positive integer",
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
    from keras_classpca.experiments import load_images

    try:
        return load_images(args.dataset, getattr(args, "train_samples", None), args.seed)
    except (ValueError, FileNotFoundError, ImportError) as error:
        message = str(error).replace(f"data set {args.dataset!r}: ", "")
        raise _UsageError(f"--dataset {args.dataset!r}: {message}") from None


def _out_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise _UsageError(
            f"--out {path!r}: cannot create the directory ({error.strerror})."
        ) from None
    return path


def _statistics_samples(args, n_images, n_classes):
    """Images the statistics read: `--fraction` of them, raised to 10 per class (as
    many as there are at most); and how to describe that number."""
    wanted = int(args.fraction * n_images)
    samples = min(n_images, max(10 * n_classes, wanted))
    share = f"{samples / n_images:.0%} of them"
    if samples > wanted:
        share += f"; --fraction {args.fraction:g} raised to 10 per class"
    return samples, share


def _import_keras():
    """Import Keras, turning a backend it cannot load into a one-line error."""
    try:
        import keras  # noqa: F401
    except (ImportError, ValueError) as error:
        backend = os.environ.get("KERAS_BACKEND")
        where = (f"KERAS_BACKEND={backend!r}" if backend
                 else "the Keras backend of ~/.keras/keras.json")
        raise _UsageError(
            f"{where}: Keras cannot load it ({_first_line(error)}); install it, or set "
            "KERAS_BACKEND to tensorflow, jax or torch."
        ) from None


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0]


def _write_json(path, value):
    with open(path, "w") as handle:
        json.dump(value, handle, indent=1)


def _settings(args):
    return {k: v for k, v in vars(args).items() if k != "func"}


# ---------------------------------------------------------------------- subcommands
def cmd_demo(args):
    from keras_classpca.demo import run_demo

    try:
        run_demo(
            dataset=args.dataset,
            cutoff=args.cutoff,
            samples=args.samples,
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
    from keras_classpca.diagnostics.plots import plot_timescales
    from keras_classpca.experiments import run_timescales

    out = _out_dir(args.out)
    train, test, n_classes = _load(args)
    print(
        f"fit() with TimescaleMonitor: {args.epochs} epoch(s) on {len(train[0])} images, "
        f"{args.optimizer}{' (and once without the monitor)' if args.measure_overhead else ''}"
    )
    result, monitor = run_timescales(
        train, test, n_classes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        momentum=args.momentum,
        measure_overhead=args.measure_overhead,
        verbose=args.verbose,
        every=args.every,
        samples=args.monitor_samples,
        patches_per_image=args.patches_per_image,
        settle_threshold=args.settle_threshold,
        noise_ceiling=args.noise_ceiling,
        log_dir=args.log_dir,
    )
    result = {"dataset": args.dataset, **result}
    json_path = os.path.join(out, "timescales.json")
    _write_json(json_path, result)
    png_path = os.path.join(out, "timescales_curves.png")
    optimizer = "Adam" if args.optimizer == "adam" else (
        f"SGD{f' (momentum {args.momentum:g})' if args.momentum else ''}")
    plot_timescales(
        monitor.history,
        png_path,
        title=f"{args.dataset}, {len(train[0])} training images, batch {args.batch_size}, "
        f"{optimizer}",
    )
    print(monitor.format_table())
    print(
        f"test accuracy {result['test_accuracy']:.4f}; monitor checks took "
        f"{result['monitor_seconds']:.1f} s of {result['monitored_fit_seconds']:.1f} s"
    )
    if args.measure_overhead:
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
    from keras_classpca.experiments import run_cutoff_sweep

    out = _out_dir(args.out)
    train, test, n_classes = _load(args)
    samples, share = _statistics_samples(args, len(train[0]), n_classes)
    progress = keras.utils.Progbar(len(args.cutoffs), unit_name="cutoff") if args.verbose else None

    def on_row(i, row):
        if row["note"]:
            print(f"cutoff {row['cutoff']}: solved again with {row['note']}.")
        if progress is not None:
            progress.update(i + 1, values=[("accuracy", row["test_accuracy"])],
                            finalize=i + 1 == len(args.cutoffs))

    try:
        rows = run_cutoff_sweep(
            train, test, n_classes, args.cutoffs,
            epochs=args.epochs,
            samples=samples,
            batch_size=args.batch_size,
            patches_per_image=args.patches_per_image,
            seed=args.seed,
            verbose=1 if args.verbose > 1 else 0,
            on_row=on_row,
        )
    except ValueError as error:
        raise _UsageError(f"--cutoffs: {error}") from None

    header = (
        f"{args.dataset}: {len(train[0])} training images, statistics from {samples} "
        f"({share}), {args.epochs} epoch(s), batch {args.batch_size}, seed {args.seed}"
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
            "settings": _settings(args) | {"samples": samples, "train_samples": len(train[0])},
            "rows": rows,
        },
    )
    plot_cutoff_sweep(
        rows, os.path.join(out, "sweep.png"), title=f"{args.dataset}: accuracy vs cutoff"
    )
    print(f"wrote {os.path.join(out, 'sweep.md')}, sweep.json and sweep.png")
    return 0


def cmd_filters(args):
    from keras_classpca.diagnostics.plots import plot_filter_grid
    from keras_classpca.experiments import compare_filters

    out = _out_dir(args.out)
    train, _, n_classes = _load(args)
    samples, _ = _statistics_samples(args, len(train[0]), n_classes)
    print(f"training the CNN by back-propagation (Adam) for {args.epochs} epoch(s) on "
          f"{len(train[0])} images")
    try:
        found = compare_filters(
            train, n_classes,
            layer_index=args.layer,
            epochs=args.epochs,
            samples=samples,
            batch_size=args.batch_size,
            patches_per_image=args.patches_per_image,
            seed=args.seed,
            verbose=args.verbose,
        )
    except ValueError as error:
        raise _UsageError(f"--layer {args.layer}: {error}") from None
    overlap, rank, d = found["overlap"], found["rank"], found["input_dim"]
    png = os.path.join(out, f"filters_layer{args.layer}.png")
    plot_filter_grid(
        found["class_pca"],
        found["sgd"],
        png,
        suptitle=(
            f"{args.dataset}, conv layer {args.layer} ('{found['layer_name']}'): class-PCA of "
            f"its input ({found['samples']} images)\nvs Adam after {args.epochs} epoch(s); "
            f"subspace overlap {overlap:.2f} (rank {rank} of {d}, chance {rank / d:.2f})"
        ),
    )
    np.savez(
        os.path.join(out, f"filters_layer{args.layer}.npz"),
        class_pca=found["class_pca"],
        sgd=found["sgd"],
    )
    summary = {"dataset": args.dataset, "layer": args.layer, "epochs": args.epochs}
    summary |= {k: v for k, v in found.items() if k not in ("class_pca", "sgd")}
    _write_json(os.path.join(out, f"filters_layer{args.layer}.json"), summary)
    print(
        f"conv layer {args.layer} ('{found['layer_name']}'): overlap of the SGD filters with "
        f"the class-PCA subspace {overlap:.3f} (rank {rank} of {d}; chance {rank / d:.3f})"
    )
    print(f"wrote {png}")
    return 0


def cmd_export(args):
    """Load a `.keras` file and write it as a TF Serving version directory."""
    import keras

    import keras_classpca  # noqa: F401  (registers the package's layers for loading)
    from keras_classpca.serving import export_for_serving, signature_info

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
    print(json.dumps(info, indent=1))  # names its signature itself
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
        description="Run keras_classpca.demo.run_demo: the default path "
        "hybridize(model, data) on the benchmark CNN, then train the rest.",
    )
    common(p, train_samples=False)
    p.add_argument(
        "--cutoff", type=_cutoff, default="auto", help="layers to solve: 'auto' (default) or N"
    )
    p.add_argument(
        "--samples",
        type=_samples,
        default="auto",
        help="training images each layer's statistics read: 'auto' (default: until its "
        "class subspaces settle) or N",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=3, help="epochs for the layers above (3)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "timescales",
        help="train the CNN with TimescaleMonitor; JSON history + PNG",
        description="Train the benchmark CNN (Adam, or plain SGD with --optimizer sgd) "
        "with TimescaleMonitor: "
        "per-layer weight change, overlap with the class-PCA subspace "
        "of the layer's current input, settling epochs.",
    )
    common(p)
    p.add_argument("--epochs", type=_positive_int, default=8, help="training epochs (8)")
    p.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="adam (default) or plain sgd (the paper's setting; see --momentum)",
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=None,
        help="learning rate (default: Keras' default for the optimizer)",
    )
    p.add_argument(
        "--momentum", type=_momentum, default=0.0, help="momentum for --optimizer sgd (0)"
    )
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument(
        "--log-dir", default=None, help="also write the curves to TensorBoard in this directory"
    )
    p.add_argument("--every", type=_positive_int, default=1, help="check every N epochs (1)")
    p.add_argument(
        "--monitor-samples",
        type=_at_least_two,
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
        description="Train the CNN briefly by back-propagation (Adam), then compute "
        "class-PCA of conv layer N's input and plot both filter sets as a grid "
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
        parser.exit(
            2, f"{PROG}: error: a command is required (demo, timescales, sweep, filters, export)\n"
        )
    try:
        _import_keras()
        return args.func(args)
    except _UsageError as error:
        message = " ".join(str(error).split())  # one line, whatever the message held
        parser.exit(2, f"{PROG} {args.command}: error: {message}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
