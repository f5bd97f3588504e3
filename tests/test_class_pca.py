"""`ClassPCA`: subspace recovery, allocation, scaling, streaming, determinism, errors."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg

from keras_classpca.core.class_pca import (
    ClassPCA,
    InvalidParameterError,
    NotFittedError,
    labels_to_int,
)
from keras_classpca.core.subspace import subspace_overlap

pytestmark = pytest.mark.backend_independent

COS_MIN = 0.99


def _class_blocks(pca):
    return {int(c): pca.components_[:, pca.component_classes_ == c] for c in pca.classes_}


def _reference_class_matrix(x, y, label, center):
    rows = x[y == label]
    if center:
        rows = rows - rows.mean(axis=0)
    return rows.T @ rows / len(rows)


def _state(pca):
    """Everything observable about a ClassPCA's statistics (to check nothing changed)."""
    if not pca.is_fitted:
        return None
    return (
        pca.n_samples_seen_.copy(),
        pca.mean_.copy(),
        pca.covariance_.copy(),
        pca.kernel_.copy() if (pca.n_components or pca.allocation == "adaptive") else None,
    )


def _assert_state_equal(before, after):
    if before is None:
        assert after is None
        return
    for a, b in zip(before, after):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- subspace recovery
@pytest.mark.parametrize("center", [True, False])
def test_equal_allocation_spans_true_subspaces(subspace_classes, principal_cosines, center):
    # Class means are distinct but zero in the uncentered case (there the second
    # moment is the covariance and must give the same subspaces).
    data = subspace_classes([2, 2, 2], n_features=12, class_mean_scale=4.0 if center else 0.0)
    pca = ClassPCA(6, center=center, allocation="equal").fit(data.x, data.y)
    blocks = _class_blocks(pca)
    for label, basis in enumerate(data.bases):
        assert blocks[label].shape == (12, 2)
        cosines = principal_cosines(blocks[label], basis)
        assert cosines.min() >= COS_MIN, (label, cosines)


def test_centering_matters_for_offset_classes(subspace_classes, principal_cosines):
    # Sanity check that the subspace test can fail: uncentered statistics of classes
    # with large offsets put the offset direction first, off the true subspace.
    data = subspace_classes([2, 2, 2], n_features=12, class_mean_scale=20.0)
    pca = ClassPCA(6, center=False).fit(data.x, data.y)
    blocks = _class_blocks(pca)
    assert min(principal_cosines(blocks[c], data.bases[c]).min() for c in range(3)) < 0.5


@pytest.mark.parametrize("center", [True, False])
def test_adaptive_finds_each_class_dimension(subspace_classes, principal_cosines, center):
    dims = [1, 2, 3]
    data = subspace_classes(
        dims, n_features=12, class_mean_scale=3.0 if center else 0.0, noise=1e-7
    )
    pca = ClassPCA(None, center=center, allocation="adaptive", variance_share=1.0).fit(
        data.x, data.y
    )
    blocks = _class_blocks(pca)
    assert [blocks[c].shape[1] for c in range(3)] == dims
    for label, basis in enumerate(data.bases):
        assert principal_cosines(blocks[label], basis).min() >= COS_MIN


@pytest.mark.parametrize("mean_scale", [6.0, 50.0])
def test_adaptive_drops_shared_mean_direction_when_uncentered(
    subspace_classes, principal_cosines, mean_scale
):
    dims = [1, 2, 3]
    data = subspace_classes(dims, n_features=12, shared_mean_scale=mean_scale, noise=1e-7)
    pca = ClassPCA(None, center=False, allocation="adaptive", variance_share=1.0).fit(
        data.x, data.y
    )
    dc = np.abs(data.shared_direction @ pca.components_)
    # Exactly one component is the shared DC/mean direction; every class found it.
    assert np.sum(dc > 0.9) == 1
    assert pca.n_components_ == 1 + sum(dims)
    blocks = _class_blocks(pca)
    for label, basis in enumerate(data.bases):
        block = blocks[label]
        not_dc = block[:, np.abs(data.shared_direction @ block) < 0.9]
        assert not_dc.shape[1] == dims[label]
        assert principal_cosines(not_dc, basis).min() >= COS_MIN
    # Without deduplication every class keeps its own copy of the DC direction.
    plain = ClassPCA(
        None, center=False, allocation="adaptive", variance_share=1.0, dedup_threshold=None
    ).fit(data.x, data.y)
    assert np.sum(np.abs(data.shared_direction @ plain.components_) > 0.9) == 3


def test_adaptive_rule_matches_documented_cumulative_share(subspace_classes):
    # Documented rule: keep the leading vectors whose cumulative share stays within
    # variance_share (at least one). Reference computed here with numpy's eigvalsh.
    data = subspace_classes([3, 3, 3], n_features=12, noise=0.3)
    for share in (0.5, 0.8, 0.95):
        pca = ClassPCA(None, allocation="adaptive", variance_share=share, dedup_threshold=None)
        pca.fit(data.x, data.y)
        for label in range(3):
            values = np.linalg.eigvalsh(_reference_class_matrix(data.x, data.y, label, True))[::-1]
            expected = max(1, int(np.sum(np.cumsum(values) / values.sum() <= share)))
            assert np.sum(pca.component_classes_ == label) == expected, (share, label)


def test_equal_allocation_remainder_goes_to_largest_next_share(subspace_classes):
    data = subspace_classes([3, 3, 3], n_features=12, noise=0.05)
    # Class 1 gets a much stronger second direction.
    x = data.x.copy()
    ones = data.y == 1
    x[ones] += 4.0 * np.outer(np.random.default_rng(1).normal(size=ones.sum()), data.bases[1][:, 1])
    pca = ClassPCA(4, dedup_threshold=None).fit(x, data.y)
    shares = []
    for label in range(3):
        values = np.linalg.eigvalsh(_reference_class_matrix(x, data.y, label, True))[::-1]
        shares.append(values[1] / values.sum())
    counts = [int(np.sum(pca.component_classes_ == c)) for c in range(3)]
    assert sum(counts) == 4
    expected = [1, 1, 1]
    expected[int(np.argmax(shares))] += 1
    assert counts == expected


def test_exhausted_class_hands_slots_to_others(subspace_classes):
    data = subspace_classes([1, 3, 3], n_features=12, noise=0.0)
    pca = ClassPCA(6).fit(data.x, data.y)  # 2 per class, but class 0 has rank 1
    counts = [int(np.sum(pca.component_classes_ == c)) for c in range(3)]
    assert counts[0] == 1 and sum(counts) == 6
    # No null-space direction was used: every component carries variance.
    assert np.all(pca.explained_variance_ > 1e-3)


def test_dedup_equal_allocation_skips_shared_direction(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, shared_mean_scale=8.0)
    with_dedup = ClassPCA(6, center=False).fit(data.x, data.y)
    without = ClassPCA(6, center=False, dedup_threshold=None).fit(data.x, data.y)
    assert np.sum(np.abs(data.shared_direction @ without.components_) > 0.9) == 3
    assert np.sum(np.abs(data.shared_direction @ with_dedup.components_) > 0.9) == 1
    gram = np.abs(with_dedup.components_.T @ with_dedup.components_ - np.eye(6))
    other_class = with_dedup.component_classes_[:, None] != with_dedup.component_classes_[None]
    assert gram[other_class].max() <= 0.9


