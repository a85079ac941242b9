"""Fitting by gradient and least squares: PSF models, star stamps, matching kernels, PSFs through ZOGY.

Part of the pure core: :mod:`.psf_models` (pixel-integrated Gaussian and Moffat models as pure
functions of a parameter vector), :mod:`.least_squares` (Levenberg–Marquardt or any optax
optimiser, Hessian errors, a :class:`FitResult` with a status), :mod:`.stamps` (weighted fits
of a model plus sky to one star stamp; ``vmap`` for many), :mod:`.kernels` (the Alard–Lupton
spatial kernel, or a free pixel kernel, fitted by minimising the chi² of the difference) and
:mod:`.zogy_psf` (a PSF model fitted through the ZOGY subtraction).  The ZOGY flux-ratio/shift
fit (:func:`jaxdiff.core.zogy_fit.fit_flux_ratio_shift`) is a user of :func:`levenberg_marquardt`;
:func:`jaxdiff.core.align.refine_alignment` keeps its own small Gauss–Newton loop for now.
"""

from .kernels import KernelFit, fit_spatial_kernel, pixel_kernel_residuals, spatial_kernel_residuals
from .least_squares import FitResult, fit_result_at, levenberg_marquardt, minimize_optax
from .psf_models import GAUSSIAN_PARAMS, MODELS, MOFFAT_PARAMS, gaussian_stamp, model_stamp, moffat_stamp
from .stamps import fit_psf_stamp, initial_psf_params, parameter_names
from .zogy_psf import fit_psf_through_zogy, zogy_psf_residuals

__all__ = [
    "GAUSSIAN_PARAMS",
    "MODELS",
    "MOFFAT_PARAMS",
    "FitResult",
    "KernelFit",
    "fit_psf_stamp",
    "fit_psf_through_zogy",
    "fit_spatial_kernel",
    "fit_result_at",
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
