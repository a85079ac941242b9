"""Scenes with known truth for tests, examples and benchmarks (on top of the image model).

:func:`~jaxdiff.testing.sim.simulate_pair` (deterministic science/template pairs with
transients, PSF variation, backgrounds, WCSs) and
:func:`~jaxdiff.testing.lsst_scenes.make_lsst_zogy_test_images` (ip_diffim's ZOGY test scenes).
"""

from .lsst_scenes import make_lsst_zogy_test_images as make_lsst_zogy_test_images
from .sim import SimulatedPair as SimulatedPair
from .sim import SimulationTruth as SimulationTruth
from .sim import flux_for_snr as flux_for_snr
from .sim import gaussian_pixel_kernel as gaussian_pixel_kernel
from .sim import moffat_pixel_kernel as moffat_pixel_kernel
from .sim import render_gaussian_stars as render_gaussian_stars
from .sim import render_moffat_stars as render_moffat_stars
from .sim import simulate_pair as simulate_pair
