"""Nonlinear random-matrix spectra (Pennington & Worah, NeurIPS 2017).

"Nonlinear random matrix theory for deep learning": the limiting eigenvalue density of
the Gram matrix of ``Y = f(W X)`` depends on ``f`` only through two Gaussian constants
(:func:`keras_classpca.theory.activation_constants`).  NumPy only.

Conventions of the paper (not transposed): ``W`` is ``(n1, n0)`` with i.i.d.
``N(0, sigma_w**2)`` entries, ``X`` is ``(n0, m)`` with i.i.d. ``N(0, sigma_x**2)``
entries, ``Y = f(W @ X / sqrt(n0))`` is ``(n1, m)`` and the Gram matrix is
``M = Y @ Y.T / m`` (``n1 x n1``), with the ratios ``phi = n0 / m`` and
``psi = n0 / n1``.  Each entry of ``W @ X / sqrt(n0)`` is then
``N(0, (sigma_w * sigma_x)**2)``.
"""

from typing import NamedTuple

import numpy as np
from numpy.polynomial import polynomial as _poly

from keras_classpca.theory._validation import check_positive
from keras_classpca.theory.activations import resolve_activation
from keras_classpca.theory.constants import activation_constants

__all__ = [
    "GramSpectrum",
    "GramSpectrumComparison",
    "stieltjes_transform",
    "gram_spectrum",
    "marchenko_pastur_density",
    "compare_gram_spectrum",
]


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
    return check_positive("phi", phi), check_positive("psi", psi)


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
        raise ValueError(f"`eta` must be > 0; received {eta!r}.")
    if zeta < 0 or zeta > eta * (1 + 1e-9):
        raise ValueError(
            f"`zeta` must satisfy 0 <= zeta <= eta; received zeta={zeta!r}, eta={eta!r}.")
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
        raise ValueError(
            f"`eta` must be > 0 (a constant activation has no spectrum); received {eta!r}.")
    zeta = min(max(zeta, 0.0), eta)  # quadrature round-off
    scale = _upper_edge_bound(eta, phi, psi)
    eps = 1e-9 * scale if eps is None else check_positive("eps", eps)

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
    ratio = check_positive("ratio", ratio)
    scale = check_positive("scale", scale)
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
        raise ValueError(f"`n0` must be an integer >= 2; received {n0!r}.")
    n0 = int(n0)
    n1 = max(int(round(n0 / psi)), 1)
    m = max(int(round(n0 / phi)), 1)
    f = resolve_activation(activation)
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
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, (int, np.integer))
                             or bins < 1):
        raise ValueError(f"`bins` must be a positive integer or None; received {bins!r}.")
    nbins = int(bins) if bins is not None else max(int(np.sqrt(n1)), 10)
    edges = np.linspace(0.0, 1.05 * hi, nbins + 1)
    counts, _ = np.histogram(cont, bins=edges)
    hist = counts / (eig.size * np.diff(edges))
    # average predicted density per bin (via the CDF, robust to edge singularities)
    cdf_edges = pred.cdf(edges) - pred.atom * (edges >= 0)
    pred_bin = np.diff(cdf_edges) / np.diff(edges)
    l1 = float(np.sum(np.abs(hist - pred_bin) * np.diff(edges)) + abs(emp_atom - pred.atom))
    return GramSpectrumComparison(eig, pred, ks, l1, outliers)
