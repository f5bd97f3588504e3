"""Tests of keras_classpca.theory: Pennington-Worah spectra, layer spectra, conditioning."""

import math

import keras
import numpy as np
import pytest
from scipy import integrate

from keras_classpca import theory
from keras_classpca.layers.normalized_relu import NormalizedReLU
from keras_classpca.theory import activations

# The NumPy math runs once, not once per Keras backend (see conftest.py).
numpy_only = pytest.mark.backend_independent


def gaussian_expectation(g, points=()):
    """E[g(z)] for z ~ N(0, 1) by QUADPACK (scipy), split at `points` (independent of ours)."""
    edges = [-np.inf, *sorted(points), np.inf]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        val, _ = integrate.quad(
            lambda z: g(z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
            lo, hi, epsabs=1e-14, epsrel=1e-13, limit=500,
        )
        total += val
    return total


def _sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


# Scalar reference activations written from their definitions with `math` (not the
# package's NumPy table), and the points where they have a kink.
REFERENCE = {
    "relu": (lambda x: max(x, 0.0), [0.0]),
    "tanh": (math.tanh, []),
    "gelu": (lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))), []),
    "swish": (lambda x: x * _sigmoid(x), []),
    "sigmoid": (_sigmoid, []),
    "leaky_relu": (lambda x: x if x > 0 else 0.2 * x, [0.0]),
    "abs": (abs, [0.0]),
    "elu": (lambda x: x if x > 0 else math.expm1(x), [0.0]),
    "relu6": (lambda x: min(max(x, 0.0), 6.0), [0.0, 6.0]),
    "normalized_relu": (
        lambda x: (max(x, 0.0) - 1 / math.sqrt(2 * math.pi)) / math.sqrt(0.5 - 1 / (2 * math.pi)),
        [0.0],
    ),
}


def reference_constants(name, s):
    """(E f, E f^2, (E z f)^2) at x = s z, and zeta again from E f' (no Stein's lemma)."""
    f, kinks = REFERENCE[name]
    points = [k / s for k in kinks]
    mean = gaussian_expectation(lambda z: f(s * z), points)
    second = gaussian_expectation(lambda z: f(s * z) ** 2, points)
    zf = gaussian_expectation(lambda z: z * f(s * z), points)
    return mean, second, zf**2


# -------------------------------------------------------------- constants
@numpy_only
def test_relu_constants_closed_form():
    raw = theory.activation_constants("relu", center=False)
    assert raw.eta == pytest.approx(0.5, abs=1e-15)
    assert raw.zeta == pytest.approx(0.25, abs=1e-15)
    centred = theory.activation_constants("relu")
    assert centred.eta == pytest.approx(0.5 - 1 / (2 * math.pi), abs=1e-15)
    assert centred.zeta == pytest.approx(0.25, abs=1e-15)


@numpy_only
def test_relu_constants_scale_with_sigmas():
    # relu is positively homogeneous: s = sigma_w sigma_x = 3 multiplies eta and zeta by 9.
    c = theory.activation_constants("relu", sigma_w=1.5, sigma_x=2.0, center=False)
    assert c.eta == pytest.approx(9 * 0.5, rel=1e-9)
    assert c.zeta == pytest.approx(9 * 0.25, rel=1e-9)


@numpy_only
@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "swish", "sigmoid", "leaky_relu",
                                  "abs", "elu", "relu6", "normalized_relu"])
@pytest.mark.parametrize("s", [0.3, 1.0, 3.0])
def test_constants_match_independent_integration(name, s):
    # Error bound 1e-8 on eta (raw and centred) and zeta against scipy's QUADPACK.
    mean, second, zeta = reference_constants(name, s)
    raw = theory.activation_constants(name, sigma_w=s, center=False)
    centred = theory.activation_constants(name, sigma_x=s)
    assert abs(raw.eta - second) <= 1e-8
    assert abs(centred.eta - (second - mean**2)) <= 1e-8
    assert abs(raw.zeta - zeta) <= 1e-8
    assert centred.zeta == raw.zeta


