"""Theory toolkit: the random-matrix and kernel results the package relies on.

Three results from the companion papers, each as a measured tool that can be
checked on your own networks:

1. **Nonlinear random-matrix spectra** (Pennington & Worah, "Nonlinear random
   matrix theory for deep learning", NeurIPS 2017):
   :func:`activation_constants`, :func:`stieltjes_transform`,
   :func:`gram_spectrum`, :func:`compare_gram_spectrum`, and the layer-wise
   measurement on real models :func:`layer_input_spectra`.
2. **Alignment under gradient descent** (Ji & Telgarsky, ICLR 2019): see
   :class:`keras_classpca.diagnostics.AlignmentMonitor`.
3. **Conditioning with depth** (Agarwal, Awasthi & Kale, "A deep conditioning
   treatment of neural networks", 2020): :func:`normalized_gram`,
   :func:`gram_condition_number`, :func:`kernel_condition_number`, with the
   activation :class:`keras_classpca.layers.normalized_relu.NormalizedReLU`.

All the mathematics is plain NumPy; Keras is only used to evaluate a Keras
activation given by name or to run a Keras model.

Conventions of the Pennington--Worah model (the paper's, not transposed):
``W`` is ``(n1, n0)`` with i.i.d. ``N(0, sigma_w**2)`` entries, ``X`` is
``(n0, m)`` with i.i.d. ``N(0, sigma_x**2)`` entries, ``Y = f(W @ X / sqrt(n0))``
is ``(n1, m)`` and the Gram matrix is ``M = Y @ Y.T / m`` (``n1 x n1``), with the
ratios ``phi = n0 / m`` and ``psi = n0 / n1``.  Each entry of ``W @ X / sqrt(n0)``
is then ``N(0, (sigma_w * sigma_x)**2)``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
from numpy.polynomial import polynomial as _poly
from numpy.polynomial.hermite_e import hermegauss

__all__ = [
    "ActivationConstants",
    "GramSpectrum",
    "GramSpectrumComparison",
    "activation_constants",
    "stieltjes_transform",
    "gram_spectrum",
    "marchenko_pastur_density",
    "compare_gram_spectrum",
    "layer_input_spectra",
    "normalized_gram",
    "gram_condition_number",
    "kernel_condition_number",
]

_NORMALIZED_RELU_MEAN = 1.0 / np.sqrt(2.0 * np.pi)
_NORMALIZED_RELU_STD = np.sqrt(0.5 - 1.0 / (2.0 * np.pi))


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
def _normalized_relu_np(x):
    return (np.maximum(x, 0.0) - _NORMALIZED_RELU_MEAN) / _NORMALIZED_RELU_STD


def _softplus_np(x):
    return np.logaddexp(0.0, x)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
_erf = np.vectorize(math.erf, otypes=[np.float64])

# Keras activations (with Keras' default arguments) written in float64 NumPy: the
# quadratures stay float64 on every backend (JAX computes in float32 unless x64 is on).
# Any other name falls back to `keras.activations.get`, in the backend's precision.
_NUMPY_ACTIVATIONS = {
    "normalized_relu": _normalized_relu_np,
    "normalizedrelu": _normalized_relu_np,
    "linear": lambda x: x,
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "tanh": np.tanh,
    "softplus": _softplus_np,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "silu": lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x)),
    "swish": lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x)),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "mish": lambda x: x * np.tanh(_softplus_np(x)),
    "exponential": np.exp,
}


def _resolve_activation(activation, argname="activation") -> Callable[[np.ndarray], np.ndarray]:
    """Return a float64 NumPy function for a Keras activation name or a callable."""
    if isinstance(activation, str):
        key = activation.lower()
        if key in _NUMPY_ACTIVATIONS:
            fn = _NUMPY_ACTIVATIONS[key]
            return lambda x: np.asarray(fn(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        import keras

        try:
            fn = keras.activations.get(key)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"Unknown {argname} {activation!r}: expected a Keras activation name "
                f"(e.g. 'relu', 'tanh'), 'normalized_relu' or a callable."
            ) from exc
        return _wrap_callable(fn)
    if callable(activation):
        return _wrap_callable(activation)
    raise TypeError(
        f"{argname} must be a Keras activation name or a callable, got "
        f"{type(activation).__name__}."
    )


def _wrap_callable(fn):
    def f(x):
        x = np.asarray(x, dtype=np.float64)
        out = fn(x)
        if not isinstance(out, np.ndarray):
            try:
                import keras

                out = keras.ops.convert_to_numpy(out)
            except Exception:  # pragma: no cover - already array-like
                out = np.asarray(out)
        out = np.asarray(out, dtype=np.float64)
        if out.shape != x.shape:
            out = np.broadcast_to(out, x.shape)
        return out

    return f


def _check_positive(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a positive number, got {value!r}.") from exc
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


class ActivationConstants(NamedTuple):
    """The two Gaussian integrals of an activation (Pennington & Worah, eq. 5)."""

    eta: float
    zeta: float


def activation_constants(
    activation, sigma_w=1.0, sigma_x=1.0, *, center=True, num_nodes=256
) -> ActivationConstants:
    """Gaussian constants ``eta`` and ``zeta`` of an activation.

    With ``s = sigma_w * sigma_x`` and ``z ~ N(0, 1)``::

        eta  = E[f(s z)**2]
        zeta = (s * E[f'(s z)])**2 = (E[z f(s z)])**2      (Stein's lemma)

    Both are computed by Gauss--Hermite quadrature with ``num_nodes`` nodes
    (weight ``exp(-z**2 / 2)``).  ``zeta`` is evaluated through Stein's lemma,
    so no derivative of ``f`` is needed and kinks (ReLU) are handled exactly
    when they sit at 0 (the even rule is symmetric).  For activations with a
    kink away from the quadrature symmetry the error decays like
    ``1 / num_nodes`` (about 1e-3 for the mean of ReLU at 256 nodes).

    The paper assumes a centred activation, ``E[f(s z)] = 0``.  A non-zero mean
    only adds a rank-one term ``E f * 1 1^T`` to ``Y``, which moves a single
    eigenvalue of the Gram matrix and leaves the limiting density unchanged;
    the density is then that of the centred ``f - E f``.  With ``center=True``
    (default) ``eta`` is therefore the *variance* ``E[f**2] - (E f)**2``;
    ``center=False`` returns the raw second moment of the paper's formula.
    ``zeta`` does not depend on centring.

    Args:
        activation: Keras activation name (``"relu"``, ``"tanh"``...),
            ``"normalized_relu"``, or any callable mapping arrays to arrays.
        sigma_w, sigma_x: standard deviations of the weights and of the data.
        center: subtract the Gaussian mean of ``f`` before computing ``eta``.
        num_nodes: number of quadrature nodes (even, >= 8).

    Returns:
        ``ActivationConstants(eta, zeta)`` (a named tuple).

    Example:
        >>> from keras_classpca.theory import activation_constants
        >>> eta, zeta = activation_constants("linear")
        >>> round(eta, 6), round(zeta, 6)
        (1.0, 1.0)
        >>> c = activation_constants("relu", center=False)
        >>> round(c.eta, 6), round(c.zeta, 6)   # 1/2 and (1/2)**2
        (0.5, 0.25)
    """
    sigma_w = _check_positive("sigma_w", sigma_w)
    sigma_x = _check_positive("sigma_x", sigma_x)
    if int(num_nodes) != num_nodes or num_nodes < 8:
        raise ValueError(f"num_nodes must be an integer >= 8, got {num_nodes!r}.")
    num_nodes = int(num_nodes) + (int(num_nodes) % 2)  # even: no node at the kink 0
    f = _resolve_activation(activation)
    z, w = hermegauss(num_nodes)
    w = w / w.sum()
    s = sigma_w * sigma_x
    fz = f(s * z)
    if not np.all(np.isfinite(fz)):
        raise ValueError("activation returned non-finite values on the quadrature nodes.")
    mean = float(np.sum(w * fz))
    second = float(np.sum(w * fz**2))
    eta = second - mean**2 if center else second
    zeta = float(np.sum(w * z * fz)) ** 2
    return ActivationConstants(float(eta), float(zeta))


# --------------------------------------------------------------------------
# Pennington & Worah: the self-consistent equation
# --------------------------------------------------------------------------
def _quartic_coefficients(t, eta, zeta, phi, psi):
    """Ascending coefficients (N, 5) of the quartic in ``u = P - 1``.

    The paper's self-consistent equation for the Stieltjes transform::

        G(z) = psi / z * P(1 / (z psi)) + (1 - psi) / z
        P    = 1 + (eta - zeta) t P_phi P_psi
                 + P_phi P_psi t zeta / (1 - P_phi P_psi t zeta)
        P_phi = 1 + (P - 1) phi,  P_psi = 1 + (P - 1) psi

    With ``A = P_phi P_psi = 1 + (phi + psi) u + phi psi u**2`` and multiplying
    by ``1 - zeta t A`` this is the quartic
    ``u - zeta t u A - eta t A + (eta - zeta) zeta t**2 A**2 = 0``.
    """
    t = np.asarray(t, dtype=complex).ravel()
    a = np.array([1.0, phi + psi, phi * psi])
    a2 = _poly.polymul(a, a)
    ua = np.concatenate([[0.0], a])
    c = np.zeros((t.size, 5), dtype=complex)
    c[:, 1] += 1.0
    c[:, :4] -= zeta * t[:, None] * ua[None, :]
    c[:, :3] -= eta * t[:, None] * a[None, :]
    c[:, :5] += (eta - zeta) * zeta * (t**2)[:, None] * a2[None, :]
    return c


def _batch_roots(c):
    """Roots of many polynomials at once (companion matrices), ascending coefficients."""
    deg = c.shape[1] - 1
    scale = np.max(np.abs(c), axis=1)
    while deg > 1 and np.all(np.abs(c[:, deg]) <= 1e-14 * scale):
        deg -= 1
    lead = c[:, deg]
    comp = np.zeros((c.shape[0], deg, deg), dtype=complex)
    if deg > 1:
        comp[:, 1:, :-1] = np.eye(deg - 1)
    comp[:, :, -1] = -c[:, :deg] / lead[:, None]
    return np.linalg.eigvals(comp)


def _check_ratios(phi, psi):
    return _check_positive("phi", phi), _check_positive("psi", psi)


def stieltjes_transform(z, eta, zeta, phi, psi, *, num_steps=40):
    """Limiting Stieltjes transform ``G(z) = E[1 / (z - lambda)]`` of ``M``.

    Solves the Pennington--Worah quartic for every ``z`` (``Im z > 0``) and
    selects the physical root by continuation: each point starts at
    ``Re z + i * Y`` with ``Y`` large, where the root is fixed by the asymptote
    ``G ~ 1 / z`` (``P - 1 ~ eta t``), and follows it while the imaginary part
    is lowered geometrically to ``Im z`` in ``num_steps`` steps, always taking
    the root closest to the previous one.

    Args:
        z: complex array with positive imaginary parts.
        eta, zeta: activation constants (see :func:`activation_constants`);
            ``0 <= zeta <= eta``.
        phi, psi: ``n0 / m`` and ``n0 / n1``.
        num_steps: continuation steps.

    Returns:
        Complex array of ``G(z)``, same shape as ``z``.

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import stieltjes_transform
        >>> g = stieltjes_transform(np.array([100j]), 1.0, 0.0, 0.5, 1.0)
        >>> bool(abs(g[0] * 100j - 1) < 0.02)      # G(z) ~ 1/z far away
        True
    """
    phi, psi = _check_ratios(phi, psi)
    eta = float(eta)
    zeta = float(zeta)
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta!r}.")
    if zeta < 0 or zeta > eta * (1 + 1e-9):
        raise ValueError(f"zeta must satisfy 0 <= zeta <= eta, got zeta={zeta!r}, eta={eta!r}.")
    z = np.asarray(z, dtype=complex)
    shape = z.shape
    z = z.ravel()
    if np.any(z.imag <= 0):
        raise ValueError("z must have a strictly positive imaginary part.")
    x, eps = z.real, z.imag
    top = 10.0 * (np.max(np.abs(x)) + eta * (1.0 + 1.0 / psi) * (1.0 + phi) + 1.0)
    levels = np.geomspace(top, max(eps.min(), 1e-300), num_steps)
    u = None
    zz = z
    for level in levels:
        zz = x + 1j * np.maximum(level, eps)
        t = 1.0 / (zz * psi)
        roots = _batch_roots(_quartic_coefficients(t, eta, zeta, phi, psi))
        target = eta * t if u is None else u
        idx = np.argmin(np.abs(roots - target[:, None]), axis=1)
        u = roots[np.arange(roots.shape[0]), idx]
    zz = x + 1j * eps
    g = (1.0 + psi * u) / zz
    return g.reshape(shape)


class GramSpectrum(NamedTuple):
    """Predicted limiting spectrum of ``M = Y Y^T / m``.

    ``x``: grid of eigenvalues; ``density``: continuous part of the density on
    ``x``; ``atom``: probability mass at exactly 0 (rank deficiency);
    ``eta``, ``zeta``: constants used.
    """

    x: np.ndarray
    density: np.ndarray
    atom: float
    eta: float
    zeta: float

    def cdf(self, values):
        """Cumulative distribution function (atom included) at ``values``."""
        cum = np.concatenate(
            [[0.0], np.cumsum(0.5 * (self.density[1:] + self.density[:-1]) * np.diff(self.x))]
        )
        values = np.asarray(values, dtype=float)
        out = self.atom * (values >= 0) + np.interp(values, self.x, cum, left=0.0, right=cum[-1])
        return out


def _upper_edge_bound(eta, phi, psi):
    linear = (1.0 + 1.0 / np.sqrt(psi)) ** 2 * (1.0 + np.sqrt(phi)) ** 2
    mp = (1.0 + np.sqrt(phi / psi)) ** 2
    return eta * max(linear, mp) * 1.2


def gram_spectrum(
    activation=None,
    phi=1.0,
    psi=1.0,
    *,
    sigma_w=1.0,
    sigma_x=1.0,
    eta=None,
    zeta=None,
    x=None,
    num_points=800,
    eps=None,
) -> GramSpectrum:
    """Predicted limiting eigenvalue density of the Gram matrix of ``Y = f(W X)``.

    Pennington & Worah's result: for ``W`` ``(n1, n0)`` ~ ``N(0, sigma_w**2)``,
    ``X`` ``(n0, m)`` ~ ``N(0, sigma_x**2)``, ``Y = f(W X / sqrt(n0))`` and
    ``M = Y Y^T / m``, as ``n0, n1, m -> inf`` with ``phi = n0 / m`` and
    ``psi = n0 / n1`` fixed, the spectrum of ``M`` depends on ``f`` only through
    ``eta`` and ``zeta``.  The density is ``-Im G(x + i eps) / pi`` with ``G``
    from :func:`stieltjes_transform`.

    Special cases: ``zeta = 0`` gives the Marchenko--Pastur law of ratio
    ``phi / psi = n1 / m`` and scale ``eta`` (as if ``Y`` were i.i.d.);
    ``zeta = eta`` (a linear ``f``) gives the spectrum of the product Wishart
    matrix ``W X X^T W^T / (m n0)``.

    Args:
        activation: Keras activation name or callable; may be ``None`` when
            ``eta`` and ``zeta`` are given.
        phi, psi: ``n0 / m`` and ``n0 / n1`` (both > 0).
        sigma_w, sigma_x: standard deviations of ``W`` and ``X``.
        eta, zeta: override the constants (otherwise from
            :func:`activation_constants`, centred).
        x: grid on which to evaluate the density; default: ``num_points``
            points covering the predicted support.
        num_points: grid size when ``x`` is None.
        eps: imaginary part used to approach the real axis (default
            ``1e-9 * scale``).

    Returns:
        :class:`GramSpectrum` ``(x, density, atom, eta, zeta)``; the continuous
        part integrates to ``1 - atom``.

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import gram_spectrum
        >>> spec = gram_spectrum("tanh", phi=0.5, psi=1.0)
        >>> mass = np.trapezoid(spec.density, spec.x) + spec.atom
        >>> bool(abs(mass - 1) < 0.01)
        True
    """
    phi, psi = _check_ratios(phi, psi)
    if eta is None or zeta is None:
        if activation is None:
            raise ValueError("activation is required unless both eta and zeta are given.")
        constants = activation_constants(activation, sigma_w, sigma_x)
        eta = constants.eta if eta is None else eta
        zeta = constants.zeta if zeta is None else zeta
    eta, zeta = float(eta), float(zeta)
    if not eta > 0:
        raise ValueError(f"eta must be > 0 (a constant activation has no spectrum), got {eta!r}.")
    zeta = min(max(zeta, 0.0), eta)  # quadrature round-off
    scale = _upper_edge_bound(eta, phi, psi)
    eps = 1e-9 * scale if eps is None else _check_positive("eps", eps)

    atom = _atom_at_zero(eta, zeta, phi, psi)

    def density_on(grid):
        grid = np.asarray(grid, dtype=float)
        zz = grid + 1j * eps
        g = stieltjes_transform(zz, eta, zeta, phi, psi)
        # remove the atom's Lorentzian so that only the continuous part remains
        return np.maximum(-(g - atom / zz).imag / np.pi, 0.0)

    if x is None:
        coarse = np.linspace(0.0, scale, 600)[1:]
        rho = density_on(coarse)
        support = coarse[rho > 1e-7 * rho.max()]
        lo, hi = support.min(), support.max()
        step = coarse[1] - coarse[0]
        lo, hi = max(lo - 2 * step, 0.0), hi + 2 * step
        # Geometric refinement near 0 resolves hard-edge singularities.
        n_geo = num_points // 4 if lo == 0.0 else 0
        lin = np.linspace(lo if lo > 0 else hi * 1e-3, hi, num_points - n_geo)
        geo = np.geomspace(hi * 1e-7, hi * 1e-3, n_geo, endpoint=False) if n_geo else []
        x = np.concatenate([geo, lin])
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.size < 2:
        raise ValueError("x must be a 1-D grid with at least 2 points.")
    return GramSpectrum(x, density_on(x), atom, eta, zeta)


def _atom_at_zero(eta, zeta, phi, psi, rtol=1e-9):
    """Mass of the limiting spectrum of ``M`` at 0 (its rank deficiency).

    ``M = Y Y^T / m`` is ``n1 x n1`` of rank ``min(n1, m)`` for a nonlinear
    ``f`` and ``min(n1, m, n0)`` for a linear one (``zeta == eta``).
    """
    ratios = [1.0 - psi / phi]  # 1 - m / n1
    if zeta >= eta * (1.0 - rtol):
        ratios.append(1.0 - psi)  # 1 - n0 / n1
    return float(max(0.0, *ratios))


def marchenko_pastur_density(x, ratio, scale=1.0):
    """Marchenko--Pastur density (continuous part) of ``(1/m) Y Y^T``.

    ``Y`` is ``(n, m)`` with i.i.d. entries of variance ``scale`` and
    ``ratio = n / m``.  When ``ratio > 1`` there is in addition an atom
    ``1 - 1 / ratio`` at 0, not included here.

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import marchenko_pastur_density
        >>> x = np.linspace(0, 3, 3001)
        >>> round(float(np.trapezoid(marchenko_pastur_density(x, 0.25), x)), 3)
        1.0
    """
    ratio = _check_positive("ratio", ratio)
    scale = _check_positive("scale", scale)
    x = np.asarray(x, dtype=float)
    a = scale * (1 - np.sqrt(ratio)) ** 2
    b = scale * (1 + np.sqrt(ratio)) ** 2
    inside = (x > a) & (x < b) & (x > 0)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((b - xi) * (xi - a)) / (2 * np.pi * scale * ratio * xi)
    return out


class GramSpectrumComparison(NamedTuple):
    """Result of :func:`compare_gram_spectrum`.

    ``eigenvalues``: sorted eigenvalues of the sampled ``M``; ``prediction``:
    the :class:`GramSpectrum`; ``ks``: Kolmogorov--Smirnov distance
    ``sup |F_emp - F_pred|``; ``l1``: L1 distance between a histogram density
    of the eigenvalues and the predicted density (continuous parts, atoms
    compared separately and added); ``outliers``: eigenvalues above the
    predicted support (the rank-one mean term of a non-centred ``f``).
    """

    eigenvalues: np.ndarray
    prediction: GramSpectrum
    ks: float
    l1: float
    outliers: np.ndarray


def compare_gram_spectrum(
    activation,
    phi=1.0,
    psi=1.0,
    n0=1000,
    *,
    sigma_w=1.0,
    sigma_x=1.0,
    bins=None,
    seed=0,
) -> GramSpectrumComparison:
    """Sample ``W``, ``X`` at finite size and compare the spectrum of ``M`` to theory.

    Builds ``n1 = round(n0 / psi)``, ``m = round(n0 / phi)``, samples Gaussian
    ``W`` and ``X``, forms ``Y = f(W X / sqrt(n0))`` with the *actual* ``f``
    (not centred) and ``M = Y Y^T / m``, and compares its eigenvalues with
    :func:`gram_spectrum`.  A non-centred ``f`` produces one outlier eigenvalue
    of order ``n1 (E f)**2``; it counts ``1 / n1`` in the KS distance and is
    reported in ``outliers``.

    Args:
        activation: Keras activation name or callable.
        phi, psi: ratios ``n0 / m`` and ``n0 / n1``.
        n0: input dimension of the sampled problem.
        sigma_w, sigma_x: standard deviations of ``W`` and ``X``.
        bins: histogram bins for the L1 distance (default ``sqrt(n1)``).
        seed: random seed.

    Returns:
        :class:`GramSpectrumComparison`.

    Example:
        >>> from keras_classpca.theory import compare_gram_spectrum
        >>> res = compare_gram_spectrum("tanh", phi=0.5, psi=1.0, n0=300)
        >>> bool(res.ks < 0.05)
        True
    """
    phi, psi = _check_ratios(phi, psi)
    if int(n0) != n0 or n0 < 2:
        raise ValueError(f"n0 must be an integer >= 2, got {n0!r}.")
    n0 = int(n0)
    n1 = max(int(round(n0 / psi)), 1)
    m = max(int(round(n0 / phi)), 1)
    f = _resolve_activation(activation)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n1, n0)) * sigma_w
    x = rng.standard_normal((n0, m)) * sigma_x
    y = f(w @ x / np.sqrt(n0))
    gram = y @ y.T / m
    eig = np.sort(np.linalg.eigvalsh(gram))
    # M is PSD: round-off zeros (rank deficiency) are set to exactly 0.
    eig[eig <= 1e-9 * max(eig[-1], 1e-300)] = 0.0
    # Use the realised ratios so that rounding of n1, m does not bias the test.
    pred = gram_spectrum(
        activation, n0 / m, n0 / n1, sigma_w=sigma_w, sigma_x=sigma_x, num_points=1000
    )
    hi = pred.x[pred.density > 0].max() if np.any(pred.density > 0) else pred.x.max()
    outliers = eig[eig > 1.5 * hi]
    grid = np.unique(np.concatenate([pred.x, eig]))
    f_emp = np.searchsorted(eig, grid, side="right") / eig.size
    ks = float(np.max(np.abs(f_emp - pred.cdf(grid))))

    # L1 on continuous parts: eigenvalues below a tiny threshold form the atom.
    emp_atom = float(np.mean(eig == 0.0))
    cont = eig[(eig > 0.0) & (eig <= 1.5 * hi)]
    nbins = int(bins) if bins is not None else max(int(np.sqrt(n1)), 10)
    edges = np.linspace(0.0, 1.05 * hi, nbins + 1)
    counts, _ = np.histogram(cont, bins=edges)
    hist = counts / (eig.size * np.diff(edges))
    # average predicted density per bin (via the CDF, robust to edge singularities)
    cdf_edges = pred.cdf(edges) - pred.atom * (edges >= 0)
    pred_bin = np.diff(cdf_edges) / np.diff(edges)
    l1 = float(np.sum(np.abs(hist - pred_bin) * np.diff(edges)) + abs(emp_atom - pred.atom))
    return GramSpectrumComparison(eig, pred, ks, l1, outliers)


# --------------------------------------------------------------------------
# Layer-wise input spectra of a real Keras model
# --------------------------------------------------------------------------
def _im2col(x, layer):
    """Patches of a channels-last 4-D batch seen by a Conv2D layer: (N*H'*W', kh*kw*c)."""
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") == "channels_first":
        x = np.transpose(x, (0, 2, 3, 1))
    kh, kw = cfg["kernel_size"]
    sh, sw = cfg["strides"]
    dh, dw = cfg.get("dilation_rate", (1, 1))
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if cfg["padding"] == "same":
        h, w = x.shape[1], x.shape[2]
        out_h, out_w = -(-h // sh), -(-w // sw)
        pad_h = max((out_h - 1) * sh + eh - h, 0)
        pad_w = max((out_w - 1) * sw + ew - w, 0)
        x = np.pad(
            x,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        )
    windows = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, :, ::dh, ::dw]  # (N, H', W', C, kh, kw)
    windows = np.transpose(windows, (0, 1, 2, 4, 5, 3))  # kernel layout (kh, kw, C)
    return windows.reshape(-1, kh * kw * x.shape[-1])


def _iter_layers(model):
    """All layers of a model in order, descending into nested models."""
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _iter_layers(layer)


def _target_layers(model):
    import keras

    kinds = (keras.layers.Dense, keras.layers.Conv2D)
    return [layer for layer in _iter_layers(model) if isinstance(layer, kinds)]


def _covariance_eigenvalues(rows):
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows - rows.mean(axis=0, keepdims=True)
    cov = rows.T @ rows / max(rows.shape[0] - 1, 1)
    return np.sort(np.linalg.eigvalsh(cov))[::-1].clip(min=0.0)


def layer_input_spectra(model, x, max_samples=2000, *, seed=0, batch_size=256):
    """Eigenvalues of the covariance of the input of every Dense / Conv2D layer.

    For a ``Dense`` layer the rows are the layer's input vectors (extra leading
    axes flattened); for a ``Conv2D`` layer they are the image patches the
    kernel sees (im2col with the layer's kernel size, strides, padding and
    dilation), of dimension ``kh * kw * channels``.  This is the spectrum that
    Pennington & Worah describe for random layers, measured on real data; use it
    to see how a solved class-PCA layer reshapes what the next layer receives.

    Args:
        model: a built Keras model (Sequential or functional; nested models
            are searched) containing at least one Dense or Conv2D layer.
        x: input data (array) accepted by ``model``.
        max_samples: at most this many rows (samples or patches, chosen at
            random) enter each covariance.
        seed: seed of the subsampling.
        batch_size: batch size of the forward pass.

    Returns:
        ``dict`` mapping layer name to the eigenvalues (descending, float64),
        in the order the layers appear in the model.

    Example:
        >>> import numpy as np, keras
        >>> from keras_classpca.theory import layer_input_spectra
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d1"),
        ...                           keras.layers.Dense(2, name="d2")])
        >>> spectra = layer_input_spectra(model, np.random.rand(100, 8).astype("float32"))
        >>> list(spectra), spectra["d1"].shape
        (['d1', 'd2'], (8,))
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    if int(max_samples) != max_samples or max_samples < 2:
        raise ValueError(f"max_samples must be an integer >= 2, got {max_samples!r}.")
    layers = _target_layers(model)
    if not layers:
        raise ValueError("model has no Dense or Conv2D layers; nothing to measure.")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "model must be built on keras.Input (Sequential with an Input or functional) "
            "so that layer inputs can be read."
        )
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_samples:
        x = x[np.sort(rng.choice(x.shape[0], int(max_samples), replace=False))]
    if len(inputs) != 1:
        raise ValueError(f"model must have a single input, got {len(inputs)}.")
    probe = keras.Model(inputs[0], [layer.input for layer in layers])
    # Direct calls (inference mode) in batches: no tf.function retracing per call.
    chunks = []
    for i in range(0, x.shape[0], int(batch_size)):
        outs = probe(x[i : i + batch_size])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        chunks.append([np.asarray(keras.ops.convert_to_numpy(o)) for o in outs])
    outputs = [np.concatenate(parts, axis=0) for parts in zip(*chunks)]
    spectra = {}
    for layer, h in zip(layers, outputs):
        h = np.asarray(h, dtype=np.float64)
        if isinstance(layer, keras.layers.Conv2D):
            rows = _im2col(h, layer)
        else:
            rows = h.reshape(-1, h.shape[-1])
        if rows.shape[0] > max_samples:
            rows = rows[rng.choice(rows.shape[0], int(max_samples), replace=False)]
        spectra[layer.name] = _covariance_eigenvalues(rows)
    return spectra


