"""Quick start: the default path on Fashion-MNIST — solve the bottom of a CNN, train the rest.

    python examples/quickstart.py            # or: make demo

The same steps by hand:

    model = keras.Sequential([...])                      # an ordinary Keras model
    report = keras_classpca.hybridize(model, (x, y))    # decides cutoff and samples
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    keras_classpca.fit_top(model, x, y, epochs=3)        # or model.fit(...)
"""

from keras_classpca.demo import run_demo

if __name__ == "__main__":
    run_demo()