@numpy_only
@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "swish", "sigmoid"])
def test_zeta_matches_derivative_definition(name):
    # zeta = (s E[f'(s z)])^2 by the paper's definition; the implementation uses Stein's
    # lemma E[z f(s z)] instead.  Derivatives by hand.
    s = 1.7
    derivative = {
        "relu": lambda x: float(x > 0),
        "tanh": lambda x: 1 - math.tanh(x) ** 2,
        "gelu": lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
        + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi),
        "swish": lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))),
        "sigmoid": lambda x: _sigmoid(x) * (1 - _sigmoid(x)),
    }[name]
    expected = (s * gaussian_expectation(lambda z: derivative(s * z), [0.0])) ** 2
    assert abs(theory.activation_constants(name, sigma_w=s).zeta - expected) <= 1e-8


@numpy_only
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "abs", "normalized_relu", "linear"])
def test_closed_forms_agree_with_the_quadrature(name):
    # The closed forms are bypassed when `kinks` is given: both paths must agree.
    for s in (0.4, 1.0, 3.0):
        closed = theory.activation_constants(name, sigma_w=s, center=False)
        integrated = theory.activation_constants(name, sigma_w=s, center=False, kinks=[0.0])
        assert closed.eta == pytest.approx(integrated.eta, rel=1e-12, abs=1e-14)
        assert closed.zeta == pytest.approx(integrated.zeta, rel=1e-12, abs=1e-14)


def _normal_pdf_cdf_tail(a):
    return math.exp(-a * a / 2) / math.sqrt(2 * math.pi), 0.5 * math.erfc(a / math.sqrt(2))


@numpy_only
@pytest.mark.parametrize("a", [-1.3, 0.37, 2.2])
def test_unannounced_kink_off_zero_is_exact(a):
    # f(x) = relu(x - a), a callable whose kink the quadrature is not told about:
    # E f = p(a) - a Q(a), E f^2 = (1 + a^2) Q(a) - a p(a), E z f = Q(a)
    # (p the normal density, Q the upper tail).
    p, q = _normal_pdf_cdf_tail(a)
    mean, second = p - a * q, (1 + a * a) * q - a * p
    c = theory.activation_constants(lambda x: np.maximum(x - a, 0.0), center=False)
    assert abs(c.eta - second) <= 1e-10
    assert abs(c.zeta - q**2) <= 1e-10
    centred = theory.activation_constants(lambda x: np.maximum(x - a, 0.0), kinks=[a])
    assert abs(centred.eta - (second - mean**2)) <= 1e-12


@numpy_only
def test_jump_discontinuity():
    # A step at 0.3: E f = Q(0.3), var = Q (1 - Q), E z f = p(0.3).
    p, q = _normal_pdf_cdf_tail(0.3)
    c = theory.activation_constants(lambda x: (x > 0.3).astype(float))
    assert abs(c.eta - q * (1 - q)) <= 1e-10
    assert abs(c.zeta - p**2) <= 1e-10


@numpy_only
def test_gaussian_expectations_moments():
    z_moments = theory.gaussian_expectations(lambda z: np.stack([z**k for k in range(9)]))
    np.testing.assert_allclose(z_moments, [1, 0, 1, 0, 3, 0, 15, 0, 105], rtol=1e-13, atol=1e-14)
    # a single integrand returns a float
    assert theory.gaussian_expectations(np.cos) == pytest.approx(math.exp(-0.5), abs=1e-15)


@numpy_only
def test_gaussian_expectations_warns_when_out_of_rounds():
    # A jump at an unannounced point needs many bisections; with 2 rounds the estimate
    # is rough, and the caller is told.
    p, q = _normal_pdf_cdf_tail(0.3)
    with pytest.warns(RuntimeWarning, match="rounds"):
        rough = theory.gaussian_expectations(lambda z: (z > 0.3).astype(float), max_rounds=2)
    assert abs(rough - q) < 0.05
    assert theory.gaussian_expectations(lambda z: (z > 0.3).astype(float)) == pytest.approx(
        q, abs=1e-12
    )


