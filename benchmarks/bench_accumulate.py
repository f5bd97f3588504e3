"""How fast and how lean are ClassPCA's class statistics and solve?

Side by side in one process, interleaved rounds (order rotated, the machine is shared),
medians over the rounds; ratios are medians of per-round ratios to that round's GEMM,
one float32 `X.T @ X` over the same rows (NumPy calls BLAS syrk): the machine's limit
for a second moment without any per-class split.

- dense: N = 200,000 x d = 400 float32 rows, 10 classes with distinct means and spectra,
  labels in random order; `ClassPCA(40)` in memory (`fit(x, y)`) and streamed
  (`fit` of a generator of 10,000-row batches), both including the solve; against
  scikit-learn `PCA(4)` fitted per class on in-memory rows and `IncrementalPCA(4)` per
  class fed every batch (timed on the first 20 % of the rows, scaled).
- conv2: the 5x5 patches of 1,000 random 12x12x32 float32 feature maps with class
  structure (64,000 rows x d = 800; the 64 patches of an image share its label);
  `ClassPCA(64)` including the solve; scikit-learn `PCA(6)` and `IncrementalPCA(6)`
  per class as for dense.
- fmnist-5x5: the 5x5 patches of 2,000 Fashion-MNIST images (the benchmark CNN's
  first layer: 1,152,000 rows x d = 25); `ClassPCA(32)`, `PCA(3)` / `IncrementalPCA(3)`
  per class. With conv2 and dense, the workloads of the first targets ("every
  workload").
- solver: one class matrix, leading k eigenpairs: `numpy.linalg.eigh` (all pairs)
  against `scipy.linalg.eigh(subset_by_index=...)` (LAPACK syevr) and ARPACK's Lanczos
  (`scipy.sparse.linalg.eigsh`); ClassPCA uses Lanczos from d = 512 while k ≤ d/16,
  else syevr while k < d/3.
- cnn: `hybridize(benchmark CNN, 6,000 Fashion-MNIST images, cutoff=2, samples=None)`
  end to end (both conv layers from all 6,000 images: stream, accumulate, solve,
  assign; the Keras forward pass of the first for the second); and with the default
  `samples="auto"` (which stops once the class subspaces settle), for reference.
- precision: float32 products against float64 on classes whose spectra span 1e2 to 1e8.
- memory: peak RSS of a fresh process streaming dense batches from a generator into
  `ClassPCA.fit`, N = 20,000 / 200,000 / 2,000,000.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_accumulate            # full
    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m benchmarks.bench_accumulate --quick    # smoke

On a GPU the device path (`ClassStatistics.accumulate` of backend tensors, products with
`keras.ops` where the batch is) is measured with the data moved to the device first:

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.bench_accumulate --device

(dense and conv2 workloads as backend tensors; `keras.ops.matmul` XᵀX against
`ClassPCA.fit` of the tensors; and a Conv2D(64, 5) solved from the conv2 feature maps
with its patches extracted on the host or on the device, as `hybridize(statistics_on=
"host" | "device")` does; prints only). It runs on CPU here (no GPU is lent).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_BLAS_THREADS = "1"


def _blas_threads_from_argv(argv):
    """`--blas-threads N` (default 1; 0 = the library's own default, all cores) must
    take effect before NumPy loads its BLAS, so it is read from argv at import."""
    value = DEFAULT_BLAS_THREADS
    if "--blas-threads" in argv:
        value = argv[argv.index("--blas-threads") + 1]
    if value != "0":
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = value
    return value


BLAS_THREADS = _blas_threads_from_argv(sys.argv)

import numpy as np  # noqa: E402

from benchmarks._report import (  # noqa: E402
    machine_line,
    markdown_table,
    met,
    peak_rss_since_reset_mb,
    write_section,
)

N_CLASSES = 10
TARGET_DENSE = 1.2
TARGET_SKLEARN = 2.0
TARGET_IPCA = 15.0
TARGET_CONV2 = 1.5
TARGET_CNN_SECONDS = 3.0
# The first targets, over every workload (dense, fmnist-5x5, conv2).
TARGET_EVERY_GEMM = 1.4
TARGET_EVERY_IPCA = 10.0
WHERE_THE_TIME_GOES = (
    "**2026-11-30, rerun with a looser Lanczos stop.** ARPACK now stops at Ritz residuals "
    "of 1e-10 of each eigenvalue (`LANCZOS_TOLERANCE`), not at machine precision: the "
    "class matrices come from float32 products, whose rounding is about 1e-7. On the 10 "
    "class matrices of the conv2 workload it needs 1,040 products with the matrix "
    "instead of 1,339 (22 % fewer), with the same components to 1e-13; the solver "
    "table below times it (d = 800, k = 7: 49.0 ms in the run before). Nothing else in "
    "the host path changed: the other rows moved with the machine. "
    "**2026-11-30, later: the device path** (`statistics_on=\"device\"`, printed by "
    "`--device`, not a target). A convolution's patches are now gathered on the device by"
    " index at the sub-sampled positions only (an identity-kernel convolution over every "
    "position cost several times the statistics' flops), and under JAX each class's rows "
    "are read as a block of one of a few rounded sizes by one jitted function (each new "
    "class run length had compiled every operation again). The CNN's two convolutions "
    "from 6,000 images (`hybridize(cutoff=2, samples=None)`, 2 cores, old and new library"
    " in turn, after the first call): JAX 11.2 → 7.0 s (first call 31 → 14 s), TensorFlow"
    " 8.6–8.8 → 5.6–6.9 s, torch 6.8–7.5 → 5.0–6.3 s, against 3.3–5.4 s on the host; "
    "`--device` at 3 rounds under JAX: dense 1.89× → 1.47× and conv2 2.55× → 2.23× one "
    "`keras.ops` XᵀX, the conv2 layer from feature maps 4.09× → 3.50×. On a CPU the host "
    "stays faster: `keras.ops.matmul` has no symmetric product, so the device multiplies "
    "twice the flops of the host's `syrk`. "
    "**2026-11-30.** Rows that arrive in runs of one class (`hybridize`'s patches) are now "
    "shifted as they are copied into the gather buffer, and each chunk's product goes "
    "into a reused matrix added to the float64 sums without a float64 copy: the CNN's "
    "two convolutions from all 6,000 images, the old and the new library interleaved "
    "in fresh processes (3 × 3 solves each, the library's default threads): medians "
    "3.59, 3.49, 3.09 s against 3.26, 3.17, 3.24 s (about 7 % faster); a "
    "synthetic run of conv2-sized rows in class runs at one BLAS thread went from "
    "1.46–1.65× to 1.29–1.46× one GEMM. The in-memory workloads below gather randomly "
    "ordered rows and gain nothing from it. Two further designs were measured and "
    "dropped the same day: (1) the classes of a batch multiplied in parallel threads "
    "with one BLAS thread each — dense at two threads went from 2.5–2.8× to 1.7–2.0× "
    "a GEMM, but rows in class runs (conv2 patches) from 1.9× to 2.6–2.9× and the "
    "CNN's two convolutions from 3.95–4.38 s to 4.55–4.75 s; (2) a chunk's product "
    "summed in place per class by SciPy's BLAS `ssyrk` (beta = 1), added to the float64 "
    "sums every 32,768 rows — the CNN's two convolutions took 7.7–8.0 s against "
    "4.1–4.2 s (SciPy's OpenBLAS, a second library with its own threads, beside NumPy's "
    "and TensorFlow's). "
    "**On the Intel Xeon machine (2026-11-29)** every ratio is larger than on the AMD "
    "EPYC one of the earlier runs (2026-11-27: dense 1.62×, conv2 1.68×, fmnist-5x5 "
    "2.26×; the CNN's two convolutions 2.7 s): the float32 GEMM is 15–25 % faster here "
    "(dense 0.27–0.28 s against 0.36 s, conv2 0.34–0.36 s against 0.42 s) and the rest "
    "of the fit "
    "is not. The library is not the cause: the library of 2026-11-27 (commit 9e79bed), "
    "timed on this machine interleaved with today's, measured the same (dense 2.23–2.26×, "
    "conv2 3.0–3.1× a GEMM). Profiled here at one BLAS thread: dense — the chunk "
    "products with their shift and column sums 1.2× the GEMM (the products alone, cut "
    "into chunks of 2,048 rows or more, 1.01–1.05×), the gather of rows by class 0.37×, "
    "the eigen-solve 0.24× (syevr, 6.5 ms per class for 9 pairs at d = 400), the float64 "
    "sums 0.13×, the NaN/inf check 0.09×; conv2 — the eigen-solve is 1.2× the GEMM by "
    "itself: ARPACK's Lanczos needs about 134 products with the class matrix per class "
    "on these flat spectra and takes 33–40 ms per class here (syevr 39–52 ms) against "
    "11–17 ms on the AMD machine. Asking for 7 pairs instead of the 11 computed up front "
    "(the class's share plus room for duplicates) saves about 10 %. The CNN's two "
    "convolutions (the last target) took 3.2 and 3.8 s in two earlier runs that day, "
    "against 2.7 s on the AMD machine. "
    "**On the AMD EPYC machine (2026-11-27).** "
    "Where the time goes (profiled at one BLAS thread): the class products in chunks "
    "(syrk) cost about 1.0–1.05× the single GEMM; grouping randomly ordered rows by class "
    "(a gather of every row into a cache-sized buffer) 0.1–0.2×; the float64 sums of "
    "the chunk products 0.05–0.1×; the NaN/inf check of the batch and the class sums "
    "0.05×; the eigen-solve (10 classes) 0.14× at d = 400 (syevr) and 0.25× at d = 800 "
    "(Lanczos; 0.7× with syevr). The gather and syrk alone measure 1.17× the GEMM on the "
    "dense workload, so 1.2× including the solve is out of reach of this design on one "
    "thread. NumPy's `XᵀX` is itself one syrk, and the products cut into chunks cost "
    "the same at any chunk size from 512 to 16,384 rows (0.99–1.11×, re-measured "
    "2026-11-27): being 2× faster than scikit-learn's per-class PCA (1.6–1.8× the GEMM "
    "here) would take the whole fit in 0.8–0.9× of one XᵀX, less than its products "
    "alone. Two faster solves were tried and dropped (2026-11-27): a block Krylov "
    "solver took 36–180 ms per class against the library's 10–14 ms (these class "
    "spectra are flat, λ_{k+1}/λ_k ≈ 0.97–0.99), and float32 `syevr` saved 1.4 ms per "
    "class at d = 400 and lost 6–8 ms at d = 800. "
    "Rows that arrive grouped by class skip the gather: `hybridize` groups each "
    "batch's samples by class before extracting conv patches. The CNN's second layer is "
    "384,000 patch rows of d = 800: their products alone take about 2.7 s at one BLAS "
    "thread, 1.4 s at two. All contenders share the 2-core machine with other jobs (load "
    "average above): ratios moved by ±30 % between runs."
)


# ---------------------------------------------------------------------- data
def class_structured(rng, labels, d, means, scales, dtype=np.float32):
    """Rows `means[y] + scales[y] * noise`: distinct class means and spectra."""
    noise = rng.standard_normal((len(labels), d), dtype=np.float32)
    return (means[labels] + scales[labels] * noise).astype(dtype, copy=False)


def class_params(rng, d):
    means = rng.normal(size=(N_CLASSES, d)).astype(np.float32)
    scales = rng.uniform(0.5, 2.0, size=(N_CLASSES, d)).astype(np.float32)
    return means, scales


def dense_workload(n, d=400, batch=10_000, seed=0):
    rng = np.random.default_rng(seed)
    means, scales = class_params(rng, d)
    y = rng.integers(0, N_CLASSES, n)
    return {"x": class_structured(rng, y, d, means, scales), "y": y, "batch": batch,
            "n_components": 40, "ipca_share": 0.2}


def fmnist_workload(n_images=2_000):
    """The benchmark CNN's first layer: 5x5 patches (d = 25) of Fashion-MNIST images."""
    from keras_classpca.core.patches import extract_patches
    from keras_classpca.datasets import load_dataset

    (x, y), _ = load_dataset("fashion_mnist")
    patches = extract_patches(x[:n_images].astype(np.float32), 5)  # (n, 24, 24, 25)
    per_image = patches.shape[1] * patches.shape[2]
    return {"x": np.ascontiguousarray(patches.reshape(-1, patches.shape[-1])),
            "y": np.repeat(y[:n_images], per_image), "n_components": 32, "batch": 65_536,
            "ipca_share": 0.2}


def conv2_workload(n_images=1_000, seed=0):
    from keras_classpca.core.patches import extract_patches

    rng = np.random.default_rng(seed)
    y_images = rng.integers(0, N_CLASSES, n_images)
    templates = rng.normal(size=(N_CLASSES, 12, 12, 32)).astype(np.float32)
    gains = rng.uniform(0.5, 2.0, size=(N_CLASSES, 1, 1, 32)).astype(np.float32)
    images = templates[y_images] + gains[y_images] * rng.standard_normal(
        (n_images, 12, 12, 32), dtype=np.float32
    )
    patches = extract_patches(images, 5)  # (n, 8, 8, 800)
    per_image = patches.shape[1] * patches.shape[2]
    return {"x": patches.reshape(-1, patches.shape[-1]), "y": np.repeat(y_images, per_image),
            "n_components": 64, "batch": 8_192, "ipca_share": 0.2,
            "images": images, "y_images": y_images}


def batches(x, y, size):
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


# ---------------------------------------------------------------------- contenders
def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def gemm(w):
    return w["x"].T @ w["x"]


def classpca_in_memory(w):
    from keras_classpca import ClassPCA

    return ClassPCA(w["n_components"], n_classes=N_CLASSES).fit(w["x"], w["y"])


def classpca_streamed(w):
    from keras_classpca import ClassPCA

    return ClassPCA(w["n_components"], n_classes=N_CLASSES).fit(
        batches(w["x"], w["y"], w["batch"])
    )


def sklearn_pca(w):
    from sklearn.decomposition import PCA

    solvers = set()
    for label in range(N_CLASSES):
        pca = PCA(w["n_components"] // N_CLASSES).fit(w["x"][w["y"] == label])
        solvers.add(pca._fit_svd_solver)
    return solvers


def incremental_pca(w):
    """Fed the first `ipca_share` of the batches (its time is linear in the rows)."""
    from sklearn.decomposition import IncrementalPCA

    models = [IncrementalPCA(w["n_components"] // N_CLASSES) for _ in range(N_CLASSES)]
    n_rows = int(round(len(w["x"]) * w["ipca_share"]))
    for xb, yb in batches(w["x"][:n_rows], w["y"][:n_rows], w["batch"]):
        for label, model in enumerate(models):
            rows = xb[yb == label]
            if len(rows) >= model.n_components:
                model.partial_fit(rows)
    return models


def interleaved(name, contenders, rounds):
    """{contender: [seconds per round]}, order rotated every round."""
    names = list(contenders)
    times = {c: [] for c in names}
    outputs = {}
    for r in range(rounds):
        for c in names[r % len(names):] + names[: r % len(names)]:
            seconds, outputs[c] = timed(contenders[c])
            times[c].append(seconds)
            print(f"  [{name}] round {r + 1}/{rounds} {c}: {seconds:.3f} s", flush=True)
    return times, outputs


def measure_workload(name, w, rounds, extra=None):
    """Interleaved rounds of the GEMM, ClassPCA in memory, `extra` contenders,
    scikit-learn PCA and IncrementalPCA per class on workload `w`; IncrementalPCA's
    times scaled from its `ipca_share` of the rows. `(times, outputs)`."""
    times, outputs = interleaved(name, {
        "GEMM": lambda: gemm(w),
        "ClassPCA in memory": lambda: classpca_in_memory(w),
        **(extra or {}),
        "sklearn PCA": lambda: sklearn_pca(w),
        "IncrementalPCA": lambda: incremental_pca(w),
    }, rounds)
    times["IncrementalPCA"] = [t / w["ipca_share"] for t in times["IncrementalPCA"]]
    return times, outputs


def ratio(times, c, base="GEMM"):
    return statistics.median(v / g for v, g in zip(times[c], times[base]))


def fmt_s(seconds):
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


# ---------------------------------------------------------------------- solver
def solver_rows(rounds, quick):
    import scipy.linalg
    import scipy.sparse.linalg

    from keras_classpca.core.class_pca import (
        LANCZOS_MAX_SHARE,
        LANCZOS_MIN_DIM,
        LANCZOS_TOLERANCE,
    )

    rng = np.random.default_rng(0)
    cases = [(400, 4), (800, 7)] + ([] if quick else [(800, 64)])
    rows = []
    for d, k in cases:
        a = rng.standard_normal((2 * d, d)) * np.linspace(3.0, 0.1, d)
        matrix = a.T @ a / len(a)
        contenders = {
            "eigh": lambda: np.linalg.eigh(matrix),
            "subset": lambda: scipy.linalg.eigh(
                matrix, subset_by_index=[d - k, d - 1], driver="evr"
            ),
            "Lanczos": lambda: scipy.sparse.linalg.eigsh(
                matrix, k=k, which="LA", tol=LANCZOS_TOLERANCE,
                v0=np.random.default_rng(0).uniform(-1, 1, d)
            ),
        }
        times, _ = interleaved(f"solve d={d} k={k}", contenders, rounds)
        full, subset, lanczos = (statistics.median(times[c])
                                 for c in ("eigh", "subset", "Lanczos"))
        chosen = "Lanczos" if (d >= LANCZOS_MIN_DIM and k <= LANCZOS_MAX_SHARE * d) else "syevr"
        rows.append([str(d), str(k), f"{full * 1e3:.1f} ms", f"{subset * 1e3:.1f} ms",
                     f"{lanczos * 1e3:.1f} ms", chosen,
                     f"{full / (lanczos if chosen == 'Lanczos' else subset):.1f}x"])
    return rows


# ---------------------------------------------------------------------- precision
def precision_rows():
    from keras_classpca import ClassPCA

    rng = np.random.default_rng(0)
    d, n, k = 64, 40_000, 4
    rows = []
    for spread in (1e2, 1e4, 1e6, 1e8):
        y = rng.integers(0, k, n)
        scales = np.sqrt(np.geomspace(spread, 1.0, d))
        bases = [np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(k)]
        z = rng.standard_normal((n, d)) * scales
        x = np.einsum("nd,ned->ne", z, np.stack(bases)[y]).astype(np.float32)
        lead = ClassPCA(4 * k).fit(x, y)
        ref = ClassPCA(4 * k, product_dtype="float64").fit(x, y)
        tail = ClassPCA(32 * k).fit(x, y)
        tail_ref = ClassPCA(32 * k, product_dtype="float64").fit(x, y)

        def residual(a, b):
            return max(
                float(np.linalg.norm(b.components_[:, b.component_classes_ == c]
                                     - a.components_[:, a.component_classes_ == c]
                                     @ (a.components_[:, a.component_classes_ == c].T
                                        @ b.components_[:, b.component_classes_ == c]), 2))
                for c in range(k)
            )

        rows.append([f"{spread:.0e}", f"{residual(ref, lead):.1e}",
                     f"{residual(tail_ref, tail):.1e}"])
    return rows


# ---------------------------------------------------------------------- backends
BACKEND_TESTS = (
    "tests/test_statistics.py::test_backend_tensors_are_multiplied_on_their_device",
    "tests/test_statistics.py::"
    "test_device_class_blocks_of_rounded_sizes_give_the_exact_statistics",
    "tests/test_statistics.py::test_class_pca_fit_of_backend_tensors_equals_numpy",
)


def backend_results():
    """{backend: "N passed" | "failed" | "not installed"}: the tests that compare the
    device (keras.ops) statistics with the NumPy ones, run under each backend."""
    import importlib.util

    results = {}
    for backend in ("tensorflow", "jax", "torch"):
        if importlib.util.find_spec(backend) is None:
            results[backend] = "not installed"
            continue
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BACKEND_TESTS],
            env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True, text=True,
        )
        last = (run.stdout.strip().splitlines() or ["no output"])[-1]
        passed = run.returncode == 0 and f"{len(BACKEND_TESTS)} passed" in last
        results[backend] = f"{len(BACKEND_TESTS)} passed" if passed else f"failed ({last})"
        print(f"  [backends] {backend}: {results[backend]}", flush=True)
    return results


# ---------------------------------------------------------------------- cnn
def cnn_contenders(n_images=6_000):
    import keras

    from keras_classpca import hybridize
    from keras_classpca.datasets import load_dataset
    from keras_classpca.demo import benchmark_cnn

    (x, y), _ = load_dataset("fashion_mnist")
    x, y = x[:n_images], y[:n_images]

    def solver(samples):
        def solve():
            keras.utils.set_random_seed(0)
            model = benchmark_cnn(x.shape[1:], 10)
            return hybridize(model, (x, y), cutoff=2, samples=samples, verbose=0)
        return solve

    solver(None)()  # warm up: Keras builds its predict functions once per process
    return {"hybridize cutoff=2": solver(None), "hybridize cutoff=2, samples=auto": solver("auto")}


def cnn_child(n_images, rounds):
    """Run in a fresh process with the library's default BLAS threads (an end-to-end
    time is what a user gets): interleaved rounds of `cnn_contenders`, printed as JSON."""
    times, reports = interleaved("cnn", cnn_contenders(n_images), rounds)
    auto = reports["hybridize cutoff=2, samples=auto"]
    print(json.dumps({"times": times, "auto_samples": [layer.samples for layer in auto.layers]}))


def measure_cnn(n_images, rounds):
    """`(times, auto_samples)` from `cnn_child` (BLAS threads: the library's default)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_accumulate", "--blas-threads", "0",
         "--cnn-child", str(n_images), str(rounds)],
        capture_output=True, text=True, env=env,
    )
    if run.returncode:
        raise OSError(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed")
    for line in run.stdout.splitlines():
        if line.startswith("  [cnn]"):
            print(line, flush=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result["times"], result["auto_samples"]


def device_run(rounds, quick):
    """The workloads as tensors of the running Keras backend, on its default device."""
    import keras
    from keras import ops

    from keras_classpca import ClassPCA

    print(f"device run: Keras backend {keras.backend.backend()}", flush=True)
    for name, w in (("dense", dense_workload(20_000 if quick else 200_000)),
                    ("conv2", conv2_workload(200 if quick else 1_000))):
        x = ops.convert_to_tensor(w["x"])
        w = dict(w, x=None)

        def product(x=x):
            return ops.convert_to_numpy(ops.matmul(ops.transpose(x), x))

        def fit(x=x, w=w):
            return ClassPCA(w["n_components"], n_classes=N_CLASSES).fit(x, w["y"])

        times, _ = interleaved(f"device {name}", {"GEMM": product, "ClassPCA": fit}, rounds)
        print(f"  {name}: ClassPCA of backend tensors {ratio(times, 'ClassPCA'):.2f}x one "
              "keras.ops XᵀX", flush=True)
    conv_layer_run(conv2_workload(200 if quick else 1_000), rounds)


def conv_layer_run(workload, rounds, batch_images=128):
    """A Conv2D(64, 5) solved from its input feature maps, as `hybridize` does it:
    `LayerStatistics` fed the maps as NumPy (patches extracted on the host) and as
    backend tensors (patches extracted and multiplied on the device,
    `hybridize(statistics_on="device")`), against one keras.ops XᵀX of the patches."""
    import keras
    from keras import ops

    from keras_classpca.layers.geometry import LayerStatistics

    images, labels = workload["images"], workload["y_images"]
    layer = keras.layers.Conv2D(workload["n_components"], 5)
    layer.build((None,) + images.shape[1:])
    on_device = ops.convert_to_tensor(images)
    patches = ops.convert_to_tensor(workload["x"])

    def solve(maps):
        statistics = LayerStatistics(layer)
        for start in range(0, len(images), batch_images):
            statistics.update(maps[start : start + batch_images],
                              labels[start : start + batch_images])
        statistics.end_pass()
        return statistics

    def product():
        return ops.convert_to_numpy(ops.matmul(ops.transpose(patches), patches))

    times, _ = interleaved("device conv2 layer", {
        "GEMM": product, "host": lambda: solve(images), "device": lambda: solve(on_device),
    }, rounds)
    print(f"  conv2 layer from {len(images):,} feature maps: patches on the host "
          f"{ratio(times, 'host'):.2f}x, on the device {ratio(times, 'device'):.2f}x one "
          "keras.ops XᵀX of the patches", flush=True)


# ---------------------------------------------------------------------- memory
def memory_child(n, d, batch):
    """Run in a fresh process: stream n rows through ClassPCA, report peak RSS."""
    from keras_classpca import ClassPCA

    rng = np.random.default_rng(0)
    means, scales = class_params(rng, d)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    baseline = peak_rss_since_reset_mb()

    def generator():
        for start in range(0, n, batch):
            y = rng.integers(0, N_CLASSES, min(batch, n - start))
            yield class_structured(rng, y, d, means, scales), y

    start = time.perf_counter()
    pca = ClassPCA(40, n_classes=N_CLASSES).fit(generator())
    seconds = time.perf_counter() - start
    assert int(pca.n_samples_seen_.sum()) == n
    print(json.dumps({"n": n, "baseline_mb": baseline, "peak_mb": peak_rss_since_reset_mb(),
                      "seconds": seconds}))


def measure_memory(sizes, d, batch):
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_accumulate", "--memory-child",
             str(n), str(d), str(batch)],
            check=True, capture_output=True, text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"  [memory] N={n:,}: peak RSS {result['peak_mb']:.0f} MiB", flush=True)
        rows.append(result)
    return rows


# ---------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--blas-threads", type=int, default=int(DEFAULT_BLAS_THREADS),
                        help="BLAS threads (default 1; 0 = the library's default)")
    parser.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cnn-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", action="store_true",
                        help="the device path: workloads as backend tensors (prints only)")
    args = parser.parse_args()
    if args.device:
        device_run(args.rounds or (2 if args.quick else 3), args.quick)
        return
    if args.cnn_child:
        cnn_child(*args.cnn_child)
        return
    if args.memory_child:
        memory_child(*args.memory_child)
        return

    wall = time.perf_counter()
    rounds = args.rounds or (2 if args.quick else 3)
    machine = machine_line()
    load_start = os.getloadavg()[0]
    print(machine, f"(load average {load_start:.1f})", flush=True)

    dense = dense_workload(20_000 if args.quick else 200_000)
    dense_times, out = measure_workload(
        "dense", dense, rounds, {"ClassPCA streamed": lambda: classpca_streamed(dense)})
    solvers = "/".join(sorted(out["sklearn PCA"]))
    # Same statistics: the classes' second moments sum to X^T X (float32 rounding).
    stats = out["ClassPCA in memory"].statistics_
    total = stats.second_moments.sum(axis=0)
    gram = out["GEMM"].astype(np.float64)
    assert np.allclose(total, gram, rtol=1e-4, atol=1e-4 * np.abs(gram).max())
    dense_shape = dense["x"].shape
    dense = out = stats = None  # free the data before the next workload

    conv2 = conv2_workload(200 if args.quick else 1_000)
    conv2_times, _ = measure_workload("conv2", conv2, rounds)
    conv2_shape = conv2["x"].shape
    conv2 = None
    try:
        fmnist = fmnist_workload(500 if args.quick else 2_000)
        fmnist_times, _ = measure_workload("fmnist-5x5", fmnist, rounds)
        fmnist_shape = fmnist["x"].shape
    except (ImportError, OSError, ValueError) as error:  # no Fashion-MNIST here
        print(f"  [fmnist-5x5] skipped: {error}")
        fmnist_times = fmnist_shape = None
    fmnist = None

    solver = solver_rows(rounds, args.quick)
    precision = precision_rows()
    try:
        cnn_times, cnn_auto_samples = measure_cnn(2_000 if args.quick else 6_000, rounds)
        cnn = statistics.median(cnn_times["hybridize cutoff=2"])
        cnn_auto = statistics.median(cnn_times["hybridize cutoff=2, samples=auto"])
    except (ImportError, OSError, ValueError) as error:  # no Fashion-MNIST here
        print(f"  [cnn] skipped: {error}")
        cnn = cnn_auto = cnn_auto_samples = None
    backends = backend_results()
    memory = measure_memory([2_000, 20_000] if args.quick else [20_000, 200_000, 2_000_000],
                            d=400, batch=10_000)
    load_end = os.getloadavg()[0]

    # ------------------------------------------------------------------ report
    dense_in, dense_stream = ratio(dense_times, "ClassPCA in memory"), ratio(
        dense_times, "ClassPCA streamed")
    slowest = max(statistics.median(dense_times["ClassPCA in memory"]),
                  statistics.median(dense_times["ClassPCA streamed"]))
    vs_sklearn = statistics.median(dense_times["sklearn PCA"]) / slowest
    vs_ipca = statistics.median(dense_times["IncrementalPCA"]) / slowest
    conv2_ratio = ratio(conv2_times, "ClassPCA in memory")
    peaks = [m["peak_mb"] for m in memory]
    growth = peaks[-1] - peaks[0]
    data_mb = [m["n"] * 400 * 4 / 2**20 for m in memory]
    flat = abs(growth) < 0.1 * data_mb[-1] and abs(growth) < 100

    table = []
    for c, times in dense_times.items():
        label = {"sklearn PCA": f"scikit-learn PCA(4) per class ({solvers})",
                 "IncrementalPCA": "IncrementalPCA(4) per class (20 % of rows, scaled)",
                 "GEMM": "GEMM: one float32 XᵀX"}.get(c, c)
        table.append(["dense", label, fmt_s(statistics.median(times)),
                      f"{ratio(dense_times, c):.2f}x"])
    workloads = {"dense": dense_times, "conv2": conv2_times}
    if fmnist_times is not None:
        workloads["fmnist-5x5"] = fmnist_times
    for name, times_of in list(workloads.items())[1:]:
        for c, times in times_of.items():
            label = {"GEMM": "GEMM: one float32 XᵀX", "ClassPCA in memory":
                     "ClassPCA in memory (incl. solve)",
                     "sklearn PCA": "scikit-learn PCA per class",
                     "IncrementalPCA": "IncrementalPCA per class (20 % of rows, scaled)",
                     }.get(c, c)
            table.append([name, label, fmt_s(statistics.median(times)),
                          f"{ratio(times_of, c):.2f}x"])
    # The first targets, over every workload.
    every = {name: dict(
        gemm=ratio(times_of, "ClassPCA in memory"),
        sklearn=statistics.median(times_of["sklearn PCA"])
        / statistics.median(times_of["ClassPCA in memory"]),
        ipca=statistics.median(times_of["IncrementalPCA"])
        / statistics.median(times_of["ClassPCA in memory"]),
    ) for name, times_of in workloads.items()}

    summary = {
        "accumulate_gemm": (", ".join(f"{n} {v['gemm']:.2f}×" for n, v in every.items()),
                            met(len(every) == 3 and all(v["gemm"] <= TARGET_EVERY_GEMM
                                                        for v in every.values()))),
        "accumulate_sklearn": (", ".join(
            f"{n} {v['sklearn']:.2f}× faster" if v["sklearn"] >= 1
            else f"{n} {1 / v['sklearn']:.2f}× slower" for n, v in every.items()),
            met(len(every) == 3 and all(v["sklearn"] > 1 for v in every.values()))),
        "accumulate_ipca": (", ".join(f"{n} {v['ipca']:.1f}×" for n, v in every.items()),
                            met(len(every) == 3 and all(v["ipca"] >= TARGET_EVERY_IPCA
                                                        for v in every.values()))),
        "stats_dense": (f"in memory {dense_in:.2f}×, streamed {dense_stream:.2f}×",
                        met(dense_in <= TARGET_DENSE and dense_stream <= TARGET_DENSE)),
        "stats_dense_sklearn": (f"{vs_sklearn:.1f}× faster than PCA, {vs_ipca:.0f}× than "
                                "IncrementalPCA",
                                met(vs_sklearn >= TARGET_SKLEARN and vs_ipca >= TARGET_IPCA)),
        "stats_conv2": (f"{conv2_ratio:.2f}×", met(conv2_ratio <= TARGET_CONV2)),
        "accumulate_memory": (f"peak RSS {peaks[0]:.0f} MiB at N = {memory[0]['n']:,}, "
                              f"{peaks[-1]:.0f} MiB at N = {memory[-1]['n']:,}", met(flat)),
        "stats_backends": (
            "device vs NumPy statistics and components: "
            + "; ".join(f"{b}: {r}" for b, r in backends.items()),
            met(all(r.endswith("passed") for r in backends.values())),
        ),
    }
    if cnn is not None:
        summary["solve_cnn_two_convs"] = (
            f"{cnn:.1f} s from all {2_000 if args.quick else 6_000:,} images "
            f"(`samples=\"auto\"`: {cnn_auto:.1f} s)", met(cnn <= TARGET_CNN_SECONDS))
    verdicts = [
        f"- dense, d = 400: in-memory `fit` {dense_in:.2f}× and streamed `fit` "
        f"{dense_stream:.2f}× one float32 XᵀX (target ≤ {TARGET_DENSE}×: "
        f"{summary['stats_dense'][1]}); "
        + (f"{vs_sklearn:.1f}× faster than" if vs_sklearn >= 1
           else f"{1 / vs_sklearn:.1f}× slower than")
        + f" scikit-learn PCA per class (target ≥ {TARGET_SKLEARN:.0f}× faster) and "
        f"{vs_ipca:.0f}× faster than "
        f"IncrementalPCA (target ≥ {TARGET_IPCA:.0f}×): {summary['stats_dense_sklearn'][1]}.",
        f"- conv2, d = 800, including the solve: {conv2_ratio:.2f}× one float32 XᵀX (target "
        f"≤ {TARGET_CONV2}×): {summary['stats_conv2'][1]}.",
        f"- every workload (dense, conv2, fmnist-5x5), in memory including the solve: "
        f"{summary['accumulate_gemm'][0]} one float32 XᵀX (target ≤ {TARGET_EVERY_GEMM}×: "
        f"{summary['accumulate_gemm'][1]}); against scikit-learn PCA per class "
        f"{summary['accumulate_sklearn'][0]} (target: faster: "
        f"{summary['accumulate_sklearn'][1]}); IncrementalPCA per class takes "
        f"{summary['accumulate_ipca'][0]} ClassPCA's time (target ≥ {TARGET_EVERY_IPCA:.0f}×: "
        f"{summary['accumulate_ipca'][1]}).",
        f"- memory: peak RSS {peaks[0]:.0f} MiB at N = {memory[0]['n']:,} and {peaks[-1]:.0f} "
        f"MiB at N = {memory[-1]['n']:,} ({growth:+.0f} MiB while the data grew "
        f"{memory[-1]['n'] // memory[0]['n']}x to {data_mb[-1]:,.0f} MiB): "
        f"{summary['accumulate_memory'][1]}.",
    ]
    verdicts.append(
        "- same statistics under every backend (the device path, `keras.ops` products of "
        "backend tensors, against the NumPy path, which is backend-independent; tests "
        f"`{'`, `'.join(t.split('::')[1] for t in BACKEND_TESTS)}`): "
        + "; ".join(f"{b} {r}" for b, r in backends.items())
        + f": {summary['stats_backends'][1]}."
    )
    if cnn is not None:
        verdicts.append(
            f"- benchmark CNN, both conv layers from {2_000 if args.quick else 6_000:,} "
            f"Fashion-MNIST images (`hybridize(cutoff=2, samples=None)`, end to end, the "
            "library's default BLAS threads — here 2 — in a fresh process; median of "
            f"{rounds} rounds): "
            f"{cnn:.2f} s (target ≤ {TARGET_CNN_SECONDS:.0f} s): "
            f"{met(cnn <= TARGET_CNN_SECONDS)}. With the default `samples=\"auto\"` "
            f"{cnn_auto:.2f} s (the layers stopped at "
            f"{' and '.join(f'{n:,}' for n in cnn_auto_samples)} images)."
        )
    body = [
        "## Class statistics: speed, memory, precision (`bench_accumulate`)",
        "",
        machine,
        "",
        f"{rounds} interleaved rounds{' (--quick)' if args.quick else ''}, BLAS threads: "
        f"{'library default' if BLAS_THREADS == '0' else BLAS_THREADS}, library defaults "
        f"(float32 data → float32 products summed in float64). dense: {dense_shape[0]:,} × "
        f"{dense_shape[1]} float32, 10 classes, streamed in batches of 10,000 rows; conv2: "
        f"{conv2_shape[0]:,} × {conv2_shape[1]} float32 5×5×32 patches"
        + (f"; fmnist-5x5: {fmnist_shape[0]:,} × {fmnist_shape[1]} float32 5×5 patches of "
           "Fashion-MNIST images" if fmnist_shape is not None else "")
        + ". scikit-learn PCA and IncrementalPCA keep n_components / 10 per class. "
        "Median time and "
        "median per-round ratio to that round's GEMM.",
        "",
        *verdicts,
        "",
        markdown_table(["workload", "contender", "median time", "vs GEMM"], table),
        "",
        WHERE_THE_TIME_GOES,
        "",
        "Leading eigenpairs of one class matrix (what `solve` computes per class; a "
        "spectrum falling linearly, the hard case for Lanczos): all pairs by "
        "`numpy.linalg.eigh` against the leading k by SciPy's syevr (`subset_by_index`) "
        "and by ARPACK's Lanczos (`eigsh`, to ClassPCA's `LANCZOS_TOLERANCE`), medians:",
        "",
        markdown_table(["d", "k", "eigh (all)", "syevr (leading k)", "Lanczos (leading k)",
                        "ClassPCA uses", "speed-up vs eigh"], solver),
        "",
        "Precision of float32 products: largest subspace residual over 4 classes between "
        "the float32-product and float64-product components (float32 data, d = 64, "
        "40,000 rows, class spectra falling geometrically over the given range):",
        "",
        markdown_table(["eigenvalue range", "leading 4 per class", "leading 32 per class"],
                       precision),
        "",
        "The leading components stay within 1e-5 of float64 however wide the spectrum; "
        "components whose eigenvalues are about 1e-6 of the largest or below (the tail of "
        "a wide spectrum) carry the float32 rounding of the products. "
        "`ClassPCA(product_dtype=\"float64\")` keeps float64 products (about twice the time).",
        "",
        "Peak RSS of a fresh process streaming dense d = 400 batches of 10,000 rows from a "
        "generator into `ClassPCA.fit`:",
        "",
        markdown_table(
            ["N", "data if in memory (float32)", "RSS after imports", "peak RSS", "fit time"],
            [[f"{m['n']:,}", f"{dm:,.0f} MiB", f"{m['baseline_mb']:.0f} MiB",
              f"{m['peak_mb']:.0f} MiB", fmt_s(m["seconds"])] for m, dm in zip(memory, data_mb)],
        ),
        "",
        f"Load average of the shared 2-core machine: {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end. One BLAS thread for every contender (multithreaded "
        "OpenBLAS stalls when the cores are oversubscribed); `--blas-threads 0` uses the "
        "library default.",
    ]
    text = "\n".join(body)
    print()
    print(text)
    print(f"\n(total wall time {time.perf_counter() - wall:.0f} s)")
    write_section("bench_accumulate", text, print_only=args.no_write, targets=summary)


if __name__ == "__main__":
    main()
