"""The analysis of `bench_default`: replay an `AutoRule` on the grid, select it
(`select_rule`: on every Fashion-MNIST grid; `tune`: on some architectures), and write
the section.

The default path of a cell = the recorded decision up to the first layer the rule
rejects + the training run of the fixed cutoff it picks (SGD for 0). Its cost: for the
library's rule, the library's own decision, timed (`evidence["library"]`); for other
rules (tuning), the decision sample plus each layer's solve and probes up to the
rejected one, from the exploring decision. Accuracy and time
are medians over seeds per (architecture, fraction) cell.
"""

import itertools
import statistics

import numpy as np

from benchmarks._report import (
    default_results,
    load_records,
    machine_line,
    markdown_table,
    met,
    write_section,
)
from keras_classpca.hybrid.policy import DEFAULT_RULE, AutoRule

SECTION = "bench_default"
TUNE_ARCHITECTURES = ("cnn", "mlp")
# The grids the library's rule is selected on (`select_rule`): every Fashion-MNIST one.
# The digits grids (`bench_held_out_digits`, `bench_fresh_digits`) are not among them.
SELECTION_GRIDS = ("bench_default", "bench_held_out", "bench_sequence", "bench_multi_input")
WITHIN = 0.005  # "within 0.5 pp of the best fixed cutoff"
BELOW_SGD = 0.01  # "never more than 1 pp below SGD"


def cells_of(records):
    """`{(arch, fraction): {seed: {"decision": evidence, "sgd": run, "k1": run, ...}}}`;
    a later decision record of a cell replaces an earlier one."""
    cells = {}
    for record in records:
        seeds = cells.setdefault((record["arch"], record["fraction"]), {})
        cell = seeds.setdefault(record["seed"], {"n": record["n"]})
        if record["contender"] == "decision":
            cell["decision"] = record["evidence"]
        else:
            cell[record["contender"]] = record
    return cells


def replay(cell, rule):
    """`(k, accuracy, wall seconds, decision seconds)` of the default path on one seed's
    cell, or None if the rule picks a cutoff that was not run."""
    evidence = cell["decision"]
    samples_per_class = cell["n"] / 10
    cutoff, cost, owed = 0, evidence.get("head_s", 0.0), 0.0
    for position, row in enumerate(evidence["layers"]):
        kind = row.get("kind") or ("Dense" if row["layer"].startswith("dense") else "Conv2D")
        explained = row.get("explained_variance", 0)
        probes = row.get("probe_seconds", {"before": 0.0, "after": 0.0})
        first = row.get("first", True)  # records before 2026-11-29: the rule of then
        if rule.lossless(explained, kind, first):
            # Lossless: the library skips this layer's probes; the next layer then
            # computes the "before" probe this row's "after" probe cached for it.
            cost += row.get("seconds", 0.0) - probes["before"] - probes["after"]
            owed = probes["after"]
            cutoff += 1
            continue
        cost += row.get("seconds", 0.0) + owed
        owed = 0.0
        if "unsolvable" in row or not rule.keep(row["gain"], samples_per_class, kind,
                                                position, explained, first):
            break
        cutoff += 1
    library = evidence.get("library")
    if library and library["rule"] == repr(rule) and library["cutoff"] == cutoff:
        cost = library["seconds"]  # measured: the library's decision with this rule
    run = cell.get("sgd" if cutoff == 0 else f"k{cutoff}")
    if run is None:
        return None
    return cutoff, run["acc"], run["wall_s"] + cost, cost


def contenders(seeds):
    names = set()
    for cell in seeds.values():
        names.update(k for k in cell if k == "sgd" or (k.startswith("k") and k[1:].isdigit()))
    return sorted(names, key=lambda c: -1 if c == "sgd" else int(c[1:]))


def summarize(cells, rule):
    """One row dict per (arch, fraction): medians of every contender and of the default."""
    rows = []
    for (arch, fraction), seeds in sorted(cells.items()):
        complete = {s: c for s, c in seeds.items() if "decision" in c and "sgd" in c}
        if not complete:
            continue
        names = contenders(complete)
        acc = {c: statistics.median(cell[c]["acc"] for cell in complete.values() if c in cell)
               for c in names}
        wall = {c: statistics.median(cell[c]["wall_s"] for cell in complete.values()
                                     if c in cell) for c in names}
        replays = [replay(cell, rule) for cell in complete.values()]
        if any(r is None for r in replays):
            continue
        best = max(names, key=lambda c: acc[c])
        default_acc = statistics.median(r[1] for r in replays)
        default_wall = statistics.median(r[2] for r in replays)
        rows.append(dict(
            arch=arch, fraction=fraction, n=next(iter(complete.values()))["n"],
            seeds=len(complete), acc=acc, wall=wall, best=best, picks=[r[0] for r in replays],
            default_acc=default_acc, default_wall=default_wall,
            decision_s=statistics.median(r[3] for r in replays),
            regret=acc[best] - default_acc, below_sgd=acc["sgd"] - default_acc,
            time_vs_best=default_wall / wall[best], time_vs_sgd=default_wall / wall["sgd"],
        ))
    return rows