# ---------------------------------------------------------------- statistics and scaling
@pytest.mark.parametrize("center", [True, False])
def test_statistics_equal_numpy(blobs, center):
    x, y = blobs
    x = x.astype(np.float64)
    pca = ClassPCA(6, center=center, dedup_threshold=None).fit(x, y, batch_size=50)
    np.testing.assert_array_equal(pca.classes_, [0, 1, 2])
    np.testing.assert_array_equal(pca.n_samples_seen_, np.bincount(y))
    np.testing.assert_allclose(pca.mean_, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pca.covariance_, np.cov(x.T, bias=True), rtol=1e-10, atol=1e-12)
    for label in range(3):
        np.testing.assert_allclose(
            pca.class_matrix(label),
            _reference_class_matrix(x, y, label, center),
            rtol=1e-10,
            atol=1e-12,
        )
        values, vectors = np.linalg.eigh(_reference_class_matrix(x, y, label, center))
        block = pca.components_[:, pca.component_classes_ == label]
        np.testing.assert_allclose(
            pca.explained_variance_[pca.component_classes_ == label], values[::-1][:2], rtol=1e-9
        )
        # Each component is an eigenvector of its class's matrix.
        matrix = _reference_class_matrix(x, y, label, center)
        np.testing.assert_allclose(matrix @ block, block * values[::-1][:2], atol=1e-9)


@pytest.mark.parametrize("center", [True, False])
def test_standardize_gives_zero_mean_unit_variance(blobs, center):
    x, y = blobs
    # Exact algebra: float64 products (float32 ones: test_float32_products_*).
    pca = ClassPCA(6, center=center, product_dtype="float64").fit(x, y)
    out = pca.transform(x)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-9)
    np.testing.assert_allclose(out, x.astype(np.float64) @ pca.kernel_ + pca.bias_, rtol=1e-12)


def test_unit_scaling_orthonormal_within_class_and_zero_offset(blobs):
    x, y = blobs
    pca = ClassPCA(6, scaling="unit", offset="zero").fit(x, y)
    np.testing.assert_array_equal(pca.kernel_, pca.components_)
    np.testing.assert_array_equal(pca.bias_, np.zeros(6))
    for label in range(3):
        block = pca.kernel_[:, pca.component_classes_ == label]
        np.testing.assert_allclose(block.T @ block, np.eye(block.shape[1]), atol=1e-12)


def test_whiten_gives_unit_variance_within_own_class(blobs):
    x, y = blobs
    pca = ClassPCA(6, scaling="whiten", product_dtype="float64").fit(x, y)
    out = pca.transform(x)
    for label in range(3):
        own = pca.component_classes_ == label
        np.testing.assert_allclose(out[y == label][:, own].var(axis=0), 1.0, rtol=1e-9)


def test_fit_accepts_one_hot_labels(blobs):
    x, y = blobs
    a = ClassPCA(6).fit(x, y)
    b = ClassPCA(6).fit(x, np.eye(3)[y])
    np.testing.assert_array_equal(a.kernel_, b.kernel_)


# ---------------------------------------------------------------- streaming, determinism
def test_partial_fit_equals_fit(blobs):
    x, y = blobs
    one_shot = ClassPCA(6, product_dtype="float64").fit(x, y)
    streamed = ClassPCA(6, product_dtype="float64")
    for start in range(0, len(x), 37):
        assert streamed.partial_fit(x[start : start + 37], y[start : start + 37]) is streamed
    for name in ("components_", "kernel_", "bias_", "explained_variance_", "covariance_", "mean_"):
        np.testing.assert_allclose(
            getattr(streamed, name), getattr(one_shot, name), rtol=1e-10, atol=1e-12
        )
    np.testing.assert_array_equal(streamed.component_classes_, one_shot.component_classes_)


def test_merge_of_shards_equals_one_pass(blobs):
    x, y = blobs
    one_pass = ClassPCA(6).fit(x, y)
    shards = [ClassPCA(6).fit(x[i::3], y[i::3]) for i in range(3)]
    merged = ClassPCA(6)
    for shard in shards:
        assert merged.merge(shard) is merged
    np.testing.assert_array_equal(merged.n_samples_seen_, one_pass.n_samples_seen_)
    for name in ("components_", "kernel_", "bias_", "covariance_"):
        np.testing.assert_allclose(
            getattr(merged, name), getattr(one_pass, name), rtol=1e-10, atol=1e-12
        )


def test_merge_shard_holding_only_some_classes(blobs):
    x, y = blobs
    merged = ClassPCA(6)
    merged.partial_fit(x[y < 2], y[y < 2])
    merged.merge(ClassPCA(6))  # an empty shard is a no-op
    other = ClassPCA(6)
    other.partial_fit(x[y == 2], y[y == 2])
    merged.merge(other)
    np.testing.assert_allclose(
        merged.kernel_, ClassPCA(6).fit(x, y).kernel_, rtol=1e-10, atol=1e-12
    )


