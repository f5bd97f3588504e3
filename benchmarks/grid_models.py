"""The five architectures of the default-path grid (`bench_default`), all on 28×28×1
Fashion-MNIST, each with how a user would compile and fit it.

- "cnn": the benchmark CNN (`benchmarks.common`);
- "mlp": the benchmark MLP;
- "kerasio": the keras-io MNIST convnet as written there — Conv(32, 3)–MaxPool–
  Conv(64, 3)–MaxPool–Flatten–Dropout(0.5)–Dense(10, softmax), one-hot labels,
  categorical cross-entropy, `validation_split=0.1`;
- "bn": Conv–BN–ReLU ×3 (16, 32, 64 filters, pooling between) – GlobalAveragePooling –
  Dense(10);
- "resnet": a small residual network — a stride-2 Conv–BN–ReLU stem, a basic block
  (16 filters, identity shortcut), a stride-2 basic block (32 filters, 1×1 projection
  shortcut), GlobalAveragePooling, Dense(10).

Two more for `bench_residual` (issue #15): "resnet_3x2" (3 stages × 2 basic blocks) and
"conv1d" (the image rows as sequences); three 1-D ones for `bench_sequence`; and two
models with two inputs for `bench_multi_input` (`MULTI_INPUT`, their data made by
`inputs_for`): "twoview" (the top and bottom halves of each image, one CNN tower each)
and "thumb" (the image through a CNN and its 7×7 thumbnail through a Dense layer).
"wide" (`bench_warm_head`): the keras-io convnet with "same" padding and no Dropout,
its softmax head reading 7×7×64 = 3,136 features.
Four recipes held out of every choice of the rule (`bench_held_out`, `HELD_OUT`):
"vgg" (Conv–Conv–Pool twice, "same" 3×3 convolutions, GlobalAveragePooling,
Dense(64)), "separable" (a MobileNet-like stride-2 stem, a depthwise–pointwise block
and a SeparableConv2D), "gelu" (GELU, LeakyReLU and SiLU activations, trained with SGD
+ momentum on one-hot labels with label smoothing) and "uint8" (raw uint8 pixels
through a `Rescaling(1/255)` layer in the model).
Four more on another data set, scikit-learn's 8×8 digits (`bench_held_out_digits`,
`DIGITS`): "digits_mlp" (Dense(64)–Dense(32)), "digits_cnn" (Conv(16, 3, "same")–
Conv(32, 3)–Pool–Dense(64)), "digits_bn" (Conv–BN–ReLU ×3, GAP) and "digits_resnet"
(a Conv–BN–ReLU stem and two basic blocks, the second strided, GAP); and four
written after the rule was last selected (`bench_fresh_digits`, `DIGITS_FRESH`):
"digits_vgg", "digits_separable", "digits_gelu" and "digits_tanh" (LeNet-like).
"""

import keras
import numpy as np

from benchmarks.common import BATCH, build_model

ARCHITECTURES = ("cnn", "mlp", "kerasio", "bn", "resnet")


def _kerasio(n_classes):
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="kerasio_convnet")


def _wide(n_classes):
    layers = [keras.Input((28, 28, 1))]
    for filters in (32, 64):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
                   keras.layers.MaxPooling2D()]
    layers += [keras.layers.Flatten(), keras.layers.Dense(n_classes, activation="softmax")]
    return keras.Sequential(layers, name="wide_convnet")


def _conv_bn_relu(x, filters, strides=1):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x)


def _bn(n_classes):
    inputs = keras.Input((28, 28, 1))
    x = _conv_bn_relu(inputs, 16)
    x = keras.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 32)
    x = keras.layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 64)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="conv_bn_relu")


