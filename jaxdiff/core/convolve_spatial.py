"""Correlation with spatially varying linear-combination kernels (afw ``LinearCombinationKernel``).

:func:`spatially_varying_correlate` and :func:`spatially_varying_correlate_variance` apply a
kernel ``K(X, Y) = sum_s phi_s(X, Y) K_s`` with afw spatial functions ``phi_s``
(:mod:`jaxdiff.core.spatial`) exactly per pixel, by linearity: one fixed-kernel correlation per
term kernel (:mod:`jaxdiff.core.convolve_fixed`), weighted by separable tables of the spatial
functions.  The variance regroups the products ``phi_s phi_t`` into terms of twice the degree
(:func:`_square_mixing`).  Conventions (afw cross-correlation, edge band) as in
:mod:`jaxdiff.core.convolve_fixed`; re-exported by :mod:`jaxdiff.core.convolve`.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ._numerics import PRECISION
from .convolve_fixed import (
    _check_image_kernel,
    _direct_valid,
    _fft_shape,
    _fft_valid_from_hat,
    _pad_band,
    _rfft_padded,
    choose_method,
    good_box_slices,
)
from .spatial import SPATIAL_MODELS, SpatialRange, n_spatial_terms, spatial_exponents

__all__ = [
    "spatially_varying_correlate",
    "spatially_varying_correlate_variance",
]


def _axis_table(coord, order, model, lo, hi):
    """``(n, order + 1)`` table of ``T_k(coord')`` (chebyshev1, mapped from ``[lo, hi]``) or ``coord**k``.

    Same mapping and recurrence as :func:`jaxdiff.core.spatial.spatial_basis`, one axis at a time.
    """
    if model == "chebyshev1":
        t = (coord - 0.5 * (lo + hi)) * (2.0 / (hi - lo))
        values = [jnp.ones_like(t)]
        if order >= 1:
            values.append(t)
        for _ in range(2, order + 1):
            values.append(2.0 * t * values[-1] - values[-2])
    else:
        values = [jnp.ones_like(coord)]
        for _ in range(order):
            values.append(values[-1] * coord)
    return jnp.stack(values, axis=-1)


def _term_weights(order, model, xy_range, xy0, rows, cols, dtype):
    """Separable spatial weights of the good region: ``phi_s(X, Y) = wy[s, r] * wx[s, c]``.

    ``rows``/``cols`` are the good-region slices; returns ``wy (n, Hv)``, ``wx (n, Wv)``.
    """
    x = xy0[0] + jnp.arange(cols.start, cols.stop, dtype=dtype)
    y = xy0[1] + jnp.arange(rows.start, rows.stop, dtype=dtype)
    r = xy_range if xy_range is not None else (0.0, 0.0, 1.0, 1.0)
    tx = _axis_table(x, order, model, r[0], r[2])
    ty = _axis_table(y, order, model, r[1], r[3])
    exps = spatial_exponents(order)
    ix = np.array([i for i, _ in exps])
    iy = np.array([j for _, j in exps])
    return ty[:, iy].T, tx[:, ix].T


@functools.lru_cache(maxsize=32)
def _square_mixing(order: int, model: str) -> np.ndarray:
    """``C[q, s, t]`` with ``phi_s * phi_t = sum_q C[q, s, t] psi_q``, ``psi`` of degree ``2 * order``.

    Products of afw terms are again afw terms of twice the degree: ``x^a x^c = x^(a+c)`` and
    ``T_a T_c = (T_(a+c) + T_|a-c|) / 2``.
    """
    exps = spatial_exponents(order)
    index = {e: q for q, e in enumerate(spatial_exponents(2 * order))}
    n = len(exps)
    mix = np.zeros((len(index), n, n))

    def product_1d(a, c):
        if model == "chebyshev1":
            return [(a + c, 0.5), (abs(a - c), 0.5)]
        return [(a + c, 1.0)]

    for s, (a, b) in enumerate(exps):
        for t, (c, d) in enumerate(exps):
            for i, wi in product_1d(a, c):
                for j, wj in product_1d(b, d):
                    mix[index[(i, j)], s, t] += wi * wj
    mix.flags.writeable = False
    return mix


def _spatial_accumulate(image, kernels, wy, wx, method):
    """Accumulate ``sum_s wy[s][:, None] * (K_s star image)_good * wx[s][None, :]``, a term per scan step."""
    kh, kw = kernels.shape[1:]
    rows, cols = good_box_slices(image.shape, (kh, kw))
    if method == "fft":
        fft_shape = _fft_shape(image.shape)
        image_hat = _rfft_padded(image, fft_shape)  # forward transform once

        def term(k):
            return _fft_valid_from_hat(image_hat, k, image.shape, fft_shape)
    else:

        def term(k):
            return _direct_valid(image, k, method)

    def body(acc, xs):
        k, a, b = xs
        return acc + a[:, None] * term(k) * b[None, :], None

    acc0 = jnp.zeros((rows.stop - rows.start, cols.stop - cols.start), image.dtype)
    acc, _ = lax.scan(body, acc0, (kernels, wy, wx))
    return acc


def _sv_image_valid(image, term_kernels, xy0, *, order, model, xy_range, method):
    rows, cols = good_box_slices(image.shape, term_kernels.shape[1:])
    wy, wx = _term_weights(order, model, xy_range, xy0, rows, cols, image.dtype)
    return _spatial_accumulate(image, term_kernels, wy, wx, method)


def _sv_variance_valid(variance, term_kernels, xy0, *, order, model, xy_range, method):
    """``sum_{s,t} phi_s phi_t (K_s K_t) star V`` regrouped as ``sum_q psi_q (L_q star V)``."""
    rows, cols = good_box_slices(variance.shape, term_kernels.shape[1:])
    mix = jnp.asarray(_square_mixing(order, model), variance.dtype)
    sq_kernels = jnp.einsum("qst,sij,tij->qij", mix, term_kernels, term_kernels, precision=PRECISION)
    wy, wx = _term_weights(2 * order, model, xy_range, xy0, rows, cols, variance.dtype)
    return _spatial_accumulate(variance, sq_kernels, wy, wx, method)


_SV_STATIC = ("order", "model", "xy_range", "method")


def _sv_valid(plane, term_kernels, xy0, *, order, model, xy_range, method, kind):
    """Good region of the image plane (``kind="image"``, kernel ``K``) or the variance plane (``K**2``)."""
    valid_fn = _sv_image_valid if kind == "image" else _sv_variance_valid
    return valid_fn(plane, term_kernels, xy0, order=order, model=model, xy_range=xy_range, method=method)


@functools.partial(jax.jit, static_argnames=(*_SV_STATIC, "kind"))
def _sv_same_jit(plane, term_kernels, xy0, fill, *, order, model, xy_range, method, kind):
    valid = _sv_valid(plane, term_kernels, xy0, order=order, model=model, xy_range=xy_range, method=method, kind=kind)
    return _pad_band(valid, term_kernels.shape[1:], fill)


def _check_spatial(image, term_kernels, order, model, xy_range, xy0, method, image_name):
    image, term_kernels = _check_image_kernel(image, term_kernels, image_name, "term_kernels", kernel_ndim=3)
    n = n_spatial_terms(order)
    if term_kernels.shape[0] != n:
        msg = (
            f"term_kernels has {term_kernels.shape[0]} term kernels but spatial order {order} has {n} "
            f"terms; pass an (n_terms, Kh, Kw) stack with n_terms = (order + 1)(order + 2) / 2"
        )
        raise ValueError(msg)
    if model not in SPATIAL_MODELS:
        msg = f"unknown spatial model {model!r}; use one of {SPATIAL_MODELS}"
        raise ValueError(msg)
    if model == "chebyshev1":
        if xy_range is None:
            msg = "model='chebyshev1' needs xy_range=SpatialRange(x_min, y_min, x_max, y_max) (a Box2D)"
            raise ValueError(msg)
        xy_range = SpatialRange(*(float(v) for v in xy_range))
        if not (xy_range.x_max > xy_range.x_min and xy_range.y_max > xy_range.y_min):
            msg = f"xy_range {tuple(xy_range)} is empty; it needs x_max > x_min and y_max > y_min"
            raise ValueError(msg)
    else:
        xy_range = None  # unused by the polynomial model: no recompiles when it changes
    if hasattr(xy0, "getX"):  # a Point2I-like object
        xy0 = (xy0.getX(), xy0.getY())
    xy0 = jnp.asarray(xy0)
    if xy0.shape != (2,):
        msg = f"xy0 must be the PARENT origin (x0, y0) of the array, got shape {xy0.shape}"
        raise ValueError(msg)
    xy0 = xy0.astype(image.dtype)
    method = choose_method(image.shape, term_kernels.shape[1:], method)
    return image, term_kernels, int(order), xy_range, xy0, method


def _sv_same(plane, term_kernels, order, model, xy_range, xy0, method, fill, kind):
    """Validate, then :func:`_sv_same_jit`: the body of both public functions (``kind`` names the plane)."""
    plane, term_kernels, order, xy_range, xy0, method = _check_spatial(
        plane, term_kernels, order, model, xy_range, xy0, method, kind
    )
    return _sv_same_jit(
        plane, term_kernels, xy0, jnp.asarray(fill, plane.dtype),
        order=order, model=model, xy_range=xy_range, method=method, kind=kind,
    )  # fmt: skip


def spatially_varying_correlate(
    image: Float[ArrayLike, "H W"],
    term_kernels: Float[ArrayLike, "P Kh Kw"],
    *,
    order: int,
    model: str = "chebyshev1",
    xy_range: SpatialRange | Sequence[float] | None = None,
    xy0: Sequence[float] | Float[ArrayLike, "2"] = (0, 0),
    method: str = "auto",
    fill: float | Float[ArrayLike, ""] = 0.0,
) -> Float[Array, "H W"]:
    """Correlation with a spatially varying linear-combination kernel, exact per pixel.

    The kernel at PARENT pixel ``(X, Y)`` is ``K(X, Y) = sum_s phi_s(X, Y) K_s`` with
    ``phi_s = spatial_basis(X, Y, order, model=model, xy_range=xy_range)`` (afw term order), and::

        out(X, Y) = sum_{u,v} K(X, Y)(u, v) * image(X + u, Y + v)
                  = sum_s phi_s(X, Y) * (K_s star image)(X, Y)

    Parameters
    ----------
    image : array_like, shape (H, W)
        float32 or float64 image.  Array element ``[r, c]`` is PARENT pixel ``(x0 + c, y0 + r)``.
    term_kernels : array_like, shape (P, Kh, Kw)
        The term kernels ``K_s``, ``P = (order + 1)(order + 2) / 2``; cast to the image dtype.
        Centre ``(Kh // 2, Kw // 2)``.
    order : int, keyword-only
        Total degree of the spatial functions (static).
    model : {"chebyshev1", "polynomial"}, keyword-only
        afw ``Chebyshev1Function2`` or ``PolynomialFunction2`` (static).
    xy_range : SpatialRange or (x_min, y_min, x_max, y_max), keyword-only
        Box2D mapped onto ``[-1, 1]^2`` by ``"chebyshev1"`` (static; required there, ignored by
        ``"polynomial"``).
    xy0 : (x0, y0), keyword-only
        PARENT origin of the array (traced: sub-images with other origins do not recompile).
    method : {"auto", "direct", "fft", "shift_add", "lax_conv"}, keyword-only
        As :func:`correlate_valid`, per term kernel.
    fill : float or 0-d array, keyword-only
        Edge-band value (traced).

    Returns
    -------
    jax.Array, shape (H, W)
        Good region as above, edge band ``fill``.

    Raises
    ------
    ValueError
        Bad shapes or dtypes, a term count that does not match ``order``, an unknown model, a missing
        or empty ``xy_range``, unknown ``method``.

    See Also
    --------
    spatially_varying_correlate_variance, spatially_varying_convolve_masked_image

    Notes
    -----
    Exact: every output pixel uses the kernel evaluated at its own position, by linearity.  afw
    instead evaluates the kernel on a grid of sub-regions (``maxInterpolationDistance = 10``) and
    interpolates the kernel image bilinearly in between, an approximation; expect tiny (far below
    noise) differences from LSST.  With one term (``order=0``) this equals :func:`correlate_same`
    with ``K_0``.

    Cost: one forward real FFT of the image and, per term, one kernel transfer function and one
    inverse real FFT (``"fft"``), accumulated inside ``lax.scan`` so that only one full-size term is
    alive at a time; the spatial weights are outer products of 1-D tables in x and y (every afw term
    is ``f(x) g(y)``), never ``P`` full planes.

    **JAX.** Static: shapes, dtype, ``order``, ``model``, ``xy_range`` and ``method``; traced:
    ``image``, ``term_kernels``, ``xy0``, ``fill``.  Differentiable with respect to ``image`` and
    ``term_kernels``.  One image per call; ``jax.vmap`` for batches.

    Examples
    --------
    >>> k = jnp.zeros((3, 3, 3)).at[0, 1, 1].set(1.0)  # K(X, Y) = delta: the identity
    >>> out = spatially_varying_correlate(jnp.ones((5, 5)), k, order=1, xy_range=(0, 0, 4, 4))
    >>> out[2].tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    return _sv_same(image, term_kernels, order, model, xy_range, xy0, method, fill, "image")


def spatially_varying_correlate_variance(
    variance: Float[ArrayLike, "H W"],
    term_kernels: Float[ArrayLike, "P Kh Kw"],
    *,
    order: int,
    model: str = "chebyshev1",
    xy_range: SpatialRange | Sequence[float] | None = None,
    xy0: Sequence[float] | Float[ArrayLike, "2"] = (0, 0),
    method: str = "auto",
    fill: float | Float[ArrayLike, ""] = float("inf"),
) -> Float[Array, "H W"]:
    """Variance propagation through a spatially varying kernel: correlation with ``K(X, Y)**2``.

    ``out(X, Y) = sum_{u,v} K(X, Y)(u, v)**2 * variance(X + u, Y + v)
    = sum_{s,t} phi_s phi_t ((K_s * K_t) star variance)(X, Y)`` (pixel covariances ignored, as afw).

    Parameters
    ----------
    variance : array_like, shape (H, W)
        float32 or float64 variance plane.
    term_kernels, order, model, xy_range, xy0, method
        As :func:`spatially_varying_correlate`.
    fill : float or 0-d array, keyword-only
        Edge-band value (default +inf, afw's edge variance).

    Returns
    -------
    jax.Array, shape (H, W)

    Raises
    ------
    ValueError
        As :func:`spatially_varying_correlate`.

    Notes
    -----
    The double sum over term pairs is regrouped exactly: ``phi_s phi_t`` is a combination of the
    afw terms of degree ``2 * order`` (``x^a x^c = x^(a+c)``, ``T_a T_c = (T_(a+c) + T_|a-c|) / 2``),
    so ``out = sum_q psi_q(X, Y) (L_q star variance)`` with ``L_q = sum_{s,t} C[q,s,t] K_s K_t``.
    That is ``(2 order + 1)(2 order + 2) / 2`` correlations instead of the ``P (P + 1) / 2``
    symmetric pairs (15 instead of 21 for order 2; equal for order 1).  The result is a sum of
    signed terms: in float32 its absolute error is ~1e-7 of the largest term, which matters only
    where ``K(X, Y)**2`` nearly cancels (e.g. a badly conditioned ``"polynomial"`` model at raw
    coordinates).  With one term this equals ``correlate_same(variance, K_0**2)``.

    **JAX.** As :func:`spatially_varying_correlate`.
    """
    return _sv_same(variance, term_kernels, order, model, xy_range, xy0, method, fill, "variance")
