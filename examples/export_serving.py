"""Hybridize a small digits classifier, train it briefly, export it for TF Serving.

    TF_CPP_MIN_LOG_LEVEL=2 python examples/export_serving.py [--base-dir out/serving/digits]

Runs offline in well under a minute on 2 CPU cores: scikit-learn's bundled 8x8 digits,
class-PCA for the lower layers (`keras_classpca.hybridize`), a few epochs of `fit()` for
the rest, then a `.keras` file and a TF Serving version directory `<base-dir>/<n>/`.
Prints the export path, its signature (read back from the SavedModel), the artifact
sizes, the REST request body for two digits, and the commands to serve and query it.
"""

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_classpca  # noqa: E402
from keras_classpca import (  # noqa: E402
    artifact_sizes,
    export_for_serving,
    predict_request_body,
    signature_info,
)


def load_data(seed=0):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = 360
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def build_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(20, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", default=os.path.join("out", "serving", "digits"),
                        help="the model's directory (TF Serving --model_base_path)")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_data()
    model = build_model()

    # Solve the bottom Conv2D from the training data with class-PCA and freeze it;
    # `fit()` then trains only the Dense layers above it.
    report = keras_classpca.hybridize(model, (x_train, y_train), cutoff=1, verbose=0)
    print(report)

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy after {args.epochs} epochs: {accuracy:.3f}")

    path = export_for_serving(model, args.base_dir)
    keras_path = os.path.join(os.path.dirname(os.path.abspath(args.base_dir)),
                              f"{model.name}.keras")
    model.save(keras_path)
    name = os.path.basename(os.path.normpath(args.base_dir))

    info = signature_info(path)
    print(f"\nexported: {path}")
    print(f"signature {info['signature_name']!r} ({info['method_name']}):")
    for kind in ("inputs", "outputs"):
        for key, spec in info[kind].items():
            print(f"  {kind[:-1]:6s} {key!r}: {spec['dtype']} {spec['shape']}  ({spec['name']})")
    print("sizes (bytes):", json.dumps(artifact_sizes(path, keras_path, model)))
    print(f"keras file: {keras_path}")

    body = predict_request_body(path, x_test[:2])
    body_path = os.path.join(os.path.dirname(keras_path), "body.json")
    with open(body_path, "w") as fh:
        json.dump(body, fh)
    text = json.dumps(body)
    print(f"\nREST body for 2 digits -> {body_path} ({len(text)} chars): {text[:120]}...")
    print(
        "\nserve:  docker run -p 8501:8501 --mount "
        f"type=bind,source={os.path.abspath(args.base_dir)},target=/models/{name} "
        f"-e MODEL_NAME={name} -t tensorflow/serving"
        f"\nquery:  curl -d @{body_path} http://localhost:8501/v1/models/{name}:predict"
    )
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return path


if __name__ == "__main__":
    main()