def _basic_block(x, filters, strides=1):
    shortcut = x
    y = _conv_bn_relu(x, filters, strides)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization()(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = keras.layers.BatchNormalization()(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def _resnet(n_classes):
    inputs = keras.Input((28, 28, 1))
    x = _conv_bn_relu(inputs, 16, strides=2)
    x = _basic_block(x, 16)
    x = _basic_block(x, 32, strides=2)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="small_resnet")


def _resnet_3x2(n_classes):
    """Issue #15's residual CNN: a Conv–BN–ReLU stem, 3 stages × 2 basic blocks (16, 32,
    64 filters; stride 2 and a projection shortcut entering stages 2 and 3), GAP."""
    inputs = keras.Input((28, 28, 1))
    x = _conv_bn_relu(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(2):
            x = _basic_block(x, filters, strides=2 if stage and not block else 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="resnet_3x2")


def _conv1d(n_classes):
    """Fashion-MNIST rows as 28-step sequences of 28 values: Conv1D(64, 3)–MaxPool–
    Conv1D(128, 3)–GlobalAveragePooling–Dense."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Reshape((28, 28))(inputs)
    x = keras.layers.Conv1D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling1D()(x)
    x = keras.layers.Conv1D(128, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="conv1d_rows")


def _rows(inputs):
    return keras.layers.Reshape((28, 28))(inputs)


def _perstep(n_classes):
    """The image rows as 28 steps, a Dense layer applied to every step (a per-token
    projection) – Conv1D(64, 3) – GlobalAveragePooling – Dense."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Dense(64, activation="relu")(_rows(inputs))
    x = keras.layers.Conv1D(64, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="perstep_rows")


def _conv1d_bn(n_classes):
    """The rows as sequences: Conv1D–BN–ReLU ×2 (32, 64 filters, pooling between) –
    GlobalAveragePooling – Dense."""
    inputs = keras.Input((28, 28, 1))
    x = _rows(inputs)
    for i, filters in enumerate((32, 64)):
        if i:
            x = keras.layers.MaxPooling1D()(x)
        x = keras.layers.Conv1D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="conv1d_bn_rows")


def _transformer(n_classes):
    """The rows as 28 tokens: a Dense input projection (64) plus a learned position
    embedding, one post-LN encoder block (4-head attention, a 128-unit feed-forward),
    GlobalAveragePooling – Dense."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Dense(64)(_rows(inputs))
    positions = keras.layers.Embedding(28, 64)(keras.ops.arange(28))
    x = x + positions
    attended = keras.layers.MultiHeadAttention(4, 16)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    forward = keras.layers.Dense(64)(keras.layers.Dense(128, activation="relu")(x))
    x = keras.layers.LayerNormalization()(x + forward)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="transformer_rows")


def _tower(inputs, name):
    """Conv(32, 5)–MaxPool–Conv(64, 5)–MaxPool–Flatten, 'same' convolutions."""
    x = inputs
    for i, filters in enumerate((32, 64)):
        x = keras.layers.Conv2D(filters, 5, padding="same", activation="relu",
                                name=f"{name}_conv{i + 1}")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.Flatten()(x)


def _twoview(n_classes):
    """Two views of an image — its top and bottom 14 rows — one CNN tower each,
    concatenated – Dense(128) – Dense."""
    top, bottom = keras.Input((14, 28, 1), name="top"), keras.Input((14, 28, 1),
                                                                    name="bottom")
    x = keras.layers.Concatenate()([_tower(top, "top"), _tower(bottom, "bottom")])
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model([top, bottom], keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="twoview")


def _thumb(n_classes):
    """The image through the benchmark CNN's convolutions and its 7×7 thumbnail (49
    values, the "metadata") through Dense(32), concatenated – Dense(128) – Dense."""
    image, thumb = keras.Input((28, 28, 1), name="image"), keras.Input((49,), name="thumb")
    x = image
    for i, filters in enumerate((32, 64)):
        x = keras.layers.Conv2D(filters, 5, activation="relu", name=f"conv{i + 1}")(x)
        x = keras.layers.MaxPooling2D()(x)
    meta = keras.layers.Dense(32, activation="relu", name="thumb_dense")(thumb)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), meta])
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model([image, thumb], keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="thumb")


MULTI_INPUT = ("twoview", "thumb")


def _vgg(n_classes):
    """Conv(16)–Conv(16)–Pool–Conv(32)–Conv(32)–Pool, 3×3 "same" convolutions, ReLU –
    GlobalAveragePooling – Dense(64) – Dense."""
    layers = [keras.Input((28, 28, 1))]
    for filters in (16, 32):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
                   keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
                   keras.layers.MaxPooling2D()]
    layers += [keras.layers.GlobalAveragePooling2D(),
               keras.layers.Dense(64, activation="relu"),
               keras.layers.Dense(n_classes, activation="softmax")]
    return keras.Sequential(layers, name="vgg_style")


def _separable_net(n_classes, shape, stem_strides, name):
    """MobileNet-like: Conv(16, 3, `stem_strides`)–ReLU6, DepthwiseConv(3)–ReLU6,
    Conv(32, 1)–ReLU6, SeparableConv(64, 3, stride 2)–ReLU – GAP – Dense ("same"
    padding) on inputs of `shape`."""
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(16, 3, strides=stem_strides, padding="same"),
        keras.layers.ReLU(6.0),
        keras.layers.DepthwiseConv2D(3, padding="same"), keras.layers.ReLU(6.0),
        keras.layers.Conv2D(32, 1), keras.layers.ReLU(6.0),
        keras.layers.SeparableConv2D(64, 3, strides=2, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name=name)


def _separable(n_classes):
    """The 28×28 `_separable_net`, its stem of stride 2."""
    return _separable_net(n_classes, (28, 28, 1), 2, "separable")


def _gelu(n_classes):
    """Conv(32, 3, GELU)–Pool–Conv(64, 3)–LeakyReLU(0.1)–Pool–Flatten–Dense(128, SiLU)
    – Dense."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="gelu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3), keras.layers.LeakyReLU(0.1),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(128, activation="silu"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="gelu_convnet")


