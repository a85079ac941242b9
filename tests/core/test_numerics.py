"""Tests of the core's numerical conventions: ``jaxdiff.core._numerics`` and ``jaxdiff.core._results``.

Guarded divisions are compared with their analytic values and derivatives, including at vanishing
denominators, where the values must be the fill and the gradients finite (0) - a single ``where``
after the division gives NaN gradients there.
"""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core._numerics import PRECISION, complex_dtype, float_dtype, safe_divide, safe_rsqrt, tiny
from jaxdiff.core._results import Status, flag, status_message

CORE = Path(__file__).resolve().parents[2] / "jaxdiff" / "core"


def test_precision_is_highest():
    assert PRECISION == jax.lax.Precision.HIGHEST


def test_tiny(float_dtype):
    assert tiny(float_dtype) == 100 * float(np.finfo(float_dtype).tiny)
    assert tiny(np.complex64) == tiny(np.float32)


def test_safe_divide_values(float_dtype):
    a = jnp.asarray([1.0, -2.0, 3.0, 0.0, 5.0], float_dtype)
    b = jnp.asarray([2.0, 4.0, 0.0, 0.0, 1e-307 if float_dtype == np.float64 else 1e-37], float_dtype)
    out = safe_divide(a, b, fill=-7.0)
    assert out.dtype == float_dtype
    np.testing.assert_array_equal(np.asarray(out), [0.5, -0.5, -7.0, -7.0, -7.0])  # |b| <= tiny: fill
    # an explicit mask replaces the default test
    out = safe_divide(a, b, where=jnp.asarray([True, False, False, False, False]))
    np.testing.assert_array_equal(np.asarray(out), [0.5, 0.0, 0.0, 0.0, 0.0])
    # broadcasting
    np.testing.assert_allclose(np.asarray(safe_divide(jnp.ones((2, 3), float_dtype), jnp.asarray([1.0, 2.0, 0.0],
                                                                                                  float_dtype))),
                               np.broadcast_to([1.0, 0.5, 0.0], (2, 3)))  # fmt: skip


