"""Fitting by gradient (PSF models, kernels, nuisance parameters): the room for ``jaxdiff.fit``.

Part of the pure core.  The fits that exist today live beside the algorithms they serve
(:func:`jaxdiff.core.zogy_fit.fit_flux_ratio_shift`, :func:`jaxdiff.core.align.refine_alignment`).
"""
