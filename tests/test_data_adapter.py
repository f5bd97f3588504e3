"""`iter_batches`: every accepted input type yields the same samples; limits; errors."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import ArrayPyDataset

from keras_classpca.core.data_adapter import iter_batches

N = 23


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 4, 3)).astype("float32"), (np.arange(N) % 3).astype("int64")


def _sources(x, y):
    """Every supported way to hand over the same data, batched by 5."""
    batched = [(x[i : i + 5], y[i : i + 5]) for i in range(0, N, 5)]
    return {
        "x-and-y": (x, {"y": y, "batch_size": 5}),
        "tuple": ((x, y), {"batch_size": 5}),
        "tuple-with-weights": ((x, y, np.ones(N)), {"batch_size": 5}),
        "tensors": ((tf.constant(x), tf.constant(y)), {"batch_size": 5}),
        "dataset-batched": (tf.data.Dataset.from_tensor_slices((x, y)).batch(5), {}),
        "dataset-unbatched": (tf.data.Dataset.from_tensor_slices((x, y)), {"batch_size": 5}),
        "dataset-with-weights": (
            tf.data.Dataset.from_tensor_slices((x, y, np.ones(N))).batch(5),
            {},
        ),
        "pydataset": (ArrayPyDataset(x, y, 5), {}),
        "generator": ((b for b in batched), {}),
        "list-of-batches": (batched, {}),
    }


SOURCE_NAMES = list(_sources(np.zeros((N, 1)), np.zeros(N)))


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_every_source_yields_the_same_samples(xy, name):
    x, y = xy
    data, kwargs = _sources(x, y)[name]
    batches = list(iter_batches(data, **kwargs))
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 3]
    for bx, by in batches:
        assert isinstance(bx, np.ndarray) and isinstance(by, np.ndarray)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_steps_honoured(xy, name):
    x, y = xy
    data, kwargs = _sources(x, y)[name]
    batches = list(iter_batches(data, steps=2, **kwargs))
    assert len(batches) == 2
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[:10])


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_max_samples_cuts_last_batch(xy, name):
    x, y = xy
    data, kwargs = _sources(x, y)[name]
    batches = list(iter_batches(data, max_samples=12, **kwargs))
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[:12])


def test_steps_pulls_no_extra_batch_from_a_generator(xy):
    x, y = xy
    pulled = []

    def generator():
        for i in range(0, N, 5):
            pulled.append(i)
            yield x[i : i + 5], y[i : i + 5]

    stream = generator()
    assert len(list(iter_batches(stream, steps=2))) == 2
    # The caller's generator must still hold the third batch.
    assert pulled == [0, 5]
    np.testing.assert_array_equal(next(stream)[0], x[10:15])


def test_default_batch_size_and_batch_size_for_arrays(xy):
    x, y = xy
    assert [len(b[0]) for b in iter_batches((x, y))] == [N]
    assert [len(b[0]) for b in iter_batches((x, y), batch_size=10)] == [10, 10, 3]


def test_unbatched_tfds_style_dataset_batched_by_batch_size(xy):
    x, y = xy
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    assert [len(b[0]) for b in iter_batches(ds, batch_size=8)] == [8, 8, 7]


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_one_hot_datasets_batched_and_unbatched(xy, drop_remainder):
    x, y = xy
    one_hot = np.eye(3, dtype="float32")[y]
    unbatched = tf.data.Dataset.from_tensor_slices((x, one_hot))
    batches = list(iter_batches(unbatched, batch_size=10))
    assert [b[1].shape for b in batches] == [(10, 3), (10, 3), (3, 3)]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    # Already batched (also with a static batch size that is not x's first axis).
    batched = unbatched.batch(4, drop_remainder=drop_remainder)
    sizes = [len(b[0]) for b in iter_batches(batched, batch_size=10)]
    assert sizes == [4] * 5 + ([] if drop_remainder else [3])


def test_one_hot_labels_pass_through(xy):
    x, y = xy
    ((bx, by),) = list(iter_batches((x, np.eye(3)[y])))
    np.testing.assert_array_equal(by, np.eye(3)[y])


def test_empty_sources_yield_nothing(xy):
    x, y = xy
    assert list(iter_batches((x[:0], y[:0]))) == []
    assert list(iter_batches(iter([]))) == []
    assert list(iter_batches([(x[:0], y[:0])])) == []


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "`batch_size` must be a positive integer"),
        ({"batch_size": 2.5}, "`batch_size` must be a positive integer"),
        ({"steps": 0}, "`steps` must be a positive integer"),
        ({"max_samples": -3}, "`max_samples` must be a positive integer"),
    ],
)
def test_bad_options(xy, kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(iter_batches(xy, **kwargs))


def test_x_without_labels(xy):
    x, _ = xy
    with pytest.raises(ValueError, match="needs labels"):
        next(iter_batches(x))


def test_dataset_without_labels(xy):
    x, _ = xy
    with pytest.raises(ValueError, match=r"must yield `\(x, y\)` pairs"):
        next(iter_batches(tf.data.Dataset.from_tensor_slices(x).batch(4)))


def test_dataset_of_dicts_points_to_as_supervised(xy):
    x, y = xy
    ds = tf.data.Dataset.from_tensor_slices({"image": x, "label": y}).batch(4)
    with pytest.raises(ValueError, match="as_supervised=True"):
        next(iter_batches(ds))


def test_generator_of_bare_arrays(xy):
    x, _ = xy
    with pytest.raises(ValueError, match=r"The data iterable must yield `\(x, y\)` pairs"):
        next(iter_batches(iter([x[:4], x[4:8]])))


@pytest.mark.parametrize(
    "data, y, match",
    [
        (np.zeros((4, 2)), np.zeros(3), r"`x` and `y` must have the same number of samples"),
        (np.zeros((4, 2)), np.zeros(()), r"`x` and `y` must have the same number of samples"),
        (np.zeros(()), np.zeros(3), r"`x` must have a batch dimension"),
    ],
)
def test_length_mismatch_in_arrays(data, y, match):
    with pytest.raises(ValueError, match=match):
        next(iter_batches(data, y))


def test_length_mismatch_in_a_batch():
    batches = [(np.zeros((4, 2)), np.zeros(4)), (np.zeros((4, 2)), np.zeros(3))]
    stream = iter_batches(batches)
    next(stream)
    with pytest.raises(
        ValueError, match=r"batch 1 has x with shape \(4, 2\) and y with shape \(3,\)"
    ):
        next(stream)


@pytest.mark.parametrize("data", [42, "images.npz", {"x": 1, "y": 2}])
def test_unsupported_types(data):
    with pytest.raises((TypeError, ValueError), match="`data` must be|pairs"):
        next(iter_batches(data))


def test_non_array_batch_part():
    with pytest.raises(TypeError, match="`x` must be an array or tensor; received object"):
        next(iter_batches([(object(), np.zeros(2))]))


def test_a_function_returning_batches_is_called_once_per_pass():
    from keras_classpca import ClassPCA

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 5)), rng.integers(0, 3, 120)
    calls = []

    def batches():
        calls.append(1)
        return ((x[s:s + 40], y[s:s + 40]) for s in range(0, 120, 40))

    assert [len(b[0]) for b in iter_batches(batches)] == [40, 40, 40] and len(calls) == 1
    np.testing.assert_allclose(ClassPCA(4).fit(batches).kernel_, ClassPCA(4).fit(x, y).kernel_,
                               atol=1e-10)


def test_known_batches_of_datasets_that_say_their_length():
    from keras_classpca.core.data_adapter import known_batches

    x, y = np.zeros((100, 3), "float32"), np.arange(100) % 2
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(30)
    assert known_batches(batched) == 4
    assert known_batches(tf.data.Dataset.from_tensor_slices((x, y)), batch_size=40) == 3
    assert known_batches(batched.repeat()) is None  # infinite
    assert known_batches(batched.filter(lambda a, b: True)) is None  # unknown
    assert known_batches(ArrayPyDataset(x, y, 25)) == 4
    assert known_batches(iter([(x, y)])) is None


def test_unbatched_one_hot_labels_as_long_as_the_first_axis_are_batched_by_us():
    # Sequences of 5 steps with one-hot labels of 5 classes: the label length equals x's
    # first axis, as in a batch of 5 class ids. The first label (a one-hot row) decides.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 40)
    x = rng.normal(size=(40, 5, 8)).astype("float32")
    one_hot = np.eye(5, dtype="float32")[y]
    batches = list(iter_batches(tf.data.Dataset.from_tensor_slices((x, one_hot)),
                                batch_size=16))
    assert [len(b[0]) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), one_hot)
    # Batches of 5 class ids (drop_remainder: a static leading size of 5) stay batches.
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(5, drop_remainder=True)
    batches = list(iter_batches(batched, batch_size=16))
    assert [len(b[0]) for b in batches] == [5] * 8
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


def test_batches_of_class_ids_that_start_like_a_one_hot_row_stay_batches():
    # drop_remainder batches of 8 binary labels: the first holds one 1 (it reads like a
    # one-hot row of 8 classes), later ones do not: batches of class ids 0 and 1.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = np.zeros(64, dtype="int64")
    y[[3, 9, 10, 20, 21, 22, 40, 41]] = 1
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    labels = np.concatenate([b for _, b in iter_batches(dataset, None)])
    np.testing.assert_array_equal(labels, y)
