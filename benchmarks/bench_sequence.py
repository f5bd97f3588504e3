"""The default path `hybridize(model, data)` on 1-D networks: Fashion-MNIST rows as
28-step sequences of 28 values.

Three architectures (`benchmarks/grid_models.py`): "perstep" (a Dense layer on every
step, then Conv1D), "conv1d_bn" (Conv1D–BN–ReLU ×2) and "transformer" (a Dense token
projection, one encoder block). Each cell trains, as `bench_default` does (its `run`):
end-to-end SGD and every fixed cutoff, and records the `cutoff="auto"` decision with
every layer's probe gain, so that the rule is replayed on the cell.

The question it answers: how should the rule judge a Dense layer applied to every step
of a sequence (`policy.PER_STEP_DENSE`)? The rule judged it as a flat Dense layer
(never lossless, `dense_gain` added); the library now judges it as a convolution with a
kernel of one. The section shows both on every cell. The choice was made on the
"perstep" and "conv1d_bn" cells (the tune half) and is reported apart on the
"transformer" cells (held out).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_sequence [--seeds 2]
    # after a change of the decision, record the decisions again (cheap):
    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_sequence --decisions-only

Writes the `bench_sequence` section of docs/benchmarks.md and its summary row.
"""

import copy

from benchmarks import bench_default, default_report
from benchmarks._report import (
    machine_line,
    write_section,
)
from keras_classpca.hybrid.policy import DEFAULT_RULE, PER_STEP_DENSE

SECTION = "bench_sequence"
ARCHITECTURES = ("perstep", "conv1d_bn", "transformer")
TUNE_ARCHITECTURES = ("perstep", "conv1d_bn")
FRACTIONS = (0.02, 0.1, 1.0)


def as_flat_dense(cells):
    """The cells with every per-step Dense layer's decision row judged as a flat Dense
    layer (the rule before `PER_STEP_DENSE`)."""
    cells = copy.deepcopy(cells)
    for seeds in cells.values():
        for cell in seeds.values():
            for row in cell.get("decision", {}).get("layers", []):
                if row.get("kind") == PER_STEP_DENSE:
                    row["kind"] = "Dense"
            cell.get("decision", {}).pop("library", None)  # its timing was of the new kinds
    return cells


def write_report(records, command, paragraph, print_only=False):
    cells = default_report.cells_of(records)
    rows = default_report.summarize(cells, DEFAULT_RULE)
    before = default_report.summarize(as_flat_dense(cells), DEFAULT_RULE)
    seeds = max((r["seeds"] for r in rows), default=0)

    def halves(rows, what):
        tune = [r for r in rows if r["arch"] in TUNE_ARCHITECTURES]
        held = [r for r in rows if r["arch"] not in TUNE_ARCHITECTURES]
        return (default_report._half_line(f"Tune half ({', '.join(TUNE_ARCHITECTURES)}), "
                                          f"{what}", tune) + "\n"
                + default_report._half_line(f"Held-out half (transformer), {what}", held))

    body = (
        "## The default path on 1-D networks (`bench_sequence`)\n\n"
        f"{machine_line()}\n\nCommand: `{command}`. Fashion-MNIST rows as 28-step sequences "
        "of 28 values; three architectures (`benchmarks/grid_models.py`): `perstep` (a "
        "Dense(64) layer on every step – Conv1D(64, 3) – GAP – Dense), `conv1d_bn` "
        "(Conv1D–BN–ReLU ×2, 32 and 64 filters) and `transformer` (a Dense(64) token "
        "projection plus a position embedding, one post-LN encoder block with 4-head "
        "attention, GAP – Dense); Adam, batch 128, at least 3 epochs and 300 steps; "
        f"medians over {seeds} seed(s). Cells and replay as in `bench_default`: SGD and "
        "each fixed cutoff are trained, the default path is replayed from the recorded "
        "decision. The per-step Dense kind was chosen on the tune half and is reported "
        "apart on the held-out transformer; the library's thresholds since 2026-11-29 "
        "are selected on every cell of this grid too (`default_report.select_rule`).\n\n"
        f"Rule: `{DEFAULT_RULE}`, a Dense layer on every step judged as a convolution "
        f"with a kernel of one (`{PER_STEP_DENSE}`: may be lossless, no `dense_gain`).\n\n"
        + halves(rows, "library") + "\n"
        + halves(before, "with a per-step Dense layer judged as a flat one (before)")
        + "\n\n### Library\n\n" + default_report._table(rows)
        + "\n\n### Before: a per-step Dense layer judged as a flat Dense layer\n\n"
        + default_report._table(before) + "\n\n" + paragraph.strip()
    )
    targets = default_report.accuracy_target("sequence_default_accuracy", rows)
    write_section(SECTION, body, print_only=print_only, targets=targets)


def main():
    bench_default.grid_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, write_report,
                            seeds=2)


if __name__ == "__main__":
    main()
