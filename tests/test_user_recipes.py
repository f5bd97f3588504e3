"""Recipes of Keras users beyond the plain classifier: binary and logits heads,
regression, sparse class ids, several outputs, sample weights in streams, resumed or
repeated runs, mixed precision, quantization. Each test is a case a user tried."""

import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_classpca import ClassPCADense, fit_progressive, fit_top, hybridize, plan_model
from keras_classpca.hybrid.builder import output_classes
from keras_classpca.hybrid.probe import loo_ridge_accuracy

L = keras.layers


def _xy(n=600, d=12, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n, d)).astype("float32")
    x[np.arange(n), y] += 3.0
    return x, y


def _mlp(head, d=12):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((d,)), L.Dense(8, activation="relu", name="a"),
                             L.Dense(6, activation="relu", name="b"), head])


# ------------------------------------------------------------------- what the head says
def test_output_classes_reads_softmax_sigmoid_and_compiled_logits_heads():
    assert output_classes(_mlp(L.Dense(4, activation="softmax"))) == 4
    assert output_classes(_mlp(L.Dense(1, activation="sigmoid"))) == 2
    assert output_classes(_mlp(L.Dense(3, activation="sigmoid"))) is None  # multi-label
    logits = _mlp(L.Dense(3))
    assert output_classes(logits) is None  # uncompiled: regression or logits?
    logits.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert output_classes(logits) == 3
    regression = _mlp(L.Dense(1))
    regression.compile("adam", "mse")
    assert output_classes(regression) is None


def _sorted_batches(x, y):
    order = np.argsort(y, kind="stable")
    return [(x[order][i:i + 100], y[order][i:i + 100]) for i in range(0, len(x), 100)]


def test_a_sigmoid_head_counts_two_classes_when_the_data_is_sorted():
    x, y = _xy(n_classes=2)
    model = _mlp(L.Dense(1, activation="sigmoid"))
    with pytest.warns(UserWarning, match="hold 1 of the 2 classes"):
        hybridize(model, _sorted_batches(x, y.astype("float32")), cutoff=1, samples=200,
                  verbose=0)
    # samples="auto" reads on until the second class has come
    report = hybridize(_mlp(L.Dense(1, activation="sigmoid")),
                       _sorted_batches(x, y.astype("float32")), cutoff=1, verbose=0)
    assert report.layers[0].samples > 300


def test_labelled_data_of_a_single_class_warns():
    x, y = _xy()
    model = _mlp(L.Dense(3))  # logits, not compiled: the head does not say how many
    with pytest.warns(UserWarning, match="hold a single class"):
        hybridize(model, _sorted_batches(x, y), cutoff=1, samples=150, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hybridize(_mlp(L.Dense(3)), x, cutoff=1, verbose=0)  # label-free: one class by design
    assert not [w for w in caught if "single class" in str(w.message)]


def test_whole_number_regression_targets_are_not_taken_for_classes():
    x, _ = _xy()
    counts = np.random.default_rng(1).integers(0, 40, len(x))
    model = _mlp(L.Dense(1))
    with pytest.raises(ValueError, match="40 distinct values but the model's output is one "
                                         "linear unit"):
        hybridize(model, (x, counts), cutoff=1, verbose=0)
    with pytest.raises(ValueError, match="distinct values"):
        hybridize(model, _sorted_batches(x, counts), cutoff=1, verbose=0)
    binary_logits = _mlp(L.Dense(1))  # two values: a binary classifier on logits is fine
    hybridize(binary_logits, (x, counts % 2), cutoff=1, verbose=0)


def test_sparse_class_ids_are_probed_and_counted_as_the_classes_present():
    x, y = _xy()
    ids = np.array([3, 7, 1_000_000])[y]
    assert loo_ridge_accuracy(x, ids, 3) == loo_ridge_accuracy(x, y, 3)
    model = _mlp(L.Dense(3))
    report = hybridize(model, (x, ids), verbose=0)  # no 1e6 x 1e6 matrix
    assert report.evidence["samples_per_class"] == pytest.approx(len(x) / 3)


# --------------------------------------------------------------------- labels: clear errors
def test_labels_given_the_multi_output_way_or_as_strings_get_clear_errors():
    x, y = _xy()
    inputs = keras.Input((12,))
    h = L.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, [L.Dense(3, activation="softmax")(L.Dense(6)(h)),
                                 L.Dense(1, activation="sigmoid")(h)])
    for labels in ([y, y % 2], (y, y % 2), {"a": y, "b": y % 2}):
        with pytest.raises(ValueError, match="one per output of a multi-output model"):
            hybridize(model, (x, labels), cutoff=1, verbose=0)
    strings = [str(v) for v in np.array(["cat", "dog", "owl"])[y]]
    for cutoff in (1, "auto"):
        with pytest.raises(ValueError, match="Unknown label type(.|\n)*StringLookup"):
            hybridize(_mlp(L.Dense(3, activation="softmax")), (x, strings), cutoff=cutoff,
                      verbose=0)


def test_adapt_with_x_and_y_as_two_arguments_says_how_to_call_it():
    x, y = _xy()
    with pytest.raises(TypeError, match=r"adapt\(\(x, y\)\)"):
        ClassPCADense(4).adapt(x, y)