# --------------------------------------------------------------------------
# Agarwal, Awasthi & Kale: conditioning of the kernel with depth
# --------------------------------------------------------------------------
def normalized_gram(features):
    """Cosine Gram matrix ``K_ij = <h_i, h_j> / (|h_i| |h_j|)`` of the rows of ``features``.

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import normalized_gram
        >>> normalized_gram(np.array([[2.0, 0.0], [1.0, 1.0]])).round(3).tolist()
        [[1.0, 0.707], [0.707, 1.0]]
    """
    h = np.asarray(features, dtype=np.float64)
    if h.ndim < 2:
        raise ValueError(f"features must be at least 2-D (samples, ...), got shape {h.shape}.")
    h = h.reshape(h.shape[0], -1)
    norms = np.linalg.norm(h, axis=1)
    if np.any(norms == 0):
        raise ValueError("features contains an all-zero row; its normalized Gram is undefined.")
    h = h / norms[:, None]
    return h @ h.T


def gram_condition_number(features):
    """Condition number ``lambda_max / lambda_min`` of :func:`normalized_gram`.

    Returns ``inf`` when the Gram matrix is singular (more samples than
    feature dimensions, or parallel rows).

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import gram_condition_number
        >>> float(gram_condition_number(np.eye(5)))
        1.0
    """
    k = normalized_gram(features)
    ev = np.linalg.eigvalsh(k)
    if ev[0] <= 1e-12 * ev[-1]:
        return float("inf")
    return float(ev[-1] / ev[0])


