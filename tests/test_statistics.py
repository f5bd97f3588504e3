"""`ClassStatistics`: exact sums, merge, atomic batches, memory limit, device path."""

import keras
import numpy as np
import pytest

from keras_classpca.core.statistics import ClassStatistics, check_memory, default_product_dtype


def _data(n=3000, d=7, k=4, seed=0, dtype=np.float64, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=(k, d))[y] + offset
    return x.astype(dtype), y


def _reference(x, y):
    x = x.astype(np.float64)
    classes = np.unique(y)
    return (classes, np.array([np.sum(y == c) for c in classes]),
            np.stack([x[y == c].sum(axis=0) for c in classes]),
            np.stack([x[y == c].T @ x[y == c] for c in classes]))


@pytest.mark.backend_independent
@pytest.mark.parametrize("product_dtype, data_dtype, rtol", [
    ("float64", np.float64, 1e-12), ("float32", np.float64, 1e-6),
    # rows of the product dtype are shifted as they are copied (`_multiply_runs`)
    ("float32", np.float32, 1e-6)])
def test_sums_equal_numpy_whatever_the_order_and_chunking(product_dtype, data_dtype, rtol,
                                                          monkeypatch):
    from keras_classpca.core import statistics as module

    x, y = _data(offset=50.0, dtype=data_dtype)
    classes, counts, sums, outer = _reference(x, y)
    monkeypatch.setattr(module, "MIN_CHUNK_ROWS", 64)  # many chunks per class
    monkeypatch.setattr(module, "CHUNK_BYTES", 64 * 8)
    monkeypatch.setattr(module, "BLOCK_BYTES", 500 * 7 * 8)
    # random; sorted; in runs of ~50 equal labels (as the patches of one image)
    runs = np.lexsort((y, np.arange(len(y)) // 200))
    for order in (np.arange(len(y)), np.argsort(y, kind="stable"), runs):
        stats = ClassStatistics(7, product_dtype=product_dtype)
        stats.accumulate(x[order], y[order])
        np.testing.assert_array_equal(stats.classes, classes)
        np.testing.assert_array_equal(stats.counts, counts)
        np.testing.assert_allclose(stats.sums, sums, rtol=rtol)
        # Relative to the spread, not to the offset of 50: the reference point at work.
        centered = outer - np.einsum("ki,kj->kij", sums, sums) / counts[:, None, None]
        got = stats.second_moments - np.einsum("ki,kj->kij", stats.sums, stats.sums) / counts[
            :, None, None]
        np.testing.assert_allclose(got, centered, rtol=30 * rtol, atol=30 * rtol * np.abs(
            centered).max())


@pytest.mark.backend_independent
def test_merge_copy_from_arrays_and_reading():
    x, y = _data(dtype=np.float64)
    whole = ClassStatistics(7)
    whole.accumulate(x, y)
    parts = [ClassStatistics(7), ClassStatistics(7)]
    parts[0].accumulate(x[:1000], y[:1000])
    parts[1].accumulate(x[1000:], y[1000:])
    merged = parts[0].copy().merge(parts[1])
    np.testing.assert_allclose(merged.second_moments, whole.second_moments, rtol=1e-12)
    assert parts[0].n_samples == 1000  # copy() left the part alone
    twin = ClassStatistics.from_arrays(whole.counts, whole.sums, whole.second_moments,
                                       classes=whole.classes)
    np.testing.assert_array_equal(twin.second_moment(2), whole.second_moment(2))
    assert twin.count(9) == 0 and 9 not in twin and len(twin) == 4
    assert whole.nbytes == 4 * (49 + 14 + 1) * 8
    with pytest.raises(KeyError, match="Class 9 has no samples"):
        whole.second_moment(9)
    with pytest.raises(ValueError, match="3 features into 7"):
        whole.merge(ClassStatistics(3))
    whole.clear()
    assert len(whole) == 0 and whole.n_samples == 0


@pytest.mark.backend_independent
def test_pickled_statistics_leave_their_scratch_space_behind_and_accumulate_on():
    import pickle

    x, y = _data(dtype=np.float32)
    stats = ClassStatistics(7)
    stats.accumulate(x[:2000], y[:2000])
    twin = pickle.loads(pickle.dumps(stats))
    assert "_products" in vars(stats) and "_products" not in vars(twin)
    for s in (stats, twin):
        s.accumulate(x[2000:], y[2000:])
    np.testing.assert_array_equal(twin.second_moments, stats.second_moments)
    reference = _reference(x, y)[3]
    np.testing.assert_allclose(twin.second_moments, reference, atol=1e-6 * np.abs(reference).max())


@pytest.mark.backend_independent
def test_bad_batch_changes_nothing():
    x, y = _data(dtype=np.float32)
    stats = ClassStatistics(7)
    stats.accumulate(x, y)
    before = stats.copy()
    bad = x.copy()
    bad[5, 2] = np.nan
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        stats.accumulate(bad, y)
    with pytest.raises(ValueError, match="shape"):
        stats.accumulate(x[:, :3], y)
    with pytest.raises(ValueError, match="non-negative"):
        stats.accumulate(x, y - 1)
    np.testing.assert_array_equal(stats.second_moments, before.second_moments)
    np.testing.assert_array_equal(stats.counts, before.counts)
    # Finite values whose float32 squares overflow: multiplied in float64 instead.
    big = np.full((4, 2), 3e19, dtype=np.float32)
    huge = ClassStatistics(2)
    huge.accumulate(big, np.zeros(4, dtype=int))
    np.testing.assert_allclose(huge.second_moment(0), np.full((2, 2), 4 * 9e38), rtol=1e-6)


@pytest.mark.backend_independent
def test_product_dtype_follows_the_data():
    assert [default_product_dtype(t) for t in ("float32", "float16", "uint8", "bfloat16")] == [
        "float32"] * 4
    assert [default_product_dtype(t) for t in (np.float64, np.int64, "int32")] == ["float64"] * 3


@pytest.mark.backend_independent
def test_memory_check_names_the_bytes():
    with pytest.raises(MemoryError, match=r"1000 classes x 2304 features need 42\.5 GB"):
        check_memory(1000, 2304, memory_limit=4e9)
    check_memory(10, 100, memory_limit=1e6)  # 0.8 MB fits
    stats = ClassStatistics(100, memory_limit=2 * 8 * (100**2 + 201))
    stats.accumulate(np.ones((2, 100)), np.array([0, 1]))
    with pytest.raises(MemoryError, match="3 classes x 100 features"):
        stats.accumulate(np.ones((3, 100)), np.array([0, 1, 2]))
    assert stats.counts.tolist() == [1, 1]


def test_backend_tensors_are_multiplied_on_their_device():
    # The device path (keras.ops) gives the NumPy path's statistics under every backend.
    x, y = _data(dtype=np.float32, offset=3.0)
    host = ClassStatistics(7)
    host.accumulate(x, y)
    device = ClassStatistics(7)
    tensor = keras.ops.convert_to_tensor(x)
    device.accumulate(tensor, y)
    np.testing.assert_array_equal(device.counts, host.counts)
    np.testing.assert_allclose(device.sums, host.sums, rtol=1e-5)
    np.testing.assert_allclose(device.second_moments, host.second_moments, rtol=1e-5)
    bad = keras.ops.convert_to_tensor(np.where(np.arange(7) == 3, np.nan, x).astype("float32"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        device.accumulate(bad, y)
    np.testing.assert_allclose(device.second_moments, host.second_moments, rtol=1e-5)


def test_device_class_blocks_of_rounded_sizes_give_the_exact_statistics(monkeypatch):
    # Under JAX each class's rows are read as a block of a rounded size, the rows of
    # other classes masked to zero, so that a few shapes get compiled instead of one
    # per run length. Forced here under every backend: same statistics as NumPy's.
    from keras_classpca.core import statistics as module

    blocks = []

    def recording(function):
        def call(grouped, start, size, kept, *rest):
            blocks.append((int(grouped.shape[0]), size, size if kept is None else kept[1]))
            return function(grouped, start, size, kept, *rest)
        return call

    monkeypatch.setattr(module, "_compiles_per_shape", lambda: True)
    monkeypatch.setattr(module, "_device_function", recording)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([2, 0, 1, 3], [70, 3, 200, 27]))
    x = (rng.normal(size=(300, 5)) * np.arange(1, 6) + 4.0).astype(np.float32)
    host, device = ClassStatistics(5), ClassStatistics(5)
    for rows in (slice(0, 150), slice(150, 300)):
        host.accumulate(x[rows], labels[rows])
        device.accumulate(keras.ops.convert_to_tensor(x[rows]), labels[rows])
    np.testing.assert_array_equal(device.counts, host.counts)
    np.testing.assert_allclose(device.sums, host.sums, rtol=1e-5)
    np.testing.assert_allclose(device.second_moments, host.second_moments, rtol=1e-5)
    allowed = {module._block_rows(n, True) for n in range(1, 151)}
    assert all(size in allowed or size == total for total, size, _ in blocks)
    assert any(kept < size for _, size, kept in blocks)  # some blocks were masked
    assert len({size for _, size, _ in blocks}) < len({kept for _, _, kept in blocks})


def test_class_pca_fit_of_backend_tensors_equals_numpy():
    from keras_classpca import ClassPCA

    x, y = _data(dtype=np.float32)
    host = ClassPCA(6).fit(x, y)
    device = ClassPCA(6).fit(keras.ops.convert_to_tensor(x), y)
    for c in range(4):
        a = host.components_[:, host.component_classes_ == c]
        b = device.components_[:, device.component_classes_ == c]
        assert np.linalg.norm(b - a @ (a.T @ b), 2) < 1e-5
    # transform (and fit_transform) take what fit takes: float64 NumPy, as for arrays.
    tensor = keras.ops.convert_to_tensor(x)
    for out in (device.transform(tensor), ClassPCA(6).fit_transform(tensor, y)):
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        np.testing.assert_allclose(out, device.transform(x), rtol=1e-6, atol=1e-5)


@pytest.mark.backend_independent
@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_small_batches_are_staged_and_give_the_same_sums(chunk_rows, monkeypatch):
    from keras_classpca.core import statistics as module

    if chunk_rows:  # a class's runs from many staged batches fill and wrap the buffer
        monkeypatch.setattr(module, "MIN_CHUNK_ROWS", chunk_rows)
        monkeypatch.setattr(module, "CHUNK_BYTES", chunk_rows * 7 * 8)
    x, y = _data(n=5000)
    one = ClassStatistics(7, product_dtype="float64")
    one.accumulate(x, y)
    many = ClassStatistics(7, product_dtype="float64")
    for start in range(0, len(x), 11):  # 11 rows < 4 classes x 7 features: staged
        many.accumulate(x[start : start + 11], y[start : start + 11])
    assert many._staged  # still waiting: 5,000 rows of 7 features are far below the stage
    twin = many.copy()  # reading multiplies what is staged
    assert not many._staged
    for stats in (many, twin):
        np.testing.assert_array_equal(stats.counts, one.counts)
        np.testing.assert_allclose(stats.sums, one.sums, rtol=1e-12)
        np.testing.assert_allclose(stats.second_moments, one.second_moments, rtol=1e-12)
    # float32 and float64 batches, staged and not: the reference point rounded to each
    # product dtype enters the pending correction of its own rows.
    mixed = ClassStatistics(7)
    mixed.accumulate(x[:100].astype(np.float32), y[:100])
    mixed.accumulate(x[100:3000], y[100:3000])
    mixed.accumulate(x[3000:3010].astype(np.float32), y[3000:3010])
    mixed.accumulate(x[3010:], y[3010:])
    np.testing.assert_allclose(mixed.sums, one.sums, rtol=1e-5)
    np.testing.assert_allclose(mixed.second_moments, one.second_moments, rtol=1e-5)


def test_distinct_labels_by_count_or_by_hash_agree():
    from keras_classpca.core.statistics import _distinct

    rng = np.random.default_rng(0)
    for labels in (rng.integers(0, 10, 5000), np.array([7, 3, 3, 1_000_000, 7]),
                   rng.integers(0, 70_000, 100).astype(np.uint32), np.array([5])):
        distinct = _distinct(labels)
        np.testing.assert_array_equal(distinct, np.unique(labels))
        assert distinct.dtype == labels.dtype


# ------------------------------------------------------------- classes held as rows
def _wide_data(counts, d=600, seed=0, offset=30.0):
    """Classes of few rows against `d` features: class `c` has `counts[c]` rows of rank
    at most 12 around a far offset (float64)."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    rng.shuffle(y)
    bases = rng.normal(size=(len(counts), 12, d))
    x = np.einsum("nk,nkd->nd", rng.normal(size=(len(y), 12)) * np.geomspace(5, 0.5, 12),
                  bases[y]) + offset
    return x, y


@pytest.mark.backend_independent
def test_classes_with_few_rows_are_held_as_rows_and_read_exactly():
    x, y = _wide_data([40, 100, 200])  # 200 > HELD_MAX_SHARE x 600 = 150: a matrix
    classes, counts, sums, outer = _reference(x, y)
    stats = ClassStatistics(600)
    for begin in range(0, len(y), 32):
        stats.accumulate(x[begin:begin + 32], y[begin:begin + 32])
    np.testing.assert_array_equal(stats.counts, counts)
    assert sorted(stats._held) == [0, 1]
    np.testing.assert_allclose(stats.sums, sums, rtol=1e-12)
    scale = np.abs(outer).max()
    np.testing.assert_allclose(stats.total_second_moment(), outer.sum(axis=0),
                               rtol=0, atol=1e-12 * scale)
    directions = np.random.default_rng(1).normal(size=(600, 5))
    np.testing.assert_allclose(
        stats.projected_second_moment(directions),
        np.diag(directions.T @ outer.sum(axis=0) @ directions), rtol=1e-10)
    assert sorted(stats._held) == [0, 1]  # reading the totals keeps them held
    for label in (0, 2):
        factor = stats.class_factor(label, center=True)
        assert (factor is None) == (label == 2)
    basis, small, trace = stats.class_factor(0, center=True)
    rows = x[y == 0]
    covariance = np.cov(rows.T, bias=True)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    np.testing.assert_allclose(basis @ small @ basis.T, covariance, atol=1e-10 * scale / 40)
    assert trace == pytest.approx(np.trace(covariance), rel=1e-12)
    assert basis.shape[1] <= 12  # the class's rank, not d
    # Reading a class's d x d matrix gives it one; later rows are multiplied into it.
    np.testing.assert_allclose(stats.second_moment(1), outer[1], rtol=0, atol=1e-12 * scale)
    assert sorted(stats._held) == [0]
    more, _ = _wide_data([0, 20], seed=2)
    stats.accumulate(more, np.ones(20, dtype=int))
    expected = outer[1] + more.T @ more
    np.testing.assert_allclose(stats.second_moment(1), expected, rtol=0, atol=1e-12 * scale)


@pytest.mark.backend_independent
def test_a_held_class_that_outgrows_the_share_gets_its_exact_matrix(monkeypatch):
    x, y = _wide_data([300, 60])
    _, _, _, outer = _reference(x, y)
    stats = ClassStatistics(600, product_dtype="float64")
    held_counts = []
    for begin in range(0, len(y), 40):
        stats.accumulate(x[begin:begin + 40], y[begin:begin + 40])
        stats.counts  # settles the staged rows: each batch is held or multiplied
        held_counts.append(len(stats._held))
    assert held_counts[0] == 2 and held_counts[-1] == 1  # class 0 passed 150 rows
    scale = np.abs(outer).max()
    for label in (0, 1):
        np.testing.assert_allclose(stats.second_moment(label), outer[label], rtol=0,
                                   atol=1e-12 * scale)


@pytest.mark.backend_independent
def test_held_statistics_merge_copy_and_sketch_like_the_matrices():
    from keras_classpca.core.sketch import ClassSketch

    x, y = _wide_data([50, 70, 30])
    _, counts, sums, outer = _reference(x, y)
    half = len(y) // 2
    first, second = ClassStatistics(600), ClassStatistics(600)
    first.accumulate(x[:half], y[:half])
    second.accumulate(x[half:], y[half:])
    twin = first.copy()
    assert sorted(twin._held) == [0, 1, 2]
    scale = np.abs(outer).max()
    first.merge(second)
    np.testing.assert_array_equal(first.counts, counts)
    np.testing.assert_allclose(first.second_moments, outer, rtol=0, atol=1e-12 * scale)
    # the copy was independent, and still reads its half
    np.testing.assert_array_equal(twin.counts, np.bincount(y[:half]))
    np.testing.assert_allclose(twin.sums, np.stack([x[:half][y[:half] == c].sum(axis=0)
                                                    for c in range(3)]), rtol=1e-12)
    # A sketch with at least every class's rows is exact (float32 rows).
    held = ClassStatistics(600)
    held.accumulate(x, y)
    sketch = ClassSketch.from_statistics(held, 80)
    for label in range(3):
        np.testing.assert_allclose(sketch.second_moment(label), outer[label], rtol=0,
                                   atol=1e-5 * scale)
    assert sorted(held._held) == [0, 1, 2]  # sketched from the rows, not from matrices


@pytest.mark.backend_independent
@pytest.mark.parametrize("center, allocation", [(True, "equal"), (False, "adaptive")])
def test_class_pca_solves_held_classes_as_it_solves_their_matrices(monkeypatch, center,
                                                                    allocation):
    from keras_classpca import ClassPCA
    from keras_classpca.core import statistics as module

    x, y = _wide_data([60, 90, 45])
    options = dict(n_components=9, center=center, allocation=allocation)
    held = ClassPCA(**options).fit(x, y)
    assert sorted(held.statistics_._held) == [0, 1, 2]
    monkeypatch.setattr(module, "HELD_MIN_FEATURES", 10**9)
    dense = ClassPCA(**options).fit(x, y)
    assert not dense.statistics_._held
    np.testing.assert_array_equal(held.component_classes_, dense.component_classes_)
    np.testing.assert_allclose(held.components_, dense.components_, atol=1e-8)
    np.testing.assert_allclose(held.explained_variance_, dense.explained_variance_,
                               rtol=1e-8)
    np.testing.assert_allclose(held.kernel_, dense.kernel_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(held.bias_, dense.bias_, rtol=1e-7, atol=1e-10)
    assert sorted(held.statistics_._held) == [0, 1, 2]  # solved without d x d matrices


def test_a_backend_tensor_batch_after_held_rows_adds_to_their_matrix():
    x, y = _wide_data([40, 30])
    _, counts, _, outer = _reference(x, y)
    stats = ClassStatistics(600, product_dtype="float64")
    stats.accumulate(x[:35], y[:35])
    assert stats.counts.sum() == 35 and stats._held
    stats.accumulate(keras.ops.convert_to_tensor(x[35:].astype("float32")), y[35:])
    # products now hold part of each class: no factor from the rows alone
    assert stats.class_factor(0, True) is None and stats.class_factor(1, True) is None
    np.testing.assert_array_equal(stats.counts, counts)
    scale = np.abs(outer).max()
    expected = _reference(np.concatenate([x[:35], x[35:].astype("float32")]), y)[3]
    np.testing.assert_allclose(stats.second_moments, expected, rtol=0, atol=1e-6 * scale)
    assert not stats._held