@numpy_only
def test_spectrum_uses_the_exact_constants():
    spec = theory.gram_spectrum("relu", phi=0.5, psi=1.0)
    assert spec.eta == pytest.approx(0.5 - 1 / (2 * math.pi), abs=1e-15)
    assert spec.zeta == pytest.approx(0.25, abs=1e-15)
    res = theory.compare_gram_spectrum("gelu", 1.0, 1.0, n0=50)
    mean, second, zeta = reference_constants("gelu", 1.0)
    assert abs(res.prediction.eta - (second - mean**2)) <= 1e-8
    assert abs(res.prediction.zeta - zeta) <= 1e-8


@pytest.mark.parametrize("name", sorted(activations.NUMPY_ACTIVATIONS))
def test_numpy_activations_match_keras(name):
    # The float64 NumPy table must be the very function Keras applies under that name.
    grid = np.linspace(-6.0, 6.0, 241)
    ours = activations.resolve_activation(name)(grid)
    if name in ("normalized_relu", "normalizedrelu"):
        keras_fn = NormalizedReLU()
    elif name == "abs":
        keras_fn = keras.ops.abs
    else:
        keras_fn = keras.activations.get("linear" if name == "identity" else name)
    expected = keras.ops.convert_to_numpy(keras_fn(keras.ops.convert_to_tensor(grid, "float32")))
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-5)


@numpy_only
@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_linear_constants(s):
    c = theory.activation_constants("linear", sigma_w=s)
    assert c.eta == pytest.approx(s**2, rel=1e-9)
    assert c.zeta == pytest.approx(s**2, rel=1e-9)


@numpy_only
def test_callable_and_zeta_zero_activation():
    # f(x) = x^2 - 1 is the second Hermite polynomial: E f = 0, E f^2 = 2, E f' = 0.
    c = theory.activation_constants(lambda x: x**2 - 1)
    assert c.eta == pytest.approx(2.0, rel=1e-9)
    assert c.zeta == pytest.approx(0.0, abs=1e-12)


@numpy_only
def test_normalized_relu_by_name_has_unit_constants():
    c = theory.activation_constants("normalized_relu", center=False)
    assert c.eta == pytest.approx(1.0, abs=1e-14)
    assert c.zeta == pytest.approx(0.25 / (0.5 - 1 / (2 * math.pi)), abs=1e-14)


def test_constants_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        theory.activation_constants("not_an_activation")
    with pytest.raises(TypeError, match="activation"):
        theory.activation_constants(3)
    with pytest.raises(ValueError, match="sigma_w"):
        theory.activation_constants("relu", sigma_w=0)
    with pytest.raises(ValueError, match="sigma_x"):
        theory.activation_constants("relu", sigma_x=-1)
    with pytest.raises(ValueError, match="rtol"):
        theory.activation_constants("tanh", rtol=0)
    with pytest.raises(TypeError, match="kinks"):
        theory.activation_constants("tanh", kinks=["a"])
    with pytest.raises(ValueError, match="non-finite"):
        theory.activation_constants(lambda x: np.where(x > 1.0, np.inf, x))


# -------------------------------------------------------------- spectrum
@numpy_only
def test_spectrum_integrates_to_one():
    spec = theory.gram_spectrum("tanh", phi=0.5, psi=1.0)
    assert spec.atom == 0.0
    assert np.all(spec.density >= 0)
    assert np.trapezoid(spec.density, spec.x) == pytest.approx(1.0, abs=5e-3)
    # first moment: E[lambda] = tr(M)/n1 -> eta
    assert np.trapezoid(spec.x * spec.density, spec.x) == pytest.approx(spec.eta, rel=5e-3)


