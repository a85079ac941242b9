"""Tests of jaxdiff.core.kernel_basis: Alard-Lupton, delta-function and PCA bases, regularisation matrices.

Includes the cases of ip_diffim ``tests/test_basisLists.py`` and worked examples of ip_diffim's
``generateAlardLuptonBasisList``.  All basis code is host float64 numpy, so the tests are the same under
``--float32``.  The pure functions take plain keyword arguments; the shell's ``*_from_config`` adapters
(:mod:`jaxdiff.tasks._basis_config`) are checked against them.
"""

import types

import numpy as np
import pytest
from scipy import ndimage

from jaxdiff.core.kernel_basis import (
    FLT_EPSILON,
    SIGMA_TO_FWHM,
    BasisParams,
    alard_lupton_basis,
    alard_lupton_basis_params,
    alard_lupton_n_terms,
    alard_lupton_separable,
    delta_function_basis,
    make_basis,
    pca_kernel_basis,
    regularization_matrix,
    regularization_strength,
    renormalize_kernel_list,
)
from jaxdiff.tasks._basis_config import (
    alard_lupton_basis_params_from_config,
    make_kernel_basis_list,
    regularization_lambda,
    regularization_matrix_from_config,
)
from jaxdiff.tasks.config import PsfMatchConfigAL, PsfMatchConfigDF


def _check_al_properties(basis, places=7):
    """test_basisLists: first sums to 1; the others sum to 0 and have sum of squares 1."""
    tol = 10.0**-places
    assert abs(basis[0].sum() - 1.0) < tol
    for b in basis[1:]:
        assert abs(b.sum()) < tol
        assert abs(np.sum(b * b) - 1.0) < tol


def _gaussian_function2(size, sigma_x, sigma_y):
    """afw ``GaussianFunction2(σx, σy)`` sampled at pixel centres of a size x size kernel (not normalised)."""
    half = size // 2
    v, u = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    return np.exp(-0.5 * (u**2 / sigma_x**2 + v**2 / sigma_y**2)) / (2.0 * np.pi * sigma_x * sigma_y)


# ---------------------------------------------------------------------------------------------------
# ip_diffim tests/test_basisLists.py
# ---------------------------------------------------------------------------------------------------


def test_make_delta_function():
    basis = delta_function_basis(21)
    assert basis.shape == (441, 21, 21)
    assert basis.dtype == np.float64
    for n in range(441):
        row, col = divmod(n, 21)
        assert basis[n, row, col] == 1.0
        assert basis[n].sum() == 1.0


def test_make_alard_lupton_defaults():
    basis = alard_lupton_basis(10, (0.7, 1.5, 3.0), (4, 2, 2))
    assert basis.shape == (27, 21, 21)
    _check_al_properties(basis)
    _check_al_properties(basis, places=12)


@pytest.mark.parametrize("fwhms", [(None, None), (3.0, 4.0)])
def test_generate_alard_lupton(fwhms):
    config = PsfMatchConfigAL()
    basis, params = make_kernel_basis_list(config, *fwhms)
    assert len(basis) == 27
    assert basis.shape[1:] == (params.kernel_size,) * 2
    _check_al_properties(basis)


def test_make_kernel_basis_list_defaults():
    basis, params = make_kernel_basis_list(PsfMatchConfigAL())
    assert basis.shape == (27, 21, 21)
    assert params == BasisParams((0.7, 1.5, 3.0), (4, 2, 2), 21, "config")
    basis, params = make_kernel_basis_list(PsfMatchConfigDF())
    assert basis.shape == (441, 21, 21)
    assert params is None
    np.testing.assert_array_equal(basis, delta_function_basis(21))


def test_make_kernel_basis_list_unknown_set():
    config = types.SimpleNamespace(kernelBasisSet="bogus", kernelSize=21)
    with pytest.raises(ValueError, match="bogus"):
        make_kernel_basis_list(config)


