"""The pure core: jit-compiled, vmap-able, differentiable functions on arrays.

This layer imports nothing else of jaxdiff (``tests/test_layout.py`` guards it).  Modules:

* shared conventions: :mod:`~jaxdiff.core._numerics` (``PRECISION``, ``tiny``, safe divide and
  rsqrt), :mod:`~jaxdiff.core._results` (status flags and fixed-arity results),
  :mod:`~jaxdiff.core._checks` (argument checks with one clear message);
* :mod:`~jaxdiff.core.fft` (FFT sizes, centre-origin layout, stamp DFTs),
  :mod:`~jaxdiff.core.stats` (afw-style clipped statistics), :mod:`~jaxdiff.core.detection`
  (peaks), :mod:`~jaxdiff.core.spatial` (afw spatial polynomials),
  :mod:`~jaxdiff.core.psf_images` (analytic PSF stamps);
* ZOGY (Zackay, Ofek & Gal-Yam 2016): :mod:`~jaxdiff.core.zogy_prepare`, :mod:`~jaxdiff.core.zogy`,
  :mod:`~jaxdiff.core.zogy_grid`, :mod:`~jaxdiff.core.zogy_fit`;
* Alard-Lupton (Alard & Lupton 1998; Alard 2000): :mod:`~jaxdiff.core.kernel_basis`,
  :mod:`~jaxdiff.core.kernel_fit`, :mod:`~jaxdiff.core.sources`,
  :mod:`~jaxdiff.core.decorrelate` (DMTN-021);
* convolution (afw convention): :mod:`~jaxdiff.core.convolve` (entry points),
  :mod:`~jaxdiff.core.convolve_fixed`, :mod:`~jaxdiff.core.convolve_spatial`,
  :mod:`~jaxdiff.core.convolve_masked`, :mod:`~jaxdiff.core.masks`;
* registration: :mod:`~jaxdiff.core.resample`, :mod:`~jaxdiff.core.align`;
* fitting: :mod:`jaxdiff.core.fit`.

Functions named like their module (``zogy``, ``resample``) are imported from the module
(``from jaxdiff.core.zogy import zogy``), so that the module stays reachable as an attribute.
"""

from .align import AlignmentResult as AlignmentResult
from .align import refine_alignment as refine_alignment
from .detection import Peaks as Peaks
from .detection import find_peaks as find_peaks
from .fft import fast_fft_shape as fast_fft_shape
from .fft import fast_fft_size as fast_fft_size
from .resample import resample_mask as resample_mask
from .resample import resample_variance as resample_variance
from .stats import ClippedStats as ClippedStats
from .stats import clipped_stats as clipped_stats
from .stats import masked_median as masked_median
from .stats import robust_std as robust_std
from .zogy import ZogyResult as ZogyResult
from .zogy_grid import CellResult as CellResult
from .zogy_grid import zogy_cells as zogy_cells