@numpy_only
def test_spectrum_atom_when_more_rows_than_samples():
    # n1 = n0, m = n0/2: M (n1 x n1) has rank m, so half the mass sits at 0.
    spec = theory.gram_spectrum("tanh", phi=2.0, psi=1.0)
    assert spec.atom == pytest.approx(0.5)
    assert np.trapezoid(spec.density, spec.x) == pytest.approx(0.5, abs=5e-3)


@numpy_only
def test_zeta_zero_reduces_to_marchenko_pastur():
    phi, psi, eta = 0.5, 2.0, 2.0
    x = np.linspace(0.01, 6, 600)
    spec = theory.gram_spectrum(None, phi, psi, eta=eta, zeta=0.0, x=x)
    mp = theory.marchenko_pastur_density(x, ratio=phi / psi, scale=eta)
    assert np.max(np.abs(spec.density - mp)) < 1e-3 * mp.max()
    # and a different ratio would not match
    other = theory.marchenko_pastur_density(x, ratio=phi, scale=eta)
    assert np.max(np.abs(spec.density - other)) > 0.1 * mp.max()


@numpy_only
def test_linear_case_is_product_wishart_moments():
    # M = W X X^T W^T / (m n0): E[lambda] = 1, E[lambda^2] = 1 + (1 + phi) / psi
    # (Wick pairings of two Gaussian matrices), whereas MP of ratio phi/psi would give
    # 1 + phi / psi.
    phi, psi = 0.5, 2.0
    spec = theory.gram_spectrum("linear", phi, psi, num_points=3000)
    m1 = np.trapezoid(spec.x * spec.density, spec.x)
    m2 = np.trapezoid(spec.x**2 * spec.density, spec.x)
    assert m1 == pytest.approx(1.0, rel=5e-3)
    assert m2 == pytest.approx(1 + (1 + phi) / psi, rel=5e-3)


@numpy_only
def test_linear_case_rank_deficiency():
    # n1 = 2 n0 > m = 1.5 n0 > n0: rank n0, atom 1 - n0/n1 = 1/2 (nonlinear would be 1/4).
    grid = np.linspace(0.5, 1.0, 3)
    assert theory.gram_spectrum("linear", 1 / 1.5, 0.5, x=grid).atom == pytest.approx(0.5)
    assert theory.gram_spectrum("tanh", 1 / 1.5, 0.5, x=grid).atom == pytest.approx(0.25)


@numpy_only
def test_stieltjes_asymptote_and_sign():
    z = np.array([50j, 10 + 1j, 1 + 0.5j])
    g = theory.stieltjes_transform(z, 0.5, 0.2, 0.7, 1.3)
    assert abs(g[0] * z[0] - 1) < 0.05
    assert np.all(g.imag < 0)  # G(z) = E[1/(z - lambda)] maps the upper half-plane down
    with pytest.raises(ValueError, match="imaginary"):
        theory.stieltjes_transform(np.array([1.0 + 0j]), 0.5, 0.2, 1, 1)
    with pytest.raises(ValueError, match="zeta"):
        theory.stieltjes_transform(np.array([1j]), 0.5, 0.7, 1, 1)


@numpy_only
@pytest.mark.parametrize("name,value", [("phi", 0), ("psi", -1.0)])
def test_spectrum_bad_ratios(name, value):
    kwargs = {"phi": 1.0, "psi": 1.0, name: value}
    with pytest.raises(ValueError, match=name):
        theory.gram_spectrum("relu", **kwargs)


@pytest.mark.parametrize("activation,phi,psi,n_outliers", [
    ("relu", 0.5, 1.0, 1),   # non-centred: one outlier from the mean, bulk as predicted
    ("tanh", 1.0, 2.0, 0),
    ("linear", 2.0, 1.0, 0),  # rank m = n0 / 2: atom of mass 1/2
])
@numpy_only
def test_prediction_matches_simulation(activation, phi, psi, n_outliers):
    res = theory.compare_gram_spectrum(activation, phi, psi, n0=300, seed=1)
    assert res.ks < 0.02
    assert res.l1 < 0.12
    assert len(res.outliers) == n_outliers