def score(rows):
    """What the rule is tuned for, best first: cells within 0.5 pp of the best fixed
    cutoff, then cells not more than 1 pp below SGD, then the mean shortfall."""
    within = sum(r["regret"] <= WITHIN for r in rows)
    safe = sum(r["below_sgd"] <= BELOW_SGD for r in rows)
    return (within, safe, -float(np.mean([r["regret"] for r in rows])) if rows else 0.0)


def tune(cells, architectures=TUNE_ARCHITECTURES):
    """The `AutoRule` with the best `score` on the cells of `architectures` (None: all)."""
    tune_cells = {key: seeds for key, seeds in cells.items()
                  if architectures is None or key[0] in architectures}
    candidates = []
    for base, per_layer, slope, dense in itertools.product(
            np.arange(-0.06, 0.0401, 0.01), np.arange(0.0, 0.0601, 0.01),
            np.arange(0.0, 0.0301, 0.005), np.arange(0.0, 0.1501, 0.05)):
        rule = AutoRule(*(round(float(v), 4) for v in (base, per_layer, slope, dense)))
        rows = summarize(tune_cells, rule)
        # Ties: the smallest thresholds (the rule closest to "keep what does not hurt").
        size = sum(abs(v) for v in (base, per_layer, slope, dense))
        candidates.append((score(rows), -size, rule))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return candidates[0][2]


def select_rule(records_of=None):
    """The rule `tune` selects on every cell of the `SELECTION_GRIDS`: how the library's
    `DEFAULT_RULE` was chosen. A grid's records come from `records_of` (`{grid:
    records}`) when it has them, else from its results file in `benchmarks/results`."""
    records_of = records_of or {}
    cells = {}
    for grid in SELECTION_GRIDS:
        records = records_of.get(grid)
        if records is None:
            records = load_records(default_results(grid))
        cells.update(cells_of(records))  # architecture names differ between the grids
    return tune(cells, architectures=None)


def _fraction(f):
    return f"{f:.0%}"


def _table(rows):
    table = []
    for r in rows:
        fixed = " · ".join(
            f"{'SGD' if c == 'sgd' else c}: {r['acc'][c]:.4f} / {r['wall'][c]:.1f}s"
            for c in r["acc"])
        table.append([
            r["arch"], _fraction(r["fraction"]), r["n"], fixed,
            "SGD" if r["best"] == "sgd" else r["best"],
            ",".join(str(p) for p in r["picks"]),
            f"{r['default_acc']:.4f}", f"{r['default_wall']:.1f} ({r['decision_s']:.1f})",
            f"{-r['regret'] * 100:+.2f}", f"{-r['below_sgd'] * 100:+.2f}",
            f"{r['time_vs_best']:.2f}×", f"{r['time_vs_sgd']:.2f}×",
        ])
    return markdown_table(
        ["model", "data", "n", "test acc. / wall time: SGD and each fixed cutoff k",
         "best fixed", "default picks (per seed)", "default acc.",
         "default s (of which decision)", "Δ best (pp)", "Δ SGD (pp)", "time / best",
         "time / SGD"], table)


def _half_line(name, rows):
    if not rows:
        return f"- **{name}**: no complete cell."
    within = sum(r["regret"] <= WITHIN for r in rows)
    below = sum(r["below_sgd"] > BELOW_SGD for r in rows)
    slow = sum(r["time_vs_best"] > 1.1 for r in rows)
    big = [r for r in rows if r["fraction"] >= 0.1]
    slower_than_sgd = sum(r["time_vs_sgd"] > 1.0 for r in big)
    return (
        f"- **{name}** ({len(rows)} cells): within 0.5 pp of the best fixed cutoff in "
        f"{within}/{len(rows)} ({within / len(rows):.0%}); more than 1 pp below SGD in "
        f"{below}; slower than 1.1× the best fixed cutoff in {slow}; slower than SGD in "
        f"{slower_than_sgd} of the {len(big)} cells at ≥ 10 % data."
    )


def accuracy_target(key, rows):
    """`{key: (measured, status)}`: the default within 0.5 pp of the best fixed cutoff
    in ≥ 90 % of `rows`, never more than 1 pp below SGD."""
    if not rows:
        return {}
    within = sum(r["regret"] <= WITHIN for r in rows)
    below = sum(r["below_sgd"] > BELOW_SGD for r in rows)
    return {key: (f"within 0.5 pp in {within}/{len(rows)} ({within / len(rows):.0%}); "
                  f"> 1 pp below SGD in {below}",
                  met(within >= 0.9 * len(rows) and below == 0))}