def _uint8(n_classes):
    """uint8 pixels (0–255) – Rescaling(1/255) – Conv(32, 5)–Pool–Conv(64, 3)–Pool –
    Flatten – Dense."""
    return keras.Sequential([
        keras.Input((28, 28, 1), dtype="uint8"),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(32, 5, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(n_classes, activation="softmax"),
    ], name="uint8_pixels")


HELD_OUT = ("vgg", "separable", "gelu", "uint8")


def _digits_mlp(n_classes):
    """8×8 digits: Flatten – Dense(64) – Dense(32) – Dense, ReLU."""
    return keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="digits_mlp")


def _digits_cnn(n_classes):
    """8×8 digits: Conv(16, 3, "same") – Conv(32, 3) – MaxPool – Flatten – Dense(64) –
    Dense, ReLU."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="digits_cnn")


def _digits_bn(n_classes):
    """8×8 digits: Conv–BN–ReLU ×3 (16, 32, 64 filters, a MaxPool after the second) –
    GlobalAveragePooling – Dense."""
    inputs = keras.Input((8, 8, 1))
    x = _conv_bn_relu(_conv_bn_relu(inputs, 16), 32)
    x = _conv_bn_relu(keras.layers.MaxPooling2D()(x), 64)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="digits_bn")


def _digits_resnet(n_classes):
    """8×8 digits: a Conv–BN–ReLU stem (16), a basic block (16, identity shortcut), a
    stride-2 basic block (32, projection shortcut) – GlobalAveragePooling – Dense."""
    inputs = keras.Input((8, 8, 1))
    x = _basic_block(_basic_block(_conv_bn_relu(inputs, 16), 16), 32, strides=2)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x),
                       name="digits_resnet")


DIGITS = ("digits_mlp", "digits_cnn", "digits_bn", "digits_resnet")


def _digits_vgg(n_classes):
    """8×8 digits: Conv(16)–Conv(16)–Pool–Conv(32)–Conv(32), 3×3 "same", ReLU – GAP –
    Dense(32) – Dense."""
    layers = [keras.Input((8, 8, 1))]
    for filters, pool in ((16, True), (32, False)):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
                   keras.layers.Conv2D(filters, 3, padding="same", activation="relu")]
        layers += [keras.layers.MaxPooling2D()] if pool else []
    layers += [keras.layers.GlobalAveragePooling2D(),
               keras.layers.Dense(32, activation="relu"),
               keras.layers.Dense(n_classes, activation="softmax")]
    return keras.Sequential(layers, name="digits_vgg")


def _digits_separable(n_classes):
    """8×8 digits: `_separable_net` with a stem of stride 1."""
    return _separable_net(n_classes, (8, 8, 1), 1, "digits_separable")


def _digits_gelu(n_classes):
    """8×8 digits: Conv(32, 3, "same", GELU) – Conv(64, 3)–LeakyReLU(0.1) – Pool –
    Flatten – Dense(64, SiLU) – Dense."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="gelu"),
        keras.layers.Conv2D(64, 3), keras.layers.LeakyReLU(0.1),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="silu"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="digits_gelu")


