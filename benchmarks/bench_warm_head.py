"""The head above a fully solved prefix: started as a least-squares classifier
(`hybridize(warm_head=True)`, the default) against its random initialisation.

When every solvable layer is solved, only the head trains: a linear classifier of
frozen features, which Adam grows slowly from a random start. `warm_head` sets it to
the ridge classifier of the solved features first (`keras_classpca/hybrid/head.py`).
On each of `bench_default`'s architectures (`benchmarks/grid_models.py`), with its
recipe (Adam, batch 128, at least 3 epochs and 300 steps), this trains SGD, cutoff 1
and the largest cutoff with the head cold and warm, in the same run, contenders
rotated per seed. The head's start was designed looking at the MLP and the benchmark
CNN (the tune half of `bench_default`); the keras-io convnet, the Conv–BN–ReLU and the
residual networks are held out, and so is "wide", whose head is wider than
`MAX_FEATURES` (fitted in the dual, on 2,048 kept rows).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_warm_head [--seeds 3]

Writes the `bench_warm_head` section of docs/benchmarks.md.
"""

from benchmarks import grid_models
from benchmarks._report import machine_line, markdown_table, median_or_nan, write_section
from benchmarks.bench_default import grid_cells_main, run_hybrid, run_sgd
from benchmarks.targets import MET, MISSED
from keras_classpca.hybrid.planner import plan_model

SECTION = "bench_warm_head"
# "wide": its head reads 3,136 features, more than `head.MAX_FEATURES`, so it is
# started from the kernel matrix of 2,048 kept rows (added after the others ran).
ARCHITECTURES = ("cnn", "mlp", "kerasio", "bn", "resnet", "wide")
TUNE_HALF = ("cnn", "mlp")
FRACTIONS = (0.01, 0.1)
CONTENDERS = ("sgd", "k1", "all cold", "all warm")


def top_cutoff(arch):
    """The number of solvable layers of `arch`: every layer under its head."""
    return len(plan_model(grid_models.build(arch)).steps)


def train(name, arch, x, y, test, epochs, seed):
    if name == "sgd":
        return run_sgd(arch, x, y, test, epochs, seed)
    if name == "k1":
        return run_hybrid(arch, x, y, test, epochs, seed, 1)
    return run_hybrid(arch, x, y, test, epochs, seed, top_cutoff(arch), name=name,
                      warm_head=name == "all warm")


def write_report(records, command, paragraph, print_only=False):
    rows, cells = [], {"tune": [], "held out": []}
    for arch, fraction in sorted({(r["arch"], r["fraction"]) for r in records},
                                 key=lambda c: (ARCHITECTURES.index(c[0]), c[1])):
        acc, wall, k = {}, {}, {}
        for r in records:
            if (r["arch"], r["fraction"]) == (arch, fraction):
                acc.setdefault(r["contender"], {})[r["seed"]] = r["acc"]
                wall.setdefault(r["contender"], {})[r["seed"]] = r["wall_s"]
                k[r["contender"]] = r.get("k")
        seeds = sorted(set.intersection(*(set(acc.get(c, {})) for c in CONTENDERS)))
        if not seeds:
            continue
        gain = median_or_nan([acc["all warm"][s] - acc["all cold"][s] for s in seeds])
        cells["tune" if arch in TUNE_HALF else "held out"].append(gain)
        rows.append([
            arch, f"{fraction:.0%}", k.get("all warm"), len(seeds),
            *(f"{median_or_nan([acc[c][s] for s in seeds]):.4f}" for c in CONTENDERS),
            f"{gain * 100:+.2f}",
            f"{sum(acc['all warm'][s] > acc['all cold'][s] for s in seeds)}/{len(seeds)}",
            f"{median_or_nan([acc['all warm'][s] - acc['sgd'][s] for s in seeds]) * 100:+.2f}",
            f"{median_or_nan([acc['all warm'][s] - acc['k1'][s] for s in seeds]) * 100:+.2f}",
            f"{median_or_nan([wall['all warm'][s] / wall['all cold'][s] for s in seeds]):.2f}×",
        ])
    headers = ["model", "data", "all = cutoff", "seeds", "SGD", "cutoff 1", "all, cold head",
               "all, warm head", "warm − cold (pp)", "warm better (seeds)",
               "warm − SGD (pp)", "warm − cutoff 1 (pp)", "time warm / cold"]
    every = cells["tune"] + cells["held out"]

    def count(gains):
        return f"{sum(g >= 0 for g in gains)}/{len(gains)}"

    met = bool(every) and all(g >= 0 for g in every)
    measured = (f"warm ≥ cold in {count(every)} cells (tune half {count(cells['tune'])}, "
                f"held out {count(cells['held out'])}); median gain "
                f"{median_or_nan(every) * 100:+.2f} pp")
    body = (
        "## A warm head above a fully solved prefix (`bench_warm_head`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Fashion-MNIST, `bench_default`'s "
        "recipe; \"all\" solves every solvable layer (the head reads solved features "
        "only), with `warm_head=False` (cold: the head's random initialisation) and "
        "`warm_head=True` (the default: the least-squares classifier of the solved "
        "features, then `fit`). Test accuracy, medians over the seeds; differences are "
        "medians of per-seed differences; time = hybridize + fit. Tune half: "
        f"{', '.join(TUNE_HALF)}; the others are held out.\n\n"
        + markdown_table(headers, rows) + "\n\n" + paragraph.strip()
    )
    write_section(SECTION, body, print_only=print_only,
                  targets={"warm_head": (measured, MET if met else MISSED)})


def main():
    grid_cells_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, CONTENDERS, train, write_report)


if __name__ == "__main__":
    main()