def test_renormalize():
    kernels = np.stack(
        [_gaussian_function2(21, 2.0, 2.0), _gaussian_function2(21, 3.0, 4.0), _gaussian_function2(21, 0.2, 0.25)]
    )
    out = renormalize_kernel_list(kernels)
    assert out.shape == (3, 21, 21)
    np.testing.assert_allclose([k.sum() for k in out], [1.0, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose([np.sum(k * k) for k in out[1:]], [1.0, 1.0], atol=1e-7)
    # Exact recipe: B0 = K0 / sum; Bi = (Ki / si - B0) / norm.
    b0 = kernels[0] / kernels[0].sum()
    np.testing.assert_allclose(out[0], b0, rtol=1e-14)
    b1 = kernels[1] / kernels[1].sum() - b0
    np.testing.assert_allclose(out[1], b1 / np.sqrt(np.sum(b1**2)), rtol=0, atol=1e-15)
    before = kernels.copy()
    renormalize_kernel_list(kernels)
    np.testing.assert_array_equal(kernels, before)  # input not modified


def test_renormalize_zero_sum_kernel_only_l2_normalised():
    k0 = _gaussian_function2(7, 1.0, 1.0)
    odd = k0 * np.arange(-3, 4)[None, :]  # sum ~1e-17 < FLT_EPSILON
    assert abs(odd.sum()) < FLT_EPSILON
    out = renormalize_kernel_list([k0, odd])
    np.testing.assert_allclose(out[1], odd / np.sqrt(np.sum(odd**2)), rtol=1e-14)


def test_renormalize_errors_and_empty():
    with pytest.raises(ValueError, match="shape"):
        renormalize_kernel_list(np.ones((3, 3)))
    with pytest.raises(ValueError, match="first kernel"):
        renormalize_kernel_list(np.zeros((2, 3, 3)))
    k = _gaussian_function2(5, 1.0, 1.0)
    with pytest.raises(ValueError, match="kernel 1"):
        renormalize_kernel_list([k, 2.0 * k])  # a multiple of kernel 0 has nothing left
    assert renormalize_kernel_list(np.zeros((0, 5, 5))).shape == (0, 5, 5)


# ---------------------------------------------------------------------------------------------------
# Basis parameters (ip_diffim generateAlardLuptonBasisList)
# ---------------------------------------------------------------------------------------------------

S = SIGMA_TO_FWHM

# target FWHM, reference FWHM, mode, sigmas, degrees, kernel size, number of bases, from the formulas of
# ip_diffim generateAlardLuptonBasisList with the default PsfMatchConfigAL
WORKED_EXAMPLES = [
    (2.0, 3.0, "convolution", (0.9496, 1.8991, 3.7983), (4, 2, 2), 23, 27),
    (3.0, 4.0, "convolution", (1.1235, 2.2471, 4.4942), (4, 2, 2), 27, 27),
    (2.2 * S, 3.3 * S, "convolution", (1.2298, 2.4597, 4.9193), (4, 2, 2), 29, 27),
    (3.3 * S, 2.2 * S, "deconvolution", (1.7393, 2.7500, 5.0707), (3, 3, 3), 29, 30),
    (2.0 * S, 2.0 * S, "config", (0.7, 1.5, 3.0), (4, 2, 2), 21, 27),
    (2.0 * S, 2.4 * S, "convolution", (1.3266, 2.6533, 5.3066), (4, 2, 2), 31, 27),
]


@pytest.mark.parametrize("target, reference, mode, sigmas, degrees, size, count", WORKED_EXAMPLES)
def test_worked_examples(target, reference, mode, sigmas, degrees, size, count):
    params = alard_lupton_basis_params(target_fwhm=target, reference_fwhm=reference)
    assert params.mode == mode
    np.testing.assert_allclose(params.sigmas, sigmas, rtol=0, atol=1e-4)
    assert params.degrees == degrees
    assert params.kernel_size == size
    assert params.n_basis == count
    basis, from_config = make_kernel_basis_list(PsfMatchConfigAL(), target, reference)
    assert from_config == params
    assert basis.shape == (count, size, size)
    _check_al_properties(basis)
    # the pure core function, with plain keywords (PsfMatchConfigAL defaults), builds the same basis
    pure, pure_params = make_basis("alard-lupton", kernel_size=21, target_fwhm=target, reference_fwhm=reference)
    assert pure_params == params
    np.testing.assert_array_equal(pure, basis)


def test_make_basis_plain_keywords():
    basis, params = make_basis("alard-lupton", kernel_size=15, n_gauss=2, deg_gauss=(2, 1), sig_gauss=(1.0, 2.0))
    assert params == BasisParams((1.0, 2.0), (2, 1), 15, "config")
    np.testing.assert_array_equal(basis, alard_lupton_basis(7, (1.0, 2.0), (2, 1)))
    basis, params = make_basis("delta-function", kernel_size=7, n_gauss=5)  # AL options ignored
    assert params is None
    np.testing.assert_array_equal(basis, delta_function_basis(7))
    with pytest.raises(ValueError, match="bogus"):
        make_basis("bogus", kernel_size=21)


def test_params_types_are_static():
    params = alard_lupton_basis_params(target_fwhm=2.0, reference_fwhm=3.0)
    hash(params)
    assert all(type(s) is float for s in params.sigmas)
    assert all(type(d) is int for d in params.degrees)
    assert type(params.kernel_size) is int
    assert params.half_width == 11


def test_deconvolution_formula():
    # sigma_K / beta > min_sig_deconv: progression [sK/b, sK, sK*b, sK*b^2] (4 Gaussians: size from the 4th)
    t, r = 4.0, 2.5
    params = alard_lupton_basis_params(target_fwhm=t * S, reference_fwhm=r * S, n_gauss_deconv=4,
                                       deg_gauss_deconv=2, gauss_beta=1.8)  # fmt: skip
    sk = np.sqrt(t**2 - r**2)
    s0, s1, s2, s3 = sk / 1.8, sk, sk * 1.8, sk * 1.8**2
    expected = sorted(
        [np.sqrt(s1**2 - 2 * s0**2), np.sqrt(2 * s1**2 - 3 * s0**2), np.sqrt(s1**2 + s2**2 - 3 * s0**2)]
    )
    np.testing.assert_allclose(params.sigmas, expected, rtol=1e-14)
    assert params.degrees == (2, 2, 2)
    assert params.mode == "deconvolution"
    assert params.kernel_size == min(35, max(21, int(6 * s3) + (1 - int(6 * s3) % 2)))

    # sigma_K / beta <= min_sig_deconv: progression starts at sigma_K (clamped to min_sig_deconv)
    params = alard_lupton_basis_params(target_fwhm=2.01 * S, reference_fwhm=2.0 * S)
    s0 = 0.4
    s1, s2 = 0.8, 1.6
    expected = sorted(
        [np.sqrt(s1**2 - 2 * s0**2), np.sqrt(2 * s1**2 - 3 * s0**2), np.sqrt(s1**2 + s2**2 - 3 * s0**2)]
    )
    np.testing.assert_allclose(params.sigmas, expected, rtol=1e-14)
    assert params.kernel_size == 21  # int(6 * 1.6) = 9 -> clamped to the minimum


def test_convolution_cases():
    # one Gaussian: [sigma_K] even when sigma_K / beta > min_sig
    p = alard_lupton_basis_params(target_fwhm=1.0 * S, reference_fwhm=3.0 * S, n_gauss=1, deg_gauss=(3,),
                                  sig_gauss=(1.0,))  # fmt: skip
    np.testing.assert_allclose(p.sigmas, [np.sqrt(8.0)], rtol=1e-14)
    assert p.degrees == (3,)
    # sigma_K below min_sig is clamped
    p = alard_lupton_basis_params(target_fwhm=2.0 * S, reference_fwhm=2.01 * S)
    np.testing.assert_allclose(p.sigmas, [0.7, 1.4, 2.8], rtol=1e-14)
    # large kernels clamp to kernel_size_max; basis_deg_gauss overrides the degrees
    p = alard_lupton_basis_params(target_fwhm=2.0 * S, reference_fwhm=6.0 * S, basis_deg_gauss=(1, 1, 1))
    assert p.kernel_size == 35
    assert p.degrees == (1, 1, 1)
    # basis_sigma_gauss is ignored by the scaled modes
    q = alard_lupton_basis_params(target_fwhm=2.0 * S, reference_fwhm=6.0 * S, basis_sigma_gauss=(9, 9, 9))
    assert q.sigmas == alard_lupton_basis_params(target_fwhm=2.0 * S, reference_fwhm=6.0 * S).sigmas
    # an even clamp bound: the reported size is the width actually built
    p = alard_lupton_basis_params(target_fwhm=2.0 * S, reference_fwhm=6.0 * S, kernel_size_max=30)
    assert p.kernel_size == 31


def test_config_mode():
    expected = BasisParams((0.7, 1.5, 3.0), (4, 2, 2), 21, "config")
    assert alard_lupton_basis_params() == expected
    assert alard_lupton_basis_params(target_fwhm=3.0) == expected  # one FWHM missing
    assert alard_lupton_basis_params(target_fwhm=2.0, reference_fwhm=3.0, scale_by_fwhm=False) == expected
    # no clamp in config mode
    p = alard_lupton_basis_params(kernel_size=41, basis_sigma_gauss=(1.0, 2.0, 4.0), basis_deg_gauss=(1, 1, 0))
    assert p == BasisParams((1.0, 2.0, 4.0), (1, 1, 0), 41, "config")


def test_params_errors():
    with pytest.raises(ValueError, match="degrees"):
        alard_lupton_basis_params(deg_gauss=(4, 2))
    with pytest.raises(ValueError, match="degrees"):
        alard_lupton_basis_params(basis_deg_gauss=(4, 2, 2, 2))
    with pytest.raises(ValueError, match="sigmas"):
        alard_lupton_basis_params(sig_gauss=(0.7, 1.5))
    with pytest.raises(ValueError, match="sigmas"):
        alard_lupton_basis_params(basis_sigma_gauss=(1.0,))
    with pytest.raises(ValueError, match="odd"):
        alard_lupton_basis_params(kernel_size=20)
    with pytest.raises(ValueError, match="odd"):  # checked even when scaling overrides the size
        alard_lupton_basis_params(kernel_size=20, target_fwhm=2.0, reference_fwhm=3.0)
    with pytest.raises(ValueError, match="n_gauss"):
        alard_lupton_basis_params(n_gauss=0, deg_gauss=(), sig_gauss=())
    with pytest.raises(ValueError, match="reference_fwhm"):
        alard_lupton_basis_params(target_fwhm=2.0, reference_fwhm=float("nan"))
    with pytest.raises(ValueError, match="n_gauss_deconv"):
        alard_lupton_basis_params(target_fwhm=4.0, reference_fwhm=2.0, n_gauss_deconv=2)
    with pytest.raises(ValueError, match="radicand"):  # beta <= sqrt(2): LSST gives NaN sigmas
        alard_lupton_basis_params(target_fwhm=4.0, reference_fwhm=2.0, gauss_beta=1.3)
    with pytest.raises(ValueError, match="degrees"):
        alard_lupton_basis_params(deg_gauss=(4, -1, 2))


def test_params_from_config():
    config = PsfMatchConfigAL()
    config.alardNGauss = 2
    config.alardDegGauss = (3, 1)
    config.alardSigGauss = (1.0, 2.5)
    config.alardGaussBeta = 2.5
    config.alardMinSig = 0.5
    config.kernelSizeFwhmScaling = 5.0
    config.kernelSizeMin = 11
    config.kernelSizeMax = 41
    config.alardNGaussDeconv = 4
    config.alardDegGaussDeconv = 1
    config.alardMinSigDeconv = 0.3
    config.kernelSize = 15
    for fwhms in [(None, None), (2.0, 5.0), (6.0, 2.0), (3.0, 3.0)]:
        got = alard_lupton_basis_params_from_config(config, *fwhms, basis_sigma_gauss=(1.5, 3.5))
        want = alard_lupton_basis_params(
            target_fwhm=fwhms[0], reference_fwhm=fwhms[1], basis_sigma_gauss=(1.5, 3.5), n_gauss=2,
            deg_gauss=(3, 1), sig_gauss=(1.0, 2.5), gauss_beta=2.5, min_sig=0.5, n_gauss_deconv=4,
            deg_gauss_deconv=1, min_sig_deconv=0.3, kernel_size=15, kernel_size_fwhm_scaling=5.0,
            kernel_size_min=11, kernel_size_max=41,
        )  # fmt: skip
        assert got == want
    config.scaleByFwhm = False
    assert alard_lupton_basis_params_from_config(config, 2.0, 5.0).mode == "config"
    # a config whose lists do not match alardNGauss (pex_config only checks this in validate())
    bad = types.SimpleNamespace(**{k: getattr(config, k) for k in config.keys()})
    bad.alardDegGauss = (3, 1, 1)
    with pytest.raises(ValueError, match="degrees"):
        alard_lupton_basis_params_from_config(bad)
    bad.alardDegGauss = (3, 1)
    bad.kernelSize = 16
    with pytest.raises(ValueError, match="odd"):
        make_kernel_basis_list(bad)
    with pytest.raises(RuntimeError, match="delta-function"):
        alard_lupton_basis_params_from_config(PsfMatchConfigDF())


# ---------------------------------------------------------------------------------------------------
# Basis images: order, orientation, separable form
# ---------------------------------------------------------------------------------------------------


def test_alard_lupton_raw_kernels_and_order():
    hw, sigmas, degrees = 4, (1.2, 2.0), (2, 1)
    sep = alard_lupton_separable(hw, sigmas, degrees)
    w = 2 * hw + 1
    assert sep.fx.shape == sep.fy.shape == (9, w)
    assert sep.transform.shape == (9, 9)
    exponents = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), (0, 0), (1, 0), (0, 1)]
    gauss = [0] * 6 + [1] * 3
    v, u = np.mgrid[-hw : hw + 1, -hw : hw + 1].astype(float)
    for r, ((p, q), g) in enumerate(zip(exponents, gauss, strict=True)):
        g2 = np.exp(-(u**2 + v**2) / (2 * sigmas[g] ** 2))
        g2 /= g2.sum()  # 2-D Gaussian normalised to sum 1 on the grid (LSST recipe)
        raw = np.outer(sep.fy[r], sep.fx[r])
        np.testing.assert_allclose(raw, g2 * (u / hw) ** p * (v / hw) ** q, rtol=0, atol=1e-16)

    basis = alard_lupton_basis(hw, sigmas, degrees)
    # term 1 is x (columns): antisymmetric left-right, positive right of centre; term 2 is y (rows)
    np.testing.assert_allclose(basis[1], -basis[1][:, ::-1], atol=1e-15)
    assert basis[1][hw, hw + 1] > 0
    np.testing.assert_allclose(basis[2], -basis[2][::-1, :], atol=1e-15)
    assert basis[2][hw + 1, hw] > 0
    np.testing.assert_allclose(basis[2], basis[1].T, atol=1e-15)
    # odd terms are only L2-normalised; even terms have B0 subtracted
    for k in (1, 2, 4, 7, 8):
        assert sep.transform[k, 0] == 0.0
    for k in (3, 5, 6):
        assert sep.transform[k, 0] < 0.0


