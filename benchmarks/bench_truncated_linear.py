"""The first seed's claim: a low ReLU layer acts as a (truncated) linear layer.

For the benchmark CNN and MLP, the bottom `cutoff` layers are solved (class-PCA,
library defaults) and the activation after each solved layer is either kept (ReLU) or
replaced by the identity (a linear layer: its weights are then a truncated set of
eigenvectors, the top trains as usual). If ReLU after a solved layer does nothing a
linear map would not, both reach the same test accuracy. The share of the solved
layer's units that are active (pre-activation > 0) on the data says how "truncated"
the ReLU is there.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_truncated_linear [--quick]
"""

import argparse
import time

import keras
import numpy as np

from benchmarks._report import (
    add_report_options,
    default_results,
    machine_line,
    markdown_table,
    write_section,
)
from benchmarks.common import (
    BATCH,
    build_model,
    compile_model,
    evaluate,
    fmt,
    med,
    run_benchmark,
    save_run,
    subset,
)
from keras_classpca.datasets import load_dataset
from keras_classpca.hybrid.builder import hybridize
from keras_classpca.hybrid.training import fit_top

SECTION = "bench_truncated_linear"


def run_case(kind, cutoff, activation, seed, x, y, x_test, y_test, epochs):
    keras.utils.set_random_seed(seed)
    model = build_model(kind)
    start = time.perf_counter()
    report = hybridize(model, (x, y), cutoff=cutoff, samples=min(6000, len(x)), seed=seed,
                       verbose=0)
    active = []
    for solved in report.layers:
        layer = model.get_layer(solved.name)
        # Pre-activations of the solved layer on a sample: the share above zero.
        probe = keras.Model(model.inputs[0], layer.output)
        saved, layer.activation = layer.activation, keras.activations.linear
        pre = keras.ops.convert_to_numpy(probe(x[:512]))
        layer.activation = saved
        active.append(float(np.mean(pre > 0)))
        if activation == "linear":
            layer.activation = keras.activations.linear
    compile_model(model)
    fit_top(model, x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return dict(model=kind, cutoff=cutoff, contender=activation, seed=seed,
                acc=evaluate(model, x_test, y_test), active=active,
                wall_s=time.perf_counter() - start)


def write_report(records, command, paragraph, print_only=False):
    rows = []
    keys = sorted({(r["model"], r["cutoff"]) for r in records})
    for kind, cutoff in keys:
        for activation in ("relu", "linear"):
            runs = [r for r in records if (r["model"], r["cutoff"], r["contender"])
                    == (kind, cutoff, activation)]
            if not runs:
                continue
            relu = {r["seed"]: r["acc"] for r in records if (r["model"], r["cutoff"],
                    r["contender"]) == (kind, cutoff, "relu")}
            delta = med([100 * (r["acc"] - relu[r["seed"]]) for r in runs if r["seed"] in relu])
            active = " / ".join(f"{med([r['active'][i] for r in runs]):.2f}"
                                for i in range(len(runs[0]["active"])))
            rows.append([kind.upper(), cutoff, activation, len(runs),
                         fmt(med([r["acc"] for r in runs]), ".4f"),
                         "–" if activation == "relu" else fmt(delta, "+.2f"), active])
    fractions = sorted({r["fraction"] for r in records})
    body = [
        "## Is a solved ReLU layer a truncated linear layer? (`bench_truncated_linear`)",
        "",
        machine_line(),
        "",
        f"Command: `{command}`. Fashion-MNIST, {', '.join(f'{f:.0%}' for f in fractions)} "
        "of the training images, 3 epochs, Adam; the solved layers keep ReLU or get the "
        "identity instead; medians over seeds. Active share: the share of each solved "
        "layer's pre-activations above 0 on 512 training images.",
        "",
        markdown_table(["model", "cutoff", "after the solved layers", "seeds", "test acc",
                        "Δ vs ReLU (pp)", "active share (per solved layer)"], rows),
        "",
        paragraph.strip(),
    ]
    write_section(SECTION, "\n".join(body), print_only=print_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CNN cutoff 1, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3)
    add_report_options(parser, default_results(SECTION))
    args = parser.parse_args()
    cases = [("cnn", 1), ("cnn", 2), ("mlp", 1), ("mlp", 2)]
    if args.quick:
        args.seeds, cases = args.seeds[:1], cases[:1]

    def run(checkpoint):
        (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist")
        for seed in args.seeds:
            x, y = subset(x_train, y_train, args.fraction, seed)
            for kind, cutoff in cases:
                for activation in ("relu", "linear"):
                    record = run_case(kind, cutoff, activation, seed, x, y, x_test, y_test,
                                      args.epochs)
                    save_run(args.results, record, fraction=args.fraction)
            checkpoint()

    run_benchmark(args, SECTION, write_report, run)


if __name__ == "__main__":
    main()
