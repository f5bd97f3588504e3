"""Shared fixtures: a fixed seed, and synthetic classes drawn from known subspaces."""

import warnings

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {BACKEND}"


def pytest_collection_modifyitems(config, items):
    """Every test not marked `backend_independent` (NumPy only, or results that do not
    depend on the Keras backend, such as tf.distribute's TF ops) is Keras-facing: it gets
    the `keras` marker, and `make test` runs it once per backend (`-m keras`), the others
    and the docstring examples once (`-m "not keras"`).

    Tests marked `tensorflow_backend` need TF under Keras; elsewhere they are skipped
    with that reason (reported by `-ra`), never dropped."""
    skip = pytest.mark.skip(reason=f"needs KERAS_BACKEND=tensorflow (running {BACKEND})")
    for item in items:
        if isinstance(item, pytest.DoctestItem) or item.get_closest_marker("backend_independent"):
            continue
        item.add_marker(pytest.mark.keras)
        if BACKEND != "tensorflow" and item.get_closest_marker("tensorflow_backend"):
            item.add_marker(skip)


def backend_has_float64():
    """Whether tensors of this backend can hold float64 (JAX only with x64 enabled)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensor = keras.ops.convert_to_tensor(np.zeros(1), "float64")
    return keras.backend.standardize_dtype(tensor.dtype) == "float64"


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same Keras / NumPy / TF seed."""
    keras.utils.set_random_seed(1234)


def make_subspace_classes(
    dims,
    n_features=12,
    n_per_class=200,
    *,
    class_mean_scale=0.0,
    shared_mean_scale=0.0,
    noise=0.0,
    seed=0,
):
    """Classes whose samples lie in known, mutually orthogonal low-dimensional subspaces.

    Class `c` draws `n_per_class` samples `mean_c + B_c z` with `B_c` an orthonormal
    `(n_features, dims[c])` basis and `z` Gaussian with decreasing, well-separated
    standard deviations (3, 2, 1.5, ...). `mean_c` is a random class offset of norm
    `class_mean_scale` plus a mean shared by all classes, of norm `shared_mean_scale`,
    along `shared_direction` (orthogonal to every `B_c`). `noise` adds isotropic
    Gaussian noise of that standard deviation.

    Returns a namespace with `x` (float64), `y` (int64), `bases` (list of `B_c`) and
    `shared_direction` (unit vector).
    """
    rng = np.random.default_rng(seed)
    if 1 + sum(dims) > n_features:
        raise ValueError("n_features too small for orthogonal subspaces")
    q, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
    shared_direction = q[:, 0]
    xs, ys, bases = [], [], []
    column = 1
    for label, dim in enumerate(dims):
        basis = q[:, column : column + dim]
        column += dim
        scales = 3.0 / (1.0 + 0.5 * np.arange(dim))
        z = rng.normal(size=(n_per_class, dim)) * scales
        offset = rng.normal(size=n_features)
        offset *= class_mean_scale / np.linalg.norm(offset)
        samples = z @ basis.T + offset + shared_mean_scale * shared_direction
        samples += noise * rng.normal(size=samples.shape)
        xs.append(samples)
        ys.append(np.full(n_per_class, label, dtype=np.int64))
        bases.append(basis)
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    order = rng.permutation(len(x))
    return _Namespace(x=x[order], y=y[order], bases=bases, shared_direction=shared_direction)


class _Namespace(dict):
    __getattr__ = dict.__getitem__


def _principal_cosines(a, b):
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


@pytest.fixture
def principal_cosines():
    """`f(a, b)`: cosines of the principal angles between the column spans of a and b."""
    return _principal_cosines


@pytest.fixture
def subspace_classes():
    """The factory `make_subspace_classes(dims, n_features, n_per_class, ...)`."""
    return make_subspace_classes


@pytest.fixture
def blobs():
    """Small generic labelled data: `(x, y)` with 3 classes, 8 features, float32."""
    rng = np.random.default_rng(7)
    y = np.arange(240) % 3
    x = rng.normal(size=(240, 8)) + 2.0 * np.eye(3, 8)[y]
    x[:, 3] *= 3.0
    return x.astype("float32"), y.astype("int64")


class ArrayPyDataset(keras.utils.PyDataset):
    """`(x, y)` arrays served as a `keras.utils.PyDataset` of fixed-size batches
    (`(x, y, sample_weight)` with `weights`)."""

    def __init__(self, x, y, batch_size, weights=None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size, self.weights = x, y, batch_size, weights

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        s = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return (self.x[s], self.y[s]) + (() if self.weights is None else (self.weights[s],))



@pytest.fixture
def dense_reference():
    """`fit(units, rows, labels, rectified=True, **options)`: the ClassPCA a solved Dense
    layer equals — with `DENSE_REMEDY_OPTIONS` where the rows-per-feature rule applies
    them (without sign pairs for a layer no rectifier follows, `rectified=False`)."""
    from keras_classpca import ClassPCA
    from keras_classpca.layers.geometry import DENSE_REMEDY_OPTIONS, dense_remedies

    def fit(units, rows, labels, rectified=True, **options):
        if dense_remedies(len(rows), rows.shape[1], len(np.unique(labels)), units, options):
            remedies = dict(DENSE_REMEDY_OPTIONS)
            if not rectified:
                del remedies["sign_pairs"]
            options = {**options, **remedies}
        return ClassPCA(units, **options).fit(rows, labels)

    return fit
