"""The default path `hybridize(model, data)` on models with two inputs, Fashion-MNIST.

Two architectures (`benchmarks/grid_models.py`, `MULTI_INPUT`): "twoview" (the top and
bottom 14 rows of each image as two inputs, one CNN tower each, concatenated) and
"thumb" (the image through the benchmark CNN's convolutions and its 7×7 thumbnail, 49
values, through a Dense layer). Each cell trains, as `bench_default` does (its `run`):
end-to-end SGD and every fixed cutoff, and records the `cutoff="auto"` decision, which
is replayed on the cell.

The question it answers: does solving a multi-input model (its inputs packed into one
row, `keras_classpca/hybrid/inputs.py`) pay as solving a single-input one does, and
does the `"auto"` rule, tuned on single-input networks, hold on them? Both
architectures are held out: nothing was tuned on them.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_multi_input [--seeds 3]

Writes the `bench_multi_input` section of docs/benchmarks.md and its summary row.
"""


from benchmarks import bench_default, default_report
from benchmarks.grid_models import MULTI_INPUT as ARCHITECTURES

SECTION = "bench_multi_input"
FRACTIONS = (0.02, 0.1, 1.0)


def write_report(records, command, paragraph, print_only=False):
    default_report.write_held_out_section(
        SECTION, "The default path on models with two inputs",
        "Fashion-MNIST; two architectures "
        "(`benchmarks/grid_models.py`): `twoview` (the top and bottom 14 rows of each "
        "image as two inputs, a Conv(32, 5)–MaxPool–Conv(64, 5)–MaxPool tower each, "
        "concatenated – Dense(128) – Dense) and `thumb` (the image through the benchmark "
        "CNN's two convolutions, its 7×7 thumbnail — 49 values — through Dense(32), "
        "concatenated – Dense(128) – Dense); the data given as `fit` takes it, "
        "`([x_1, x_2], y)`; Adam, batch 128, at least 3 epochs and 300 steps; medians "
        "over {seeds} seed(s). Cells and replay as in `bench_default`: SGD and each "
        "fixed cutoff (the first k solvable layers in the planner's topological order) "
        "are trained, the default path is replayed from the recorded decision. Both "
        "architectures were held out of the rule of 2026-11-26 (tuned on single-input "
        "networks); the library's rule since 2026-11-29 is selected on these cells too "
        "(`default_report.select_rule`).",
        "twoview, thumb (held out until 2026-11-29)", "multi_input_default_accuracy",
        records, command, paragraph, print_only)


def main():
    bench_default.grid_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, write_report,
                            seeds=3)


if __name__ == "__main__":
    main()
