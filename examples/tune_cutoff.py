"""Tune the cutoff (and the learning rate) of the Fashion-MNIST CNN with KerasTuner.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python examples/tune_cutoff.py
    ... --trials 6 --epochs 2 --fraction 0.1 --directory /tmp/tune_cutoff

Each trial builds `demo.benchmark_cnn`, solves its bottom `cutoff` layers (0 to 3) by
class-PCA from the training subset and trains the rest for `--epochs` epochs. Solved
prefixes are shared between trials through the solve cache in
`<directory>/<project_name>/solve_cache`; run the script again (without
`--overwrite`) and the finished trials and the cache are reused. Offline: the data
comes from Debian's `dataset-fashion-mnist` (see keras_classpca.datasets).
"""

import argparse
import time

import keras
import keras_tuner
import numpy as np

from keras_classpca.datasets import load_dataset
from keras_classpca.demo import benchmark_cnn
from keras_classpca.tuner import HybridHyperModel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the training set")
    parser.add_argument("--directory", default="/tmp/keras_classpca_tune_cutoff")
    parser.add_argument("--project-name", default="fashion_mnist_cnn")
    parser.add_argument("--overwrite", action="store_true", help="start a fresh search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist")
    keep = np.random.default_rng(args.seed).choice(
        len(x_train), int(args.fraction * len(x_train)), replace=False
    )
    x, y = x_train[keep], y_train[keep]
    x_val, y_val = x_test[:2000], y_test[:2000]
    print(f"{len(x)} training images ({args.fraction:.0%}), {len(x_val)} validation images")

    def build_model(hp):
        model = benchmark_cnn(x.shape[1:], 10)
        learning_rate = hp.Float("learning_rate", 3e-4, 3e-3, sampling="log")
        model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    hypermodel = HybridHyperModel(build_model, (x, y), search_options=False,
                                  patches_per_image=16, seed=args.seed)
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective="val_accuracy",
        max_trials=args.trials,
        seed=args.seed,
        directory=args.directory,
        project_name=args.project_name,
        overwrite=args.overwrite,
    )
    start = time.perf_counter()
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=128,
                 verbose=0)
    seconds = time.perf_counter() - start

    print(f"\n{'trial':>5} {'cutoff':>6} {'lr':>8} {'val acc':>8} {'solve s':>8} {'trial s':>8}")
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        if trial.status != "COMPLETED":
            continue
        metrics, values = trial.metrics, trial.hyperparameters.values
        print(f"{trial.trial_id:>5} {values['cutoff']:>6} {values['learning_rate']:>8.2e} "
              f"{metrics.get_best_value('val_accuracy'):>8.4f} "
              f"{metrics.get_best_value('solve_seconds'):>8.1f} "
              f"{metrics.get_best_value('trial_seconds'):>8.1f}")
    best = tuner.oracle.get_best_trials(1)[0]
    model = tuner.load_model(best)
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    cache = hypermodel.solve_cache
    print(
        f"\nbest trial {best.trial_id}: cutoff {best.hyperparameters.get('cutoff')}, "
        f"learning rate {best.hyperparameters.get('learning_rate'):.2e}, "
        f"val accuracy {best.score:.4f}, test accuracy {test_accuracy:.4f}, "
        f"trial time {best.metrics.get_best_value('trial_seconds'):.1f} s"
    )
    print(f"search {seconds:.1f} s; solve cache: "
          + (f"{cache.hits} hit(s), {cache.misses} miss(es), {len(cache)} entries"
             if cache is not None else "not used in this run (no trial solved a layer)"))


if __name__ == "__main__":
    main()
