"""Spare filters: plain class-PCA against `sign_pairs="spare"` on first conv layers.

A first convolution usually has more filters than its patches have features (32
filters over 5×5 = 25 pixels in the benchmark CNN, 16 or 32 over 3×3 = 9 in the
others). Plain class-PCA fills the filters beyond the d features with further class
directions — linear combinations of the first d — and `sign_pairs="spare"` with the
negatives of the d leading directions, so that a ReLU after the layer passes both
halves of them. Each cell of `bench_default`'s grid architectures trains cutoff 1
both ways, and SGD, in the same run (same recipe: Adam, batch 128, at least 3 epochs
and 300 steps; contenders rotated per seed).

A default for convolutions with spare filters would be chosen on the benchmark CNN (the
tune half) and checked on the other architectures (held out), reported apart; the
held-out half rejected it (docs/benchmarks.md).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_spare [--seeds 3]

Writes the `bench_spare` section of docs/benchmarks.md.
"""

import statistics

from benchmarks._report import machine_line, markdown_table, write_section
from benchmarks.bench_default import grid_cells_main, run_hybrid, run_sgd

SECTION = "bench_spare"
TUNE = ("cnn",)
HELD_OUT = ("kerasio", "bn", "resnet")
FRACTIONS = (0.02, 0.1, 1.0)
CONTENDERS = ("sgd", "k1 plain", "k1 spare")


def train(name, arch, x, y, test, epochs, seed):
    if name == "sgd":
        return run_sgd(arch, x, y, test, epochs, seed)
    spare = "spare" if name.endswith("spare") else False
    return run_hybrid(arch, x, y, test, epochs, seed, 1, name=name, sign_pairs=spare)


def _half_rows(records, architectures):
    rows, gains = [], []
    for arch in architectures:
        for fraction in sorted({r["fraction"] for r in records if r["arch"] == arch}):
            runs = [r for r in records if r["arch"] == arch and r["fraction"] == fraction]
            acc = {c: [r["acc"] for r in sorted(runs, key=lambda r: r["seed"])
                       if r["contender"] == c] for c in CONTENDERS}
            if not all(acc.values()) or len(set(map(len, acc.values()))) != 1:
                continue  # a partial cell
            gain = statistics.median(s - p for s, p in zip(acc["k1 spare"], acc["k1 plain"]))
            gains.append(gain)
            median = {c: statistics.median(acc[c]) for c in CONTENDERS}
            rows.append([arch, f"{fraction:.0%}", len(acc["sgd"]),
                         *(f"{median[c]:.4f}" for c in CONTENDERS), f"{gain * 100:+.2f}",
                         f"{(median['k1 spare'] - median['sgd']) * 100:+.2f}"])
    return rows, gains


def write_report(records, command, paragraph, print_only=False):
    headers = ["model", "data", "seeds", "SGD", "k1 plain", "k1 spare",
               "spare − plain (pp, median of seeds)", "spare − SGD (pp)"]
    parts = []
    for title, archs in (("Tune half (the benchmark CNN)", TUNE),
                         ("Held-out half", HELD_OUT)):
        rows, gains = _half_rows(records, archs)
        if not rows:
            continue
        better = sum(g > 0 for g in gains)
        parts.append(f"**{title}**: spare better than plain in {better} of {len(gains)} "
                     f"cells, median {statistics.median(gains) * 100:+.2f} pp.\n\n"
                     + markdown_table(headers, rows))
    body = (
        "## Spare filters of first conv layers (`bench_spare`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Fashion-MNIST; `bench_default`'s "
        "architectures with a first convolution that has more filters than patch "
        "features; cutoff 1 with plain class-PCA (`sign_pairs=False`) and with "
        "`sign_pairs=\"spare\"`, and SGD, in the same run; test accuracy, medians over "
        "the seeds (the spare − plain column: median of the per-seed differences).\n\n"
        + "\n\n".join(parts) + "\n\n" + paragraph.strip()
    )
    write_section(SECTION, body, print_only=print_only)


def main():
    grid_cells_main(__doc__, SECTION, TUNE + HELD_OUT, FRACTIONS, CONTENDERS, train, write_report)


if __name__ == "__main__":
    main()
