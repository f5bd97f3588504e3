"""Model reach: how far class-PCA solves into keras.applications models.

For ResNet50V2, MobileNetV2 and EfficientNetB0 (issue #15's target) and, beyond the
target, nine more families (`MORE_MODELS`) — `weights=None`: nothing is downloaded;
32 x 32 x 3 inputs (zero-padded up to a model's smallest input), 10 classes — the
graph planner lists the solvable layers;
`hybridize(model, (x, y), cutoff=8)` solves the first 8 from a few Fashion-MNIST
training images (zero-padded to 32 x 32, grey repeated on 3 channels), adapting
BatchNormalization layers on the way.
Reported per model: solvable layers, layers solved, the kinds solved, solve time per
layer, and the `.keras` round trip (max. abs. difference of the predictions).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_reach [--images N] [--no-write]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks._report import (
    add_report_options,
    machine_line,
    markdown_table,
    report_arguments,
    write_section,
)
from benchmarks.targets import MET, MISSED
from keras_classpca import hybridize
from keras_classpca.datasets import load_fashion_mnist
from keras_classpca.hybrid.planner import plan_model

SECTION = "bench_reach"
MODELS = ("ResNet50V2", "MobileNetV2", "EfficientNetB0")  # the target's models
# Beyond the target: other keras.applications families a user may hand to hybridize.
MORE_MODELS = ("ResNet50", "VGG16", "DenseNet121", "InceptionV3", "Xception",
               "MobileNetV3Small", "EfficientNetV2B0", "NASNetMobile", "ConvNeXtTiny")
# The smallest input side keras.applications accepts, where above 32.
MIN_SIDE = {"InceptionV3": 75, "Xception": 71}
CUTOFF = 8


def images(n, seed=0):
    """`n` Fashion-MNIST training images (n / 10 per class) as 32 x 32 x 3 floats."""
    (x, y), _ = load_fashion_mnist()
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), n // 10, replace=False)
                           for c in range(10)])
    x = np.pad(x[keep].astype("float32"), [(0, 0), (2, 2), (2, 2)])
    return np.repeat(x[..., None], 3, axis=-1), y[keep].astype("int64")


def measure(name, x, y, patches_per_image):
    pad = max(0, MIN_SIDE.get(name, 0) - x.shape[1])
    if pad:
        x = np.pad(x, [(0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)])
    start = time.perf_counter()
    model = getattr(keras.applications, name)(weights=None, input_shape=x.shape[1:],
                                              classes=10)
    build = time.perf_counter() - start
    start = time.perf_counter()
    # A model whose plan ends sooner (a layer kind class-PCA does not solve) is solved
    # as far as it goes: `cutoff=8` would be refused by name.
    cutoff = min(CUTOFF, len(plan_model(model).steps))
    report = hybridize(model, (x, y), cutoff=cutoff, batch_size=len(x),
                       patches_per_image=patches_per_image, verbose=0)
    solve = time.perf_counter() - start
    records = report.layers
    before = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        after = keras.ops.convert_to_numpy(loaded.predict(x, verbose=0))
    kinds = {}
    for record in records:
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
    return {
        "model": name,
        "solvable": len(report.candidates),
        "solved": len(records),
        "kinds": ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
        "batchnorms": sum(len(r.adapted_batchnorms) for r in records),
        "median_s": statistics.median(r.seconds for r in records),
        "max_s": max(r.seconds for r in records),
        "solve_s": solve,
        "build_s": build,
        "round_trip": float(np.max(np.abs(after - before))),
        "stop": report.stopped_because,
        "side": x.shape[1],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="training images (10 classes)")
    parser.add_argument("--patches-per-image", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=list(MODELS + MORE_MODELS),
                        help="keras.applications model names (default: the target's "
                        "three, then the others)")
    add_report_options(parser)
    args = parser.parse_args()
    paragraph, command = report_arguments(args, SECTION)
    x, y = images(args.images)
    rows = []
    for name in args.models:
        rows.append(measure(name, x, y, args.patches_per_image))
        print(rows[-1], flush=True)
    table = [
        (r["model"] + ("" if r["model"] in MODELS else " (beyond the target)")
         + ("" if r["side"] == x.shape[1] else f", {r['side']} x {r['side']}"),
         r["solvable"], r["solved"], r["kinds"], r["batchnorms"],
         f"{r['median_s']:.2f}", f"{r['max_s']:.2f}", f"{r['solve_s']:.1f}",
         f"{r['round_trip']:.1e}" if r["round_trip"] else "0")
        for r in rows
    ]
    targeted = [r for r in rows if r["model"] in MODELS]
    met = len(targeted) == len(MODELS) and all(
        r["solved"] >= CUTOFF and r["round_trip"] == 0 for r in targeted)
    measured = "; ".join(f"{r['model']}: {r['solved']} solved, max. abs. Δ "
                         f"{r['round_trip']:g}" for r in targeted)
    body = "\n".join([
        "## Model reach: keras.applications (`bench_reach`)",
        "",
        machine_line(),
        "",
        f"Command: `{command.strip()}`. {len(x)} Fashion-MNIST training images "
        f"({len(x) // 10} per class, zero-padded to 32 x 32, grey on 3 channels; further "
        "zero-padded to a model's smallest input where it is larger); models "
        "with `weights=None`, 10 classes. The graph planner "
        f"(`hybrid/planner.py`) lists the solvable layers in topological order; "
        f"`hybridize(model, (x, y), cutoff={CUTOFF})` solves the first {CUTOFF} and adapts "
        "the BatchNormalization layers once what they depend on is solved. Times per "
        "layer include its pass over the images and its BatchNormalization passes.",
        "",
        markdown_table(
            ["model", "solvable layers", f"solved (cutoff={CUTOFF})", "kinds solved",
             "BN adapted", "median s / layer", "max s / layer", "solve total s",
             "`.keras` round trip max. abs. Δ"],
            table,
        ),
        "",
        "Where each plan ends: "
        + "; ".join(f"{r['model']}: {r['stop'].rstrip('.')}" for r in rows) + ".",
        "",
        paragraph.strip(),
    ])
    write_section(SECTION, body, print_only=args.no_write,
                  targets={"reach_applications": (measured, MET if met else MISSED)})


if __name__ == "__main__":
    main()