@numpy_only
def test_simulation_distinguishes_activations():
    # The comparison must be able to fail: relu eigenvalues vs the linear prediction.
    res = theory.compare_gram_spectrum("relu", 0.5, 1.0, n0=300, seed=1)
    wrong = theory.gram_spectrum("linear", 0.5, 1.0)
    ks_wrong = np.max(np.abs(np.searchsorted(res.eigenvalues, wrong.x, side="right")
                             / res.eigenvalues.size - wrong.cdf(wrong.x)))
    assert ks_wrong > 0.2


# -------------------------------------------------------------- layer spectra
def test_layer_input_spectra_dense_matches_covariance():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 6)) * [3, 2, 1, 1, 0.5, 0.1]).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="a"),
                              keras.layers.Dense(3, name="b")])
    spectra = theory.layer_input_spectra(model, x, max_samples=1000)
    assert list(spectra) == ["a", "b"]
    expected = np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64).T)))[::-1]
    np.testing.assert_allclose(spectra["a"], expected, rtol=1e-4, atol=1e-6)
    # second layer input = x @ K_a + b_a
    k, b = (np.asarray(v, dtype=np.float64) for v in model.get_layer("a").get_weights())
    h = x.astype(np.float64) @ k + b
    np.testing.assert_allclose(spectra["b"], np.sort(np.linalg.eigvalsh(np.cov(h.T)))[::-1],
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("padding,strides", [("valid", 1), ("same", 2)])
def test_layer_input_spectra_conv_patches(padding, strides):
    # A Conv2D whose kernel is the identity on (kh, kw, c) outputs exactly the patches:
    # the covariance of its output channels must equal the im2col covariance.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 9, 9, 2)).astype("float32")
    x[..., 1] += 0.5 * x[..., 0]  # correlated channels
    conv = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, name="conv")
    model = keras.Sequential([keras.Input((9, 9, 2)), conv])
    spectra = theory.layer_input_spectra(model, x, max_samples=100000)
    probe = keras.layers.Conv2D(18, 3, strides=strides, padding=padding, use_bias=False)
    probe.build((None, 9, 9, 2))
    probe.set_weights([np.eye(18, dtype="float32").reshape(3, 3, 2, 18)])
    patches = keras.ops.convert_to_numpy(probe(x)).astype(np.float64).reshape(-1, 18)
    expected = np.sort(np.linalg.eigvalsh(np.cov(patches.T)))[::-1]
    assert spectra["conv"].shape == (18,)
    np.testing.assert_allclose(spectra["conv"], expected, rtol=1e-4, atol=1e-6)


def test_layer_input_spectra_descends_into_nested_sequential():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 6)).astype("float32")
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="inner_a"),
                              keras.layers.Dense(3, name="inner_b")], name="inner")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="outer"), inner,
                              keras.layers.Dense(2, name="head")])
    spectra = theory.layer_input_spectra(model, x)
    assert list(spectra) == ["outer", "inner_a", "inner_b", "head"]
    # inner_b's input computed by hand from the weights
    h = x.astype(np.float64)
    for layer in (model.get_layer("outer"), inner.get_layer("inner_a")):
        kernel, bias = (np.asarray(v, np.float64) for v in layer.get_weights())
        h = h @ kernel + bias
    expected = np.sort(np.linalg.eigvalsh(np.cov(h.T)))[::-1]
    np.testing.assert_allclose(spectra["inner_b"], expected, rtol=1e-3, atol=1e-5)
    assert spectra["head"].shape == (3,)


def test_layer_input_spectra_reach_into_a_nested_functional_model():
    i = keras.Input((5,))
    inner = keras.Model(i, keras.layers.Dense(3, name="f")(i), name="inner_functional")
    x = keras.Input((6,))
    outer = keras.layers.Dense(5, name="outer")
    model = keras.Model(x, inner(outer(x)))
    data = np.random.default_rng(0).normal(size=(50, 6)).astype("float32")
    spectra = theory.layer_input_spectra(model, data)
    assert list(spectra) == ["outer", "f"]
    # the nested layer's input is the outer layer's output on the data
    hidden = keras.ops.convert_to_numpy(outer(data))
    np.testing.assert_allclose(spectra["f"], theory.layer_input_spectra(inner, hidden)["f"],
                               rtol=1e-5, atol=1e-8)


