"""The default path `hybridize(model, data)` on four recipes nothing was tuned on.

Four architectures (`benchmarks/grid_models.py`, `HELD_OUT`), chosen after the rule
and its thresholds were fixed, as recipes a Keras user writes that the tuning grid
(`bench_default`) does not: "vgg" (two Conv–Conv–Pool stages, "same" 3×3
convolutions, GlobalAveragePooling), "separable" (a MobileNet-like depthwise–pointwise
block and a SeparableConv2D, ReLU6), "gelu" (GELU, LeakyReLU and SiLU; SGD with
momentum on one-hot labels with label smoothing) and "uint8" (raw uint8 pixels through
a `Rescaling` layer in the model). Each cell trains, as `bench_default` does (its
`run`): end-to-end SGD and every fixed cutoff (up to 4), and records the
`cutoff="auto"` decision, which is replayed on the cell.

The question it answers: does the one-line default hold on models it was not tuned on?

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_held_out [--seeds 2]

Writes the `bench_held_out` section of docs/benchmarks.md and its summary row.
"""

from benchmarks import bench_default, default_report
from benchmarks.grid_models import HELD_OUT as ARCHITECTURES

SECTION = "bench_held_out"
FRACTIONS = (0.02, 0.1, 1.0)


def write_report(records, command, paragraph, print_only=False):
    default_report.write_held_out_section(
        SECTION, "The default path on held-out recipes",
        "Fashion-MNIST; four architectures (`benchmarks/grid_models.py`, `HELD_OUT`): "
        "`vgg` (Conv(16)–Conv(16)–Pool–Conv(32)–Conv(32)–Pool, 3×3 \"same\", GAP – "
        "Dense(64) – Dense), `separable` (Conv(16, 3, stride 2)–ReLU6, "
        "DepthwiseConv(3)–ReLU6, Conv(32, 1)–ReLU6, SeparableConv(64, 3, stride 2), GAP "
        "– Dense), `gelu` (Conv(32, 3, GELU)–Pool–Conv(64, 3)–LeakyReLU–Pool–Flatten–"
        "Dense(128, SiLU)–Dense; SGD 0.05 with momentum 0.9, one-hot labels, label "
        "smoothing 0.1) and `uint8` (uint8 pixels – Rescaling(1/255) – Conv(32, 5)–Pool–"
        "Conv(64, 3)–Pool–Flatten–Dense); Adam but for `gelu`, batch 128, at least 3 "
        "epochs and 300 steps; medians over {seeds} seed(s). Cells and replay as in "
        "`bench_default`: SGD and each fixed cutoff (the first k solvable layers) are "
        "trained, the default path is replayed from the recorded decision. All four were "
        "held out of the rule of 2026-11-26 (fixed before they were written); the "
        "library's rule since 2026-11-29 is selected on these cells too "
        "(`default_report.select_rule`).",
        "vgg, separable, gelu, uint8 (held out until 2026-11-29)", "held_out_default_accuracy",
        records, command, paragraph, print_only)


def main():
    bench_default.grid_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, write_report,
                            seeds=2)


if __name__ == "__main__":
    main()