def test_repeated_runs_bit_identical(blobs):
    x, y = blobs
    a = ClassPCA(6).fit(x, y, batch_size=64)
    b = ClassPCA(6).fit(x, y, batch_size=64)
    for name in ("components_", "kernel_", "bias_", "explained_variance_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # A second solve of the same statistics is also bit-identical.
    first = a.solve(5)
    a._solutions = {}
    np.testing.assert_array_equal(a.solve(5).kernel, first.kernel)


def test_sign_rule_largest_entry_positive_and_order_free(blobs):
    x, y = blobs
    pca = ClassPCA(6, scaling="unit", product_dtype="float64").fit(x, y)
    comps = pca.components_
    largest = comps[np.argmax(np.abs(comps), axis=0), np.arange(comps.shape[1])]
    assert np.all(largest > 0)
    # The same samples in another order give slightly different float sums; with a
    # deterministic sign rule the components agree to round-off, never up to sign.
    order = np.random.default_rng(3).permutation(len(x))
    shuffled = ClassPCA(6, scaling="unit", product_dtype="float64").fit(
        x[order], y[order], batch_size=17
    )
    np.testing.assert_allclose(shuffled.components_, comps, atol=1e-9)
    # The rule is equivariant under a permutation of the features, whatever signs the
    # eigen-solver happens to return for the permuted matrices.
    features = np.random.default_rng(4).permutation(x.shape[1])
    permuted = ClassPCA(6, scaling="unit", product_dtype="float64").fit(x[:, features], y)
    np.testing.assert_allclose(permuted.components_, comps[features], atol=1e-9)


def test_copy_is_independent(blobs):
    x, y = blobs
    pca = ClassPCA(6).fit(x, y)
    twin = pca.copy()
    twin.partial_fit(x[:30], y[:30])
    np.testing.assert_array_equal(pca.n_samples_seen_, np.bincount(y))
    assert twin.n_samples_seen_.sum() == len(x) + 30


def test_fit_restarts_from_scratch(blobs):
    x, y = blobs
    pca = ClassPCA(6).fit(x[:100], y[:100])
    pca.fit(x, y)
    np.testing.assert_array_equal(pca.n_samples_seen_, np.bincount(y))


# ---------------------------------------------------------------- errors change nothing
def _fitted(blobs):
    x, y = blobs
    return ClassPCA(6, n_classes=3).fit(x, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_nonfinite_x_rejected_without_state_change(blobs, bad, method):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    x_bad = x.copy()
    x_bad[5, 2] = bad
    with pytest.raises(ValueError, match=r"`x` contains 1 NaN or infinite"):
        getattr(pca, method)(x_bad, y)
    _assert_state_equal(before, _state(pca))


def test_nonfinite_in_later_batch_keeps_previous_fit(blobs):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    x_bad = x.copy()
    x_bad[-1, 0] = np.nan
    with pytest.raises(ValueError, match="`x`"):
        pca.fit(x_bad, y, batch_size=16)
    _assert_state_equal(before, _state(pca))


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_x_rejected(blobs):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(ValueError, match="`x` holds values too large"):
        pca.partial_fit(np.full((3, 8), 1e200), [0, 1, 2])
    _assert_state_equal(before, _state(pca))


@pytest.mark.parametrize(
    "x_shape, match",
    [
        ((10, 2, 4), "`x` must be 2-D"),
        ((10, 5), "X has 5 features, but ClassPCA is expecting 8 features"),
    ],
)
def test_wrong_x_shape_rejected(blobs, x_shape, match):
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(ValueError, match=match):
        pca.partial_fit(np.ones(x_shape), np.zeros(10, dtype=int))
    _assert_state_equal(before, _state(pca))


def test_non_numeric_x_rejected(blobs):
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(TypeError, match="`x` must be numeric"):
        pca.partial_fit(np.full((3, 8), "a"), [0, 1, 2])
    _assert_state_equal(before, _state(pca))


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_length_mismatch_rejected(blobs, method):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(ValueError, match="`x` and `y` must have the same number of samples"):
        getattr(pca, method)(x, y[:-1])
    _assert_state_equal(before, _state(pca))


@pytest.mark.parametrize(
    "labels, match",
    [
        (lambda y: y - 1, r"`y` holds negative labels"),
        (lambda y: y + 0.5, r"`y` must hold integer class labels; received non-integer"),
        (lambda y: np.where(y == 2, 3, y), r"`y` holds label 3, out of range for n_classes=3"),
        (lambda y: y.astype(str), r"`y` must hold integer class labels; received dtype"),
        (lambda y: np.eye(4)[y], r"`y` is one-hot with 4 columns but n_classes=3"),
        (lambda y: 0.5 * np.eye(3)[y], r"`y` has 2 dimensions but is not one-hot"),
        (lambda y: np.zeros((len(y), 1, 1), dtype=int), r"`y` must be a vector"),
    ],
    ids=["negative", "non-integer", "out-of-range", "strings", "one-hot-width", "soft", "3-D"],
)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_bad_labels_rejected(blobs, labels, match, method):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    bad = labels(y.copy())
    with pytest.raises(ValueError, match=match):
        getattr(pca, method)(x[: len(bad)], bad)
    _assert_state_equal(before, _state(pca))


def test_labels_to_int_accepts_integer_valued_floats_and_column():
    np.testing.assert_array_equal(labels_to_int(np.array([[0.0], [2.0], [1.0]])), [0, 2, 1])


def test_label_messages_for_an_empty_one_hot_row_and_float16_labels():
    # A one-hot row without its 1 was called "soft or smoothed labels".
    with pytest.raises(ValueError, match=r"row 1 is all zeros: a sample without a class"):
        labels_to_int(np.array([[1, 0], [0, 0], [0, 1]]))
    # float16 labels warned "overflow encountered in cast" (an error under -W error).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(labels_to_int(np.array([0, 2, 1], np.float16)), [0, 2, 1])
    with pytest.raises(ValueError, match="too large for a class index"):
        labels_to_int(np.array([2**63], np.uint64))


def test_empty_data_rejected(blobs):
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(ValueError, match="`data` is empty"):
        pca.fit(np.zeros((0, 8)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="`data` is empty"):
        pca.fit(iter([]))
    _assert_state_equal(before, _state(pca))


def test_data_without_labels_rejected(blobs):
    x, _ = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(ValueError, match="needs labels"):
        pca.fit(x)
    _assert_state_equal(before, _state(pca))


@pytest.mark.parametrize("center, n_samples", [(True, 2), (False, 1)])
def test_class_with_too_few_samples_rejected(blobs, center, n_samples):
    x, y = blobs
    pca = ClassPCA(6, center=center).fit(x, y)  # 2 components per class
    before = _state(pca)
    keep = np.concatenate([np.flatnonzero(y != 1), np.flatnonzero(y == 1)[:n_samples]])
    with pytest.raises(ValueError, match=rf"Class 1 has {n_samples} sample\(s\) but must supply 2"):
        pca.fit(x[keep], y[keep])
    _assert_state_equal(before, _state(pca))


def test_adaptive_class_with_one_sample_rejected(blobs):
    x, y = blobs
    keep = np.concatenate([np.flatnonzero(y != 1), np.flatnonzero(y == 1)[:1]])
    with pytest.raises(ValueError, match=r"Class 1 has 1 sample\(s\); with center=True.*"
                                         r"center=False"):
        ClassPCA(allocation="adaptive").fit(x[keep], y[keep])
    # the way out the message names
    pca = ClassPCA(allocation="adaptive", center=False).fit(x[keep], y[keep])
    assert np.count_nonzero(pca.component_classes_ == 1) == 1


def test_declared_class_without_samples_rejected(blobs):
    x, y = blobs
    with pytest.raises(ValueError, match=r"Class 3 \(of n_classes=4\) has no samples"):
        ClassPCA(8, n_classes=4).fit(x, y)


def test_too_many_components_rejected(blobs, subspace_classes):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(
        ValueError, match=r"n_components=25 exceeds what 3 classes x 8 features can give \(24\)"
    ):
        pca.solve(25)
    with pytest.raises(ValueError, match="n_components=25 exceeds"):
        ClassPCA(25).fit(x, y)
    _assert_state_equal(before, _state(pca))
    # Rank-limited data: three classes of rank 1 and 2 give at most 1 + 2 + 2 vectors.
    data = subspace_classes([1, 2, 2], n_features=12)
    with pytest.raises(
        ValueError, match=r"can give only 5 distinct non-degenerate component\(s\); n_components=6"
    ):
        ClassPCA(6).fit(data.x, data.y)


def test_unfitted_estimator_rejected():
    pca = ClassPCA(4)
    for name in ("components_", "kernel_", "mean_", "classes_", "statistics_"):
        with pytest.raises(ValueError, match="not fitted yet"):
            getattr(pca, name)
        with pytest.raises(AttributeError):
            getattr(pca, name)
        assert not hasattr(pca, name)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        pca.transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        pca.solve()
    assert not pca.is_fitted


def test_equal_allocation_needs_n_components(blobs):
    x, y = blobs
    pca = ClassPCA().fit(x, y)  # statistics only, no solve
    with pytest.raises(ValueError, match="`n_components` is required with allocation='equal'"):
        pca.solve()
    with pytest.raises(ValueError, match="`n_components` must be a positive integer"):
        pca.solve(0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_components": 0}, ValueError, "`n_components`"),
        ({"n_components": 2.5}, ValueError, "`n_components`"),
        ({"allocation": "greedy"}, ValueError, "`allocation`"),
        ({"scaling": "l2"}, ValueError, "`scaling`"),
        ({"offset": "mean"}, ValueError, "`offset`"),
        ({"center": "yes"}, TypeError, "`center`"),
        ({"variance_share": 0.0}, ValueError, "`variance_share`"),
        ({"variance_share": 1.5}, ValueError, "`variance_share`"),
        ({"dedup_threshold": 0.0}, ValueError, "`dedup_threshold`"),
        ({"n_classes": 0}, ValueError, "`n_classes`"),
        ({"n_components": True}, ValueError, "`n_components`"),
        ({"n_components": np.True_}, ValueError, "`n_components`"),
        ({"n_classes": True}, ValueError, "`n_classes`"),
        ({"variance_share": True}, ValueError, "`variance_share`"),
        ({"product_dtype": "float16"}, ValueError, "`product_dtype`"),
        ({"memory_limit": -1}, ValueError, "`memory_limit`"),
    ],
)
def test_bad_constructor_options(blobs, kwargs, error, match):
    # scikit-learn style: __init__ only stores, fit validates (and changes nothing).
    x, y = blobs
    pca = ClassPCA(**kwargs)
    assert all(getattr(pca, name) is value for name, value in kwargs.items())
    with pytest.raises(error, match=match):
        pca.fit(x, y)
    with pytest.raises(InvalidParameterError, match=match):
        pca.partial_fit(x, y)
    assert not pca.is_fitted and not hasattr(pca, "statistics_")
    fitted = ClassPCA(6).fit(x, y)
    kernel = fitted.kernel_.copy()
    fitted.set_params(**kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        fitted.fit(x, y)
    with pytest.raises(InvalidParameterError, match=match):
        fitted.solve()
    fitted.set_params(**{name: ClassPCA().get_params()[name] for name in kwargs})
    np.testing.assert_array_equal(fitted.set_params(n_components=6).kernel_, kernel)


def test_bad_merge_rejected(blobs):
    x, y = blobs
    pca = _fitted(blobs)
    before = _state(pca)
    with pytest.raises(TypeError, match="`other` must be a ClassPCA"):
        pca.merge(np.zeros(3))
    with pytest.raises(ValueError, match="Cannot merge statistics over 5 features into 8"):
        pca.merge(ClassPCA().fit(x[:, :5], y))
    other = ClassPCA(2)
    other.partial_fit(x[:8], np.full(8, 5))
    with pytest.raises(ValueError, match="`other` holds label 5, out of range for n_classes=3"):
        pca.merge(other)
    _assert_state_equal(before, _state(pca))


def test_transform_shape_checked(blobs):
    pca = _fitted(blobs)
    with pytest.raises(ValueError, match=r"`x` must have shape \(n_samples, 8\)"):
        pca.transform(np.ones((3, 7)))


def test_fit_accepts_batches_and_steps(blobs):
    x, y = blobs
    from_arrays = ClassPCA(6).fit(x, y, batch_size=40)
    from_generator = ClassPCA(6).fit((x[i : i + 40], y[i : i + 40]) for i in range(0, len(x), 40))
    np.testing.assert_array_equal(from_generator.kernel_, from_arrays.kernel_)
    first_100 = ClassPCA(6, product_dtype="float64").fit((x, y), batch_size=50, steps=2)
    np.testing.assert_array_equal(first_100.n_samples_seen_, np.bincount(y[:100]))
    np.testing.assert_allclose(
        first_100.kernel_,
        ClassPCA(6, product_dtype="float64").fit(x[:100], y[:100]).kernel_,
        rtol=1e-10,
        atol=1e-12,
    )


def test_adaptive_with_fixed_count_keeps_largest_shares(subspace_classes):
    data = subspace_classes([1, 2, 3], n_features=12, class_mean_scale=2.0, noise=1e-7)
    shares = []
    for label, dim in enumerate([1, 2, 3]):
        values = np.linalg.eigvalsh(_reference_class_matrix(data.x, data.y, label, True))[::-1]
        shares.extend(values[:dim] / values.sum())
    pca = ClassPCA(4, allocation="adaptive", variance_share=1.0).fit(data.x, data.y)
    assert pca.n_components_ == 4
    np.testing.assert_allclose(
        np.sort(pca.explained_variance_ratio_), np.sort(shares)[-4:], rtol=1e-9
    )
    # More than the six non-degenerate directions cannot be had.
    with pytest.raises(ValueError, match=r"can give only 6 distinct non-degenerate"):
        ClassPCA(7, allocation="adaptive", variance_share=1.0).fit(data.x, data.y)


def test_near_duplicates_fill_slots_only_when_no_distinct_vector_is_left():
    # Every class has the same anisotropic covariance: per class the eigenvectors are
    # (nearly) the same 9 directions, so only 9 distinct components exist across classes.
    rng = np.random.default_rng(3)
    scales = np.linspace(3.0, 1.0, 9)
    x = rng.normal(size=(20_000, 9)) * scales
    y = rng.integers(0, 10, len(x))

    def cross_class_duplicates(pca):
        cosines = np.abs(pca.components_.T @ pca.components_)
        other = pca.component_classes_[:, None] != pca.component_classes_[None, :]
        return int(np.sum(np.triu(cosines > 0.9, 1) & np.triu(other, 1)))

    distinct = ClassPCA(9).fit(x, y)
    assert cross_class_duplicates(distinct) == 0
    with pytest.warns(UserWarning, match="rank at most 9"):
        full = ClassPCA(32).fit(x, y)  # a 3x3 conv with 32 filters on one channel
    assert full.n_components_ == 32
    assert cross_class_duplicates(full) > 0
    assert np.linalg.matrix_rank(distinct.components_, tol=1e-6) == 9


def test_eigen_solves_of_small_matrices_use_one_blas_thread(blobs, monkeypatch):
    # On a busy machine multithreaded OpenBLAS makes small `eigh` calls many times
    # slower; the solve runs them with one thread and restores the setting afterwards.
    from threadpoolctl import threadpool_info

    import keras_classpca.core.class_pca as module

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    seen = []
    real_eigh = np.linalg.eigh

    def spying_eigh(matrix):
        seen.append(blas_threads())
        return real_eigh(matrix)

    monkeypatch.setattr(module.np.linalg, "eigh", spying_eigh)
    x, y = blobs
    reference = ClassPCA(6).fit(x, y)
    assert len(seen) == 3 and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before
    # Above the size limit the library's own thread count is left alone.
    seen.clear()
    monkeypatch.setattr(module, "SINGLE_THREAD_EIGH_MAX_DIM", x.shape[1] - 1)
    large = ClassPCA(6).fit(x, y)
    assert seen == [before] * 3
    np.testing.assert_allclose(large.kernel_, reference.kernel_, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- scikit-learn conformance
def test_clone_get_params_set_params():
    from sklearn.base import clone

    pca = ClassPCA(4, center=False, allocation="adaptive", n_classes=3, product_dtype="float64")
    twin = clone(pca)
    assert twin is not pca and twin.get_params() == pca.get_params()
    assert pca.get_params(deep=True) == pca.get_params(deep=False)
    assert set(pca.get_params()) == {
        "n_components", "center", "allocation", "scaling", "offset", "variance_share",
        "dedup_threshold", "n_classes", "discriminant", "sign_pairs", "product_dtype",
        "memory_limit", "eigen_solver", "sketch_size",
    }
    assert pca.set_params(n_components=6, scaling="unit") is pca
    assert (pca.n_components, pca.scaling) == (6, "unit")
    with pytest.raises(ValueError, match="Invalid parameter 'n_filters'"):
        pca.set_params(n_filters=3)
    # __init__ stores, even invalid values; fit validates.
    assert ClassPCA("many").n_components == "many"
    assert vars(ClassPCA(2)) == ClassPCA(2).get_params()


def test_set_params_drops_solutions_keeps_statistics(blobs):
    x, y = blobs
    pca = ClassPCA(6, scaling="unit").fit(x, y)
    unit = pca.kernel_.copy()
    pca.set_params(scaling="standardize")
    assert not np.array_equal(pca.kernel_, unit)
    np.testing.assert_array_equal(pca.kernel_, ClassPCA(6).fit(x, y).kernel_)


def _applicable_checks():
    """scikit-learn's estimator checks, all of them: `ClassPCA` is a supervised
    transformer whose `fit` takes `(x, y)`, so every check that sklearn generates for it
    applies, except `check_array_api_input` (it skips itself without SCIPY_ARRAY_API;
    ClassPCA computes in NumPy only). Not generated for a transformer, so not run:
    the classifier/regressor/cluster/outlier checks (`predict`, `score`, `decision_function`)."""
    from sklearn.utils.estimator_checks import parametrize_with_checks

    return parametrize_with_checks([ClassPCA(2)])


@_applicable_checks()
def test_sklearn_estimator_checks(estimator, check):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "does not inherit from BaseEstimator", by design
        check(estimator)


def test_fitted_attributes_exist_only_after_fit(blobs):
    x, y = blobs
    pca = ClassPCA(6)
    fitted = ["statistics_", "classes_", "n_features_in_", "n_samples_seen_", "mean_",
              "covariance_", "components_", "kernel_", "bias_", "explained_variance_",
              "explained_variance_ratio_", "component_classes_", "n_components_"]
    assert not any(hasattr(pca, name) for name in fitted)
    pca.fit(x, y)
    assert all(hasattr(pca, name) for name in fitted)
    assert pca.fit(x, y) is pca


# ---------------------------------------------------------------- bad inputs (issue 13)
def test_bool_n_components_rejected_not_taken_as_one(blobs):
    x, y = blobs
    with pytest.raises(InvalidParameterError, match="`n_components` must be a positive integer"):
        ClassPCA(True).fit(x, y)


def test_more_components_than_features_warns(blobs):
    x, y = blobs  # 8 features
    with pytest.warns(UserWarning, match="kernel has rank at most 8"):
        pca = ClassPCA(9).fit(x, y)
    assert pca.kernel_.shape == (8, 9) and np.linalg.matrix_rank(pca.kernel_) == 8
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ClassPCA(8).fit(x, y)  # d components: no warning


def test_memory_for_many_classes_fails_early_with_the_number():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 100)), rng.integers(0, 5, 50)
    # n_classes known: checked before any product (1000 x 100^2 float64 ~ 81 MB).
    # (sketch_size=None: exact statistics or an error; "auto" would sketch, test_sketch.py)
    pca = ClassPCA(5, n_classes=1000, memory_limit=10e6, sketch_size=None)
    with pytest.raises(MemoryError, match=r"1000 classes x 100 features need 81\.\d MB"):
        pca.fit(x, y)
    assert not pca.is_fitted
    # Unknown n_classes: the class that would exceed the limit raises before it is added.
    pca = ClassPCA(5, memory_limit=3 * 8 * (100**2 + 201), sketch_size=None)
    with pytest.raises(MemoryError, match="5 classes x 100 features"):
        pca.fit(x, y)
    pca = ClassPCA(5, memory_limit=3 * 8 * (100**2 + 201), sketch_size=None)
    pca.partial_fit(x[y < 3], y[y < 3])
    before = pca.statistics_.counts.copy()
    with pytest.raises(MemoryError, match="memory_limit"):
        pca.partial_fit(x, y)
    np.testing.assert_array_equal(pca.statistics_.counts, before)  # unchanged
    # Default limit: the memory the system reports available.
    from keras_classpca.core.statistics import available_memory

    huge = int(np.sqrt(available_memory() / 8)) + 1
    with pytest.raises(MemoryError, match="the available memory"):
        ClassPCA(2, n_classes=2, sketch_size=None)._new_statistics(huge)


def test_never_ending_data_raises_before_any_work():
    import itertools

    x, y = np.random.default_rng(0).normal(size=(4, 3)), np.arange(4) % 2
    for data in (itertools.cycle([(x, y)]), itertools.repeat((x, y))):
        with pytest.raises(ValueError, match="never ends"):
            ClassPCA(2).fit(data)
    np.testing.assert_array_equal(
        ClassPCA(2).fit(itertools.repeat((x, y)), steps=3).n_samples_seen_, [6, 6]
    )
    np.testing.assert_array_equal(ClassPCA(2).fit(itertools.repeat((x, y), 2)).n_samples_seen_,
                                  [4, 4])


def test_repeated_tf_dataset_raises_before_any_work():
    tf = pytest.importorskip("tensorflow")
    x, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    reads = []

    def record(a, b):
        reads.append(1)
        return a, b

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    with pytest.raises(ValueError, match="never ends.*steps="):
        ClassPCA(2).fit(ds.map(lambda a, b: tf.py_function(record, [a, b], [tf.float64, tf.int64])))
    assert not reads
    assert ClassPCA(2).fit(ds, steps=10).n_samples_seen_.sum() == 80


# ---------------------------------------------------------------- precision and the solver
def _subspace_residual(a, b):
    """Largest distance of a unit vector of span(b) from span(a) (both orthonormal)."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return float(np.linalg.norm(qb - qa @ (qa.T @ qb), 2))


def _well_conditioned(n=60_000, d=64, k=5, seed=0, offset=0.0, spread=(4.0, 0.5)):
    """Classes with distinct means and well-separated leading spectra, float32."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    bases = [np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(k)]
    scales = np.geomspace(spread[0], spread[1], d)
    z = rng.standard_normal((n, d)) * scales
    x = np.einsum("nd,ned->ne", z, np.stack(bases)[y]) + offset + rng.normal(size=(k, d))[y]
    return x.astype(np.float32), y


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_float32_products_match_float64_reference(offset):
    # Issue 18: on well-conditioned data float32 products (the default for float32
    # data) give the float64 components within subspace residual 1e-5, also far from
    # the origin (the per-class reference point keeps the rounding relative to the spread).
    x, y = _well_conditioned(offset=offset)
    fast = ClassPCA(15).fit(x, y)
    assert fast.statistics_.product_dtype is None  # picked float32 for float32 data
    exact = ClassPCA(15, product_dtype="float64").fit(x, y)
    for c in range(5):
        own = fast.component_classes_ == c
        assert _subspace_residual(exact.components_[:, own], fast.components_[:, own]) < 1e-5
    np.testing.assert_allclose(fast.explained_variance_, exact.explained_variance_, rtol=1e-5)
    streamed = ClassPCA(15).fit(x, y, batch_size=7_000)
    for c in range(5):
        own = fast.component_classes_ == c
        assert _subspace_residual(exact.components_[:, own], streamed.components_[:, own]) < 1e-5


def test_float32_products_fail_without_reference_point_far_from_origin():
    # The same check can fail: unshifted float32 products of data at 1e3 from the origin
    # lose the class spread to rounding (what the per-class reference point avoids).
    x, y = _well_conditioned(offset=1e3)
    exact = ClassPCA(15, product_dtype="float64").fit(x, y)
    rows = x[y == 0]
    naive = (rows.T @ rows).astype(np.float64) / len(rows)
    mean = rows.astype(np.float64).mean(axis=0)
    values, vectors = np.linalg.eigh(naive - np.outer(mean, mean))
    own = exact.component_classes_ == 0
    assert _subspace_residual(exact.components_[:, own], vectors[:, -own.sum():]) > 1e-3


def test_float32_data_repeated_fits_bit_identical():
    x, y = _well_conditioned(n=20_000)
    a, b = ClassPCA(10).fit(x, y), ClassPCA(10).fit(x, y)
    for name in ("components_", "kernel_", "bias_", "explained_variance_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("allocation", ["equal", "adaptive"])
def test_leading_eigenpairs_equal_full_decomposition(allocation, monkeypatch):
    # The solver computes only the leading pairs (scipy syevr subset) when few are
    # needed; forcing the full numpy eigh must give the same components.
    from keras_classpca.core import class_pca as module

    x, y = _well_conditioned(n=20_000, d=96)
    options = dict(allocation=allocation, variance_share=0.3, product_dtype="float64")
    subset = ClassPCA(10 if allocation == "equal" else None, **options).fit(x, y)
    assert subset.solve() is not None
    monkeypatch.setattr(module, "SUBSET_MAX_SHARE", 0.0)  # always all pairs
    full = ClassPCA(10 if allocation == "equal" else None, **options).fit(x, y)
    np.testing.assert_array_equal(subset.component_classes_, full.component_classes_)
    np.testing.assert_allclose(subset.components_, full.components_, atol=1e-10)
    np.testing.assert_allclose(subset.explained_variance_ratio_, full.explained_variance_ratio_,
                               rtol=1e-10)


@pytest.mark.parametrize("allocation", ["equal", "adaptive"])
def test_lanczos_eigenpairs_equal_full_decomposition(allocation, monkeypatch):
    # Large d with few components goes through ARPACK's Lanczos; forced here on d = 96.
    from keras_classpca.core import class_pca as module

    x, y = _well_conditioned(n=20_000, d=96)
    options = dict(allocation=allocation, variance_share=0.3, product_dtype="float64")
    monkeypatch.setattr(module, "SUBSET_MAX_SHARE", 0.0)  # all pairs: the reference
    full = ClassPCA(10 if allocation == "equal" else None, **options).fit(x, y)
    monkeypatch.setattr(module, "SUBSET_MAX_SHARE", 1 / 3)
    monkeypatch.setattr(module, "LANCZOS_MIN_DIM", 0)
    monkeypatch.setattr(module, "LANCZOS_MAX_SHARE", 1 / 3)
    calls = []
    real_eigsh = scipy.sparse.linalg.eigsh
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh",
                        lambda *a, **k: calls.append(k["k"]) or real_eigsh(*a, **k))
    lanczos = ClassPCA(10 if allocation == "equal" else None, **options).fit(x, y)
    assert lanczos.solve() is not None and calls
    np.testing.assert_array_equal(lanczos.component_classes_, full.component_classes_)
    np.testing.assert_allclose(lanczos.components_, full.components_, atol=1e-10)
    np.testing.assert_allclose(lanczos.explained_variance_ratio_,
                               full.explained_variance_ratio_, rtol=1e-10)


def test_lanczos_falls_back_to_lapack_when_it_does_not_converge(monkeypatch):
    from keras_classpca.core import class_pca as module

    rng = np.random.default_rng(0)
    d, k = 600, 30
    factor = rng.normal(size=(d, 5))
    low_rank = factor @ factor.T  # 5 non-zero eigenvalues: Lanczos cannot converge 30
    lapack_calls = []
    real_eigh = scipy.linalg.eigh
    monkeypatch.setattr(scipy.linalg, "eigh",
                        lambda *a, **kw: lapack_calls.append(1) or real_eigh(*a, **kw))
    values, vectors = module._leading_eigenpairs(low_rank, k)
    assert lapack_calls  # the fallback ran
    monkeypatch.setattr(scipy.linalg, "eigh", real_eigh)
    expected, expected_vectors = np.linalg.eigh(low_rank)
    np.testing.assert_allclose(values[-5:], expected[-5:], rtol=1e-10)
    np.testing.assert_allclose(np.abs(vectors[:, -5:].T @ expected_vectors[:, -5:]),
                               np.eye(5), atol=1e-8)
    # and a well-conditioned matrix of that size takes the Lanczos path, deterministically
    spread = (rng.normal(size=(d, d)) * 0.97 ** np.arange(d)) @ rng.normal(size=(d, d)) / d
    matrix = spread @ spread.T
    monkeypatch.setattr(module, "LANCZOS_MAX_SHARE", 1 / 16)
    first = module._leading_eigenpairs(matrix, 8)
    np.testing.assert_array_equal(first[1], module._leading_eigenpairs(matrix, 8)[1])
    expected, expected_vectors = np.linalg.eigh(matrix)
    np.testing.assert_allclose(first[0], expected[-8:], rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(first[1] * expected_vectors[:, -8:], axis=0)),
                               1.0, atol=1e-8)


def test_from_statistics_and_merge_of_statistics(blobs):
    from keras_classpca.core.statistics import ClassStatistics

    x, y = blobs
    ref = ClassPCA(6).fit(x, y)
    pca = ClassPCA.from_statistics(ref.statistics_.copy(), 6)
    np.testing.assert_array_equal(pca.kernel_, ref.kernel_)
    stats = ClassStatistics.from_arrays(
        ref.statistics_.counts, ref.statistics_.sums, ref.statistics_.second_moments
    )
    np.testing.assert_array_equal(ClassPCA.from_statistics(stats, 6).kernel_, ref.kernel_)
    halves = [ClassStatistics(8), ClassStatistics(8)]
    halves[0].accumulate(x[:120], y[:120])
    halves[1].accumulate(x[120:], y[120:])
    merged = ClassPCA(6).merge(halves[0]).merge(halves[1])
    np.testing.assert_allclose(merged.kernel_, ref.kernel_, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="ClassStatistics"):
        ClassPCA.from_statistics({"counts": [1]}, 2)
    with pytest.raises(ValueError, match="needs at least"):
        ClassPCA.from_statistics(ClassStatistics.from_arrays([1, 1], np.ones((2, 3)),
                                                             np.ones((2, 3, 3))), 2)


@pytest.mark.parametrize("sketch", [False, True])
def test_estimators_sharing_statistics_solve_what_the_statistics_hold_now(blobs, sketch):
    x, y = blobs
    options = dict(sketch_size=6) if sketch else {}
    first, second = ClassPCA(6, **options).fit(x[:120], y[:120]), ClassPCA(6, **options)
    second.fit(x[120:], y[120:])
    stale = first.kernel_.copy()
    # The README's pattern: merging another estimator's statistics into `statistics_`
    # changes what `first` holds, so its fitted attributes must follow.
    merged = ClassPCA.from_statistics(first.statistics_.merge(second.statistics_), 6, **options)
    assert first.statistics_ is merged.statistics_
    assert not np.allclose(first.kernel_, stale)
    np.testing.assert_array_equal(first.kernel_, merged.kernel_)
    # A view of an estimator's statistics follows its later partial_fit too.
    source = ClassPCA(6, **options).fit(x[:120], y[:120])
    view = ClassPCA.from_statistics(source.statistics_, 6, **options)
    source.partial_fit(x[120:], y[120:])
    np.testing.assert_array_equal(view.kernel_, source.kernel_)
    np.testing.assert_array_equal(view.n_samples_seen_, np.bincount(y, minlength=3))


def test_discriminant_directions_join_the_class_pca_components():
    # Classes whose means differ along one low-variance axis: class-PCA with few
    # components misses it, the Fisher direction is it.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    y = np.repeat([0, 1], 400)
    z = rng.normal(size=(800, 8)) * np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.2, 0.2])
    z[:, 7] += np.where(y == 0, -1.0, 1.0)
    x = z @ q.T
    plain = ClassPCA(4).fit(x, y)
    mixed = ClassPCA(4, discriminant=1).fit(x, y)
    assert np.max(np.abs(plain.components_.T @ q[:, 7])) < 0.1
    assert abs(mixed.components_[:, -1] @ q[:, 7]) > 0.99
    assert mixed.component_classes_.tolist()[-1] == -1 and mixed.components_.shape == (8, 4)
    # The first three are the class-PCA solution for three components.
    np.testing.assert_allclose(mixed.components_[:, :3], ClassPCA(3).fit(x, y).components_)
    # Standardised outputs and centred bias, as for the class-PCA components.
    out = mixed.transform(x)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-8)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-6)
    assert ClassPCA(4, discriminant="auto").fit(x, y).component_classes_.tolist().count(-1) == 1