def test_safe_divide_gradients_match_analytic(float_dtype):
    a = jnp.asarray([3.0, 3.0, 0.0, np.inf], float_dtype)
    b = jnp.asarray([2.0, 0.0, 0.0, 0.0], float_dtype)
    ga, gb = jax.grad(lambda a, b: jnp.sum(safe_divide(a, b)), argnums=(0, 1))(a, b)
    # analytic: d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 where b != 0; 0 where the fill is used
    np.testing.assert_allclose(np.asarray(ga), [0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(gb), [-0.75, 0.0, 0.0, 0.0])
    # the single-where version this replaces has NaN gradients at b = 0
    naive = jax.grad(lambda b: jnp.sum(jnp.where(b == 0, 0.0, 1.0 / b)))(b)
    assert np.isnan(np.asarray(naive)[1])
    # forward mode and the fill
    tangent = jax.jvp(lambda b: safe_divide(a, b, fill=2.0), (b,), (jnp.ones_like(b),))[1]
    np.testing.assert_allclose(np.asarray(tangent), [-0.75, 0.0, 0.0, 0.0])
    gfill = jax.grad(lambda f: jnp.sum(safe_divide(a, b, fill=f)))(jnp.asarray(1.0, float_dtype))
    assert float(gfill) == 3.0  # three entries use the fill


def test_safe_rsqrt_values_and_gradients(float_dtype):
    x = jnp.asarray([4.0, 0.25, 0.0, -1.0, np.nan], float_dtype)
    out = safe_rsqrt(x, fill=9.0)
    assert out.dtype == float_dtype
    np.testing.assert_allclose(np.asarray(out), [0.5, 2.0, 9.0, 9.0, 9.0], rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(safe_rsqrt(x)))(x)
    # analytic: d(x^-1/2)/dx = -x^(-3/2) / 2 for x > 0; 0 elsewhere
    np.testing.assert_allclose(np.asarray(g), [-1 / 16, -4.0, 0.0, 0.0, 0.0], rtol=1e-6)
    naive = jax.grad(lambda x: jnp.sum(jnp.where(x > 0, jax.lax.rsqrt(x), 0.0)))(x)
    assert not np.all(np.isfinite(np.asarray(naive)))
    masked = safe_rsqrt(x, where=jnp.asarray([False, True, False, False, False]))
    np.testing.assert_allclose(np.asarray(masked), [0.0, 2.0, 0.0, 0.0, 0.0], rtol=1e-6)


def test_safe_ops_under_jit_and_vmap(float_dtype):
    a = jnp.asarray([[1.0, 2.0], [3.0, 4.0]], float_dtype)
    b = jnp.asarray([[2.0, 0.0], [0.0, 8.0]], float_dtype)
    f = jax.jit(jax.vmap(lambda a, b: safe_divide(a, b) + safe_rsqrt(b)))
    expect = np.array([[0.5 + 2**-0.5, 0.0], [0.0, 0.5 + 8**-0.5]])
    np.testing.assert_allclose(np.asarray(f(a, b)), expect, rtol=1e-6)


def test_float_dtype(x64):
    default = np.float64 if x64 else np.float32
    assert float_dtype(np.ones(3, np.float32)) == np.float32
    assert float_dtype(np.ones(3, np.float32), 2.0) == np.float32
    assert float_dtype(np.ones(3, np.int32)) == default
    assert float_dtype(np.ones(3, bool)) == default
    assert float_dtype(1) == default
    assert float_dtype() == default
    assert float_dtype(np.ones(3, np.float64)) == default  # float32 when x64 is off, like jnp.asarray
    with pytest.raises(ValueError, match="float32 or float64"):
        float_dtype(np.ones(3, np.float16))
    with pytest.raises(ValueError, match="float32 or float64"):
        float_dtype(np.ones(3, np.complex64))


def test_complex_dtype():
    assert complex_dtype(np.float32) == np.complex64
    assert complex_dtype(np.float64) == np.complex128
    assert complex_dtype(np.complex64) == np.complex64
    assert complex_dtype(jnp.float32) == np.complex64
    with pytest.raises(ValueError, match="complex"):
        complex_dtype(np.int32)


# --------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------


def test_status_flags_and_messages():
    assert Status.successful == 0
    values = [int(m) for m in Status if m]
    assert len(set(values)) == len(values) and all(v & (v - 1) == 0 for v in values)  # distinct single bits
    for member in Status:
        if member:
            assert member.message and member.message != "successful"
    both = Status.singular | Status.bad_variance
    assert both.message == f"{Status.bad_variance.message}; {Status.singular.message}"
    assert status_message(0) == "successful"
    assert status_message(jnp.int32(2)) == Status.singular.message
    assert "unknown status bits 0x100" in status_message(256)
    # arrays: one line per flag with its count
    text = status_message(np.array([0, 2, 6, 4]))
    assert text.splitlines() == [f"2 of 4: {Status.singular.message}", f"2 of 4: {Status.nonfinite_input.message}"]
    assert status_message(np.zeros(3, np.int32)) == "successful"


def test_flag_is_traceable():
    f = jax.jit(jax.vmap(lambda c, d: flag(c, Status.singular) | flag(d, Status.too_few_pixels)))
    out = f(jnp.asarray([True, False, True]), jnp.asarray([False, False, True]))
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), [2, 0, 34])
    assert int(out[2]) & Status.too_few_pixels and not int(out[1]) & Status.singular


def test_matrix_products_in_my_modules_pass_precision():
    """Every matmul / einsum / tensordot / conv in the core passes a precision (TF32 GPUs lose bits silently)."""
    names = {"matmul", "einsum", "tensordot", "dot", "conv_general_dilated"}
    modules = sorted(str(p.relative_to(CORE)) for p in CORE.rglob("*.py"))
    assert "kernel_fit.py" in modules and "convolve_spatial.py" in modules
    host_numpy = {"kernel_basis.py"}  # float64 numpy on the host, outside jit (module docstring)
    for module in modules:
        if module in host_numpy:
            continue
        tree = ast.parse((CORE / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                raise AssertionError(f"{module}:{node.lineno}: '@' has no precision; use jnp.matmul(..., precision=PRECISION)")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name == "partial" and node.args:
                    inner = node.args[0]
                    name = inner.attr if isinstance(inner, ast.Attribute) else getattr(inner, "id", None)
                    if name not in names:
                        continue
                elif name not in names or not isinstance(func, ast.Attribute):
                    continue
                if name == "einsum" and isinstance(func.value, ast.Name) and func.value.id == "np":
                    continue  # host numpy
                assert any(k.arg == "precision" for k in node.keywords), f"{module}:{node.lineno}: {name} without precision"
