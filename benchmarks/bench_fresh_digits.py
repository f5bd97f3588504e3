"""The default path `hybridize(model, data)` on four digits recipes written after the rule.

The `cutoff="auto"` rule of `hybrid/policy.py` was selected on the four Fashion-MNIST
grids (`default_report.select_rule`); `bench_held_out_digits` checked it on 8×8 digits,
but its cells had been seen when the selection was redone. These four architectures
(`benchmarks/grid_models.py`, `DIGITS_FRESH`) were written after the selection and run
once: a VGG-style chain, a depthwise/separable one (ReLU6), one with GELU, LeakyReLU
and SiLU, and a LeNet-like tanh network with average pooling. Cells as in
`bench_default`'s `run`: SGD, every fixed cutoff (up to 6), the decision replayed.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_fresh_digits [--seeds 2]

Writes the `bench_fresh_digits` section of docs/benchmarks.md and its summary row.
"""

from benchmarks import bench_default, default_report
from benchmarks.bench_held_out_digits import FRACTIONS
from benchmarks.grid_models import DIGITS_FRESH as ARCHITECTURES

SECTION = "bench_fresh_digits"


def write_report(records, command, paragraph, print_only=False):
    default_report.write_held_out_section(
        SECTION, "The default path on digits recipes written after the rule",
        "scikit-learn's 8×8 digits (as `bench_held_out_digits`: 1,350 training and 447 "
        "test images); four architectures (`benchmarks/grid_models.py`, `DIGITS_FRESH`): "
        "`digits_vgg` (Conv(16)–Conv(16)–Pool–Conv(32)–Conv(32), 3×3 \"same\", GAP – "
        "Dense(32) – Dense), `digits_separable` (Conv(16, 3)–ReLU6, DepthwiseConv(3)–"
        "ReLU6, Conv(32, 1)–ReLU6, SeparableConv(64, 3, stride 2), GAP – Dense), "
        "`digits_gelu` (Conv(32, 3, GELU)–Conv(64, 3)–LeakyReLU–Pool–Flatten–Dense(64, "
        "SiLU)–Dense) and `digits_tanh` (Conv(24, 3, tanh)–AveragePool–Conv(48, 2, tanh)–"
        "Flatten–Dense(48, tanh)–Dense); Adam, batch 128, at least 3 epochs and 300 "
        "steps; medians over {seeds} seed(s). Cells and replay as in `bench_default`. "
        "Written and run after the rule in the library was selected: nothing was chosen "
        "on them. One test image is 0.22 pp of the test accuracy.",
        "Held out (digits recipes written after the rule)", "fresh_digits_default_accuracy",
        records, command, paragraph, print_only)


def main():
    bench_default.grid_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, write_report,
                            seeds=2)


if __name__ == "__main__":
    main()