def test_sign_pairs_keep_both_halves_of_every_projection(blobs):
    x, y = blobs
    paired = ClassPCA(6, sign_pairs=True).fit(x, y)
    reference = ClassPCA(3).fit(x, y)
    np.testing.assert_allclose(paired.kernel_[:, 0::2], reference.kernel_)
    np.testing.assert_allclose(paired.kernel_[:, 1::2], -reference.kernel_)
    np.testing.assert_allclose(paired.bias_[1::2], -reference.bias_)
    h = np.maximum(paired.transform(x), 0.0)
    np.testing.assert_allclose(h[:, 0::2] - h[:, 1::2], reference.transform(x), atol=1e-9)
    odd = ClassPCA(5, sign_pairs=True, discriminant="auto").fit(x, y)
    assert odd.kernel_.shape == (8, 5)  # three directions, the last one unpaired
    np.testing.assert_allclose(odd.kernel_[:, 1], -odd.kernel_[:, 0])


def test_spare_sign_pairs_give_the_filters_beyond_the_features_negatives(blobs):
    """14 filters over 8 features: 8 directions, the 6 leading ones paired with their
    negatives, instead of 6 more class directions (combinations of the first 8)."""
    x, y = blobs
    plain = ClassPCA(14).fit(x, y)
    spare = ClassPCA(14, sign_pairs="spare").fit(x, y)
    directions = ClassPCA(8).fit(x, y)
    assert spare.kernel_.shape == (8, 14)

    def opposite_pairs(kernel):
        unit = kernel / np.linalg.norm(kernel, axis=0)
        return int(np.sum(np.triu(unit.T @ unit < -0.999)))

    assert opposite_pairs(plain.kernel_) == 0 and opposite_pairs(spare.kernel_) == 6
    negative = np.r_[False, np.all(np.isclose(spare.kernel_[:, 1:], -spare.kernel_[:, :-1]),
                                   axis=0)]
    assert negative.sum() == 6
    np.testing.assert_allclose(spare.kernel_[:, ~negative], directions.kernel_)
    # The paired directions are the leading ones by eigenvalue share.
    shares = directions.explained_variance_ratio_
    paired = np.flatnonzero(np.r_[negative[1:], False][~negative])
    assert set(paired) == set(np.argsort(-shares, kind="stable")[:6])
    h = np.maximum(spare.transform(x), 0.0)
    np.testing.assert_allclose(h[:, np.flatnonzero(negative) - 1] - h[:, negative],
                               spare.transform(x)[:, np.flatnonzero(negative) - 1], atol=1e-9)
    # No more filters than features: nothing is spare, the plain solution.
    np.testing.assert_array_equal(ClassPCA(6, sign_pairs="spare").fit(x, y).kernel_,
                                  ClassPCA(6).fit(x, y).kernel_)
    # More than twice the features: half are directions, each paired (as True).
    np.testing.assert_allclose(ClassPCA(18, sign_pairs="spare").fit(x, y).kernel_,
                               ClassPCA(18, sign_pairs=True).fit(x, y).kernel_)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"discriminant": -1}, "`discriminant` must be a non-negative integer or 'auto'"),
        ({"discriminant": "most"}, "`discriminant` must be a non-negative integer or 'auto'"),
        ({"sign_pairs": 1}, "`sign_pairs` must be True, False or 'spare'"),
        ({"sign_pairs": "all"}, "`sign_pairs` must be True, False or 'spare'"),
        ({"discriminant": 2, "n_components": 2}, "leaves no class-PCA component"),
    ],
)
def test_bad_direction_options(blobs, params, match):
    x, y = blobs
    with pytest.raises(ValueError, match=match):
        ClassPCA(**{"n_components": 4, **params}).fit(x, y)