def test_layer_input_spectra_errors():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="Dense or Conv2D"):
        theory.layer_input_spectra(model, np.zeros((5, 4)))
    with pytest.raises(TypeError, match="model"):
        theory.layer_input_spectra("model", np.zeros((5, 4)))


# -------------------------------------------------------------- conditioning
@numpy_only
def test_orthogonal_features_have_condition_number_one():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(30, 30)))
    feats = q[:10] * np.arange(1, 11)[:, None]  # orthogonal rows of different norms
    assert theory.gram_condition_number(feats) == pytest.approx(1.0, abs=1e-9)
    assert theory.kernel_condition_number(0, feats)[0] == pytest.approx(1.0, abs=1e-9)
    # correlated rows are worse conditioned
    assert theory.gram_condition_number(feats + 1.0) > 2.0


@numpy_only
@pytest.mark.parametrize("name", ["relu", "normalized_relu"])
@pytest.mark.parametrize("c", [-0.9, -0.3, 0.0, 0.5, 0.99, 0.99999])
def test_dual_activation_closed_form(name, c):
    # E[relu(u) relu(v)], v = c u + s w: integrate over u the known Gaussian mean
    # E_w relu(a + s w) = a Phi(a/s) + s phi(a/s) (scipy QUADPACK, independent of the
    # arc-cosine formula).
    from keras_classpca.theory.conditioning import _dual_correlation_map

    s = math.sqrt(1 - c * c)

    def inner(u):
        a = c * u
        return a * 0.5 * math.erfc(-a / (s * math.sqrt(2))) + s * math.exp(
            -a * a / (2 * s * s)) / math.sqrt(2 * math.pi)

    product = gaussian_expectation(lambda u: max(u, 0.0) * inner(u), [0.0])
    mu, var = 1 / math.sqrt(2 * math.pi), 0.5 - 1 / (2 * math.pi)
    expected = product / 0.5 if name == "relu" else (product - mu**2) / var
    dual = _dual_correlation_map(name, activations.resolve_activation(name))
    assert float(dual(np.float64(c))) == pytest.approx(expected, abs=1e-9)


@numpy_only
def test_depth_improves_conditioning_with_normalized_relu():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 30)) + 1.5  # strongly correlated points
    norm = theory.kernel_condition_number(20, x, activation="normalized_relu", width=None)
    relu = theory.kernel_condition_number(20, x, activation="relu", width=None)
    assert norm[0] == pytest.approx(relu[0])
    assert norm[0] > 100
    assert norm[-1] < 1.3
    assert np.all(np.diff(norm) < 0)  # monotone improvement with depth
    # plain ReLU: after a first drop the points collapse together again
    assert relu[-1] > relu[5] > 100
    finite = theory.kernel_condition_number(12, x, activation="normalized_relu", width=1000)
    assert finite[-1] < finite[0] / 50


def test_kernel_condition_number_keras_model():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 20)) + 1.0).astype("float32")
    init = keras.initializers.RandomNormal(stddev=1 / np.sqrt(20), seed=0)
    blocks = [keras.Input((20,))]
    for _ in range(3):
        blocks += [keras.layers.Dense(20 if not blocks[1:] else 512, use_bias=False,
                                      kernel_initializer=init), NormalizedReLU()]
    model = keras.Sequential(blocks)
    conds = theory.kernel_condition_number(model, x)
    assert conds.shape == (4,)
    assert conds[0] == pytest.approx(theory.gram_condition_number(x), rel=1e-6)
    assert np.all(np.isfinite(conds))