# ---------------------------------------------------------------- masked sequence inputs
def _padded_tokens(n=240, steps=10, seed=0):
    """Token ids (0 pads the end of each sequence) whose class sets the tokens drawn."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(1, 10, size=(n, steps)) + 10 * y[:, None]
    x[np.arange(steps) >= rng.integers(2, steps, size=n)[:, None]] = 0
    return x, y


def _masked_token_model(embedding):
    inputs = keras.Input((10,), dtype="int32")
    h = L.Dense(5, activation="relu", name="per_step")(embedding(inputs))
    h = L.Dense(4, name="above")(L.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, L.Dense(3, activation="softmax")(h))


def test_hybridize_solves_a_dense_layer_on_masked_steps_from_the_unmasked_ones():
    x, y = _padded_tokens()
    keras.utils.set_random_seed(0)
    embedding = L.Embedding(31, 6, mask_zero=True, trainable=False)
    model = _masked_token_model(embedding)
    report = hybridize(model, (x, y), cutoff=1, samples=None, seed=0, verbose=0)
    solved = report.layers[0]
    assert solved.name == "per_step" and solved.rows == int(np.count_nonzero(x))
    # The same solve of a Dense layer on the unmasked steps' vectors, as 2-D rows.
    keep = x != 0
    rows = embedding.get_weights()[0][x[keep]]
    row_labels = np.repeat(y, x.shape[1])[keep.reshape(-1)]
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu"),
                              L.Dense(3, activation="softmax")])
    hybridize(plain, (rows, row_labels), cutoff=1, samples=None, seed=0, verbose=0)
    for got, expected in zip(model.get_layer("per_step").get_weights(),
                             plain.layers[0].get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_batches_padded_to_their_own_length_are_read_by_every_path():
    # `padded_batch` on variable-length sequences: each batch is as long as its longest
    # sequence. The decision's sample and snap's sample concatenated them and failed.
    x, y = _padded_tokens(n=300)
    lengths = np.count_nonzero(x, axis=1)
    order = np.argsort(lengths, kind="stable")  # batches of growing length
    batches = [(x[order][i:i + 60, :max(1, lengths[order][i:i + 60].max())],
                y[order][i:i + 60]) for i in range(0, 300, 60)]
    assert len({batch.shape[1] for batch, _ in batches}) > 1

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((None,), dtype="int32"),
                                 L.Embedding(31, 6, mask_zero=True, trainable=False),
                                 L.Dense(5, activation="relu", name="per_step"),
                                 L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")])

    report = hybridize(build(), batches, seed=0, verbose=0)  # cutoff="auto"
    assert report.evidence["layers"][0]["layer"] == "per_step"
    report = hybridize(build(), batches, cutoff=1, samples=None, verbose=0)
    assert report.layers[0].rows == int(lengths.sum())


    class Batches(keras.utils.PyDataset):  # what fit takes for batches of their own length
        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            return batches[index]

    model = build()
    model.compile("adam", "sparse_categorical_crossentropy")
    history = fit_progressive(model, Batches(), epochs=2, settle=[1], snap=True, verbose=0)
    assert "per_step" in history.progressive.snapped


def test_batchnorm_on_masked_steps_is_adapted_to_the_unmasked_ones():
    # Keras' BatchNormalization computes its training moments over the unmasked steps.
    x, y = _padded_tokens()
    keras.utils.set_random_seed(0)
    embedding = L.Embedding(31, 6, mask_zero=True, trainable=False)
    inputs = keras.Input((10,), dtype="int32")
    h = L.BatchNormalization(name="norm")(embedding(inputs))
    h = L.Dense(5, activation="relu", name="per_step")(h)
    h = L.Dense(4, name="above")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(h))
    report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert report.layers[0].adapted_batchnorms == ["norm"]
    vectors = embedding.get_weights()[0][x[x != 0]].astype(np.float64)
    norm = model.get_layer("norm")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean),
                               vectors.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_variance),
                               vectors.var(axis=0), rtol=1e-5, atol=1e-6)


def test_snap_solves_a_masked_dense_layer_from_its_unmasked_steps():
    from keras_classpca import ClassPCA

    x, y = _padded_tokens()
    keras.utils.set_random_seed(0)
    embedding = L.Embedding(31, 6, mask_zero=True, trainable=False)
    model = _masked_token_model(embedding)
    model.compile("adam", "sparse_categorical_crossentropy")
    history = fit_progressive(model, x, y, epochs=2, settle=[1], snap=True, batch_size=32,
                              verbose=0)
    assert "per_step" in history.progressive.snapped

    def span(kernel):  # orthonormal basis of the kernel's column space
        return np.linalg.svd(np.asarray(kernel, dtype=np.float64), full_matrices=False)[0]

    table = embedding.get_weights()[0]
    keep = x != 0
    unmasked = ClassPCA(5).fit(table[x[keep]], np.repeat(y, x.shape[1])[keep.reshape(-1)])
    padded = ClassPCA(5).fit(table[x].reshape(-1, 6), np.repeat(y, x.shape[1]))
    kernel = span(model.get_layer("per_step").get_weights()[0])
    residual = np.linalg.norm(span(unmasked.kernel_) - kernel @ (kernel.T @ span(unmasked.kernel_)))
    assert residual < 1e-4
    off = np.linalg.norm(span(padded.kernel_) - kernel @ (kernel.T @ span(padded.kernel_)))
    assert off > 1e-2


def test_a_dense_layer_on_masked_steps_inside_an_encoder_is_solved_from_them():
    x, y = _padded_tokens()
    keras.utils.set_random_seed(0)
    embedding = L.Embedding(31, 6, mask_zero=True, trainable=False)
    tokens = keras.Input((10,), dtype="int32")
    encoder = keras.Model(tokens, L.Dense(5, activation="relu", name="per_step")(
        embedding(tokens)), name="encoder")
    inputs = keras.Input((10,), dtype="int32")
    h = L.Dense(4, name="above")(L.GlobalAveragePooling1D()(encoder(inputs)))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(h))
    report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert report.layers[0].name == "per_step"
    assert report.layers[0].rows == int(np.count_nonzero(x))


def test_the_auto_cutoff_solves_a_masked_dense_layer_from_its_unmasked_steps():
    # Labels the tokens do not tell: the probe before the layer leaves room for a
    # gain, so the decision solves the layer (from the unmasked steps) to measure it.
    x, _ = _padded_tokens()
    y = np.random.default_rng(1).integers(0, 3, len(x))
    keras.utils.set_random_seed(0)
    model = _masked_token_model(L.Embedding(31, 6, mask_zero=True, trainable=False))
    report = hybridize(model, (x, y), samples=None, seed=0, verbose=0)
    (row,) = [r for r in report.evidence["layers"] if r["layer"] == "per_step"]
    assert row["after"] is not None and row["explained_variance"] is not None


# ------------------------------------------------------------------ repeated hybridize
def test_a_lower_cutoff_makes_the_layers_solved_above_it_trainable_again():
    x, y = _xy()
    model = _mlp(L.Dense(3, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy")
    hybridize(model, (x, y), cutoff=2, verbose=0)
    assert not model.get_layer("b").trainable
    with pytest.warns(UserWarning, match="solved and froze b, above the new cutoff"):
        report = hybridize(model, (x, y), cutoff=1, samples=300, seed=3, verbose=0)
    assert report.frozen == ["a"] and report.recompiled
    assert model.get_layer("b").trainable and not model.get_layer("a").trainable
    before = np.array(model.get_layer("b").kernel)
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(before, np.array(model.get_layer("b").kernel))  # trains
    with pytest.warns(UserWarning, match="solved and froze a"):
        hybridize(model, (x, y), cutoff=0, verbose=0)
    assert model.get_layer("a").trainable


# ------------------------------------------------------------------------------ fit_top
class _Weighted(keras.utils.PyDataset):
    def __init__(self, x, y, weight):
        super().__init__()
        self.x, self.y, self.weight = x, y, weight

    def __len__(self):
        return len(self.x) // 50

    def __getitem__(self, i):
        rows = slice(i * 50, (i + 1) * 50)
        return self.x[rows], self.y[rows], np.full(50, self.weight, "float32")


def _solved_model(x, y):
    model = _mlp(L.Dense(3, activation="softmax"))
    hybridize(model, (x, y), cutoff=2, verbose=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("cache", [True, False])
def test_fit_top_trains_with_the_sample_weights_of_a_stream(cache):
    x, y = _xy()
    model = _solved_model(x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit_top(model, _Weighted(x, y, 0.0), epochs=1, cache=cache, verbose=0)
    assert not [w for w in caught if "ignore them" in str(w.message)]  # used, not ignored
    assert history.cache_used is cache
    assert history.history["loss"][0] == pytest.approx(0.0, abs=1e-7)  # every weight 0
    history = fit_top(model, _Weighted(x, y, 1.0), epochs=1, cache=cache, verbose=0)
    assert history.history["loss"][0] > 0.01


class _CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


@pytest.mark.parametrize("cache", [True, False])
def test_fit_top_keeps_keras_batch_sizes(cache):
    x, y = _xy()
    model = _solved_model(x, y)
    counter = _CountBatches()
    fit_top(model, x, y, epochs=1, cache=cache, verbose=0, callbacks=[counter])
    assert counter.batches == len(x) // 32 + (len(x) % 32 > 0)  # Model.fit's default 32
    counter = _CountBatches()
    fit_top(model, _Weighted(x, y, 1.0), epochs=1, cache=cache, verbose=0,
            callbacks=[counter])
    assert counter.batches == len(x) // 50  # the stream's own batches


# ----------------------------------------------------------------------- fit_progressive
def test_fit_progressive_checks_what_it_cannot_honour_before_training():
    x, y = _xy()
    model = _mlp(L.Dense(3, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="does not support `BackupAndRestore`"):
        fit_progressive(model, x, y, epochs=2, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore("unused_backup_dir")])
    counter = _CountBatches()
    multi_hot = np.eye(3)[y] + np.eye(3)[(y + 1) % 3]
    with pytest.raises(ValueError, match="not one-hot"):
        fit_progressive(model, x, multi_hot, epochs=2, snap=True, verbose=0,
                        callbacks=[counter])
    assert counter.batches == 0  # raised before the first epoch


# ------------------------------------------------------------------ precision, quantization
def test_recompiling_keeps_a_model_compiled_without_loss_scaling():
    x, y = _xy()
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _mlp(L.Dense(3, activation="softmax", dtype="float32"))
        model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy",
                      auto_scale_loss=False)
        report = hybridize(model, (x, y), cutoff=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(policy)
    assert report.recompiled
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.skipif(BACKEND == "torch", reason="int8 Dense kernels: TensorFlow and JAX")
def test_model_quantize_reaches_class_pca_dense(tmp_path):
    x, y = _xy()
    layer = ClassPCADense(6, activation="relu")
    layer.adapt((x, y))
    model = keras.Sequential([keras.Input((12,)), layer, L.Dense(3)])
    reference = model.predict(x, verbose=0)
    model.quantize("int8")
    assert model.layers[0].dtype_policy.name.startswith("int8")
    quantized = model.predict(x, verbose=0)
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()
    model.save(tmp_path / "q.keras")
    reloaded = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), quantized, atol=1e-6)


def test_errors_name_the_layer_and_the_way_out():
    from keras_classpca import ClassPCAInitializer

    x, y = _xy(n=1500, d=20, n_classes=2)
    rare = np.where(np.arange(len(y)) < 2, 2, y)  # class 2: two samples
    model = keras.Sequential([keras.Input((20,)), L.Dense(16, activation="relu", name="a"),
                              L.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match=r"Dense 'a' cannot be solved from this data: .*"
                                         r"allocation='adaptive'"):
        hybridize(model, (x, rare), cutoff=1, verbose=0)
    x, y = _xy()
    with pytest.raises(ValueError, match="multi-label targets"):
        hybridize(_mlp(L.Dense(3, activation="sigmoid")),
                  (x, np.eye(3)[y] + np.eye(3)[(y + 1) % 3]), cutoff=1, verbose=0)
    with pytest.raises(ValueError, match="has no samples: drop `n_classes`"):
        hybridize(_mlp(L.Dense(5, activation="softmax")), (x, y), cutoff=1, n_classes=5,
                  verbose=0)
    with pytest.raises(TypeError, match="takes no `units`"):
        ClassPCAInitializer.from_data(x, y, units=4)
    # (ClassPCA.__init__ named itself for the layers' `adapt` arguments)
    with pytest.raises(TypeError, match=r"`ClassPCAInitializer.from_data` got unknown "
                                        r"argument\(s\) \['patches_per_image', 'seed'\].*"
                                        "`adapt` takes `patches_per_image`"):
        ClassPCAInitializer.from_data(x, y, patches_per_image=4, seed=1)
    wrapped = keras.Sequential([keras.Input((5, 12)), L.TimeDistributed(L.Dense(4)),
                                L.Flatten(), L.Dense(3)])
    assert "needs no TimeDistributed wrapper" in dict(plan_model(wrapped).blocked)[
        wrapped.layers[0].name]


def test_the_initializer_from_inputs_alone_is_the_pca_of_the_inputs():
    import tensorflow as tf

    from keras_classpca import ClassPCA, ClassPCAInitializer

    x, _ = _xy()
    expected = ClassPCA(4).fit(x.astype(np.float64), np.zeros(len(x), int)).kernel_
    for data in (x, tf.data.Dataset.from_tensor_slices(x).batch(64)):
        init = ClassPCAInitializer.from_data(data)
        np.testing.assert_allclose(np.asarray(init((12, 4))), expected, rtol=1e-4, atol=1e-5)


def test_cutoff_takes_an_auto_rule_of_the_users_numbers():
    from keras_classpca import AutoRule

    x, y = _xy()
    keep_all = hybridize(_mlp(L.Dense(3, activation="softmax")), (x, y),
                         cutoff=AutoRule(base_gain=-1.0, dense_gain=0.0), verbose=0)
    assert keep_all.cutoff_mode == "auto" and keep_all.cutoff == 2  # every gain >= -1
    assert "-1.000" in keep_all.evidence["rule"]
    keep_none = hybridize(_mlp(L.Dense(3, activation="softmax")), (x, y),
                          cutoff=AutoRule(base_gain=1.0, lossless_share=None), verbose=0)
    assert keep_none.cutoff == 0
    with pytest.raises(ValueError, match="no labels"):
        hybridize(_mlp(L.Dense(3)), x, cutoff=AutoRule(), verbose=0)
    with pytest.raises(ValueError, match="an `AutoRule` or a non-negative integer"):
        hybridize(_mlp(L.Dense(3)), (x, y), cutoff="best", verbose=0)


def _sign_pairs_in(kernel):
    """How many column pairs of `kernel` are exact negatives of each other."""
    unit = kernel / np.linalg.norm(kernel, axis=0)
    cosines = unit.T @ unit
    np.fill_diagonal(cosines, 0.0)
    return int((cosines < -0.9999).sum() // 2)


@pytest.mark.parametrize("top, paired", [
    ([L.Dense(8, activation="tanh")], False),  # no rectifier: Fisher directions only
    ([L.Dense(8), L.LeakyReLU()], True),  # a LeakyReLU layer rectifies like "leaky_relu"
    ([L.Dense(8, activation="relu")], True),
])
def test_dense_rule_report_says_whether_it_paired_signs(top, paired):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 32)).astype("float32")
    y = rng.integers(0, 3, 1500)
    x[y == 1, :4] *= 3
    x[y == 2, 4:8] += 2
    model = keras.Sequential([keras.Input((32,)), *top, L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    layer = report.layers[0]
    assert layer.fisher_sign_pairs and layer.sign_paired is paired
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert (_sign_pairs_in(kernel) == 4) is paired and (_sign_pairs_in(kernel) == 0) is not paired
    assert ("sign-paired" in str(report)) is paired and "Fisher directions" in str(report)


def test_separable_conv_explained_variance_covers_both_stages():
    # The pointwise stage keeps all of the depthwise outputs (8 filters over 4), but the
    # depthwise stage keeps 1 of 9 values per channel: the layer keeps ~11 % of its
    # patches' variance, not 100 % (which would make cutoff="auto" keep it as lossless).
    from numpy.lib.stride_tricks import sliding_window_view

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 12, 12, 4)).astype("float32")
    x[y == 1] *= 1.5
    x[y == 2, ..., :2] += 1
    inputs = keras.Input((12, 12, 4))
    separable = L.SeparableConv2D(8, 3, activation="relu")
    hidden = L.Conv2D(6, 3, activation="relu")(separable(inputs))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(hidden)))
    report = hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    patches = sliding_window_view(x.astype(float), (3, 3), axis=(1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 36)  # (kernel axes, channel)
    covariance = np.cov(patches, rowvar=False)
    depthwise = keras.ops.convert_to_numpy(separable.depthwise_kernel)
    pointwise = keras.ops.convert_to_numpy(separable.pointwise_kernel)[0, 0]
    spread = np.zeros((36, 4))
    for channel in range(4):
        spread[channel::4, channel] = depthwise[:, :, channel, 0].ravel()
    vectors, values, _ = np.linalg.svd(spread @ pointwise, full_matrices=False)
    basis = vectors[:, values > 1e-8 * values.max()]
    expected = np.trace(basis.T @ covariance @ basis) / np.trace(covariance)
    assert expected < 0.2
    assert report.layers[0].explained_variance == pytest.approx(expected, rel=1e-3)


def test_dict_inputs_of_a_named_single_input_model():
    # `Model.fit({"img": x}, y)` works in Keras; hybridize and fit_top take the same.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = (rng.normal(size=(400, 10, 10, 1)) + y[:, None, None, None]).astype("float32")

    def build():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((10, 10, 1), name="img")
        hidden = L.Flatten()(L.Conv2D(6, 3, activation="relu", name="conv")(inputs))
        return keras.Model(inputs, L.Dense(4, activation="softmax")(L.Dense(8)(hidden)))

    reference = build()
    hybridize(reference, (x, y), cutoff=1, verbose=0)
    for data in (({"img": x}, y), tf.data.Dataset.from_tensor_slices(({"img": x}, y)).batch(50)):
        model = build()
        hybridize(model, data, cutoff=1, verbose=0)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("conv").kernel),
                                   keras.ops.convert_to_numpy(reference.get_layer("conv").kernel),
                                   atol=1e-5)  # batches of 50: other rounding
    model.compile("adam", "sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' own note on a dict for a single Input
        assert fit_top(model, {"img": x}, y, epochs=2, cache=True, verbose=0).cache_used
    with pytest.raises(ValueError, match=r"`x` is a dict of 2 inputs \(\['b', 'img'\]\)"):
        hybridize(build(), ({"img": x, "b": x}, y), cutoff=1, verbose=0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data with Keras layers")
def test_unbatched_datasets_of_inputs_alone_are_batched():
    # A dataset of single images (no labels): a convolution's adapt and hybridize know
    # the rank of a batch, so they batch it instead of reading each image as a batch.
    import tensorflow as tf

    from keras_classpca import ClassPCAConv2D, ClassPCADense

    x = np.random.default_rng(0).normal(size=(300, 12, 12, 1)).astype("float32")
    reference, layer = ClassPCAConv2D(4, 3), ClassPCAConv2D(4, 3)
    reference.adapt(x)
    layer.adapt(tf.data.Dataset.from_tensor_slices(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel),
                               keras.ops.convert_to_numpy(reference.kernel), atol=1e-5)

    def cnn():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((12, 12, 1)), L.Conv2D(4, 3, activation="relu"),
                                 L.Flatten(), L.Dense(3)])

    # A Dense layer: vectors one at a time are samples (as `Normalization.adapt`
    # takes them), batched instead of refused as 1-D batches.
    vectors = x.reshape(len(x), -1)
    reference, layer = ClassPCADense(5), ClassPCADense(5)
    reference.adapt(vectors)
    layer.adapt(tf.data.Dataset.from_tensor_slices(vectors))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel),
                               keras.ops.convert_to_numpy(reference.kernel), atol=1e-5)

    arrays, dataset = cnn(), cnn()
    hybridize(arrays, x, cutoff=1, verbose=0)
    hybridize(dataset, tf.data.Dataset.from_tensor_slices(x), cutoff=1, verbose=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dataset.layers[0].kernel),
                               keras.ops.convert_to_numpy(arrays.layers[0].kernel), atol=1e-4)


@pytest.mark.parametrize("samples", [None, "auto"])
def test_a_class_the_head_predicts_but_the_data_lack_is_warned_about(samples):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = (rng.normal(size=(400, 10, 10, 1)) + y[:, None, None, None]).astype("float32")
    model = keras.Sequential([keras.Input((10, 10, 1)), L.Conv2D(4, 3, activation="relu"),
                              L.Flatten(), L.Dense(5, activation="softmax")])
    with pytest.warns(UserWarning, match="hold 4 of the 5 classes the model predicts"):
        hybridize(model, (x, y), cutoff=1, samples=samples, verbose=0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data")
def test_an_unsolvable_layer_on_class_sorted_data_says_the_data_look_sorted():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    y = np.sort(rng.integers(0, 4, 400))
    x = (rng.normal(size=(400, 10, 10, 1)) + y[:, None, None, None]).astype("float32")
    model = keras.Sequential([keras.Input((10, 10, 1)), L.Conv2D(12, 3, activation="relu"),
                              L.Flatten(), L.Dense(4, activation="softmax")])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(50)
    with pytest.raises(ValueError, match=r"1 classes x 9 features.*hold 1 of the 4 classes"
                                         r".*shuffle it"):
        # (plain filters: spare ones would fill the 3 beyond the 9 features)
        hybridize(model, dataset, cutoff=1, samples=50, sign_pairs=False, verbose=0)


def _squeeze_excitation_case(expand_activation, expand_name):
    """5 classes of 8x8x3 images and a network with a squeeze-and-excitation block: its
    expand layer has 96 filters over a 12-value input (5 classes give 60 directions)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    x = (rng.normal(size=(400, 8, 8, 3)) + y[:, None, None, None]).astype("float32")
    inputs = keras.Input((8, 8, 3))
    hidden = L.Conv2D(96, 3, padding="same", activation="swish")(inputs)
    squeeze = L.Reshape((1, 1, 96))(L.GlobalAveragePooling2D()(hidden))
    scale = L.Conv2D(96, 1, activation=expand_activation, name=expand_name)(
        L.Conv2D(12, 1, activation="swish")(squeeze))
    hidden = L.Conv2D(8, 1)(L.Multiply()([hidden, scale]))
    return x, y, keras.Model(inputs, L.Dense(5, activation="softmax")(L.Flatten()(hidden)))