def _digits_tanh(n_classes):
    """8×8 digits: Conv(24, 3, tanh) – AveragePool – Conv(48, 2, tanh) – Flatten –
    Dense(48, tanh) – Dense (a LeNet-like recipe)."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(24, 3, activation="tanh"), keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(48, 2, activation="tanh"), keras.layers.Flatten(),
        keras.layers.Dense(48, activation="tanh"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ], name="digits_tanh")


# Written after the rule of `hybrid/policy.py` was selected (`bench_fresh_digits`).
DIGITS_FRESH = ("digits_vgg", "digits_separable", "digits_gelu", "digits_tanh")


def dataset_for(arch):
    """The data set an architecture is benchmarked on (`keras_classpca.datasets`)."""
    return "digits" if arch in DIGITS + DIGITS_FRESH else "fashion_mnist"
ONE_HOT = ("kerasio", "gelu")  # architectures whose user passes one-hot labels


def inputs_for(arch, x):
    """The model inputs of `arch` made from images `x` (n, 28, 28, 1): `x` itself, or
    for the two-input architectures the list of both inputs."""
    if arch == "twoview":
        return [x[:, :14], x[:, 14:]]
    if arch == "thumb":
        thumb = x.reshape(len(x), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), 49)
        return [x, thumb.astype(x.dtype)]
    if arch == "uint8":
        return np.round(x * 255).astype("uint8")
    return x


def build(arch, n_classes=10):
    """A fresh model of `arch` (seed first for repeatable weights)."""
    if arch in ("cnn", "mlp"):
        return build_model(arch, (28, 28, 1), n_classes)
    return {"kerasio": _kerasio, "bn": _bn, "resnet": _resnet, "resnet_3x2": _resnet_3x2,
            "conv1d": _conv1d, "perstep": _perstep, "conv1d_bn": _conv1d_bn,
            "transformer": _transformer, "twoview": _twoview, "wide": _wide,
            "thumb": _thumb, "vgg": _vgg, "separable": _separable, "gelu": _gelu,
            "uint8": _uint8, "digits_mlp": _digits_mlp, "digits_cnn": _digits_cnn,
            "digits_bn": _digits_bn, "digits_resnet": _digits_resnet,
            "digits_vgg": _digits_vgg, "digits_separable": _digits_separable,
            "digits_gelu": _digits_gelu, "digits_tanh": _digits_tanh}[arch](n_classes)


def labels_for(arch, y, n_classes=10):
    """The labels as the architecture's user passes them (one-hot for `ONE_HOT`)."""
    return keras.utils.to_categorical(y, n_classes) if arch in ONE_HOT else y


def compile_and_fit(arch, model, x, y, epochs):
    """Compile and fit as the architecture's user does; returns the model."""
    loss = ("categorical_crossentropy" if arch == "kerasio"
            else "sparse_categorical_crossentropy")
    optimizer = "adam"
    if arch == "gelu":
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
        optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    extra = {"validation_split": 0.1} if arch == "kerasio" else {}
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, **extra)
    return model


def test_accuracy(model, x_test, y_test):
    predictions = model.predict(x_test, batch_size=1024, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=1) == y_test))
