"""Reproduce the three theory results of docs/theory.md and write docs/img/theory_*.png.

1. Pennington & Worah (2017): the limiting spectrum of the Gram matrix of
   Y = f(W X) vs sampled matrices at n0 = 1000; layer-input spectra of a real
   model on the digits data with a random, a trained and a class-PCA first layer.
2. Ji & Telgarsky (2019): a deep linear network trained by gradient descent with
   the logistic loss on separable data; rank-one ratio and alignment per layer.
3. Agarwal, Awasthi & Kale (2020): condition number of the normalized kernel of
   a random network vs depth for ReLU, NormalizedReLU and ReLU + BatchNorm.

Run:  TF_CPP_MIN_LOG_LEVEL=2 python examples/theory_figures.py [--quick]
(10-15 minutes on 2 CPU cores; --quick runs smaller versions in 1-6 minutes).
"""

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_classpca import theory  # noqa: E402
from keras_classpca.diagnostics import AlignmentMonitor  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img")


def save(fig, name):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"  wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} KB)")


# ---------------------------------------------------------------- 1. spectra
SPECTRUM_CASES = [
    # (label, activation, phi, psi)
    ("relu", "relu", 0.5, 1.0),
    ("tanh", "tanh", 1.0, 2.0),
    ("linear (zeta = eta)", "linear", 0.5, 2.0),
    ("x^2 - 1 (zeta = 0)", lambda x: x**2 - 1, 0.5, 1.0),
    ("sigmoid", "sigmoid", 2.0, 1.0),
    ("normalized_relu", "normalized_relu", 1.0, 1.0),
]


def spectra(n0):
    print(f"\n[1a] Pennington-Worah spectra, n0 = {n0}")
    print(f"  {'activation':22s} {'phi':>5s} {'psi':>5s} {'eta':>7s} {'zeta':>7s} "
          f"{'atom':>5s} {'KS':>7s} {'L1':>7s} outliers")
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    rows = []
    for ax, (label, act, phi, psi) in zip(axes.ravel(), SPECTRUM_CASES):
        res = theory.compare_gram_spectrum(act, phi, psi, n0=n0, seed=0)
        p = res.prediction
        rows.append((label, phi, psi, p.eta, p.zeta, p.atom, res.ks, res.l1, len(res.outliers)))
        print(f"  {label:22s} {phi:5.2f} {psi:5.2f} {p.eta:7.4f} {p.zeta:7.4f} {p.atom:5.2f} "
              f"{res.ks:7.4f} {res.l1:7.4f} {np.round(res.outliers, 1).tolist()}")
        cont = res.eigenvalues[(res.eigenvalues > 0) & (res.eigenvalues <= p.x.max())]
        counts, edges = np.histogram(cont, bins=60, range=(0, p.x.max()))
        ax.stairs(counts / (res.eigenvalues.size * np.diff(edges)), edges, fill=True,
                  color="0.75", label=f"sampled, n0={n0}")
        ax.plot(p.x, p.density, "C3", lw=1.6, label="theory")
        bulk = p.density[p.x > 0.02 * p.x.max()]
        ax.set_ylim(0, 1.3 * bulk.max())
        ax.set_xlim(0, p.x.max())
        ax.set_title(f"{label}: phi={phi}, psi={psi}\nKS={res.ks:.3f}, L1={res.l1:.3f}"
                     + (f", atom {p.atom:.2f} at 0" if p.atom else ""), fontsize=9)
        ax.set_xlabel("eigenvalue of M = YY^T/m", fontsize=8)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, "theory_spectra.png")
    return rows