def _dual_correlation_map(f, num_grid=1001, num_nodes=96):
    """Tabulate c -> E[f(u) f(v)] / E[f(u)^2] for standard (u, v) with correlation c."""
    z, w = hermegauss(num_nodes)
    w = w / w.sum()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    ww = np.outer(w, w)
    fu = f(z1)
    c = np.linspace(-1.0, 1.0, num_grid)
    vals = np.empty_like(c)
    for i, ci in enumerate(c):
        v = ci * z1 + np.sqrt(max(1.0 - ci * ci, 0.0)) * z2
        vals[i] = np.sum(ww * fu * f(v))
    return c, vals / np.sum(w * f(z) ** 2)


def kernel_condition_number(
    model_or_depth,
    x,
    *,
    activation="relu",
    width=1024,
    batchnorm=False,
    normalize_inputs=True,
    seed=0,
):
    """Condition number of the normalized Gram matrix of a network's features vs depth.

    The quantity studied by Agarwal, Awasthi & Kale (2020): for a random
    network, the cosine Gram matrix of the representations of the points ``x``
    after ``l`` layers.  With an activation normalized to mean 0 and variance
    1 under a standard Gaussian (:class:`NormalizedReLU`), correlations between
    different points shrink with depth and the condition number tends to 1;
    with plain ReLU (mean > 0) all points become aligned and it grows.

    Two modes:

    * ``model_or_depth`` an ``int`` L: a random fully connected network of
      depth L.  Layer ``l`` computes ``h <- f(BN(h W_l))`` with
      ``W_l ~ N(0, 1 / fan_in)`` and no bias (BN only if ``batchnorm``,
      normalizing each unit over the batch ``x`` as in training mode).  With
      ``width=None`` the infinite-width kernel is propagated exactly through
      the dual activation ``c -> E[f(u) f(v)] / E[f(u)**2]`` (valid for
      positively homogeneous activations such as ReLU and for activations with
      ``E f(z)**2 = 1`` on inputs of equal norm; not available with batchnorm).
    * a Keras model: the features after each Dense block (the input, then the
      tensor just before each following Dense layer, then the output), computed
      layer by layer with ``training=True`` only for BatchNormalization layers.

    Args:
        model_or_depth: ``int`` depth or a Sequential-like ``keras.Model``.
        x: array ``(n, d)`` of inputs (``n`` points).
        activation: name or callable for the int mode; ``"normalized_relu"``
            selects :class:`NormalizedReLU`'s function.
        width: hidden width (int mode); ``None`` for infinite width.
        batchnorm: insert batch normalization before each activation (int mode).
        normalize_inputs: rescale each row of ``x`` to norm ``sqrt(d)`` (int
            mode) so pre-activations are standard Gaussian, as in the paper.
        seed: random seed of the weights (int mode).

    Returns:
        float array of length ``depth + 1``: entry ``l`` is the condition
        number after ``l`` layers (entry 0: the inputs).

    Example:
        >>> import numpy as np
        >>> from keras_classpca.theory import kernel_condition_number
        >>> x = np.random.default_rng(0).normal(size=(20, 30)) + 2.0
        >>> c = kernel_condition_number(10, x, activation="normalized_relu", width=None)
        >>> bool(c[-1] < c[0])
        True
    """
    import keras

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (n, d), got shape {x.shape}.")
    if isinstance(model_or_depth, keras.Model):
        return _model_condition_numbers(model_or_depth, x)
    if isinstance(model_or_depth, bool) or not isinstance(model_or_depth, (int, np.integer)):
        raise TypeError(
            "model_or_depth must be an int depth or a keras.Model, got "
            f"{type(model_or_depth).__name__}."
        )
    depth = int(model_or_depth)
    if depth < 0:
        raise ValueError(f"model_or_depth (depth) must be >= 0, got {depth}.")
    f = _resolve_activation(activation)
    if normalize_inputs:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("x contains an all-zero row.")
        x = x / norms * np.sqrt(x.shape[1])
    conds = [gram_condition_number(x)]
    if width is None:
        if batchnorm:
            raise ValueError("width=None (infinite width) is not available with batchnorm=True.")
        grid, table = _dual_correlation_map(f)
        k = normalized_gram(x)
        for _ in range(depth):
            k = np.interp(np.clip(k, -1.0, 1.0), grid, table)
            d = np.sqrt(np.diag(k))
            k = k / np.outer(d, d)
            ev = np.linalg.eigvalsh(k)
            conds.append(float(ev[-1] / ev[0]) if ev[0] > 1e-12 * ev[-1] else float("inf"))
        return np.array(conds)
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer or None, got {width!r}.")
    rng = np.random.default_rng(seed)
    h = x
    for _ in range(depth):
        w = rng.standard_normal((h.shape[1], int(width))) / np.sqrt(h.shape[1])
        h = h @ w
        if batchnorm:
            h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-5)
        h = f(h)
        conds.append(gram_condition_number(h))
    return np.array(conds)


def _model_condition_numbers(model, x):
    import keras

    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if not any(isinstance(l, keras.layers.Dense) for l in layers):
        raise ValueError("model has no Dense layers; kernel_condition_number needs Dense blocks.")
    h = keras.ops.convert_to_tensor(x.astype("float32"))
    feats = [x]
    seen_dense = False
    for layer in layers:
        if isinstance(layer, keras.layers.Dense):
            if seen_dense:
                feats.append(keras.ops.convert_to_numpy(h))
            seen_dense = True
        if isinstance(layer, keras.layers.BatchNormalization):
            h = layer(h, training=True)
        else:
            h = layer(h)
    feats.append(keras.ops.convert_to_numpy(h))
    return np.array([gram_condition_number(f) for f in feats])