def test_randomized_eigen_solver_matches_the_exact_one_on_decaying_spectra():
    rng = np.random.default_rng(0)
    d, n = 120, 6000
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    y = rng.integers(0, 3, n)
    scales = 3.0 * 0.9 ** np.arange(d)
    x = (rng.normal(size=(n, d)) * scales * (1 + np.eye(d)[y * 7])) @ basis.T
    exact = ClassPCA(12).fit(x, y)
    randomized = ClassPCA(12, eigen_solver="randomized").fit(x, y)
    assert subspace_overlap(exact.components_, randomized.components_) > 0.999
    again = ClassPCA(12, eigen_solver="randomized").fit(x, y)
    np.testing.assert_array_equal(randomized.kernel_, again.kernel_)  # seeded
    with pytest.raises(ValueError, match="eigen_solver"):
        ClassPCA(4, eigen_solver="lanczos").fit(x, y)


def test_sample_weights_in_the_data_are_named_as_ignored(blobs):
    x, y = blobs
    with pytest.warns(UserWarning, match="sample weights; class-PCA statistics ignore them"):
        weighted = ClassPCA(6).fit((x, y, np.linspace(0.1, 1.0, len(y))))
    np.testing.assert_array_equal(weighted.kernel_, ClassPCA(6).fit(x, y).kernel_)
    # once per pass, not once per batch, even when every warning is shown
    batches = [(x[i:i + 20], y[i:i + 20], np.ones(len(y[i:i + 20]))) for i in range(0, 100, 20)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ClassPCA(6).fit(batches)
    assert sum("ignore them" in str(w.message) for w in caught) == 1


def test_too_many_components_for_the_classes_say_what_can_fix_it():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)), np.arange(300) % 3  # 3 classes x 4 features: 12
    with pytest.raises(ValueError, match=r"n_components=20 exceeds what 3 classes x 4 "
                                         r"features can give \(12\).*sign_pairs=True"):
        ClassPCA(20).fit(x, y)  # 20 <= 24: sign pairs would do
    with pytest.raises(ValueError, match=r"n_components=15 \(of the 30 asked for.*can give "
                                         r"at most 24 components") as caught:
        ClassPCA(30, sign_pairs=True).fit(x, y)  # already paired: 30 > 24
    assert "sign_pairs=True (half" not in str(caught.value)
    with pytest.raises(ValueError, match=r"can give at most 12 components"):
        ClassPCA(30).fit(x, y)  # pairs would not be enough either