def test_a_cutoff_through_a_layer_wider_than_the_classes_can_give_is_refused_first():
    # A squeeze-and-excitation expand layer: 96 filters over a 12-value input, 5 classes
    # give at most 60 class-PCA directions. Refused before any solve, naming the
    # largest cutoff this data can take; the cutoff below it solves.
    x, y, model = _squeeze_excitation_case("sigmoid", "se_expand")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"reaches Conv2D 'se_expand': 96 filters over 12 "
                                         r"input features.*\(60; 120 with sign_pairs=True\)"
                                         r".*the cutoff can be at most 2"):
        hybridize(model, (x, y), cutoff=3, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert hybridize(model, (x, y), cutoff=2, verbose=0).cutoff == 2


def test_the_capacity_check_counts_the_spare_filters_a_rectified_convolution_gets():
    # 96 filters over 12 values with 5 classes: 60 plain directions, but a ReLU reads
    # this convolution, so its default is spare filters (48 directions and their
    # negatives): the cutoff through it solves instead of being refused before the
    # solve; asked for plain filters it is refused as before.
    x, y, model = _squeeze_excitation_case("relu", "expand")
    with pytest.raises(ValueError, match=r"reaches Conv2D 'expand': 96 filters over 12 "
                                         r"input features.*\(60; 120 with sign_pairs=True\)"):
        hybridize(model, (x, y), cutoff=3, sign_pairs=False, verbose=0)
    report = hybridize(model, (x, y), cutoff=3, verbose=0)
    assert report.cutoff == 3 and report.layers[2].spare_filters == 48
    kernel = keras.ops.convert_to_numpy(model.get_layer("expand").kernel).reshape(12, 96)
    assert np.linalg.matrix_rank(kernel) == 12


def test_auto_judges_a_class_pca_dense_layer_as_a_dense_layer():
    # ClassPCADense is a Dense: never kept as lossless, and its threshold has the Dense
    # term (16 units over 12 features would otherwise pass as lossless unprobed).
    from keras_classpca.hybrid import policy

    x, y = _xy(n=600, d=12)
    model = keras.Sequential([keras.Input((12,)), ClassPCADense(16, activation="relu"),
                              L.Dense(3, activation="softmax")])
    report = hybridize(model, (x, y), verbose=0)
    row = report.evidence["layers"][0]
    assert row["kind"] == "Dense" and row["before"] is not None
    assert row["threshold"] == pytest.approx(policy.DEFAULT_RULE.threshold(
        report.evidence["samples_per_class"], "Dense"))


def _keras_io_style_sequential(seed=0):
    """A Sequential written the keras-io way: `add(keras.Input(...))`, then `add` per
    layer (each `add` rebuilds the graph and calls every layer again)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential()
    model.add(keras.Input((8, 8, 1)))
    model.add(L.Conv2D(4, 3, activation="relu", name="c1"))
    model.add(L.MaxPooling2D())
    model.add(L.Flatten())
    model.add(L.Dense(8, activation="relu", name="d1"))
    model.add(L.Dense(3, activation="softmax", name="out"))
    return model


def _listed_twin(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu", name="c1"),
        L.MaxPooling2D(), L.Flatten(), L.Dense(8, activation="relu", name="d1"),
        L.Dense(3, activation="softmax", name="out")])


def _three_class_images(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8, 8, 1)) + np.linspace(-1, 1, 8)[None, :, None, None] * (y - 1)[
        :, None, None, None]
    return x.astype("float32"), y


@pytest.mark.parametrize("origin", ["add", "reloaded"])
def test_sequential_models_built_with_add_or_reloaded_are_solved(origin, tmp_path):
    # Their layers' first calls belong to a graph the model rebuilt since: the plan,
    # the solve, the head's classes and fit_top's cached prefix read the current one.
    x, y = _three_class_images()
    model = _keras_io_style_sequential()
    if origin == "reloaded":
        path = str(tmp_path / "sequential.keras")
        _listed_twin().save(path)
        model = keras.saving.load_model(path)
    twin = _listed_twin()
    assert plan_model(model).names == plan_model(twin).names == ["c1", "d1"]
    assert output_classes(model) == 3
    report = hybridize(model, (x, y), cutoff=2, samples=None, verbose=0)
    hybridize(twin, (x, y), cutoff=2, samples=None, verbose=0)
    assert report.frozen == ["c1", "d1"]
    for name in ("c1", "d1"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer(name).kernel),
                                   keras.ops.convert_to_numpy(twin.get_layer(name).kernel),
                                   atol=1e-5)
    model.compile("adam", "sparse_categorical_crossentropy")
    history = fit_top(model, x, y, epochs=1, cache=True, verbose=0)
    assert history.cache_used


def test_data_of_another_shape_than_the_models_input_is_refused_by_name():
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(4, 3), L.Flatten(),
                              L.Dense(2, activation="softmax")])
    x, y = np.zeros((40, 20, 20, 1), "float32"), np.arange(40) % 2
    with pytest.raises(ValueError, match=r"samples of shape \(20, 20, 1\), but the model's "
                                         r"input has shape \(28, 28, 1\)"):
        hybridize(model, (x, y), cutoff=1, verbose=0)
    # A trailing axis of 1 more or less is what Keras itself accepts.
    rng = np.random.default_rng(0)
    hybridize(model, (rng.normal(size=(40, 28, 28)).astype("float32"), y), cutoff=1,
              verbose=0)


def test_a_solved_kernel_is_projected_by_the_layers_constraint_with_a_warning():
    x, y = _xy()
    model = _mlp(L.Dense(3, activation="softmax"))
    model.get_layer("a").kernel.constraint = keras.constraints.NonNeg()
    with pytest.warns(UserWarning, match=r"Dense 'a' has a constraint on its kernel \(NonNeg\)"):
        hybridize(model, (x, y), cutoff=1, verbose=0)
    kernel = keras.ops.convert_to_numpy(model.get_layer("a").kernel)
    assert kernel.min() >= 0.0 and kernel.max() > 0.0
    unconstrained = _mlp(L.Dense(3, activation="softmax"))
    hybridize(unconstrained, (x, y), cutoff=1, verbose=0)
    assert keras.ops.convert_to_numpy(unconstrained.get_layer("a").kernel).min() < 0.0


def test_a_branch_merging_with_an_unsolvable_one_is_probed_on_its_own_output():
    # c1 -> {c2a ; PReLU (trainable) -> c2b} -> Add: nothing after the merge is solved,
    # so c2a's gain is measured on its own output, not on c1's (a zero gain by
    # construction).
    from keras_classpca.hybrid.decision import probe_points

    inputs = keras.Input((8, 8, 1))
    c1 = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    c2a = L.Conv2D(4, 3, padding="same", activation="relu", name="c2a")(c1)
    c2b = L.Conv2D(4, 3, padding="same", name="c2b")(L.PReLU(name="prelu")(c1))
    merged = L.Add()([c2a, c2b])
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(merged)))
    plan = plan_model(model)
    assert plan.names == ["c1", "c2a"]
    points = dict(zip(plan.names, probe_points(plan)))
    steps = {step.name: step for step in plan.steps}
    assert points["c2a"][0] is steps["c2a"].output
    assert points["c1"][0] is steps["c2a"].input


def test_the_solve_cache_keys_the_weights_of_layers_it_passes_through():
    # Two models whose adapted Normalization differ only in their statistics (weights,
    # not config): the second must not get the first one's solve.
    from keras_classpca.hybrid.cache import SolveCache

    x, y = _xy()

    def model(shift):
        norm = L.Normalization()
        norm.adapt(x + shift)
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((12,)), norm,
                                 L.Dense(8, activation="relu", name="a"),
                                 L.Dense(3, activation="softmax")])

    cache = SolveCache()
    first, second, fresh = model(0.0), model(5.0), model(5.0)
    for m in (first, second):
        hybridize(m, (x, y), cutoff=1, verbose=0, solve_cache=cache, data_fingerprint="d")
    hybridize(fresh, (x, y), cutoff=1, verbose=0)
    assert cache.misses == 2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(second.get_layer("a").kernel),
                               keras.ops.convert_to_numpy(fresh.get_layer("a").kernel),
                               atol=1e-6)


# ------------------------------------------------------------ containers `fit` takes too
def test_pandas_frames_give_the_numpy_weights():
    pd = pytest.importorskip("pandas")
    from keras_classpca import ClassPCA, ClassPCAInitializer

    x, y = _xy()
    frame, labels = pd.DataFrame(x, columns=[f"f{i}" for i in range(12)]), pd.Series(y)
    reference = _mlp(L.Dense(3, activation="softmax"))
    hybridize(reference, (x, y), cutoff=1, samples=None, verbose=0)
    model = _mlp(L.Dense(3, activation="softmax"))
    hybridize(model, (frame, labels), cutoff=1, samples=None, verbose=0)
    np.testing.assert_array_equal(model.get_layer("a").get_weights()[0],
                                  reference.get_layer("a").get_weights()[0])
    # ClassPCA in batches, the initializer, adapt (labelled and label-free)
    np.testing.assert_array_equal(ClassPCA(6).fit(frame, labels, batch_size=100).components_,
                                  ClassPCA(6).fit(x, y, batch_size=100).components_)
    values = [keras.ops.convert_to_numpy(ClassPCAInitializer.from_data(a, b)((12, 6)))
              for a, b in ((frame, labels), (x, y))]
    np.testing.assert_array_equal(*values)
    layer, twin = ClassPCADense(6), ClassPCADense(6)
    layer.adapt(frame)
    twin.adapt(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel),
                               keras.ops.convert_to_numpy(twin.kernel), atol=1e-6)
    # fit_top's cache reads the frame too
    model.compile("adam", "sparse_categorical_crossentropy")
    assert fit_top(model, frame, labels, epochs=1, cache=True, verbose=0).cache_used


def test_sparse_inputs_are_refused_clearly_where_statistics_are_computed():
    import scipy.sparse

    x, y = _xy()
    sparse = scipy.sparse.csr_matrix(x)
    with pytest.raises(TypeError, match=r"Sparse or ragged input \(csr_matrix\).*toarray"):
        hybridize(_mlp(L.Dense(3, activation="softmax")), (sparse, y), cutoff=1, verbose=0)
    with pytest.raises(TypeError, match="Sparse or ragged input"):
        ClassPCADense(6).adapt((sparse, y))
    # fit_top trains on them as `fit` does, without the cache
    model = _mlp(L.Dense(3, activation="softmax"))
    hybridize(model, (x, y), cutoff=1, verbose=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    if BACKEND == "tensorflow":  # Keras reads SciPy sparse inputs under TensorFlow
        assert not fit_top(model, sparse, y, epochs=1, verbose=0).cache_used
    with pytest.raises(ValueError, match="`cache=True` but the inputs are sparse"):
        fit_top(model, sparse, y, epochs=1, cache=True, verbose=0)


def test_a_list_of_same_shaped_arrays_is_not_guessed_and_data_goes_in_one_argument():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"list of 2 arrays of one shape \(300, 12\).*tuple"):
        ClassPCADense(6).adapt([x[:300], x[300:]])  # x batches, or x and one-hot labels?
    twin, layer = ClassPCADense(6), ClassPCADense(6)
    layer.adapt(iter([x[:300], x[300:]]))
    twin.adapt(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel),
                               keras.ops.convert_to_numpy(twin.kernel), atol=1e-5)
    with pytest.raises(TypeError, match=r"hybridize\(model, \(x, y\)\)"):
        hybridize(_mlp(L.Dense(3, activation="softmax")), x, y)


def test_a_quantized_or_lora_layer_is_not_adapted_and_float16_batchnorm_statistics_are_checked():
    x, y = _xy()
    layer = ClassPCADense(6)
    layer.adapt((x, y))
    layer.quantize("int8")
    before = keras.ops.convert_to_numpy(layer(x))
    with pytest.raises(ValueError, match=r"is quantized \(int8\); adapt it before quantizing"):
        layer.adapt((x, y))  # the solved kernel cast to int8 was all zeros
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), before)
    # A LoRA layer's kernel is its base plus the learned update: refused as clearly.
    lora = ClassPCADense(6, trainable=True)
    lora.build((None, x.shape[1]))
    lora.enable_lora(2)
    kernel = keras.ops.convert_to_numpy(lora.kernel)
    with pytest.raises(ValueError, match=r"'.*' has LoRA enabled; adapt it before `enable_lora`"):
        lora.adapt((x, y))
    assert not lora.is_adapted
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(lora.kernel), kernel)
    # A float16 BatchNormalization would hold an inf moving variance (and output zeros).
    images = (np.random.default_rng(0).normal(size=(300, 8, 8, 1)) * 300).astype("float32")
    model = keras.Sequential([keras.Input((8, 8, 1)),
                              L.Conv2D(8, 3, use_bias=False, dtype="float16"),
                              L.BatchNormalization(dtype="float16"), L.ReLU(), L.Flatten(),
                              L.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match=r"moving_variance of BatchNormalization.*float16"):
        hybridize(model, (images, y[:300]), cutoff=1, samples=None, scaling="unit", verbose=0)


def test_hybridize_freezes_a_layer_normalization_its_solved_layer_reads():
    x = np.random.default_rng(0).normal(size=(240, 8, 8, 2)).astype("float32")
    y = np.arange(240) % 3
    x[np.arange(240), :, :, 0] += y[:, None, None]

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 2))
        h = L.LayerNormalization(name="norm")(L.Conv2D(4, 2, strides=2, name="stem")(inputs))
        h = L.Conv2D(6, 3, padding="same", activation="relu", name="second")(h)
        return keras.Model(inputs, L.Dense(3, activation="softmax")(
            L.GlobalAveragePooling2D()(h)))

    model = build()
    gamma = model.get_layer("norm").get_weights()
    report = hybridize(model, (x, y), cutoff=2, samples=None, verbose=0)
    assert report.frozen == ["stem", "norm", "second"]
    assert not model.get_layer("norm").trainable
    for before, after in zip(gamma, model.get_layer("norm").get_weights()):
        np.testing.assert_array_equal(before, after)  # passed as it was, not adapted
    # A lower cutoff releases it with the layer that read it.
    with pytest.warns(UserWarning, match="froze norm, second"):
        hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert model.get_layer("norm").trainable and model.get_layer("second").trainable
    # fit_progressive freezes it with the first layer that reads it.
    model = build()
    model.compile("adam", "sparse_categorical_crossentropy")
    history = fit_progressive(model, x, y, epochs=3, settle=[1, 2], batch_size=32, verbose=0)
    assert history.progressive.layers == ["stem", "second"]
    assert not model.get_layer("norm").trainable and not model.get_layer("second").trainable
    # One the user froze stays frozen when a lower cutoff releases the rest.
    model = build()
    model.get_layer("norm").trainable = False
    hybridize(model, (x, y), cutoff=2, samples=None, verbose=0)
    with pytest.warns(UserWarning, match=r"froze second, above"):
        hybridize(model, (x, y), cutoff=1, samples=None, verbose=0)
    assert not model.get_layer("norm").trainable
