"""Residual and 1-D networks against SGD: every fixed cutoff and the default path.

(a) Issue #15's residual CNN (`grid_models`: Conv–BN–ReLU stem, 3 stages × 2 basic
blocks, global average pooling) at 10 % and 100 % of Fashion-MNIST, cutoffs 1…6 and
the default `hybridize(model, data)` against SGD; (b) a Conv1D network on the image
rows as 28-step sequences, cutoffs 1, 2 and the default against SGD. Same recipe as
`bench_default`: Adam, batch 128, at least 3 epochs and 300 steps; contenders rotate
per seed; the default path is run for real here (not replayed).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_residual [--seeds 3]

Writes the `bench_residual` section of docs/benchmarks.md and its summary rows.
"""

import argparse
import statistics

from benchmarks._report import (
    add_report_options,
    default_results,
    machine_line,
    markdown_table,
    met,
    write_section,
)
from benchmarks.bench_default import epochs_for, run_contenders
from benchmarks.common import rotated, run_benchmark, subset
from keras_classpca.datasets import load_dataset

SECTION = "bench_residual"
CELLS = (("resnet_3x2", 0.1, 6), ("resnet_3x2", 1.0, 6), ("conv1d", 1.0, 2))


def run(args, checkpoint):
    (x_all, y_all), test = load_dataset("fashion_mnist")
    cells = [c for c in CELLS if f"{c[0]}@{c[1]:g}" in args.cells.split(",")]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arch, fraction, max_cutoff in cells:
            x, y = subset(x_all, y_all, fraction, seed)
            epochs = epochs_for(len(x))
            cell = dict(arch=arch, fraction=fraction, seed=seed, n=len(x), epochs=epochs)
            contenders = rotated(["sgd", "auto"] + list(range(1, max_cutoff + 1)), seed)
            run_contenders(args.results, contenders, arch, x, y, test, epochs, seed, cell)
        checkpoint()


def write_report(records, command, paragraph, print_only=False):
    rows, targets = [], {}
    for arch, fraction, _ in CELLS:
        runs = [r for r in records if r["arch"] == arch and r["fraction"] == fraction]
        if not runs:
            continue
        names = sorted({r["contender"] for r in runs},
                       key=lambda c: (c != "sgd", c == "default", c))
        acc = {c: statistics.median(r["acc"] for r in runs if r["contender"] == c)
               for c in names}
        wall = {c: statistics.median(r["wall_s"] for r in runs if r["contender"] == c)
                for c in names}
        picks = [r["k"] for r in runs if r["contender"] == "default"]
        seeds = len({r["seed"] for r in runs})
        for c in names:
            rows.append([arch, f"{fraction:.0%}", seeds,
                         c + (f" (picked {','.join(map(str, picks))})" if c == "default" else ""),
                         f"{acc[c]:.4f}", f"{(acc[c] - acc['sgd']) * 100:+.2f}",
                         f"{wall[c]:.1f}", f"{wall[c] / wall['sgd']:.2f}×"])
        fixed = [c for c in names if c.startswith("k")]
        if arch == "resnet_3x2" and fraction == 1.0:
            deep = [c for c in fixed if int(c[1:]) >= 2]
            good = [c for c in deep if acc[c] >= acc["sgd"] - 0.003
                    and wall[c] <= 0.7 * wall["sgd"]]
            best = max(deep, key=lambda c: acc[c] - acc["sgd"]) if deep else None
            if best:
                targets["reach_residual_100"] = (
                    f"{best}: {(acc[best] - acc['sgd']) * 100:+.2f} pp at "
                    f"{wall[best] / wall['sgd']:.2f}× ({len(good)} cutoff(s) ≥ 2 meet it)",
                    met(bool(good)))
        if arch == "resnet_3x2" and fraction == 0.1 and fixed:
            best = max(fixed, key=lambda c: acc[c])
            targets["reach_residual_10"] = (
                f"best {best}: {(acc[best] - acc['sgd']) * 100:+.2f} pp; default "
                f"{(acc.get('default', 0) - acc['sgd']) * 100:+.2f} pp",
                met(acc[best] > acc["sgd"]))
        if arch == "conv1d" and "k1" in acc:
            targets["reach_conv1d"] = (f"cutoff 1: {(acc['k1'] - acc['sgd']) * 100:+.2f} pp",
                                       met(acc["k1"] >= acc["sgd"] - 0.003))
    body = (
        "## Residual and 1-D networks (`bench_residual`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Fashion-MNIST; the residual CNN of "
        "issue #15 (Conv–BN–ReLU stem, 3 stages × 2 basic blocks, GAP) and a Conv1D "
        "network on the image rows (`benchmarks/grid_models.py`); Adam, batch 128, at "
        "least 3 epochs and 300 steps; medians over the seeds. `default` is "
        "`hybridize(model, data)` run for real.\n\n"
        + markdown_table(["model", "data", "seeds", "contender", "test acc.", "Δ SGD (pp)",
                          "wall s", "time / SGD"], rows)
        + "\n\n" + paragraph.strip()
    )
    write_section(SECTION, body, print_only=print_only, targets=targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--cells", default=",".join(f"{a}@{f:g}" for a, f, _ in CELLS),
                        help="architecture@fraction cells to run (default: all)")
    add_report_options(parser, default_results(SECTION))
    args = parser.parse_args()
    run_benchmark(args, SECTION, write_report, lambda checkpoint: run(args, checkpoint))


if __name__ == "__main__":
    main()