def write_held_out_section(section, title, description, half, target_key, records,
                           command, paragraph, print_only=False):
    """The section of a grid of held-out architectures (`bench_multi_input`,
    `bench_held_out`): its cells replayed with the library's rule, one line for the
    half, the table and the accuracy target `target_key`. `description` follows the
    command; `{seeds}` in it is the number of seeds."""
    rows = summarize(cells_of(records), DEFAULT_RULE)
    seeds = max((r["seeds"] for r in rows), default=0)
    body = (
        f"## {title} (`{section}`)\n\n{machine_line()}\n\nCommand: `{command}`. "
        + description.format(seeds=seeds) + f"\n\nRule: `{DEFAULT_RULE}`.\n\n"
        + _half_line(half, rows) + "\n\n" + _table(rows) + "\n\n" + paragraph.strip()
    )
    write_section(section, body, print_only=print_only,
                  targets=accuracy_target(target_key, rows))


def target_status(rows):
    """`{target key: (measured, status)}` over every cell (both halves)."""
    if not rows:
        return {}
    within = sum(r["regret"] <= WITHIN for r in rows)
    below = sum(r["below_sgd"] > BELOW_SGD for r in rows)
    slow = sum(r["time_vs_best"] > 1.1 for r in rows)
    big = [r for r in rows if r["fraction"] >= 0.1]
    slower_than_sgd = sum(r["time_vs_sgd"] > 1.0 for r in big)
    worst_time = max(r["time_vs_best"] for r in rows)
    targets = {
        "default_time": (
            f"≤ 1.1× best in {len(rows) - slow}/{len(rows)} cells (worst "
            f"{worst_time:.2f}×); ≤ SGD in {len(big) - slower_than_sgd}/{len(big)} at ≥ 10 %",
            met(slow == 0 and slower_than_sgd == 0)),
        "default_accuracy": (
            f"within 0.5 pp in {within}/{len(rows)} ({within / len(rows):.0%}); > 1 pp "
            f"below SGD in {below}", met(within >= 0.9 * len(rows) and below == 0)),
    }
    cnn = [r for r in rows if r["arch"] == "cnn" and r["fraction"] == 1.0]
    if cnn:
        r = cnn[0]
        targets["default_cnn_100"] = (
            f"{-r['below_sgd'] * 100:+.2f} pp vs SGD at {r['time_vs_sgd']:.2f}× its time",
            met(r["below_sgd"] <= 0 and r["time_vs_sgd"] <= 0.6))
    return targets


def write_report(records, command, paragraph, print_only=False):
    cells = cells_of(records)
    tuned = tune(cells)
    selected = select_rule({SECTION: records})
    rows = summarize(cells, DEFAULT_RULE)
    tune_rows = [r for r in rows if r["arch"] in TUNE_ARCHITECTURES]
    held_rows = [r for r in rows if r["arch"] not in TUNE_ARCHITECTURES]
    seeds = max((r["seeds"] for r in rows), default=0)
    epochs = sorted({(r["fraction"], r.get("epochs")) for r in records})
    epochs = ", ".join(f"{e} at {_fraction(f)}" for f, e in epochs)
    body = (
        "## The default path `hybridize(model, data)` on a grid (`bench_default`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Fashion-MNIST, five architectures "
        "(`benchmarks/grid_models.py`: the benchmark CNN, the MLP, the keras-io convnet "
        "with Dropout, softmax and one-hot labels, a Conv–BN–ReLU network, a small residual "
        f"network) × fractions of the training data; Adam, batch 128, for at least 3 epochs "
        f"and 300 steps (epochs: {epochs}); medians over "
        f"{seeds} seed(s). Every cell trains SGD and each fixed cutoff with the default "
        "`samples=\"auto\"`; the default path (`cutoff=\"auto\"`) is replayed from the "
        "recorded decision (its cost up to the first rejected layer is added) and the "
        "fixed cutoff it picks. The library's rule is selected on every cell of the "
        "four Fashion-MNIST grids (`default_report.select_rule`: this one, "
        "`bench_held_out`, `bench_sequence` and `bench_multi_input`); the 8×8 digits "
        "grids (`bench_held_out_digits`, `bench_fresh_digits`) are held out. Until "
        "2026-11-29 it was selected on this grid's "
        f"{' and '.join(TUNE_ARCHITECTURES)} cells alone, the other cells held out.\n\n"
        f"Rule in the library: `{DEFAULT_RULE}`; the rule the four grids select: "
        f"`{selected}`; the rule this grid's {' and '.join(TUNE_ARCHITECTURES)} cells "
        f"alone select: `{tuned}`.\n\n"
        + _half_line(", ".join(TUNE_ARCHITECTURES), tune_rows) + "\n"
        + _half_line("The other architectures", held_rows) + "\n\n"
        + "### " + " and ".join(TUNE_ARCHITECTURES) + "\n\n" + _table(tune_rows) + "\n\n"
        + "### The other architectures\n\n" + _table(held_rows) + "\n\n"
        + paragraph.strip()
    )
    write_section(SECTION, body, print_only=print_only, targets=target_status(rows))