def test_float32_data_of_tiny_scale_is_multiplied_in_float64(subspace_classes):
    # Products of values around 1e-21 fall into float32's subnormal range and lose
    # digits: such batches are multiplied in float64, as too large ones are.
    data = subspace_classes([3, 3], n_features=10, n_per_class=300, noise=0.01, seed=0)
    reference = ClassPCA(6).fit(data.x, data.y).components_
    for scale in (1e-21, 1e-30):
        tiny = ClassPCA(6).fit((data.x * scale).astype(np.float32), data.y).components_
        for c in range(2):
            block = slice(3 * c, 3 * c + 3)
            assert subspace_overlap(tiny[:, block], reference[:, block]) > 1 - 1e-9
    with pytest.raises(ValueError, match="too small to square in float64"):
        ClassPCA(6).fit(data.x * 1e-170, data.y)


def test_labels_beyond_int64_and_transform_of_3d_input_get_clear_errors():
    x = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="too large for a class index"):
        ClassPCA(2).fit(x, np.full(20, 1e20))
    with pytest.raises(ValueError, match="too large for a class index"):
        ClassPCA(2).fit(x, np.full(20, 2**64 - 1, dtype=np.uint64))
    fitted = ClassPCA(2).fit(x, np.arange(20) % 2)
    with pytest.raises(ValueError, match=r"must be 2-D \(n_samples, 4\).*Flatten"):
        fitted.transform(x.reshape(20, 1, 4))


