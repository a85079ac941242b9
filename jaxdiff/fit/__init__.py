"""Fitting for users: PSF models and star fits (from :mod:`jaxdiff.core.fit`) and PSF estimation.

A layer above the image model (it reads exposures) and below the task shell:

* the pure fitting functions of :mod:`jaxdiff.core.fit` (pixel-integrated Gaussian and Moffat
  models, :func:`fit_psf_stamp`, :func:`levenberg_marquardt`, :func:`minimize_optax`,
  :class:`FitResult`);
* matching kernels by gradient (:func:`fit_spatial_kernel`, the Alard–Lupton spatial model;
  :func:`pixel_kernel_residuals`, a free pixel kernel with a smoothness penalty), the science PSF
  fitted through the ZOGY subtraction (:func:`fit_psf_through_zogy`) and ZOGY's nuisance
  parameters (:func:`fit_flux_ratio_shift`: flux ratio, sub-pixel shift, background), all on the
  one Levenberg–Marquardt / optax path with Hessian errors;
* :func:`estimate_psf` (:mod:`.estimate`): a spatially varying PSF model from the stars of an
  exposure that carries none, with a report and a typed :class:`PsfEstimationError`.
"""

from ..core.fit import (
    GAUSSIAN_PARAMS,
    MODELS,
    MOFFAT_PARAMS,
    FitResult,
    KernelFit,
    fit_psf_stamp,
    fit_psf_through_zogy,
    fit_result_at,
    fit_spatial_kernel,
    gaussian_stamp,
    initial_psf_params,
    levenberg_marquardt,
    minimize_optax,
    model_stamp,
    moffat_stamp,
    parameter_names,
    pixel_kernel_residuals,
    spatial_kernel_residuals,
    zogy_psf_residuals,
)
from ..core.zogy_fit import FluxShiftFit, fit_flux_ratio_shift
from .estimate import DEFAULT_BAD_PLANES, PsfEstimate, PsfEstimationError, estimate_psf

__all__ = [
    "DEFAULT_BAD_PLANES",
    "GAUSSIAN_PARAMS",
    "MODELS",
    "MOFFAT_PARAMS",
    "FitResult",
    "FluxShiftFit",
    "KernelFit",
    "PsfEstimate",
    "PsfEstimationError",
    "estimate_psf",
    "fit_flux_ratio_shift",
    "fit_psf_stamp",
    "fit_psf_through_zogy",
    "fit_result_at",
    "fit_spatial_kernel",
    "gaussian_stamp",
    "initial_psf_params",
    "levenberg_marquardt",
    "minimize_optax",
    "model_stamp",
    "moffat_stamp",
    "parameter_names",
    "pixel_kernel_residuals",
    "spatial_kernel_residuals",
    "zogy_psf_residuals",
]
