"""The identity after solved layers: `hybridize(solved_activation="linear")` against
the layers as written (ReLU), on an architecture its measurements did not look at.

`bench_lossless` measured `solved_activation="linear"` on the benchmark MLP and CNN
(and the Dense-rule MLPs); this benchmark checks it on `bench_default`'s other
architectures, held out (`--architectures`): the keras-io convnet (Conv(32, 3,
relu)–MaxPool–Conv(64, 3, relu)–MaxPool–Flatten–Dropout–Dense, one-hot labels,
`validation_split=0.1`), and the Conv–BN–ReLU and small residual networks (`ReLU`
layers after BatchNormalization: the identity replaces the ReLU layer that follows
each solved convolution's BatchNormalization; the ReLU after a residual `Add` stays).
Cutoffs 1 and 2, each with the ReLU kept and replaced, and SGD, in the same run (same
recipe as `bench_default`: Adam, batch 128, at least 3 epochs and 300 steps;
contenders rotated per seed).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_identity [--seeds 3]

Writes the `bench_identity` section of docs/benchmarks.md.
"""

import statistics

from benchmarks._report import machine_line, markdown_table, write_section
from benchmarks.bench_default import grid_cells_main, run_hybrid, run_sgd

SECTION = "bench_identity"
ARCHITECTURES = ("kerasio",)
FRACTIONS = (0.1, 1.0)
CUTOFFS = (1, 2)
CONTENDERS = ("sgd",) + tuple(f"k{k}{v}" for k in CUTOFFS for v in ("", " identity"))


def train(name, arch, x, y, test, epochs, seed):
    if name == "sgd":
        return run_sgd(arch, x, y, test, epochs, seed)
    cutoff, _, variant = name[1:].partition(" ")
    options = {"solved_activation": "linear"} if variant == "identity" else {}
    return run_hybrid(arch, x, y, test, epochs, seed, int(cutoff), name=name, **options)


def write_report(records, command, paragraph, print_only=False):
    rows, gains = [], []
    for arch, fraction in sorted({(r["arch"], r["fraction"]) for r in records}):
        runs = [r for r in records if (r["arch"], r["fraction"]) == (arch, fraction)]
        acc = {}
        for r in runs:
            acc.setdefault(r["contender"], {})[r["seed"]] = r["acc"]
        seeds = sorted(acc.get("sgd", {}))
        for k in CUTOFFS:
            relu, identity = acc.get(f"k{k}", {}), acc.get(f"k{k} identity", {})
            paired = [s for s in seeds if s in relu and s in identity]
            if not paired:
                continue
            diffs = [identity[s] - relu[s] for s in paired]
            gains += diffs
            rows.append([
                arch, f"{fraction:.0%}", k, len(paired),
                f"{statistics.median(acc['sgd'][s] for s in paired):.4f}",
                f"{statistics.median(relu[s] for s in paired):.4f}",
                f"{statistics.median(identity[s] for s in paired):.4f}",
                f"{statistics.median(diffs) * 100:+.2f}",
                f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                f"{statistics.median(identity[s] - acc['sgd'][s] for s in paired) * 100:+.2f}",
            ])
    headers = ["model", "data", "cutoff", "seeds", "SGD", "ReLU kept", "identity",
               "identity − ReLU (pp, median)", "identity better (seeds)",
               "identity − SGD (pp, median)"]
    better = sum(g > 0 for g in gains)
    body = (
        "## The identity after solved layers, held out (`bench_identity`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Fashion-MNIST; cutoffs 1 and 2 "
        "solved with the model's ReLU kept and with `solved_activation=\"linear\"`, and "
        "SGD, in the same run; test accuracy, medians over the seeds (differences: "
        "medians of the per-seed differences). Identity better than ReLU in "
        f"{better} of {len(gains)} seed-cells.\n\n"
        + markdown_table(headers, rows) + "\n\n" + paragraph.strip()
    )
    write_section(SECTION, body, print_only=print_only)


def main():
    grid_cells_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, CONTENDERS, train, write_report)


if __name__ == "__main__":
    main()
