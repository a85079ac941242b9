"""Fitting for users: PSF models and star fits (from :mod:`jaxdiff.core.fit`) and PSF estimation.

A layer above the image model (it reads exposures) and below the task shell:

* the pure fitting functions of :mod:`jaxdiff.core.fit` (pixel-integrated Gaussian and Moffat
  models, :func:`fit_psf_stamp`, :func:`levenberg_marquardt`, :func:`minimize_optax`,
  :class:`FitResult`);
* :func:`estimate_psf` (:mod:`.estimate`): a spatially varying PSF model from the stars of an
  exposure that carries none, with a report and a typed :class:`PsfEstimationError`.
"""

from ..core.fit import (
    GAUSSIAN_PARAMS,
    MODELS,
    MOFFAT_PARAMS,
    FitResult,
    fit_psf_stamp,
    fit_result_at,
    gaussian_stamp,
    initial_psf_params,
    levenberg_marquardt,
    minimize_optax,
    model_stamp,
    moffat_stamp,
    parameter_names,
)
from .estimate import DEFAULT_BAD_PLANES, PsfEstimate, PsfEstimationError, estimate_psf

__all__ = [
    "DEFAULT_BAD_PLANES",
    "GAUSSIAN_PARAMS",
    "MODELS",
    "MOFFAT_PARAMS",
    "FitResult",
    "PsfEstimate",
    "PsfEstimationError",
    "estimate_psf",
    "fit_psf_stamp",
    "fit_result_at",
    "gaussian_stamp",
    "initial_psf_params",
    "levenberg_marquardt",
    "minimize_optax",
    "model_stamp",
    "moffat_stamp",
    "parameter_names",
]
