"""Alard-Lupton least-squares core (jaxdiff.core.kernel_fit): stamp fits, solver, spatial system.

References are independent: scipy correlations, explicit numpy normal equations, the explicit
``A_c^T M_c A_c`` construction of the spatial normal equations (ip_diffim ``SpatialKernelSolution``;
Alard 2000, eqs. 2-4), and HOTPANTS' coefficients for LSST's compareToHotpants data (ip_diffim
``tests/test_compareToHotpants.py``; read from ../shared when present; the GPL data is never copied
here).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import correlate2d

from jaxdiff.core import kernel_fit as kf
from jaxdiff.core._results import Status, status_message
from jaxdiff.core.kernel_basis import alard_lupton_basis, alard_lupton_separable, delta_function_basis
from jaxdiff.core.spatial import SpatialRange


def _gauss(w, sx, sy=None, dx=0.0, dy=0.0):
    sy = sx if sy is None else sy
    h = w // 2
    v, u = np.mgrid[-h : h + 1, -h : h + 1]
    return np.exp(-0.5 * (((u - dx) / sx) ** 2 + ((v - dy) / sy) ** 2))


@pytest.fixture(scope="module")
def al_basis():
    sig, deg = (0.8, 1.6, 3.2), (2, 2, 1)
    images = alard_lupton_basis(5, sig, deg)
    return images, alard_lupton_separable(5, sig, deg)


@pytest.fixture(scope="module")
def stamps():
    """Five 31x31 stamps: random template, science = K_true * T + 2.5 exactly (afw correlation)."""
    rng = np.random.default_rng(11)
    n, s, w = 5, 31, 11
    kt = _gauss(w, 1.7, 1.4, 0.3, -0.2)
    kt *= 1.3 / kt.sum()
    t = rng.normal(size=(n, s, s)) * 3 + 1
    i = np.zeros_like(t)
    for c in range(n):
        i[c, 5:-5, 5:-5] = correlate2d(t[c], kt, mode="valid") + 2.5
    return t, i, kt


def test_delta_basis_recovers_kernel_exactly(stamps, float_dtype, x64):
    t, i, kt = stamps
    basis = kf.make_fit_basis(delta_function_basis(11), dtype=float_dtype)
    v = np.ones_like(t)
    f = kf.fit_stamps(*(jnp.asarray(a, float_dtype) for a in (t, i, v, v)), basis, fit_background=True)
    tol = 1e-9 if x64 else 2e-3
    assert np.all(np.asarray(f.status) == 0)
    np.testing.assert_allclose(np.asarray(f.kernel), np.broadcast_to(kt, f.kernel.shape), atol=tol * kt.max())
    np.testing.assert_allclose(np.asarray(f.kernel_sum), 1.3, rtol=tol)
    np.testing.assert_allclose(np.asarray(f.background), 2.5, rtol=tol * 10)


def test_separable_design_equals_patches(al_basis, stamps, float_dtype, x64):
    images, sep = al_basis
    t = jnp.asarray(stamps[0][0], float_dtype)
    fast = kf.stamp_design(t, kf.make_fit_basis(images, sep, dtype=float_dtype))
    # independent: scipy correlation of each basis image, good region, row-major
    ref = np.stack([correlate2d(stamps[0][0], b, mode="valid").ravel() for b in images], axis=1)
    np.testing.assert_allclose(np.asarray(fast), ref, atol=(1e-10 if x64 else 1e-4) * np.abs(ref).max())


def test_normal_equations_match_numpy(al_basis, stamps, float_dtype, x64):
    """M, b, the constant-variance weight and the solution against a float64 numpy build (StaticKernelSolution)."""
    images, sep = al_basis
    t, i, _ = stamps
    rng = np.random.default_rng(3)
    vt = rng.uniform(1, 3, t.shape)
    vs = rng.uniform(2, 4, t.shape)
    basis = kf.make_fit_basis(images, sep, dtype=float_dtype)
    for const in (True, False):
        f = kf.fit_stamp(*(jnp.asarray(a[0], float_dtype) for a in (t, i, vt, vs)), basis, fit_background=True,
                         constant_variance=const)
        c = np.stack([correlate2d(t[0], b, mode="valid").ravel() for b in images] + [np.ones(21 * 21)], axis=1)
        v = vt[0] + vs[0]
        w = np.full(c.shape[0], 1 / np.median(v)) if const else 1 / v[5:-5, 5:-5].ravel()
        m = c.T @ (c * w[:, None])
        b = c.T @ (w * i[0, 5:-5, 5:-5].ravel())
        sol = np.linalg.solve(m, b)
        rt = 1e-9 if x64 else 2e-3
        np.testing.assert_allclose(np.asarray(f.normal_matrix), m, rtol=rt, atol=rt * np.abs(m).max())
        np.testing.assert_allclose(np.asarray(f.normal_vector), b, rtol=rt, atol=rt * np.abs(b).max())
        np.testing.assert_allclose(np.asarray(f.coefficients), sol[:-1], atol=(1e-8 if x64 else 5e-3) * np.abs(sol).max())
        if const:
            assert float(f.weight_variance) == pytest.approx(np.median(v), rel=1e-6)


def test_vmap_equals_loop_and_no_recompile(al_basis, stamps, float_dtype, x64, monkeypatch):
    images, sep = al_basis
    t, i, _ = stamps
    v = np.ones_like(t)
    basis = kf.make_fit_basis(images, sep, dtype=float_dtype)
    args = [jnp.asarray(a, float_dtype) for a in (t, i, v, v)]
    batched = kf.fit_stamps(*args, basis, fit_background=True)
    for c in range(t.shape[0]):
        one = kf.fit_stamp(*(a[c] for a in args), basis, fit_background=True)
        np.testing.assert_allclose(np.asarray(batched.coefficients[c]), np.asarray(one.coefficients),
                                   rtol=0, atol=(1e-10 if x64 else 2e-4) * float(jnp.abs(one.coefficients).max()))
    # count traces: fit_stamps calls fit_stamp (a module global) only while it is being traced
    traces = []
    original = kf.fit_stamp

    def counting(*a, **k):
        traces.append(1)
        return original(*a, **k)

    monkeypatch.setattr(kf, "fit_stamp", counting)
    kf.fit_stamps(*(a * 1.5 for a in args), basis, fit_background=True)
    kf.fit_stamps(*(a * 0.5 + 1 for a in args), basis, fit_background=True)
    assert traces == []  # same shapes and static arguments as above: no retrace
    kf.fit_stamps(*args, basis, fit_background=True, max_condition=123456789.0)  # new static argument: one trace
    assert len(traces) == 1


def test_chunked_fit_equals_vmapped(al_basis, stamps, float_dtype, x64):
    images, sep = al_basis
    t, i, _ = stamps
    v = np.ones_like(t)
    basis = kf.make_fit_basis(images, sep, dtype=float_dtype)
    args = [jnp.asarray(a, float_dtype) for a in (t, i, v, v)]
    a = kf.fit_stamps(*args, basis, fit_background=True)
    b = kf.fit_stamps(*args, basis, fit_background=True, batch_size=2)
    np.testing.assert_allclose(np.asarray(a.coefficients), np.asarray(b.coefficients), rtol=0,
                               atol=(1e-10 if x64 else 2e-4) * float(jnp.abs(a.coefficients).max()))


def test_solver_status_singular_and_nonfinite(float_dtype):
    m = np.diag([4.0, 1.0, 0.0])
    b = np.array([8.0, 2.0, 0.0])
    res = kf.solve_normal_equations(jnp.asarray(m, float_dtype), jnp.asarray(b, float_dtype))
    assert isinstance(res, kf.LinearSolution) and len(res) == 4
    assert int(res.status) & kf.STATUS_SINGULAR
    assert int(res.status) == Status.singular
    np.testing.assert_allclose(np.asarray(res.solution), [2.0, 2.0, 0.0], rtol=1e-6)
    assert not np.isfinite(float(res.condition))
    np.testing.assert_allclose(np.asarray(res.inverse), np.diag([0.25, 1.0, 0.0]), rtol=1e-6, atol=1e-7)
    m2 = np.array([[2.0, np.nan], [np.nan, 1.0]])
    res = kf.solve_normal_equations(jnp.asarray(m2, float_dtype), jnp.ones(2, float_dtype))
    assert int(res.status) & kf.STATUS_NONFINITE
    assert int(res.status) == Status.nonfinite_input
    assert np.all(np.isfinite(np.asarray(res.solution)))
    # ill-conditioned flag
    m3 = np.array([[1.0, 1.0 - 1e-9], [1.0 - 1e-9, 1.0]])  # ill-conditioned whatever the column scaling
    res = kf.solve_normal_equations(jnp.asarray(m3, float_dtype), jnp.ones(2, float_dtype), max_condition=1e6)
    assert int(res.status) & (kf.STATUS_ILL_CONDITIONED | kf.STATUS_SINGULAR)
    assert "maxConditionNumber" in status_message(res.status) or "singular" in status_message(res.status)


@pytest.mark.parametrize("solver", ["normal", "triangular"])
def test_solver_inverse_matches_numpy(solver, float_dtype, x64):
    """The (pseudo-)inverse returned with every solution equals the float64 numpy inverse."""
    rng = np.random.default_rng(21)
    c = rng.normal(size=(40, 5)) * np.array([1.0, 10.0, 0.1, 3.0, 1.0])
    y = rng.normal(size=40)
    m = c.T @ c
    if solver == "normal":
        res = kf.solve_normal_equations(jnp.asarray(m, float_dtype), jnp.asarray(c.T @ y, float_dtype))
    else:
        q, r = np.linalg.qr(c)
        res = kf.solve_triangular_system(jnp.asarray(r, float_dtype), jnp.asarray(q.T @ y, float_dtype))
    tol = 1e-10 if x64 else 2e-4
    assert int(res.status) == Status.successful
    ref = np.linalg.inv(m)
    np.testing.assert_allclose(np.asarray(res.inverse), ref, rtol=tol, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(res.solution), np.linalg.solve(m, c.T @ y), rtol=tol * 10,
                               atol=tol * 10 * np.abs(np.linalg.solve(m, c.T @ y)).max())


def test_zero_variance_flagged(al_basis, stamps, float_dtype):
    images, sep = al_basis
    t, i, _ = stamps
    v = np.ones_like(t[0])
    v0 = v.copy()
    v0[15, 15] = 0.0
    f = kf.fit_stamp(*(jnp.asarray(a, float_dtype) for a in (t[0], i[0], v0, v * 0)), kf.make_fit_basis(images, sep, dtype=float_dtype),
                     constant_variance=False)
    assert int(f.status) & kf.STATUS_BAD_VARIANCE
    assert "variance" in status_message(f.status)


def _explicit_spatial(mats, vecs, px, py, nb, order, bg_order, fit_bg, const_first):
    """A_c built element by element (SpatialKernelSolution), polynomial model, summed in numpy."""
    def terms(x, y, o):
        return np.array([x ** (d - k) * y ** k for d in range(o + 1) for k in range(d + 1)])

    nkt = (order + 1) * (order + 2) // 2
    nbt = (bg_order + 1) * (bg_order + 2) // 2 if fit_bg else 0
    nt = (nb - 1) * nkt + 1 + nbt if const_first else nb * nkt + nbt
    msp = np.zeros((nt, nt))
    bsp = np.zeros(nt)
    for q, w, x, y in zip(mats, vecs, px, py, strict=True):
        p = terms(x, y, order)
        a = np.zeros((q.shape[0], nt))
        col = 0
        for m in range(nb):
            if m == 0 and const_first:
                a[0, 0] = 1.0
                col = 1
            else:
                a[m, col : col + nkt] = p
                col += nkt
        if fit_bg:
            a[nb, col : col + nbt] = terms(x, y, bg_order)
        msp += a.T @ q @ a
        bsp += a.T @ w
    return msp, bsp


@pytest.mark.parametrize("const_first,fit_bg", [(True, True), (False, True), (True, False)])
def test_spatial_system_equals_explicit(const_first, fit_bg, float_dtype, x64):
    rng = np.random.default_rng(5)
    nb, n = 4, 9
    ns = nb + int(fit_bg)
    g = rng.normal(size=(n, ns, ns))
    mats = np.einsum("cij,ckj->cik", g, g) + np.eye(ns)
    vecs = rng.normal(size=(n, ns))
    px, py = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    valid = np.ones(n, bool)
    valid[-2:] = False
    msp, bsp = kf.spatial_system(
        jnp.asarray(mats, float_dtype), jnp.asarray(vecs, float_dtype), jnp.asarray(px, float_dtype),
        jnp.asarray(py, float_dtype), jnp.asarray(valid), n_basis=nb, kernel_order=2, bg_order=1,
        fit_background=fit_bg, constant_first_term=const_first, model="polynomial", xy_range=None,
    )
    ref_m, ref_b = _explicit_spatial(mats[valid], vecs[valid], px[valid], py[valid], nb, 2, 1, fit_bg, const_first)
    tol = 1e-10 if x64 else 1e-4
    np.testing.assert_allclose(np.asarray(msp), ref_m, atol=tol * np.abs(ref_m).max())
    np.testing.assert_allclose(np.asarray(bsp), ref_b, atol=tol * np.abs(ref_b).max())


def test_spatial_solution_recovers_linear_kernel_variation(float_dtype, x64):
    """Stamps made with a kernel whose coefficients vary linearly: the spatial solve recovers them."""
    rng = np.random.default_rng(7)
    images = alard_lupton_basis(5, (1.0, 2.0), (1, 1))
    nb = images.shape[0]
    true = np.zeros((nb, 3))
    true[0, 0] = 1.1
    true[1:, 0] = rng.normal(0, 0.05, nb - 1)
    true[1:, 1] = rng.normal(0, 0.02, nb - 1)
    true[2, 2] = 0.0  # an explicit zero term
    xr = SpatialRange(-0.5, -0.5, 255.5, 255.5)
    n, s = 12, 31
    xs, ys = rng.uniform(10, 245, n), rng.uniform(10, 245, n)
    t = rng.normal(size=(n, s, s)) * 3 + 5
    sci = np.zeros_like(t)
    for c in range(n):
        xp = (xs[c] - 127.5) * 2 / 256
        yp = (ys[c] - 127.5) * 2 / 256
        phi = np.array([1, xp, yp])
        k = np.tensordot(true @ phi, images, axes=1)
        sci[c, 5:-5, 5:-5] = correlate2d(t[c], k, mode="valid")
    v = np.ones_like(t)
    fits = kf.fit_stamps(*(jnp.asarray(a, float_dtype) for a in (t, sci, v, v)), kf.make_fit_basis(images, dtype=float_dtype))
    sol = kf.solve_spatial(fits.r_factor, fits.r_rhs, jnp.asarray(xs, float_dtype), jnp.asarray(ys, float_dtype),
                           jnp.ones(n, bool), n_basis=nb, kernel_order=1, bg_order=0, fit_background=False,
                           constant_first_term=True, model="chebyshev1", xy_range=xr)
    assert int(sol.status) == 0
    tol = 1e-8 if x64 else 2e-3
    np.testing.assert_allclose(np.asarray(sol.kernel_coeffs), true, atol=tol)
    # the reported covariance is the inverse of the spatial normal matrix, built here in float64 numpy:
    # M_c = C_c^T W C_c (C_c = basis correlations, W = 1 / median(V_T + V_I) = 1/2) and
    # sum_c A_c^T M_c A_c with Chebyshev T_0 = 1, T_1(x) = x at the mapped centres
    mats = []
    for c in range(n):
        cc = np.stack([correlate2d(t[c], b, mode="valid").ravel() for b in images], axis=1)
        mats.append(cc.T @ cc / 2.0)
    xp, yp = (xs - 127.5) * 2 / 256, (ys - 127.5) * 2 / 256
    msp, _ = _explicit_spatial(np.array(mats), np.zeros((n, nb)), xp, yp, nb, 1, 0, False, True)
    cov_ref = np.linalg.inv(msp)
    cov = np.asarray(sol.covariance, np.float64)
    ctol = 1e-10 if x64 else 2e-5
    np.testing.assert_allclose(cov, cov_ref, rtol=ctol, atol=ctol * np.abs(np.diag(cov_ref)).max())
    np.testing.assert_allclose(np.diag(cov), np.diag(cov_ref), rtol=ctol)


def test_check_grads_through_convolve_and_solve(al_basis, stamps, x64):
    if not x64:
        pytest.skip("finite-difference gradient checks run in float64")
    from jax.test_util import check_grads

    images, sep = al_basis
    t, i, _ = stamps
    basis = kf.make_fit_basis(images, sep, dtype=jnp.float64)
    v = jnp.ones((31, 31))

    def loss(tt, ii):
        f = kf.fit_stamp(tt, ii, v, v, basis, fit_background=True)
        d, _ = kf.stamp_difference(tt, ii, v, v, f.kernel, f.background)
        return jnp.sum(d**2) + f.kernel_sum

    check_grads(jax.jit(loss), (jnp.asarray(t[0]), jnp.asarray(i[0] + np.random.default_rng(0).normal(size=(31, 31)))), order=1,
                modes=["rev"], atol=1e-4, rtol=1e-4)


def test_residual_stats_match_numpy(float_dtype, x64):
    rng = np.random.default_rng(9)
    d = rng.normal(0.3, 2.0, (20, 20))
    var = rng.uniform(1, 5, (20, 20))
    usable = rng.uniform(size=(20, 20)) > 0.2
    st = kf.residual_stats(jnp.asarray(d, float_dtype), jnp.asarray(var, float_dtype), jnp.asarray(usable))
    z = (d / np.sqrt(var))[usable]
    tol = 1e-10 if x64 else 1e-5
    assert float(st.mean) == pytest.approx(z.mean(), rel=tol, abs=tol)
    assert float(st.rms) == pytest.approx(z.std(ddof=1), rel=tol * 10)
    core = kf.residual_stats(jnp.asarray(d, float_dtype), jnp.asarray(var, float_dtype), jnp.ones((20, 20), bool), core_radius=3)
    assert int(core.npix) == 49


# ------------------------------------------------------------------------------------------
# HOTPANTS cross-check (ip_diffim tests/test_compareToHotpants.py): LSST's data, HOTPANTS coefficients
HP_SINGLE = [0.959086, -0.000344, -0.197758, 0.000019, -0.000172, 0.000053, 0.000018, -0.192776, 0.000000,
             0.000001, 0.602642]
HP_FOUR = [0.969559, -0.000223, -0.198374, 0.000012, -0.000010, 0.000036, -0.000004, -0.206751, 0.000012,
           0.000004, 0.452304]
HP_FOUR_VAR = [[0.969559, 0.0, 0.0], [-0.000082, -0.000620, 0.000185], [-0.197749, 0.001418, -0.003321],
               [0.000002, 0.000049, -0.000016], [0.000211, -0.000283, -0.000397], [0.000034, 0.000002, 0.000006],
               [-0.000013, 0.000041, -0.000010], [-0.220238, 0.028395, 0.013148], [0.000019, -0.000025, 0.000003],
               [0.000003, 0.000000, 0.000005]]
HP_BG_FOUR = 0.452304
# sign flips between HOTPANTS' convolution and afw's correlation for odd basis terms
PARITY = [1, -1, 1, -1, -1, 1, -1, 1, -1, -1, 1]
# HOTPANTS' basis order and normalisation relative to LSST's list (one Gaussian sigma 3, degree 3, 19x19)
HP_ORDER = [0, 2, 5, 9, 1, 4, 8, 3, 7, 6]
HP_SCALING = [1.0, 8.866037e-02, 1.218095e01, 5.099318e-03, 8.866037e-02, 4.179772e-02, 1.138120e-02, 1.218095e01,
              1.138120e-02, 5.099318e-03]
HP_CENTRES = [(32, 32), (96, 32), (160, 32), (96, 95), (31, 96), (160, 96), (96, 160), (160, 160), (32, 160)]


@pytest.fixture(scope="module")
def hotpants(request):
    from pathlib import Path

    from conftest import _shared_dir

    path = Path(_shared_dir()) / "data" / "lsst_ipdiffim_hotpants"
    if not (path / "scienceMI.fits").exists():
        pytest.skip(f"LSST compareToHotpants data not found in {path}")
    from jaxdiff.image.fits import readExposure

    s = readExposure(path / "scienceMI.fits")
    t = readExposure(path / "templateMI.fits")
    base = alard_lupton_basis(9, (3.0,), (3,))
    basis = np.stack([base[o] / sc for o, sc in zip(HP_ORDER, HP_SCALING, strict=True)])
    return t, s, basis


def _hp_fit(hotpants, keep, order, dtype):
    t, s, basis = hotpants
    w = s.getWidth()
    h = s.getHeight()
    cents = [(x, y) for x, y in HP_CENTRES if keep(x, y)]
    arrs = []
    for a in (t.image.array, s.image.array, t.variance.array, s.variance.array):
        a = np.asarray(a, np.float64)
        arrs.append(np.stack([a[y - 24 : y + 25, x - 24 : x + 25] for x, y in cents]))
    fits = kf.fit_stamps(*(jnp.asarray(a, dtype) for a in arrs), kf.make_fit_basis(basis, dtype=dtype),
                         fit_background=True, constant_variance=True)
    px = np.array([(x - 0.5 * w) / (0.5 * w) for x, _ in cents])
    py = np.array([(y - 0.5 * h) / (0.5 * h) for _, y in cents])
    sol = kf.solve_spatial(fits.r_factor, fits.r_rhs, jnp.asarray(px, dtype), jnp.asarray(py, dtype),
                           jnp.ones(len(cents), bool), n_basis=basis.shape[0], kernel_order=order, bg_order=0,
                           fit_background=True, constant_first_term=True, model="polynomial", xy_range=None)
    return fits, sol


def test_hotpants_single_stamp(hotpants, float_dtype, x64):
    fits, sol = _hp_fit(hotpants, lambda x, y: x > 150 and y > 150, 0, float_dtype)
    tol = 5e-6 if x64 else 2e-4
    single = np.concatenate([np.asarray(fits.coefficients[0]), [float(fits.background[0])]])
    np.testing.assert_allclose(single, np.array(HP_SINGLE) * PARITY, atol=tol)
    spatial = np.concatenate([np.asarray(sol.kernel_coeffs)[:, 0], np.asarray(sol.background_coeffs)])
    np.testing.assert_allclose(spatial, np.array(HP_SINGLE) * PARITY, atol=tol)


def test_hotpants_four_stamps(hotpants, float_dtype, x64):
    _, sol = _hp_fit(hotpants, lambda x, y: x > 90 and y > 90, 0, float_dtype)
    tol = 5e-6 if x64 else 2e-4
    np.testing.assert_allclose(np.asarray(sol.kernel_coeffs)[:, 0], np.array(HP_FOUR[:-1]) * PARITY[:-1], atol=tol)
    assert float(sol.background_coeffs[0]) == pytest.approx(HP_BG_FOUR, abs=tol)


def test_hotpants_four_stamps_linear_variation(hotpants, float_dtype, x64):
    _, sol = _hp_fit(hotpants, lambda x, y: x > 90 and y > 90, 1, float_dtype)
    tol = 5e-6 if x64 else 5e-4
    ours = np.asarray(sol.kernel_coeffs)
    hp = np.array(HP_FOUR_VAR) * np.array(PARITY[:-1])[:, None]
    # HOTPANTS orders the linear terms (y, x); afw (x, y)
    np.testing.assert_allclose(ours[:, 0], hp[:, 0], atol=tol)
    np.testing.assert_allclose(ours[:, 2], hp[:, 1], atol=tol)
    np.testing.assert_allclose(ours[:, 1], hp[:, 2], atol=tol)
    assert float(sol.background_coeffs[0]) == pytest.approx(HP_BG_FOUR, abs=tol)
