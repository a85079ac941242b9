"""Adapters from LSST ``PsfMatchConfig`` objects to the pure kernel-basis functions.

The core (:mod:`jaxdiff.core.kernel_basis`) takes plain keyword arguments; these thin functions read
the LSST field names (``alardNGauss``, ``kernelSize``, ``regularizationType``, ``lambdaType``, ...)
for the task shell and hold no numerics of their own.  ``make_kernel_basis_list`` has the signature
of ip_diffim's ``makeKernelBasisList``.
"""

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from ..core.kernel_basis import (
    BasisParams,
    alard_lupton_basis_params,
    make_basis,
    regularization_matrix,
    regularization_strength,
)

__all__ = [
    "alard_lupton_basis_params_from_config",
    "make_kernel_basis_list",
    "regularization_lambda",
    "regularization_matrix_from_config",
]


def _al_options_from_config(config) -> dict:
    """Keyword arguments of :func:`alard_lupton_basis_params` from ``PsfMatchConfigAL`` fields."""
    return dict(
        n_gauss=config.alardNGauss,
        deg_gauss=tuple(config.alardDegGauss),
        sig_gauss=tuple(config.alardSigGauss),
        gauss_beta=config.alardGaussBeta,
        min_sig=config.alardMinSig,
        n_gauss_deconv=config.alardNGaussDeconv,
        deg_gauss_deconv=config.alardDegGaussDeconv,
        min_sig_deconv=config.alardMinSigDeconv,
        scale_by_fwhm=config.scaleByFwhm,
        kernel_size_fwhm_scaling=config.kernelSizeFwhmScaling,
        kernel_size_min=config.kernelSizeMin,
        kernel_size_max=config.kernelSizeMax,
    )


def alard_lupton_basis_params_from_config(
    config,
    target_fwhm: float | None = None,
    reference_fwhm: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
    basis_sigma_gauss: Sequence[float] | None = None,
) -> BasisParams:
    """Adapter: :func:`alard_lupton_basis_params` with the fields of a ``PsfMatchConfigAL``-like object.

    Parameters
    ----------
    config : PsfMatchConfigAL-like
        Any object with the LSST attribute names ``alardNGauss``, ``alardDegGauss``, ``alardSigGauss``,
        ``alardGaussBeta``, ``alardMinSig``, ``alardNGaussDeconv``, ``alardDegGaussDeconv``,
        ``alardMinSigDeconv``, ``kernelSize``, ``scaleByFwhm``, ``kernelSizeFwhmScaling``,
        ``kernelSizeMin``, ``kernelSizeMax`` (e.g. :class:`jaxdiff.tasks.config.PsfMatchConfigAL`).
        If it has ``kernelBasisSet``, that must be ``"alard-lupton"``.
    target_fwhm, reference_fwhm, basis_deg_gauss, basis_sigma_gauss
        As in :func:`alard_lupton_basis_params`.

    Returns
    -------
    BasisParams

    Raises
    ------
    RuntimeError
        If ``config.kernelBasisSet`` is not ``"alard-lupton"`` (as LSST).
    ValueError
        See :func:`alard_lupton_basis_params`.
    """
    basis_set = getattr(config, "kernelBasisSet", "alard-lupton")
    if basis_set != "alard-lupton":
        msg = f"cannot generate a {basis_set!r} basis with the Alard-Lupton generator"
        raise RuntimeError(msg)
    return alard_lupton_basis_params(
        target_fwhm=target_fwhm,
        reference_fwhm=reference_fwhm,
        basis_deg_gauss=basis_deg_gauss,
        basis_sigma_gauss=basis_sigma_gauss,
        kernel_size=config.kernelSize,
        **_al_options_from_config(config),
    )


def make_kernel_basis_list(
    config,
    target_fwhm: float | None = None,
    reference_fwhm: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
    basis_sigma_gauss: Sequence[float] | None = None,
) -> tuple[Float[np.ndarray, "B K K"], BasisParams | None]:
    """Adapter: :func:`make_basis` with the fields of a ``PsfMatchConfig``-like object.

    The signature of ip_diffim ``makeKernelBasisList``.

    Parameters
    ----------
    config : PsfMatchConfig-like
        ``kernelBasisSet`` and ``kernelSize``; for ``"alard-lupton"`` also the fields read by
        :func:`alard_lupton_basis_params_from_config`.
    target_fwhm, reference_fwhm, basis_deg_gauss, basis_sigma_gauss
        As in :func:`make_basis`.

    Returns
    -------
    basis : ndarray, shape (B, K, K), float64
    params : BasisParams or None

    Raises
    ------
    ValueError
        For an unknown ``kernelBasisSet`` or invalid Alard-Lupton parameters.
    """
    basis_set = config.kernelBasisSet
    options = _al_options_from_config(config) if basis_set == "alard-lupton" else {}
    return make_basis(
        basis_set,
        kernel_size=config.kernelSize,
        target_fwhm=target_fwhm,
        reference_fwhm=reference_fwhm,
        basis_deg_gauss=basis_deg_gauss,
        basis_sigma_gauss=basis_sigma_gauss,
        **options,
    )


def regularization_matrix_from_config(config, size: int, fit_background: bool) -> Float[np.ndarray, "M M"]:
    """Adapter: :func:`regularization_matrix` with the fields of a ``PsfMatchConfigDF``-like object.

    Reads ``regularizationType``, ``centralRegularizationStencil``, ``forwardRegularizationOrders`` and
    ``regularizationBorderPenalty``.  ``size`` is the kernel size (LSST reads ``config.kernelSize``).
    """
    return regularization_matrix(
        size,
        kind=config.regularizationType,
        stencil=config.centralRegularizationStencil,
        orders=tuple(config.forwardRegularizationOrders),
        border_penalty=config.regularizationBorderPenalty,
        fit_background=fit_background,
    )


def regularization_lambda(config, normal_matrix, regularization) -> float:
    """Adapter: :func:`regularization_strength` with ``lambdaType``, ``lambdaValue``, ``lambdaScaling``.

    Parameters
    ----------
    config : PsfMatchConfigDF-like
        Provides ``lambdaType``, ``lambdaValue``, ``lambdaScaling``.
    normal_matrix, regularization : array_like, shape (n, n)
        ``M`` and ``H`` as in :func:`regularization_strength`.

    Returns
    -------
    float
    """
    return regularization_strength(
        normal_matrix,
        regularization,
        lambda_type=config.lambdaType,
        lambda_value=getattr(config, "lambdaValue", 0.2),
        lambda_scaling=getattr(config, "lambdaScaling", 1e-4),
    )
