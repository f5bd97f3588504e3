"""Every performance target of the project, in the order of the summary table that opens
docs/benchmarks.md.

A benchmark reports its measured number and status for a target by key
(`_report.write_section(..., targets={key: (measured, status)})`); a target no benchmark
has reported yet shows "not measured yet". `benchmark` is the section (script) that
measures it, None while that benchmark is not written. The text is the target as set:
change it only when the target itself changes, never to make a result look better.
"""

from collections import namedtuple

Target = namedtuple("Target", "key benchmark text")

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured yet"

TARGETS = [
    # The hybrid workflow against end-to-end SGD (bench_hybrid).
    Target("hybrid_cnn_100_c1", "bench_hybrid",
           "Benchmark CNN, 100 % Fashion-MNIST: cutoff 1 within 0.3 pp of SGD's test accuracy "
           "at ≤ 0.6× its wall time"),
    Target("hybrid_cnn_1", "bench_hybrid",
           "Benchmark CNN, 1 % Fashion-MNIST: a hybrid cutoff better than SGD"),
    Target("hybrid_mlp_100_c1", "bench_hybrid",
           "MLP, 100 % Fashion-MNIST: cutoff 1 within 0.3 pp of SGD at ≤ 0.6× its wall time"),
    Target("hybrid_mlp_1", "bench_hybrid",
           "MLP, 1 % Fashion-MNIST: a hybrid cutoff better than SGD"),
    Target("solved_mlp_c1", "bench_lossless",
           "MLP cutoff 1 ≥ SGD's test accuracy at 100 % and at 1 % of Fashion-MNIST"),
    Target("solved_cnn_c2", "bench_lossless",
           "Benchmark CNN: cutoff 2 within 0.3 pp of SGD at ≤ 0.5× its time"),
    Target("solve_cnn_two_convs", "bench_accumulate",
           "Benchmark CNN: both conv layers solved from 6,000 images in ≤ 3 s end to end"),
    # Solving better layers (bench_lossless).
    Target("solved_digits_mlp", "bench_lossless",
           "digits MLP 64–Dense(40)–Dense(32)–10, 1,400 training images, 20 epochs: cutoff 1 "
           "with default options within 1 pp of SGD"),
    Target("finetune_time", "bench_lossless",
           "Fine-tune mode on the benchmark CNN reaches SGD's 3-epoch test accuracy in ≤ 0.6× "
           "SGD's time"),
    # The default path: cutoff="auto", samples="auto" (not yet benchmarked).
    Target("default_time", "bench_default",
           "Default `hybridize(model, data)`: wall time ≤ 1.1× the best fixed cutoff in every "
           "grid cell, and ≤ SGD's at ≥ 10 % data"),
    Target("default_accuracy", "bench_default",
           "Default `hybridize(model, data)`: test accuracy within 0.5 pp of the best fixed "
           "cutoff in ≥ 90 % of the grid cells, never more than 1 pp below SGD"),
    Target("default_cnn_100", "bench_default",
           "Benchmark CNN, 100 % Fashion-MNIST: default path ≥ SGD's accuracy at ≤ 0.6× its "
           "time"),
    Target("sequence_default_accuracy", "bench_sequence",
           "1-D networks (Fashion-MNIST rows as sequences): default `hybridize(model, data)` "
           "within 0.5 pp of the best fixed cutoff in ≥ 90 % of the cells, never more than "
           "1 pp below SGD"),
    Target("multi_input_default_accuracy", "bench_multi_input",
           "Models with two inputs (held out): default `hybridize(model, data)` within "
           "0.5 pp of the best fixed cutoff in ≥ 90 % of the cells, never more than 1 pp "
           "below SGD"),
    Target("held_out_default_accuracy", "bench_held_out",
           "Four held-out recipes (VGG-style, depthwise/separable, GELU/SiLU with SGD + "
           "label smoothing, uint8 pixels with Rescaling): default `hybridize(model, "
           "data)` within 0.5 pp of the best fixed cutoff in ≥ 90 % of the cells, never "
           "more than 1 pp below SGD"),
    Target("digits_default_accuracy", "bench_held_out_digits",
           "Another data set, 8×8 digits (its first four architectures; their results "
           "prompted the rule's re-selection, so `bench_fresh_digits` holds the rule out): "
           "default `hybridize(model, data)` within 0.5 pp of the best fixed cutoff in "
           "≥ 90 % of the cells, never more than 1 pp below SGD"),
    Target("fresh_digits_default_accuracy", "bench_fresh_digits",
           "Digits recipes written after the rule was selected: default `hybridize(model, "
           "data)` within 0.5 pp of the best fixed cutoff in ≥ 90 % of the cells, never "
           "more than 1 pp below SGD"),
    Target("samples_auto", "bench_samples",
           "`samples=\"auto\"`: benchmark CNN solved from ≤ 10 % of Fashion-MNIST, test "
           "accuracy within 0.2 pp of solving from all of it"),
    # KerasTuner (bench_tuner).
    Target("tuner_cache", "bench_tuner",
           "Cutoff search with the prefix solve cache ≥ 2× faster than without"),
    Target("tuner_cache_12", "bench_tuner",
           "Cutoff search of ≥ 12 trials with the prefix solve cache ≥ 2× faster than without"),
    Target("tuner_cache_resnet_3x2", "bench_tuner_resnet_3x2",
           "Residual CNN: cutoff search with the prefix solve cache ≥ 2× faster than without"),
    Target("tuner_cache_12_resnet_3x2", "bench_tuner_resnet_3x2",
           "Residual CNN: cutoff search of ≥ 12 trials with the prefix solve cache ≥ 2× faster "
           "than without"),
    # Model reach (not yet benchmarked).
    Target("reach_residual_100", "bench_residual",
           "Residual CNN, 100 % Fashion-MNIST: some cutoff ≥ 2 within 0.3 pp of SGD at ≤ 0.7× "
           "its time"),
    Target("reach_residual_10", "bench_residual",
           "Residual CNN, 10 % Fashion-MNIST: better than SGD"),
    Target("reach_applications", "bench_reach",
           "ResNet50V2, MobileNetV2, EfficientNetB0: each solves ≥ 8 layers with `cutoff=8` "
           "and reloads from `.keras` with predictions unchanged (max. abs. difference 0)"),
    Target("reach_conv1d", "bench_residual",
           "Conv1D network: cutoff 1 within 0.3 pp of SGD or better"),
    # Progressive freezing (bench_progressive; one section per model). Issue #19's
    # target covers both models at 20 % and 100 %: each model has its rows.
    Target("progressive_time", "bench_progressive",
           "`fit_progressive`, benchmark CNN, 20 % and 100 %, 8 epochs: within "
           "0.3 pp of SGD's final test accuracy in ≤ 0.8× SGD's wall time"),
    Target("progressive_schedule", "bench_progressive",
           "`fit_progressive` beats a fixed FreezeOut-style schedule on time at equal "
           "accuracy (benchmark CNN)"),
    Target("progressive_time_resnet_3x2", "bench_progressive_resnet_3x2",
           "`fit_progressive`, residual CNN, 20 % and 100 %, 8 epochs: within 0.3 pp of "
           "SGD's final test accuracy in ≤ 0.8× SGD's wall time"),
    Target("progressive_schedule_resnet_3x2", "bench_progressive_resnet_3x2",
           "`fit_progressive` beats a fixed FreezeOut-style schedule on time at equal "
           "accuracy (residual CNN)"),
    # The head above a fully solved prefix (bench_warm_head).
    Target("warm_head", "bench_warm_head",
           "Every solvable layer solved: the warm head (least-squares start) ≥ the cold "
           "head's test accuracy in every grid cell (median of 3 seeds)"),
    # The layers above the cutoff solved as a start (bench_initialize_above).
    Target("initialize_above", "bench_initialize_above",
           "Default path with `initialize_above=True`, held-out grid cells: not more than "
           "0.5 pp below the default path in ≥ 90 % of the cells, and better on the median"),
    # Class statistics (bench_accumulate): the targets of its current section...
    Target("accumulate_gemm", "bench_accumulate",
           "ClassPCA (accumulate + solve) ≤ 1.4× one GEMM over the same rows, every workload"),
    Target("accumulate_sklearn", "bench_accumulate",
           "ClassPCA faster than in-memory scikit-learn PCA per class, every workload"),
    Target("accumulate_ipca", "bench_accumulate",
           "ClassPCA ≥ 10× faster than IncrementalPCA per class, every workload"),
    Target("accumulate_memory", "bench_accumulate",
           "Peak memory of a streamed fit flat in N"),
    # ... and the stricter ones set since, not measured in this form yet.
    Target("stats_dense", "bench_accumulate",
           "Dense d = 400: streamed and in-memory `fit` each ≤ 1.2× one float32 XᵀX over the "
           "same rows"),
    Target("stats_dense_sklearn", "bench_accumulate",
           "Dense d = 400: ≥ 2× faster than scikit-learn PCA per class, ≥ 15× faster than "
           "IncrementalPCA"),
    Target("stats_conv2", "bench_accumulate",
           "conv2 size (5×5×32 patches, d = 800) including the solve: ≤ 1.5× one float32 XᵀX"),
    Target("stats_sketch", "bench_sketch",
           "K = 1,000 classes, d = 2,304 streamed within 4 GB of peak memory; sketched class "
           "subspaces within subspace residual 1e-2 of the exact ones"),
    Target("stats_backends", "bench_accumulate",
           "Same class statistics under TensorFlow, JAX and torch (tests)"),
]

BY_KEY = {target.key: target for target in TARGETS}
assert len(BY_KEY) == len(TARGETS), "duplicate target keys"