@pytest.mark.parametrize(
    "hw, sigmas, degrees",
    [
        (10, (0.7, 1.5, 3.0), (4, 2, 2)),
        (14, (1.7393, 2.75, 5.0707), (3, 3, 3)),
        (3, (0.5,), (0,)),
        (17, (0.9, 2.1, 4.4, 8.0), (5, 3, 2, 1)),
    ],
)
def test_separable_reproduces_basis(hw, sigmas, degrees):
    basis = alard_lupton_basis(hw, sigmas, degrees)
    sep = alard_lupton_separable(hw, sigmas, degrees)
    assert basis.shape == (alard_lupton_n_terms(degrees), 2 * hw + 1, 2 * hw + 1)
    rebuilt = np.einsum("kr,rv,ru->kvu", sep.transform, sep.fy, sep.fx)
    np.testing.assert_allclose(rebuilt, basis, rtol=0, atol=1e-12)
    # and the renormalisation equals renormalize_kernel_list applied to the raw images
    raw = np.einsum("rv,ru->rvu", sep.fy, sep.fx)
    np.testing.assert_allclose(renormalize_kernel_list(raw), basis, rtol=0, atol=1e-15)
    # correlating an image with the separable factors, then mixing, equals correlating with the basis
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2 * hw + 5, 2 * hw + 6))
    direct = np.stack([ndimage.correlate(image, b, mode="constant") for b in basis[:4]])
    passes = np.stack(
        [ndimage.correlate1d(ndimage.correlate1d(image, sep.fx[r], axis=1, mode="constant"), sep.fy[r],
                             axis=0, mode="constant") for r in range(len(sep.fx))]
    )  # fmt: skip
    np.testing.assert_allclose(np.einsum("kr,rhw->khw", sep.transform[:4], passes), direct, atol=1e-12)