def test_kernel_condition_number_errors():
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="model_or_depth"):
        theory.kernel_condition_number("deep", x)
    with pytest.raises(ValueError, match="depth"):
        theory.kernel_condition_number(-1, x)
    with pytest.raises(ValueError, match="x"):
        theory.kernel_condition_number(2, np.ones(3))
    with pytest.raises(ValueError, match="batchnorm"):
        theory.kernel_condition_number(2, x + np.eye(4, 3), width=None, batchnorm=True)
    no_dense = keras.Sequential([keras.Input((3,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="Dense"):
        theory.kernel_condition_number(no_dense, x)


@numpy_only
def test_public_names():
    # Every public name is exported at keras_classpca.theory and documented in a module.
    for name in theory.__all__:
        obj = getattr(theory, name)
        assert obj.__doc__, name
        assert obj.__module__.startswith("keras_classpca.theory."), name


@numpy_only
def test_theory_modules_do_not_import_keras():
    # The NumPy math must not pull in Keras (nor a backend): run it in a fresh interpreter
    # and look at what got imported.
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys
import keras_classpca.theory as theory
c = theory.activation_constants("gelu")
theory.gram_spectrum("tanh", 0.5, 1.0)
theory.compare_gram_spectrum("relu", 0.5, 1.0, n0=40)
theory.kernel_condition_number(3, [[1.0, 0.0], [1.0, 1.0]], width=None)
loaded = sorted(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules)
print("ok", round(c.eta, 6), loaded)
"""
    root = Path(theory.__file__).parents[2]  # the checkout this test imports from
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "ok"
    assert out.stdout.rstrip().endswith("[]"), out.stdout


def test_kernel_condition_number_keras_batchnorm_uses_batch_statistics():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(12, 8)) + 2.0).astype("float32")
    dense = keras.layers.Dense(64, use_bias=False, name="d1")
    model = keras.Sequential([keras.Input((8,)), dense, keras.layers.BatchNormalization(),
                              keras.layers.Activation("relu"), keras.layers.Dense(3)])
    conds = theory.kernel_condition_number(model, x)
    # by hand: batch-normalized pre-activations (training mode), then relu
    h = x.astype(np.float64) @ np.asarray(dense.get_weights()[0], dtype=np.float64)
    h = np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-3), 0)
    assert conds[1] == pytest.approx(theory.gram_condition_number(h), rel=1e-3)
    # inference-mode BatchNorm (moving statistics 0/1) would be a no-op: a different value
    h_inf = np.maximum(x.astype(np.float64) @ np.asarray(dense.get_weights()[0]), 0)
    assert abs(conds[1] / theory.gram_condition_number(h_inf) - 1) > 0.05


def test_kernel_condition_number_refuses_graphs_that_are_not_one_chain():
    inputs = keras.Input((6,))
    a = keras.layers.Dense(5, name="a")(inputs)
    b = keras.layers.Dense(5, name="b")(inputs)  # reads the input, not `a`
    x = np.random.default_rng(0).normal(size=(12, 6))
    with pytest.raises(ValueError, match="'b' does not read 'a'"):
        theory.kernel_condition_number(keras.Model(inputs, [a, b]), x)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(5)])
    outer = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="does not look inside nested models"):
        theory.kernel_condition_number(outer, x)


def test_theory_tools_refuse_bad_samples_and_bins():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    bad = np.random.default_rng(0).normal(size=(12, 6))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        theory.kernel_condition_number(model, bad)
    with pytest.raises(ValueError, match="features contains NaN"):
        theory.gram_condition_number(bad)
    with pytest.raises(ValueError, match="at least 2 sample"):
        theory.layer_input_spectra(model, np.zeros((1, 6)))
    with pytest.raises(TypeError, match="must be an array of samples"):
        theory.layer_input_spectra(model, iter([np.zeros((4, 6))]))
    with pytest.raises(ValueError, match="`bins` must be a positive integer"):
        theory.compare_gram_spectrum("relu", n0=40, bins=0)