def test_a_sketched_fit_copies(subspace_classes):
    data = subspace_classes([2, 2, 2], n_features=12, n_per_class=100, seed=1)
    fitted = ClassPCA(6, sketch_size=8).fit(data.x, data.y)
    twin = fitted.copy()
    np.testing.assert_array_equal(twin.components_, fitted.components_)
    twin.partial_fit(data.x[:10], data.y[:10])
    assert fitted.n_samples_seen_.sum() == len(data.x)


def test_signs_do_not_depend_on_rounding_between_tied_entries():
    # A feature and its exact negative: the largest entries of every component tie.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 3))
    x = np.column_stack([base, -base[:, 0]])
    y = np.arange(400) % 2
    reference = ClassPCA(2).fit(x, y).components_
    for seed in range(8):
        order = np.random.default_rng(seed).permutation(400)
        components = ClassPCA(2).fit(x[order], y[order]).components_
        np.testing.assert_allclose(components, reference, atol=1e-8)


@pytest.mark.backend_independent
@pytest.mark.parametrize("allocation", ["equal", "adaptive"])
def test_renumbering_the_classes_gives_the_same_filters(allocation):
    """Classes that share directions: which class keeps a shared direction (the
    deduplication) must not depend on the numbers the classes happen to have."""
    rng = np.random.default_rng(0)
    d, k = 30, 5
    shared = np.linalg.qr(rng.normal(size=(d, 2)))[0].T  # directions every class holds
    y = np.arange(2000) % k
    own = rng.normal(size=(k, 4, d)) / np.sqrt(d)  # unit-norm directions of each class
    # the classes weigh them differently (class 0 least): each class's leading vectors
    # are near-copies of the shared ones, of which one class's copy is kept
    strengths = np.array([[1.5, 1.2], [3.0, 1.0], [2.0, 2.6], [2.5, 1.4], [1.8, 2.0]])
    x = (np.einsum("nj,jd->nd", rng.normal(size=(2000, 2)) * strengths[y], shared)
         + np.einsum("nj,njd->nd", rng.normal(size=(2000, 4)) * 0.7, own[y])
         + 0.05 * rng.normal(size=(2000, d)))
    options = dict(n_components=12, allocation=allocation, dedup_threshold=0.9)
    reference = ClassPCA(**options).fit(x, y)
    assert len(set(reference.component_classes_.tolist())) > 1
    for permutation in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        mapping = np.array(permutation)
        renumbered = ClassPCA(**options).fit(x, mapping[y])
        cosines = np.abs(reference.components_.T @ renumbered.components_)
        assert cosines.max(axis=1).min() > 1 - 1e-9  # every filter is in the other set
        np.testing.assert_array_equal(  # and came from the same class
            np.sort(mapping[reference.component_classes_]),
            np.sort(renumbered.component_classes_))


