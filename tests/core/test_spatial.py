"""afw spatial functions (``jaxdiff.core.spatial``) against numpy's polynomial and Chebyshev series."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import chebyshev as npcheb
from numpy.polynomial import polynomial as nppoly

from jaxdiff.core.spatial import (
    SpatialRange,
    n_spatial_terms,
    spatial_basis,
    spatial_exponents,
    spatial_range_from_bbox,
)
from jaxdiff.image import Box2I


def _coefficient_matrix(params, order):
    """numpy's 2-D coefficient layout ``c[i, j]`` (x^i y^j) from afw-ordered parameters."""
    c = np.zeros((order + 1, order + 1))
    for p, (i, j) in zip(params, spatial_exponents(order), strict=True):
        c[i, j] = p
    return c


@pytest.fixture(scope="module")
def points(float_dtype):
    rng = np.random.default_rng(11)
    x = rng.uniform(10.0, 90.0, 40)
    y = rng.uniform(-20.0, 60.0, 40)
    return x.astype(float_dtype), y.astype(float_dtype)


def test_term_count_and_afw_order():
    assert [n_spatial_terms(k) for k in range(5)] == [1, 3, 6, 10, 15]
    # afw PolynomialFunction2 order: by total degree, then decreasing power of x
    assert spatial_exponents(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    assert spatial_exponents(3)[6:] == [(3, 0), (2, 1), (1, 2), (0, 3)]
    for k in range(6):
        exps = spatial_exponents(k)
        assert len(exps) == len(set(exps)) == n_spatial_terms(k)
        assert all(i + j <= k for i, j in exps)
    with pytest.raises(ValueError, match="spatial order must be >= 0"):
        n_spatial_terms(-1)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_polynomial_matches_numpy_polyval2d(points, order, rtol):
    x, y = points
    params = np.random.default_rng(order).normal(size=n_spatial_terms(order))
    phi = np.asarray(spatial_basis(jnp.asarray(x), jnp.asarray(y), order, model="polynomial"))
    assert phi.dtype == x.dtype
    assert phi.shape == (x.size, n_spatial_terms(order))
    # each column is one monomial ...
    for q, (i, j) in enumerate(spatial_exponents(order)):
        np.testing.assert_allclose(phi[:, q], x.astype(np.float64) ** i * y.astype(np.float64) ** j, rtol=rtol * 10)
    # ... and phi @ p is numpy's 2-D power series
    ref = nppoly.polyval2d(x.astype(np.float64), y.astype(np.float64), _coefficient_matrix(params, order))
    scale = np.abs(phi.astype(np.float64)) @ np.abs(params)  # cancellation-free size of the sum
    np.testing.assert_array_less(np.abs(phi.astype(np.float64) @ params - ref), rtol * 10 * scale + 1e-300)


@pytest.mark.parametrize("order", [1, 2, 4])
def test_chebyshev_matches_numpy_chebval2d(points, order, rtol):
    x, y = points
    bbox = Box2I((10, -20), (81, 81))  # x 10..90, y -20..60 inclusive
    r = spatial_range_from_bbox(bbox)
    params = np.random.default_rng(10 + order).normal(size=n_spatial_terms(order))
    phi = np.asarray(spatial_basis(jnp.asarray(x), jnp.asarray(y), order, model="chebyshev1", xy_range=r))
    assert phi.dtype == x.dtype
    xs = (x.astype(np.float64) - 0.5 * (r.x_min + r.x_max)) * 2.0 / (r.x_max - r.x_min)
    ys = (y.astype(np.float64) - 0.5 * (r.y_min + r.y_max)) * 2.0 / (r.y_max - r.y_min)
    assert np.all(np.abs(xs) <= 1) and np.all(np.abs(ys) <= 1)
    ref = npcheb.chebval2d(xs, ys, _coefficient_matrix(params, order))
    atol = rtol * 0.1  # values and terms are O(1) on [-1, 1]
    np.testing.assert_allclose(phi.astype(np.float64) @ params, ref, rtol=0, atol=atol * 10)
    # an independent oracle for one column: T_i(cos t) T_j(cos u) = cos(i t) cos(j u)
    for q, (i, j) in enumerate(spatial_exponents(order)):
        np.testing.assert_allclose(phi[:, q], np.cos(i * np.arccos(xs)) * np.cos(j * np.arccos(ys)),
                                   rtol=0, atol=atol)


def test_box2d_range_and_chebyshev_endpoints(float_dtype):
    bbox = Box2I((10, 20), (100, 50))
    r = spatial_range_from_bbox(bbox)
    assert r == SpatialRange(9.5, 19.5, 109.5, 69.5)  # afw Box2D(Box2I): pixel edges
    # the box edges map onto -1 and +1: T_n(+-1) = (+-1)^n
    x = jnp.asarray([r.x_min, r.x_max], float_dtype)
    y = jnp.asarray([r.y_max, r.y_min], float_dtype)
    phi = np.asarray(spatial_basis(x, y, 3, model="chebyshev1", xy_range=r))
    expected = np.array([[(-1.0) ** i * 1.0**j for i, j in spatial_exponents(3)],
                         [1.0**i * (-1.0) ** j for i, j in spatial_exponents(3)]])
    np.testing.assert_allclose(phi, expected, atol=1e-6)


def test_broadcasting_and_integer_inputs(x64):
    x = jnp.arange(3)[:, None]
    y = jnp.arange(4)[None, :]
    phi = spatial_basis(x, y, 2, model="polynomial")
    assert phi.shape == (3, 4, 6)
    assert phi.dtype == (jnp.float64 if x64 else jnp.float32)  # integers become the default float
    xx, yy = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    np.testing.assert_array_equal(np.asarray(phi[..., 4]), xx * yy)  # the x y term
    np.testing.assert_array_equal(np.asarray(phi[..., 5]), yy**2)


def test_errors():
    with pytest.raises(ValueError, match="unknown spatial model"):
        spatial_basis(1.0, 1.0, 1, model="legendre")
    with pytest.raises(ValueError, match="needs xy_range"):
        spatial_basis(1.0, 1.0, 1, model="chebyshev1")
    with pytest.raises(ValueError, match="is empty"):
        spatial_basis(1.0, 1.0, 1, model="chebyshev1", xy_range=SpatialRange(0.0, 0.0, 0.0, 5.0))


def test_jit_and_gradient_match_numpy_derivatives(points, x64, rtol):
    x, y = points
    order = 3
    r = SpatialRange(5.0, -25.0, 95.0, 65.0)
    params = np.random.default_rng(5).normal(size=n_spatial_terms(order)).astype(x.dtype)

    def f(xv, yv, model):
        return spatial_basis(xv, yv, order, model=model, xy_range=r) @ jnp.asarray(params)

    for model in ("polynomial", "chebyshev1"):
        eager = np.asarray(f(jnp.asarray(x), jnp.asarray(y), model))
        jitted = np.asarray(jax.jit(functools.partial(f, model=model))(jnp.asarray(x), jnp.asarray(y)))
        np.testing.assert_allclose(jitted, eager, rtol=rtol * 10, atol=rtol)
    if not x64:
        pytest.skip("derivative comparison needs float64")
    c = _coefficient_matrix(params.astype(np.float64), order)

    def dfdx(model):
        return jax.vmap(jax.grad(functools.partial(f, model=model)))(jnp.asarray(x), jnp.asarray(y))

    # polynomial: d/dx of the power series
    got = np.asarray(dfdx("polynomial"))
    np.testing.assert_allclose(got, nppoly.polyval2d(x, y, nppoly.polyder(c, axis=0)), rtol=1e-10)
    # Chebyshev: chain rule through the map onto [-1, 1]
    sx = 2.0 / (r.x_max - r.x_min)
    xs = (x - 0.5 * (r.x_min + r.x_max)) * sx
    ys = (y - 0.5 * (r.y_min + r.y_max)) * 2.0 / (r.y_max - r.y_min)
    got = np.asarray(dfdx("chebyshev1"))
    np.testing.assert_allclose(got, sx * npcheb.chebval2d(xs, ys, npcheb.chebder(c, axis=0)), rtol=1e-10, atol=1e-12)
