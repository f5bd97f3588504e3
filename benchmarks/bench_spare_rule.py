"""The rule `bench_spare` read off its held-out half, checked on recipes it never saw.

`bench_spare` found that spare filters (`sign_pairs="spare"`: the filters a first
convolution has beyond its patch features become the negatives of its leading
directions) gained on the networks whose first convolution feeds its rectifier
directly, and lost where BatchNormalization comes between. As that rule was read off
its held-out half, it needed a grid of its own before it could become a default. This
is that grid: the four held-out recipes of `bench_held_out` (`grid_models.HELD_OUT`),
each with a first convolution that has more filters than patch features and feeds a
rectifier directly (ReLU, ReLU6, GELU). Only cutoff 1 with spare filters is trained
here; SGD and plain cutoff 1 ("k1") are `bench_held_out`'s runs of the same cells,
seeds and recipe from before spare filters became the default (2026-11-29, kept in
`results/bench_held_out_plain_filters.jsonl`; training is deterministic on this CPU: a
rerun of a cell reproduces its test accuracies to the digit).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_spare_rule [--seeds 2]

Writes the `bench_spare_rule` section of docs/benchmarks.md (needs those records).
"""

import statistics

from benchmarks._report import (
    RESULTS_DIR,
    load_records,
    machine_line,
    markdown_table,
    write_section,
)
from benchmarks.bench_default import grid_cells_main, run_hybrid
from benchmarks.grid_models import HELD_OUT

SECTION = "bench_spare_rule"
# bench_held_out's SGD and cutoff-1 runs with plain filters (before spare filters
# became the default of such a convolution): the references of every cell.
PLAIN_REFERENCE = RESULTS_DIR / "bench_held_out_plain_filters.jsonl"
FRACTIONS = (0.02, 0.1, 1.0)


def train(name, arch, x, y, test, epochs, seed):
    return run_hybrid(arch, x, y, test, epochs, seed, 1, name=name, sign_pairs="spare")


def _rows(records, reference):
    """Per (arch, fraction): the medians and the per-seed spare − plain differences."""
    accuracy = {}
    for record in reference + records:
        key = (record["arch"], record["fraction"], record["seed"])
        accuracy.setdefault(key, {})[record["contender"]] = record.get("acc")
    rows, gains, seed_gains = [], [], []
    for arch in HELD_OUT:
        for fraction in FRACTIONS:
            seeds = sorted(s for (a, f, s), runs in accuracy.items()
                           if a == arch and f == fraction
                           and all(runs.get(c) is not None for c in ("sgd", "k1", "k1 spare")))
            if not seeds:
                continue
            runs = [accuracy[(arch, fraction, s)] for s in seeds]
            per_seed = [r["k1 spare"] - r["k1"] for r in runs]
            seed_gains += per_seed
            gains.append(statistics.median(per_seed))
            median = {c: statistics.median(r[c] for r in runs) for c in ("sgd", "k1", "k1 spare")}
            rows.append([arch, f"{fraction:.0%}", len(seeds), f"{median['sgd']:.4f}",
                         f"{median['k1']:.4f}", f"{median['k1 spare']:.4f}",
                         " / ".join(f"{g * 100:+.2f}" for g in per_seed),
                         f"{(median['k1 spare'] - median['sgd']) * 100:+.2f}"])
    return rows, gains, seed_gains


def write_report(records, command, paragraph, print_only=False):
    reference = [r for r in load_records(PLAIN_REFERENCE)
                 if r["contender"] in ("sgd", "k1")]
    rows, gains, seed_gains = _rows(records, reference)
    headers = ["model", "data", "seeds", "SGD", "k1 plain", "k1 spare",
               "spare − plain per seed (pp)", "spare − SGD (pp, medians)"]
    better = sum(g > 0 for g in gains)
    summary = (f"Spare better than plain in {better} of {len(gains)} cells "
               f"({sum(g > 0 for g in seed_gains)} of {len(seed_gains)} seeds), median "
               f"{statistics.median(gains) * 100:+.2f} pp." if gains else "No cell complete.")
    body = (
        "## Spare filters on held-out recipes (`bench_spare_rule`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. The rule `bench_spare` read off its "
        "held-out half — spare filters (`sign_pairs=\"spare\"`) for a first convolution "
        "that has more filters than patch features and feeds its rectifier directly — "
        "checked on the four recipes of `bench_held_out`, none of which it was read "
        "from: `vgg` (16 filters over 3×3 = 9 features, ReLU), `separable` (16 over 9, "
        "ReLU6), `gelu` (32 over 9, GELU) and `uint8` (32 over 5×5 = 25, ReLU). Cutoff "
        "1 with spare filters trained here; SGD and plain cutoff 1 are `bench_held_out`'s "
        "runs of the same cells (same seeds and recipe; training is deterministic on "
        "this CPU).\n\n**" + summary + "**\n\n" + markdown_table(headers, rows)
        + "\n\n" + paragraph.strip()
    )
    write_section(SECTION, body, print_only=print_only)


def main():
    grid_cells_main(__doc__, SECTION, HELD_OUT, FRACTIONS, ("k1 spare",), train,
                    write_report)


if __name__ == "__main__":
    main()