def layer_spectra(epochs):
    from keras_classpca.datasets import load_digits
    from keras_classpca.layers import ClassPCADense

    print("\n[1b] Input spectrum of the second Dense layer on digits (64 -> 32 relu -> 10)")
    (x, y), (xt, yt) = load_digits()
    x = x.reshape(len(x), -1)
    xt = xt.reshape(len(xt), -1)

    def build(first):
        return keras.Sequential([keras.Input((64,)), first,
                                 keras.layers.Dense(10, activation="softmax", name="head")])

    keras.utils.set_random_seed(0)
    variants = {}
    variants["random (Glorot)"] = build(keras.layers.Dense(32, activation="relu", name="first"))
    trained = build(keras.layers.Dense(32, activation="relu", name="first"))
    trained.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    trained.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    variants["trained end-to-end"] = trained
    solved = ClassPCADense(32, activation="relu", name="first")
    solved.adapt((x, y))
    variants["class-PCA (solved)"] = build(solved)

    results = {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    data = theory.layer_input_spectra(variants["random (Glorot)"], x)["first"]
    ax.semilogy(np.arange(1, data.size + 1), data / data.sum(), "k:",
                label="raw pixels (input of first)")
    print(f"  {'first layer':22s} {'eff. rank':>9s} {'top-5 share':>11s} {'cond':>9s}")
    for (name, model), style in zip(variants.items(), ["C0", "C1", "C3"]):
        ev = theory.layer_input_spectra(model, x)["head"]
        ev = ev / ev.sum()
        nz = ev[ev > 1e-12]
        eff = 1.0 / np.sum(ev**2)
        cond = nz[0] / nz[-1]
        results[name] = (eff, ev[:5].sum(), cond, nz.size)
        print(f"  {name:22s} {eff:9.2f} {ev[:5].sum():11.3f} {cond:9.3g}  ({nz.size} nonzero)")
        ax.semilogy(np.arange(1, ev.size + 1), np.maximum(ev, 1e-8), style, marker=".",
                    label=f"input of head, first = {name}")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue / trace")
    ax.set_title("Covariance spectrum of a layer's input (digits)", fontsize=10)
    ax.set_ylim(1e-6, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "theory_layer_spectra.png")
    return results


# ---------------------------------------------------------------- 2. alignment
def separable_data(n=200, d=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    margin = x @ w
    keep = np.abs(margin) > 0.3
    return x[keep].astype("float32"), (margin[keep] > 0).astype("float32")


def alignment(total_steps, glorot_steps):
    print("\n[2] Ji-Telgarsky alignment: deep linear net 10-10-10-10-1, logistic loss, "
          "full-batch GD, lr 0.1")
    x, y = separable_data()
    budget = {"N(0, 0.05^2) init": total_steps, "Glorot-uniform init": glorot_steps}
    # one initializer object per layer: a seeded Keras initializer reused across layers
    # would give every layer the same matrix
    inits = {
        "N(0, 0.05^2) init": lambda i: keras.initializers.RandomNormal(stddev=0.05, seed=i),
        "Glorot-uniform init": lambda i: keras.initializers.GlorotUniform(seed=i),
    }
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    out = {}
    for col, (label, init) in enumerate(inits.items()):
        keras.utils.set_random_seed(0)
        steps_total = budget[label]
        per_epoch = max(steps_total // 800, 1)  # 800 records per run
        layers = [keras.Input((10,))]
        for i in range(4):
            layers.append(keras.layers.Dense(10 if i < 3 else 1, use_bias=False,
                                             kernel_initializer=init(i), name=f"W{i + 1}"))
        model = keras.Sequential(layers)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.BinaryCrossentropy(from_logits=True))
        monitor = AlignmentMonitor()
        t0 = time.time()
        hist = model.fit(np.tile(x, (per_epoch, 1)), np.tile(y, per_epoch), batch_size=len(x),
                         shuffle=False, epochs=steps_total // per_epoch, verbose=0,
                         callbacks=[monitor])
        steps = (np.array(monitor.epochs) + 1) * per_epoch
        steps[0] = 1  # before training, drawn at step 1 on the log axis
        loss = hist.history["loss"][-1]
        print(f"  {label}: {steps_total} steps, final loss {loss:.2e} "
              f"({time.time() - t0:.0f} s)")
        for name, vals in monitor.ratios.items():
            axes[0, col].semilogx(steps, vals, label=name)
            print(f"    ||{name}||_2/||{name}||_F : {vals[0]:.3f} -> {vals[-1]:.4f}")
        for name, vals in monitor.alignments.items():
            axes[1, col].semilogx(steps, vals, label=name)
            print(f"    |v^T u| {name:8s}     : {vals[0]:.3f} -> {vals[-1]:.4f}")
        out[label] = (loss, {k: v[-1] for k, v in monitor.ratios.items()},
                      {k: v[-1] for k, v in monitor.alignments.items()},
                      {k: v[0] for k, v in monitor.ratios.items()},
                      {k: v[0] for k, v in monitor.alignments.items()})
        axes[0, col].set_title(f"{label}: ||W_i||_2 / ||W_i||_F", fontsize=10)
        axes[1, col].set_title(f"{label}: alignment |v_(i+1)^T u_i|", fontsize=10)
        axes[1, col].set_xlabel("gradient-descent steps")
        for ax in axes[:, col]:
            ax.set_ylim(0, 1.02)
            ax.axhline(1.0, color="0.7", lw=0.8)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save(fig, "theory_alignment.png")
    return out


def alignment_residual(checkpoints):
    """Why the rank-one ratio is slow from Glorot: top singular value vs the rest."""
    print("\n[2b] Glorot init, layer W1: top singular value s1 and Frobenius norm r of the rest")
    x, y = separable_data()
    keras.utils.set_random_seed(0)
    layers = [keras.Input((10,))]
    for i in range(4):
        init = keras.initializers.GlorotUniform(seed=i)
        layers.append(keras.layers.Dense(10 if i < 3 else 1, use_bias=False,
                                         kernel_initializer=init, name=f"W{i + 1}"))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.BinaryCrossentropy(from_logits=True))
    rows, done = [], 0
    for target in [0] + list(checkpoints):
        if target > done:
            k = target - done
            model.fit(np.tile(x, (k, 1)), np.tile(y, k), batch_size=len(x), shuffle=False,
                      epochs=1, verbose=0)
            done = target
        s = np.linalg.svd(model.get_layer("W1").get_weights()[0], compute_uv=False)
        rows.append((done, s[0], np.sqrt(np.sum(s[1:] ** 2))))
        print(f"  steps {done:6d}: s1 = {s[0]:.3f}, r = {rows[-1][2]:.3f}, "
              f"ratio = {s[0] / np.sqrt(np.sum(s ** 2)):.4f}")
    return rows


# ---------------------------------------------------------------- 3. conditioning
def conditioning(depth, width, n_points):
    from keras_classpca.datasets import load_digits

    print(f"\n[3] Kernel condition number vs depth: {n_points} digits images, width {width}")
    (x, y), _ = load_digits()
    rng = np.random.default_rng(0)
    x = x.reshape(len(x), -1)[rng.choice(len(x), n_points, replace=False)].astype(np.float64)
    curves = {
        "ReLU (width %d)" % width: dict(activation="relu", width=width),
        "NormalizedReLU (width %d)" % width: dict(activation="normalized_relu", width=width),
        "ReLU + BatchNorm (width %d)" % width: dict(activation="relu", width=width,
                                                     batchnorm=True),
        "ReLU (infinite width)": dict(activation="relu", width=None),
        "NormalizedReLU (infinite width)": dict(activation="normalized_relu", width=None),
    }
    styles = ["C0", "C3", "C2", "C0--", "C3--"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    out = {}
    shown = [d for d in (0, 1, 2, 5, 10, 20, 30) if d <= depth]
    print("  " + f"{'depth':32s}" + "".join(f"{d:>9d}" for d in shown))
    for (label, kw), style in zip(curves.items(), styles):
        conds = theory.kernel_condition_number(depth, x, seed=0, **kw)
        out[label] = conds
        ax.semilogy(np.arange(depth + 1), conds, style, label=label)
        print(f"  {label:32s}" + "".join(f"{conds[d]:9.3g}" for d in shown))
    # finite-width floor: even i.i.d. Gaussian features of this width are not perfectly
    # conditioned (Marchenko-Pastur): ((1 + sqrt(n/w)) / (1 - sqrt(n/w)))^2
    r = np.sqrt(n_points / width)
    floor = ((1 + r) / (1 - r)) ** 2
    ax.axhline(floor, color="0.5", lw=0.8, ls=":", label=f"i.i.d. features floor ({floor:.2f})")
    print(f"  finite-width floor for i.i.d. Gaussian features: {floor:.3f}")
    ax.set_xlabel("depth (number of random layers)")
    ax.set_ylabel("condition number of normalized Gram")
    ax.set_title("Conditioning of a random network's kernel (digits)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "theory_conditioning.png")
    return out, floor


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    args = parser.parse_args()
    t0 = time.time()
    spectra(n0=300 if args.quick else 1000)
    layer_spectra(epochs=5 if args.quick else 40)
    alignment(total_steps=2000 if args.quick else 20000,
              glorot_steps=2000 if args.quick else 100000)
    alignment_residual([100, 1000] if args.quick else [100, 1000, 10000, 30000])
    conditioning(depth=10 if args.quick else 30, width=512 if args.quick else 4096,
                 n_points=48)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