def test_basis_argument_errors():
    with pytest.raises(ValueError, match="half_width"):
        alard_lupton_basis(0, (1.0,), (1,))
    with pytest.raises(ValueError, match="one degree per sigma"):
        alard_lupton_basis(3, (1.0, 2.0), (1,))
    with pytest.raises(ValueError, match="sigmas"):
        alard_lupton_separable(3, (0.0,), (1,))
    with pytest.raises(ValueError, match="degrees"):
        alard_lupton_separable(3, (1.0,), (-1,))
    with pytest.raises(ValueError, match="size"):
        delta_function_basis(0)


# ---------------------------------------------------------------------------------------------------
# Regularisation (ip_diffim makeRegularizationMatrix; Becker et al. 2012)
# ---------------------------------------------------------------------------------------------------


def test_regularization_argument_checks():
    # test_basisLists: stencil 1 error, 5 and 9 OK; border -1 error, 0 OK; orders 0 error, 1 OK,
    # 4 error, [1, 2] OK; unknown type error.
    with pytest.raises(ValueError, match="5- or 9-point"):
        regularization_matrix(7, stencil=1)
    for stencil in (5, 9):
        regularization_matrix(7, stencil=stencil)
    for kind in ("centralDifference", "forwardDifference"):
        with pytest.raises(ValueError, match="border_penalty"):
            regularization_matrix(7, kind=kind, border_penalty=-1.0)
        regularization_matrix(7, kind=kind, border_penalty=0.0)
    with pytest.raises(ValueError, match="orders"):
        regularization_matrix(7, kind="forwardDifference", orders=(0,))
    regularization_matrix(7, kind="forwardDifference", orders=(1,))
    with pytest.raises(ValueError, match="orders"):
        regularization_matrix(7, kind="forwardDifference", orders=(4,))
    regularization_matrix(7, kind="forwardDifference", orders=[1, 2])
    with pytest.raises(ValueError, match="kind"):
        regularization_matrix(7, kind="foo")
    with pytest.raises(ValueError, match="size"):
        regularization_matrix(0)


