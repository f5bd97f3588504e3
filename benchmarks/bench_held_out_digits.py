"""The default path `hybridize(model, data)` on another data set: 8×8 digits.

Every choice of the `cutoff="auto"` rule (`bench_default`) and every other held-out
grid (`bench_held_out`, `bench_sequence`, `bench_multi_input`) is on Fashion-MNIST.
This grid changes the data: scikit-learn's bundled 8×8 handwritten digits (1,350
training and 447 test images, `keras_classpca.datasets.load_digits`), with four
architectures written for them after the rule was fixed (`benchmarks/grid_models.py`,
`DIGITS`): an MLP, a small CNN, a Conv–BN–ReLU network and a small residual network.
At 10–100 % of the training images a class has 13–135 samples, below the smallest
cell of the tuning grid (60 per class), so it also tests the rule's small-data end.
Each cell trains, as `bench_default` does (its `run`): end-to-end SGD and every fixed
cutoff (up to 6), and records the decision, which is replayed on the cell.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_held_out_digits [--seeds 3]

Writes the `bench_held_out_digits` section of docs/benchmarks.md and its summary row.
"""

from benchmarks import bench_default, default_report
from benchmarks.grid_models import DIGITS as ARCHITECTURES

SECTION = "bench_held_out_digits"
FRACTIONS = (0.1, 0.3, 1.0)


def write_report(records, command, paragraph, print_only=False):
    default_report.write_held_out_section(
        SECTION, "The default path on another data set: 8×8 digits",
        "scikit-learn's 8×8 digits (1,350 training images, 447 test images, a fixed "
        "stratified split); four architectures (`benchmarks/grid_models.py`, `DIGITS`): "
        "`digits_mlp` (Dense(64)–Dense(32)–Dense), `digits_cnn` (Conv(16, 3, \"same\")–"
        "Conv(32, 3)–Pool–Flatten–Dense(64)–Dense), `digits_bn` (Conv–BN–ReLU ×3, 16, 32, "
        "64 filters, a pool after the second, GAP – Dense) and `digits_resnet` (a "
        "Conv–BN–ReLU stem, a basic block, a stride-2 basic block with a projection "
        "shortcut, GAP – Dense); Adam, batch 128, at least 3 epochs and 300 steps; "
        "medians over {seeds} seed(s). Cells and replay as in `bench_default`: SGD and "
        "each fixed cutoff (the first k solvable layers) are trained, the default path "
        "is replayed from the recorded decision. Data and architectures are held out: "
        "the rule was fixed on Fashion-MNIST before they were written. One test image "
        "is 0.22 pp of the test accuracy.",
        "Held out (digits: mlp, cnn, bn, resnet)", "digits_default_accuracy",
        records, command, paragraph, print_only)


def main():
    bench_default.grid_main(__doc__, SECTION, ARCHITECTURES, FRACTIONS, write_report)


if __name__ == "__main__":
    main()
