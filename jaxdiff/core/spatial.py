"""Two-dimensional spatial functions in afw's parameter order (polynomial and Chebyshev).

The spatial models of the Alard-Lupton kernel and background use afw's ``PolynomialFunction2``
and ``Chebyshev1Function2`` (afw ``math/FunctionLibrary.h``). Both order their
``(order + 1)(order + 2) / 2`` terms by total degree, then by decreasing power of x::

    1, x, y, x^2, x y, y^2, x^3, x^2 y, x y^2, y^3, ...

``"polynomial"`` evaluates the monomials at raw PARENT pixel coordinates (afw's convention, badly
conditioned far from the origin); ``"chebyshev1"`` evaluates ``T_i(x') T_j(y')`` with
``x' = (x - (x_min + x_max) / 2) * 2 / (x_max - x_min)`` over a ``Box2D`` range (pixel edges:
``Box2D(Box2I)`` spans ``[minX - 0.5, maxX + 0.5]``).
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "SPATIAL_MODELS",
    "SpatialRange",
    "n_spatial_terms",
    "spatial_exponents",
    "spatial_basis",
    "spatial_range_from_bbox",
]

#: Names accepted for ``model`` (LSST ``spatialModelType``).
SPATIAL_MODELS = ("chebyshev1", "polynomial")


class SpatialRange(NamedTuple):
    """A ``Box2D``-like range ``[x_min, x_max] x [y_min, y_max]`` (floats, pixel edges)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


def spatial_range_from_bbox(bbox) -> SpatialRange:
    """Return ``Box2D(bbox)`` of an inclusive integer box (:class:`jaxdiff.image.Box2I`): edges at +-0.5."""
    return SpatialRange(
        float(bbox.getMinX()) - 0.5, float(bbox.getMinY()) - 0.5,
        float(bbox.getMaxX()) + 0.5, float(bbox.getMaxY()) + 0.5,
    )


def n_spatial_terms(order: int) -> int:
    """Return the number of terms of a 2-D function of total degree ``order``: ``(order + 1)(order + 2) / 2``."""
    order = int(order)
    if order < 0:
        raise ValueError(f"spatial order must be >= 0, got {order}")
    return (order + 1) * (order + 2) // 2


def spatial_exponents(order: int) -> list[tuple[int, int]]:
    """Return the ``(i, j)`` powers (x, y) of each term, in afw order (total degree, then decreasing x power)."""
    n_spatial_terms(order)
    return [(d - k, k) for d in range(int(order) + 1) for k in range(d + 1)]


def _chebyshev_table(t, order):
    """``[T_0(t), ..., T_order(t)]`` stacked on a new last axis (three-term recurrence)."""
    values = [jnp.ones_like(t)]
    if order >= 1:
        values.append(t)
    for _ in range(2, order + 1):
        values.append(2.0 * t * values[-1] - values[-2])
    return jnp.stack(values, axis=-1)


def _power_table(t, order):
    values = [jnp.ones_like(t)]
    for _ in range(order):
        values.append(values[-1] * t)
    return jnp.stack(values, axis=-1)


def spatial_basis(x, y, order: int, *, model: str = "chebyshev1", xy_range: SpatialRange | None = None):
    """Evaluate every spatial term at positions ``(x, y)``.

    Parameters
    ----------
    x, y : array_like
        PARENT pixel positions (broadcast against each other).
    order : int
        Total degree (static).
    model : {"chebyshev1", "polynomial"}, keyword-only
        afw ``Chebyshev1Function2`` or ``PolynomialFunction2``.
    xy_range : SpatialRange, keyword-only
        Required for ``"chebyshev1"``: the Box2D the positions are mapped from onto ``[-1, 1]``.

    Returns
    -------
    array, shape ``broadcast(x, y).shape + (n_terms,)``
        Term values in afw parameter order. A spatial function with parameters ``p`` is
        ``spatial_basis(x, y, order) @ p``.

    Raises
    ------
    ValueError
        For an unknown ``model``, a negative ``order``, or a missing or empty ``xy_range`` with
        ``"chebyshev1"``.

    Notes
    -----
    JAX: ``order``, ``model`` and ``xy_range`` are Python values fixed at trace time; the output
    keeps the floating dtype of ``x`` and ``y`` (integers become the default float) and is
    differentiable in ``x`` and ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> np.asarray(spatial_basis(2.0, 3.0, 2, model="polynomial")).tolist()
    [1.0, 2.0, 3.0, 4.0, 6.0, 9.0]
    """
    if model not in SPATIAL_MODELS:
        raise ValueError(f"unknown spatial model {model!r}; use one of {SPATIAL_MODELS}")
    exps = spatial_exponents(order)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(float))
    x, y = jnp.broadcast_arrays(x, y)
    if model == "chebyshev1":
        if xy_range is None:
            raise ValueError("model='chebyshev1' needs xy_range (the Box2D that maps onto [-1, 1])")
        r = SpatialRange(*xy_range)
        if not (r.x_max > r.x_min and r.y_max > r.y_min):
            raise ValueError(f"xy_range {tuple(r)} is empty; it must have x_max > x_min and y_max > y_min")
        xs = (x - 0.5 * (r.x_min + r.x_max)) * (2.0 / (r.x_max - r.x_min))
        ys = (y - 0.5 * (r.y_min + r.y_max)) * (2.0 / (r.y_max - r.y_min))
        tx, ty = _chebyshev_table(xs, order), _chebyshev_table(ys, order)
    else:
        tx, ty = _power_table(x, order), _power_table(y, order)
    ix = np.array([i for i, _ in exps])
    iy = np.array([j for _, j in exps])
    return tx[..., ix] * ty[..., iy]