@pytest.mark.backend_independent
def test_a_class_pca_pickled_by_release_0_1_0_unpickles_and_solves_anew():
    # 0.1.0 kept its statistics in a private `_Moments`, since removed: unpickling
    # failed with "Can't get attribute '_Moments'". (The pickles were written by 0.1.0
    # from this data.)
    import pathlib
    import pickle

    data = pathlib.Path(__file__).parent / "data"
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), np.arange(60) % 3
    fitted = pickle.loads((data / "class_pca_0.1.0.pkl").read_bytes())
    fresh = ClassPCA(3).fit(x, y)
    assert fitted.sketch_size == "auto" and fitted.eigen_solver == "exact"  # added since
    np.testing.assert_array_equal(fitted.n_samples_seen_, fresh.n_samples_seen_)
    np.testing.assert_allclose(fitted.statistics_.second_moments,
                               fresh.statistics_.second_moments, rtol=1e-12)
    np.testing.assert_allclose(fitted.kernel_, fresh.kernel_, rtol=1e-9, atol=1e-12)
    partial = pickle.loads((data / "class_pca_partial_0.1.0.pkl").read_bytes())
    partial.partial_fit(x[30:], y[30:])  # goes on where 0.1.0 stopped
    np.testing.assert_allclose(partial.kernel_, fresh.kernel_, rtol=1e-7, atol=1e-10)
