"""Fitting by gradient and least squares (PSF models, star stamps; later kernels and nuisances).

Part of the pure core: :mod:`.psf_models` (pixel-integrated Gaussian and Moffat models as pure
functions of a parameter vector), :mod:`.least_squares` (Levenberg–Marquardt or any optax
optimiser, Hessian errors, a :class:`FitResult` with a status) and :mod:`.stamps` (weighted fits
of a model plus sky to one star stamp; ``vmap`` for many).  The other fits of the core live beside
the algorithms they serve (:func:`jaxdiff.core.zogy_fit.fit_flux_ratio_shift`,
:func:`jaxdiff.core.align.refine_alignment`).
"""

from .least_squares import FitResult, fit_result_at, levenberg_marquardt, minimize_optax
from .psf_models import GAUSSIAN_PARAMS, MODELS, MOFFAT_PARAMS, gaussian_stamp, model_stamp, moffat_stamp
from .stamps import fit_psf_stamp, initial_psf_params, parameter_names

__all__ = [
    "GAUSSIAN_PARAMS",
    "MODELS",
    "MOFFAT_PARAMS",
    "FitResult",
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