def _f32(x):
    return np.float64(np.float32(x))


def _central_b_reference(size, stencil, penalty):
    """B by applying the stencil with scipy (interior) and the penalty (border) to each unit vector."""
    weights = (np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float) if stencil == 5
               else np.vectorize(_f32)(np.array([[1, 4, 1], [4, -20, 4], [1, 4, 1]]) / 6.0))  # fmt: skip
    n = size * size
    b = np.zeros((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        img = e.reshape(size, size)
        lap = ndimage.correlate(img, weights, mode="constant")
        out = penalty * img
        out[1:-1, 1:-1] = lap[1:-1, 1:-1]
        b[:, j] = out.ravel()
    return b


@pytest.mark.parametrize("stencil", [5, 9])
@pytest.mark.parametrize("penalty", [0.0, 3.0, 0.7])
def test_central_difference_matches_independent_construction(stencil, penalty):
    size = 6
    h = regularization_matrix(size, stencil=stencil, border_penalty=penalty)
    b = _central_b_reference(size, stencil, _f32(penalty))
    np.testing.assert_allclose(h, b.T @ b, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(h, h.T)
    assert np.linalg.eigvalsh(h).min() > -1e-12


@pytest.mark.parametrize("stencil", [5, 9])
def test_central_difference_laplacian_quadratic_form(stencil):
    # A quadratic kernel has the constant Laplacian 2a + 2b at every interior pixel (both stencils are
    # exact for quadratics); border pixels contribute (penalty * k)^2.
    size, penalty = 5, 3.0
    y, x = np.mgrid[0:size, 0:size].astype(float)
    a, bq, c, d, e, f = 0.3, -0.7, 0.25, 1.1, -0.4, 2.0
    k = a * x**2 + bq * y**2 + c * x * y + d * x + e * y + f
    interior = np.zeros((size, size), bool)
    interior[1:-1, 1:-1] = True
    expected = interior.sum() * (2 * a + 2 * bq) ** 2 + np.sum((penalty * k[~interior]) ** 2)
    h = regularization_matrix(size, stencil=stencil, border_penalty=penalty)
    got = k.ravel() @ h @ k.ravel()
    # the float32-rounded 9-point coefficients sum to ~1.8e-7 instead of 0
    np.testing.assert_allclose(got, expected, rtol=1e-12 if stencil == 5 else 1e-5)
    # border rows of B are penalty * identity; corner pixel 0 is a stencil neighbour of interior
    # pixel (1, 1) only through the 9-point diagonal coefficient float32(1/6)
    assert h[0, 0] == penalty**2 + (0.0 if stencil == 5 else _f32(1.0 / 6.0) ** 2)


def _forward_b_reference(size, orders, penalty):
    """Sum over orders of kron(I, Dx) + kron(Dy, I) with tapered 1-D forward-difference operators."""
    coeffs = {0: [penalty], 1: [-1, 1], 2: [-1, 2, -1], 3: [-1, 3, -3, 1]}
    total = np.zeros((size * size, size * size))
    for order in orders:
        d = np.zeros((size, size))
        for i in range(size):
            use = min(size - 1 - i, order)
            d[i, i : i + use + 1] = coeffs[use]
        total += np.kron(np.eye(size), d) + np.kron(d, np.eye(size))
    return total


@pytest.mark.parametrize("orders", [(1,), (2,), (3,), (1, 2), (1, 2, 3), (3, 1)])
@pytest.mark.parametrize("size", [2, 4, 7])
def test_forward_difference_matches_independent_construction(orders, size):
    penalty = 2.5
    h = regularization_matrix(size, kind="forwardDifference", orders=orders, border_penalty=penalty)
    b = _forward_b_reference(size, orders, penalty)
    np.testing.assert_allclose(h, b.T @ b, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(h, h.T)
    assert np.linalg.eigvalsh(h).min() > -1e-9


def test_forward_difference_annihilates_polynomials_away_from_edges():
    # order o differences annihilate polynomials of degree < o along each axis (where not tapered)
    size = 8
    y, x = np.mgrid[0:size, 0:size].astype(float)
    k = 1.5 + 0.3 * x - 0.2 * y
    b = _forward_b_reference(size, (2,), 1.0)
    res = (b @ k.ravel()).reshape(size, size)
    np.testing.assert_allclose(res[: size - 2, : size - 2], 0.0, atol=1e-12)
    h = regularization_matrix(size, kind="forwardDifference", orders=(2,), border_penalty=1.0)
    assert k.ravel() @ h @ k.ravel() == pytest.approx(np.sum(res**2), rel=1e-12)


@pytest.mark.parametrize("kind", ["centralDifference", "forwardDifference"])
def test_regularization_background_row(kind):
    size = 5
    h = regularization_matrix(size, kind=kind, fit_background=True)
    assert h.shape == (26, 26)
    assert not h[-1].any() and not h[:, -1].any()
    np.testing.assert_array_equal(h[:-1, :-1], regularization_matrix(size, kind=kind))


def test_regularization_from_config():
    config = PsfMatchConfigDF()
    np.testing.assert_array_equal(
        regularization_matrix_from_config(config, 9, False), regularization_matrix(9, stencil=9, border_penalty=3.0)
    )
    config.regularizationType = "forwardDifference"
    config.forwardRegularizationOrders = (1, 3)
    config.regularizationBorderPenalty = 0.5
    np.testing.assert_array_equal(
        regularization_matrix_from_config(config, 7, True),
        regularization_matrix(7, kind="forwardDifference", orders=(1, 3), border_penalty=0.5,
                              fit_background=True),
    )  # fmt: skip


def test_regularization_lambda():
    config = PsfMatchConfigDF()
    m = np.diag([4.0, 2.0, 6.0])
    h = np.diag([1.0, 1.0, 2.0])
    assert regularization_lambda(config, m, h) == 0.2
    config.lambdaType = "relative"
    assert regularization_lambda(config, m, h) == pytest.approx(1e-4 * 12.0 / 4.0, rel=1e-15)
    with pytest.raises(ValueError, match="trace"):
        regularization_lambda(config, m, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="square"):
        regularization_lambda(config, m, np.eye(2))
    for risk in ("minimizeBiasedRisk", "minimizeUnbiasedRisk"):
        config.lambdaType = risk
        with pytest.raises(NotImplementedError, match="lambdaLogMin"):
            regularization_lambda(config, m, h)
    with pytest.raises(ValueError, match="lambdaType"):
        regularization_lambda(types.SimpleNamespace(lambdaType="other"), m, h)


def test_regularization_strength_plain_keywords():
    m = np.diag([4.0, 2.0, 6.0])
    h = np.diag([1.0, 1.0, 2.0])
    assert regularization_strength(m, h, lambda_type="absolute", lambda_value=0.7) == 0.7
    assert regularization_strength(m, h, lambda_type="relative", lambda_scaling=0.5) == pytest.approx(1.5, rel=1e-15)
    assert regularization_strength(m, h, lambda_type="relative") == pytest.approx(1e-4 * 3.0, rel=1e-15)
    with pytest.raises(ValueError, match="trace"):
        regularization_strength(m, np.zeros((3, 3)), lambda_type="relative")
    with pytest.raises(NotImplementedError, match="lambdaLogMin"):
        regularization_strength(m, h, lambda_type="minimizeBiasedRisk")
    with pytest.raises(ValueError, match="lambdaType"):
        regularization_strength(m, h, lambda_type="other")
    # the adapter reads exactly these three config fields
    config = types.SimpleNamespace(lambdaType="relative", lambdaValue=9.0, lambdaScaling=0.25)
    assert regularization_lambda(config, m, h) == regularization_strength(m, h, lambda_type="relative",
                                                                          lambda_scaling=0.25)


# ---------------------------------------------------------------------------------------------------
# PCA basis
# ---------------------------------------------------------------------------------------------------


def _two_images(size=11):
    a = _gaussian_function2(size, 1.2, 1.5)
    c = _gaussian_function2(size, 2.5, 2.0)
    c = np.roll(c, 1, axis=1)
    return a / a.sum(), c / c.sum()


def _span_residual(basis, targets):
    mat = basis.reshape(len(basis), -1).T
    res = []
    for t in targets:
        coef, *_ = np.linalg.lstsq(mat, t.ravel(), rcond=None)
        res.append(np.max(np.abs(mat @ coef - t.ravel())))
    return max(res)


@pytest.mark.parametrize("subtract_mean", [True, False])
def test_pca_recovers_span_of_two_images(subtract_mean):
    a, c = _two_images()
    rng = np.random.default_rng(3)
    weights = rng.uniform(-0.5, 1.5, size=12)
    scales = rng.uniform(0.5, 3.0, size=12)  # kernel sums differ; the PCA divides them out
    kernels = np.stack([s * (w * a + (1 - w) * c) for w, s in zip(weights, scales, strict=True)])
    basis = pca_kernel_basis(kernels, n_components=2, subtract_mean=subtract_mean)
    assert basis.shape == (2, 11, 11)
    assert _span_residual(basis, [a, c]) < 1e-12
    _check_al_properties(basis, places=12)  # renormalised: sum 1, then sum 0 / unit norm
    if subtract_mean:
        np.testing.assert_allclose(basis[0], (kernels / scales[:, None, None]).mean(axis=0), atol=1e-14)
        # the eigen-kernel is along a - c
        direction = (a - c) / np.linalg.norm(a - c)
        assert abs(abs(np.sum(basis[1] * direction)) - 1.0) < 1e-12


def test_pca_component_count_and_peak_sign():
    rng = np.random.default_rng(4)
    kernels = rng.normal(size=(6, 7, 7)) * 0.1 + _gaussian_function2(7, 1.0, 1.0)
    basis = pca_kernel_basis(kernels, n_components=4)
    assert basis.shape == (4, 7, 7)  # the mean counts as one component (LSST nToUse)
    assert pca_kernel_basis(kernels, n_components=10).shape == (6, 7, 7)  # min(n_components, N)
    assert pca_kernel_basis(kernels, n_components=10, subtract_mean=False).shape == (6, 7, 7)
    # eigen-kernels were scaled to a +1 extreme: the renormalised ones keep a positive extreme
    for b in basis[1:]:
        assert b.flat[np.argmax(np.abs(b))] > 0
    # first eigen-kernel is the leading right-singular vector of the mean-subtracted data
    x = (kernels / kernels.sum(axis=(1, 2), keepdims=True)).reshape(6, -1)
    x = x - x.mean(axis=0)
    v0 = np.linalg.svd(x, full_matrices=False)[2][0]
    assert abs(abs(basis[1].ravel() @ v0) - 1.0) < 1e-12


def test_pca_drops_nan_images_and_errors():
    a, c = _two_images(9)
    kernels = np.stack([a, c, 0.5 * a + 0.5 * c, a * np.nan])
    basis = pca_kernel_basis(kernels, n_components=2)
    clean = pca_kernel_basis(kernels[:3], n_components=2)
    np.testing.assert_allclose(basis, clean, atol=1e-15)
    with pytest.raises(ValueError, match="sum to zero"):
        pca_kernel_basis(np.stack([a, a]), n_components=3)  # mean (a + a) / 2 == a exactly
    with pytest.raises(ValueError, match="finite"):
        pca_kernel_basis(np.full((2, 5, 5), np.nan), n_components=3)
    with pytest.raises(ValueError, match="n_components"):
        pca_kernel_basis(kernels, n_components=0)
    # a single image: afw's special case (eigenvalue 1); the basis is the image itself
    single = pca_kernel_basis(3.0 * a[None], n_components=5)
    np.testing.assert_allclose(single, a[None], atol=1e-15)
