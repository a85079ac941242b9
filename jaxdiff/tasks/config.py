r"""Config classes of ``lsst.ip.diffim`` (ZOGY and Alard-Lupton PSF matching), with LSST's fields.

Field names, types, defaults and checks follow ip_diffim at commit d833f8f ("REF").

Configs from other LSST packages that ip_diffim nests (afw ``WarperConfig``, meas_algorithms
``SubtractBackgroundConfig`` and ``SourceDetectionConfig``, meas_base
``SingleFrameMeasurementConfig``) are reduced to the fields that matter for image differencing.
In LSST, ``selectDetection`` and ``selectMeasurement`` are `ConfigurableField`\s of those tasks;
here they are plain `ConfigField`\s, so the task builds them explicitly.
"""

from __future__ import annotations

from ._config import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
)

__all__ = [
    "DetectionConfig",
    "ImagePsfMatchConfig",
    "PluginNamesConfig",
    "PsfMatchConfig",
    "PsfMatchConfigAL",
    "PsfMatchConfigDF",
    "SingleFrameMeasurementConfig",
    "SlotsConfig",
    "SourceDetectionConfig",
    "SubtractBackgroundConfig",
    "WarperConfig",
    "ZogyConfig",
    "ZogyImagePsfMatchConfig",
]

#: afw mask bit of the EDGE plane (plane index 4).
EDGE_BIT = 1 << 4

_KERNELS = {
    "bilinear": "bilinear",
    "lanczos2": "Lanczos order 2",
    "lanczos3": "Lanczos order 3",
    "lanczos4": "Lanczos order 4",
    "lanczos5": "Lanczos order 5",
    "lanczos3_linear": "Lanczos order 3 corrected to reproduce linear ramps exactly (jaxdiff extension)",
    "nearest": "nearest neighbour",
}


def _rule(description, func):
    """Return ``func`` as a ``check`` whose ``description`` completes "value ... is not valid; it <description>"."""
    func.description = description
    return func


def _atLeast(bound):
    return _rule(f"must be >= {bound}", lambda x: x >= bound)


class ZogyConfig(Config):
    """Configuration of `ZogyTask` (proper image subtraction, Zackay, Ofek & Gal-Yam 2016)."""

    templateFluxScaling = Field(
        dtype=float,
        default=1.0,
        doc="Flux scale F_r of the template (exposure2); ignored if scaleByCalibration. "
        "(LSST applied this field to exposure1, the science image: a quirk jaxdiff does not copy.)",
    )
    scienceFluxScaling = Field(
        dtype=float,
        default=1.0,
        doc="Flux scale F_n of the science image (exposure1); ignored if scaleByCalibration. "
        "(LSST applied this field to exposure2, the template: a quirk jaxdiff does not copy.)",
    )
    scaleByCalibration = Field(
        dtype=bool,
        default=True,
        doc="Calibrate both images with their PhotoCalib and use F = 1; "
        "overrides the two flux-scaling fields.",
    )
    correctBackground = Field(
        dtype=bool, default=False, doc="Subtract the 3-sigma clipped mean of each image before differencing."
    )
    ignoreMaskPlanes = ListField(
        dtype=str,
        default=("INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA", "DETECTED_NEGATIVE"),
        doc="Mask planes excluded from all statistics.",
    )
    maxPsfCentroidDist = Field(
        dtype=float, default=0.2, doc="Maximum allowed distance (pixels) between the two PSF centroids."
    )
    doSpatialGrid = Field(
        dtype=bool,
        default=False,
        doc="Split the image into a grid of cells with their own PSFs and noise levels.",
    )
    gridInnerSize = Field(
        dtype=float, default=8, doc="Inner cell size in units of the border size (grid mode only)."
    )
    # jaxdiff extensions (not in LSST).
    doScaleVariance = Field(
        dtype=bool,
        default=False,
        doc="jaxdiff extension: rescale each input variance plane to match its measured "
        "background pixel noise (the idea of LSST's ScaleVarianceTask).",
    )
    doNormalizeScore = Field(
        dtype=bool,
        default=False,
        doc="jaxdiff extension: divide S_corr by its robust standard deviation over source-free pixels.",
    )
    doFitFluxRatio = Field(
        dtype=bool,
        default=False,
        doc="jaxdiff extension: fit beta = F_n/F_r from the data (ZOGY sec. 3.3, cross-convolved "
        "images) and use F_n = beta, F_r = 1; for images without calibrations. Overrides the flux "
        "scalings; applied after scaleByCalibration.",
    )
    doFitShift = Field(
        dtype=bool,
        default=False,
        doc="jaxdiff extension: fit a sub-pixel shift of the science image relative to the template "
        "(jointly with beta) and shift the template by it (Fourier shift) before differencing.",
    )
    fitSnrMin = Field(
        dtype=float,
        default=10.0,
        check=lambda v: v > 0,
        doc="jaxdiff extension: pixels used by doFitFluxRatio/doFitShift must exceed this S/N in both "
        "cross-convolved images.",
    )


class DetectionConfig(Config):
    """Detection of kernel candidates (ip_diffim; only the footprint and mask fields are used)."""

    detThreshold = Field(
        dtype=float, default=10.0, check=_atLeast(3.0), doc="Value of the footprint detection threshold."
    )
    detThresholdType = ChoiceField(
        dtype=str,
        default="pixel_stdev",
        doc="Type of detection threshold.",
        allowed={
            "value": "absolute value",
            "stdev": "image standard deviation",
            "variance": "image variance",
            "pixel_stdev": "per-pixel standard deviation",
        },
    )
    detOnTemplate = Field(
        dtype=bool, default=True, doc="Detect on the template (True) or on the science image (False)."
    )
    badMaskPlanes = ListField(
        dtype=str,
        default=("NO_DATA", "EDGE", "SAT"),
        doc="Candidates with any of these mask bits set in their stamp are rejected.",
    )
    fpNpixMin = Field(dtype=int, default=5, check=_atLeast(5), doc="Minimum footprint size in pixels.")
    fpNpixMax = Field(
        dtype=int,
        default=500,
        check=_rule("must be <= 500", lambda x: x <= 500),
        doc="Maximum footprint size in pixels.",
    )
    fpGrowKernelScaling = Field(
        dtype=float,
        default=1.0,
        check=_atLeast(1.0),
        doc="Grow footprints by this multiple of the kernel size (if scaleByFwhm).",
    )
    fpGrowPix = Field(
        dtype=int,
        default=30,
        check=_atLeast(10),
        doc="Grow footprints by this many pixels (if not scaleByFwhm).",
    )
    scaleByFwhm = Field(dtype=bool, default=True, doc="Scale fpGrowPix by the PSF FWHM.")


class WarperConfig(Config):
    """Warping configuration (afw ``WarperConfig``)."""

    warpingKernelName = ChoiceField(
        dtype=str, default="lanczos3", allowed=_KERNELS, optional=False, doc="Warping kernel."
    )
    maskWarpingKernelName = ChoiceField(
        dtype=str,
        default="bilinear",
        allowed={"": "use warpingKernelName", **_KERNELS},
        doc="Warping kernel for the mask plane.",
    )
    interpLength = Field(
        dtype=int,
        default=10,
        check=_atLeast(0),
        doc="Distance (pixels) over which the WCS is linearly interpolated.",
    )
    cacheSize = Field(dtype=int, default=1000000, check=_atLeast(0), doc="Size of the warping-kernel cache.")
    growFullMask = Field(
        dtype=int, default=EDGE_BIT, doc="Mask bits to grow to the full warping-kernel width (default: EDGE)."
    )


class SubtractBackgroundConfig(Config):
    """Background estimation (meas_algorithms ``SubtractBackgroundConfig``, reduced)."""

    statisticsProperty = ChoiceField(
        dtype=str,
        default="MEANCLIP",
        doc="Statistic for each bin.",
        allowed={"MEANCLIP": "clipped mean", "MEAN": "mean", "MEDIAN": "median", "MIXED": "mixed"},
    )
    undersampleStyle = ChoiceField(
        dtype=str,
        default="REDUCE_INTERP_ORDER",
        doc="What to do with too few bins for the interpolation.",
        allowed={
            "THROW_EXCEPTION": "raise",
            "REDUCE_INTERP_ORDER": "lower order",
            "INCREASE_NXNYSAMPLE": "more samples",
        },
    )
    binSize = RangeField(dtype=int, default=128, min=1, doc="Bin size (pixels).")
    binSizeX = RangeField(dtype=int, default=0, min=0, doc="Bin size in x (0: use binSize).")
    binSizeY = RangeField(dtype=int, default=0, min=0, doc="Bin size in y (0: use binSize).")
    algorithm = ChoiceField(
        dtype=str,
        default="AKIMA_SPLINE",
        optional=True,
        doc="Interpolation algorithm.",
        allowed={
            "CONSTANT": "constant",
            "LINEAR": "linear",
            "NATURAL_SPLINE": "natural spline",
            "AKIMA_SPLINE": "Akima spline",
            "NONE": "no background",
        },
    )
    ignoredPixelMask = ListField(
        dtype=str,
        default=("BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA"),
        doc="Mask planes ignored in the statistics.",
    )
    isNanSafe = Field(dtype=bool, default=False, doc="Ignore NaNs in the statistics.")
    useApprox = Field(dtype=bool, default=True, doc="Approximate the background with Chebyshev polynomials.")
    approxOrderX = Field(dtype=int, default=6, doc="Approximation order in x.")
    approxOrderY = Field(dtype=int, default=-1, doc="Approximation order in y (-1: same as x).")
    weighting = Field(dtype=bool, default=True, doc="Weight the approximation by the bin variances.")


class SourceDetectionConfig(Config):
    """Source detection (meas_algorithms ``SourceDetectionConfig``).

    Reduced to the fields that candidate selection needs, with meas_algorithms' defaults.
    """

    minPixels = RangeField(dtype=int, default=1, min=0, doc="Minimum number of pixels in a detection.")
    isotropicGrow = Field(dtype=bool, default=False, doc="Grow footprints isotropically.")
    combinedGrow = Field(dtype=bool, default=True, doc="Grow all footprints at once.")
    nSigmaToGrow = Field(dtype=float, default=2.4, doc="Grow footprints by this many PSF sigmas.")
    thresholdValue = RangeField(dtype=float, default=5.0, min=0.0, doc="Detection threshold.")
    includeThresholdMultiplier = RangeField(
        dtype=float, default=1.0, min=0.0, doc="Multiplier of the threshold for inclusion."
    )
    thresholdType = ChoiceField(
        dtype=str,
        default="stdev",
        doc="Meaning of thresholdValue.",
        allowed={
            "variance": "variance",
            "stdev": "image stdev",
            "value": "value",
            "pixel_stdev": "per-pixel stdev",
        },
    )
    thresholdPolarity = ChoiceField(
        dtype=str,
        default="positive",
        doc="Sign of detections.",
        allowed={"positive": "positive", "negative": "negative", "both": "both"},
    )
    reEstimateBackground = Field(dtype=bool, default=True, doc="Re-estimate the background after detection.")
    statsMask = ListField(
        dtype=str,
        default=("BAD", "SAT", "EDGE", "NO_DATA"),
        doc="Mask planes ignored when measuring the image noise.",
    )
    nSigmaForKernel = Field(dtype=float, default=7.0, doc="Smoothing kernel width in PSF sigmas.")
    doTempLocalBackground = Field(dtype=bool, default=True, doc="Apply a temporary local background.")
    tempLocalBackground = ConfigField(dtype=SubtractBackgroundConfig, doc="Temporary local background.")
    doTempWideBackground = Field(dtype=bool, default=False, doc="Apply a temporary wide background.")

    def setDefaults(self):
        """Set LSST's defaults: a 64-pixel AKIMA-spline temporary local background."""
        super().setDefaults()
        self.tempLocalBackground.binSize = 64
        self.tempLocalBackground.algorithm = "AKIMA_SPLINE"
        self.tempLocalBackground.useApprox = False


class PluginNamesConfig(Config):
    """Names of the measurement plugins to run."""

    names = ListField(dtype=str, default=(), doc="Plugin names.")


class SlotsConfig(Config):
    """Measurement slot aliases (`None` disables a slot)."""

    centroid = Field(dtype=str, default="base_SdssCentroid", optional=True, doc="Centroid slot.")
    shape = Field(dtype=str, default="base_SdssShape", optional=True, doc="Shape slot.")
    psfFlux = Field(dtype=str, default="base_PsfFlux", optional=True, doc="PSF flux slot.")
    apFlux = Field(
        dtype=str, default="base_CircularApertureFlux_12_0", optional=True, doc="Aperture flux slot."
    )
    modelFlux = Field(dtype=str, default="base_GaussianFlux", optional=True, doc="Model flux slot.")
    gaussianFlux = Field(dtype=str, default="base_GaussianFlux", optional=True, doc="Gaussian flux slot.")
    calibFlux = Field(
        dtype=str, default="base_CircularApertureFlux_12_0", optional=True, doc="Calibration flux slot."
    )


class SingleFrameMeasurementConfig(Config):
    """Source measurement (meas_base ``SingleFrameMeasurementConfig``, reduced)."""

    algorithms = ConfigField(dtype=PluginNamesConfig, doc="Measurement plugins to run.")
    slots = ConfigField(dtype=SlotsConfig, doc="Slot aliases.")


class PsfMatchConfig(Config):
    """Base configuration for PSF matching (ip_diffim ``PsfMatchConfig``)."""

    warpingConfig = ConfigField(
        dtype=WarperConfig, doc="Config for warping the template to the science image."
    )
    detectionConfig = ConfigField(
        dtype=DetectionConfig, doc="Controlling the detection of kernel candidates."
    )
    afwBackgroundConfig = ConfigField(
        dtype=SubtractBackgroundConfig, doc="Background used for candidate detection."
    )
    useAfwBackground = Field(
        dtype=bool, default=False, doc="Use the afw background instead of fitForBackground."
    )
    fitForBackground = Field(
        dtype=bool, default=False, doc="Include a differential background term in the fit."
    )
    kernelBasisSet = ChoiceField(
        dtype=str,
        default="alard-lupton",
        doc="Type of kernel basis.",
        allowed={
            "alard-lupton": "Gaussians times polynomials",
            "delta-function": "one basis image per pixel",
        },
    )
    kernelSize = Field(
        dtype=int,
        default=21,
        check=_rule("must be odd", lambda x: x % 2 == 1),
        doc="Number of rows/columns of the kernel (odd); overridden if scaleByFwhm.",
    )
    scaleByFwhm = Field(
        dtype=bool, default=True, doc="Derive the kernel size and Gaussian widths from PSF FWHMs."
    )
    kernelSizeFwhmScaling = Field(
        dtype=float,
        default=6.0,
        check=_atLeast(1.0),
        doc="Kernel size as a multiple of the PSF FWHM (if scaleByFwhm).",
    )
    kernelSizeMin = Field(dtype=int, default=21, doc="Minimum kernel size (if scaleByFwhm).")
    kernelSizeMax = Field(dtype=int, default=35, doc="Maximum kernel size (if scaleByFwhm).")
    spatialModelType = ChoiceField(
        dtype=str,
        default="chebyshev1",
        doc="Type of spatial functions.",
        allowed={
            "chebyshev1": "Chebyshev polynomials of the first kind",
            "polynomial": "standard polynomials",
        },
    )
    spatialKernelOrder = Field(dtype=int, default=2, check=_atLeast(0), doc="Spatial order of the kernel.")
    spatialBgOrder = Field(dtype=int, default=1, check=_atLeast(0), doc="Spatial order of the background.")
    sizeCellX = Field(dtype=int, default=128, check=_atLeast(32), doc="Cell size in x (pixels).")
    sizeCellY = Field(dtype=int, default=128, check=_atLeast(32), doc="Cell size in y (pixels).")
    nStarPerCell = Field(dtype=int, default=3, check=_atLeast(1), doc="Number of candidates per cell.")
    maxSpatialIterations = Field(
        dtype=int,
        default=3,
        check=_rule("must be in 1..5", lambda x: 1 <= x <= 5),
        doc="Maximum number of spatial-fit iterations.",
    )
    usePcaForSpatialKernel = Field(
        dtype=bool, default=False, doc="Build the spatial kernel from a PCA basis."
    )
    subtractMeanForPca = Field(dtype=bool, default=True, doc="Subtract the mean kernel before the PCA.")
    numPrincipalComponents = Field(
        dtype=int, default=5, check=_atLeast(3), doc="Number of principal components kept."
    )
    singleKernelClipping = Field(
        dtype=bool, default=True, doc="Reject candidates with bad single-kernel residuals."
    )
    kernelSumClipping = Field(dtype=bool, default=True, doc="Reject candidates with outlying kernel sums.")
    spatialKernelClipping = Field(
        dtype=bool, default=True, doc="Reject candidates with bad spatial residuals."
    )
    checkConditionNumber = Field(
        dtype=bool, default=False, doc="Reject candidates with large condition numbers."
    )
    badMaskPlanes = ListField(
        dtype=str,
        default=("NO_DATA", "EDGE", "SAT"),
        doc="Mask planes ignored in residual statistics and candidate rating.",
    )
    candidateResidualMeanMax = Field(
        dtype=float,
        default=0.25,
        check=_atLeast(0.0),
        doc="Rejection limit on the mean of the normalised residuals.",
    )
    candidateResidualStdMax = Field(
        dtype=float,
        default=1.50,
        check=_atLeast(0.0),
        doc="Rejection limit on the std of the normalised residuals.",
    )
    useCoreStats = Field(dtype=bool, default=False, doc="Compute residual statistics in the stamp core only.")
    candidateCoreRadius = Field(
        dtype=int, default=3, check=_atLeast(1), doc="Core half-size r: the core box is (2r+1)^2 pixels."
    )
    maxKsumSigma = Field(
        dtype=float, default=3.0, check=_atLeast(0.0), doc="Kernel-sum clipping threshold (sigmas)."
    )
    maxConditionNumber = Field(
        dtype=float,
        default=5.0e7,
        check=_atLeast(0.0),
        doc="Maximum condition number of a single-kernel solution.",
    )
    conditionNumberType = ChoiceField(
        dtype=str,
        default="EIGENVALUE",
        doc="How to compute condition numbers.",
        allowed={"SVD": "singular values", "EIGENVALUE": "eigenvalues"},
    )
    maxSpatialConditionNumber = Field(
        dtype=float,
        default=1.0e10,
        check=_atLeast(0.0),
        doc="Condition number above which the spatial solution is flagged.",
    )
    iterateSingleKernel = Field(dtype=bool, default=False, doc="Refit single kernels with model variances.")
    constantVarianceWeighting = Field(dtype=bool, default=True, doc="Weight stamps by a constant variance.")
    calculateKernelUncertainty = Field(dtype=bool, default=False, doc="Compute kernel uncertainties.")
    useBicForKernelBasis = Field(
        dtype=bool, default=False, doc="Choose the number of basis Gaussians with the BIC."
    )


class PsfMatchConfigAL(PsfMatchConfig):
    """Alard-Lupton basis: Gaussians of several widths times polynomials."""

    alardNGauss = Field(dtype=int, default=3, check=_atLeast(1), doc="Number of Gaussians in the basis.")
    alardDegGauss = ListField(dtype=int, default=(4, 2, 2), doc="Polynomial degree of each Gaussian.")
    alardSigGauss = ListField(dtype=float, default=(0.7, 1.5, 3.0), doc="Sigma (pixels) of each Gaussian.")
    alardGaussBeta = Field(
        dtype=float,
        default=2.0,
        check=_atLeast(0.0),
        doc="Ratio of successive Gaussian sigmas (if scaleByFwhm).",
    )
    alardMinSig = Field(
        dtype=float, default=0.7, check=_atLeast(0.25), doc="Minimum Gaussian sigma (pixels)."
    )
    alardDegGaussDeconv = Field(
        dtype=int, default=3, check=_atLeast(1), doc="Polynomial degree of the deconvolution Gaussians."
    )
    alardMinSigDeconv = Field(
        dtype=float,
        default=0.4,
        check=_atLeast(0.25),
        doc="Minimum sigma of the deconvolution Gaussians (pixels).",
    )
    alardNGaussDeconv = Field(
        dtype=int, default=3, check=_atLeast(1), doc="Number of Gaussians for deconvolution."
    )

    def setDefaults(self):
        """Select the Alard-Lupton basis and its maximum condition number."""
        super().setDefaults()
        self.kernelBasisSet = "alard-lupton"
        self.maxConditionNumber = 5.0e7

    def validate(self):
        """Check that there is one degree and one sigma per Gaussian."""
        super().validate()
        for name in ("alardDegGauss", "alardSigGauss"):
            if len(getattr(self, name)) != self.alardNGauss:
                raise FieldValidationError(
                    self._fields[name],
                    self,
                    f"len({name}) = {len(getattr(self, name))} but alardNGauss = {self.alardNGauss}; "
                    "give one entry per Gaussian.",
                )


class PsfMatchConfigDF(PsfMatchConfig):
    """Delta-function basis (one basis image per kernel pixel), optionally regularised."""

    useRegularization = Field(dtype=bool, default=True, doc="Regularise the delta-function kernel.")
    regularizationType = ChoiceField(
        dtype=str,
        default="centralDifference",
        doc="Regularisation type.",
        allowed={
            "centralDifference": "central-difference stencil",
            "forwardDifference": "forward differences",
        },
    )
    centralRegularizationStencil = ChoiceField(
        dtype=int, default=9, doc="Points in the central stencil.", allowed={5: "5-point", 9: "9-point"}
    )
    forwardRegularizationOrders = ListField(
        dtype=int,
        default=(1, 2),
        itemCheck=_rule("must be in 1..3", lambda x: 1 <= x <= 3),
        doc="Orders of the forward differences (each in 1..3).",
    )
    regularizationBorderPenalty = Field(
        dtype=float, default=3.0, check=_atLeast(0.0), doc="Penalty for non-zero kernel values at the border."
    )
    lambdaType = ChoiceField(
        dtype=str,
        default="absolute",
        doc="How the regularisation strength is set.",
        allowed={
            "absolute": "lambdaValue",
            "relative": "lambdaValue x trace ratio",
            "minimizeBiasedRisk": "risk scan",
            "minimizeUnbiasedRisk": "risk scan",
        },
    )
    lambdaValue = Field(dtype=float, default=0.2, doc="Regularisation strength.")
    lambdaScaling = Field(dtype=float, default=1e-4, doc="Fraction of the default lambda (relative mode).")
    lambdaStepType = ChoiceField(
        dtype=str,
        default="log",
        doc="Spacing of the lambda scan.",
        allowed={"log": "logarithmic", "linear": "linear"},
    )
    lambdaMin = Field(dtype=float, default=-1.0, doc="Start of the lambda scan.")
    lambdaMax = Field(dtype=float, default=2.0, doc="End of the lambda scan.")
    lambdaStep = Field(dtype=float, default=0.1, doc="Step of the lambda scan.")

    def setDefaults(self):
        """Select the delta-function basis with PCA spatial kernels, as LSST does."""
        super().setDefaults()
        self.kernelBasisSet = "delta-function"
        self.maxConditionNumber = 5.0e6
        self.usePcaForSpatialKernel = True
        self.subtractMeanForPca = True
        self.useBicForKernelBasis = False


class ImagePsfMatchConfig(Config):
    """Configuration of `ImagePsfMatchTask`."""

    kernel = ConfigChoiceField(
        doc="Kernel type.", default="AL", typemap={"AL": PsfMatchConfigAL, "DF": PsfMatchConfigDF}
    )
    selectDetection = ConfigField(dtype=SourceDetectionConfig, doc="Initial detection of kernel candidates.")
    selectMeasurement = ConfigField(
        dtype=SingleFrameMeasurementConfig, doc="Measurement of the detected kernel candidates."
    )
    maxSelectSources = Field(
        dtype=int, default=5000, check=lambda x: x >= 1,
        doc="jaxdiff: maximum number of sources getSelectSources keeps (brightest first; a static array size).",
    )
    doDecorrelation = Field(
        dtype=bool, default=False,
        doc="jaxdiff: whiten the Alard-Lupton difference (DMTN-021) in subtractExposures and add a score "
        "exposure (LSST does this in a separate DecorrelateALKernelTask).",
    )

    def setDefaults(self):
        """Set LSST's detection threshold and measurement plugins for kernel candidates."""
        super().setDefaults()
        self.selectDetection.reEstimateBackground = False
        self.selectDetection.thresholdValue = 10.0
        self.selectMeasurement.algorithms.names = (
            "base_SdssCentroid",
            "base_PsfFlux",
            "base_PixelFlags",
            "base_SdssShape",
            "base_GaussianFlux",
            "base_SkyCoord",
        )
        self.selectMeasurement.slots.modelFlux = None
        self.selectMeasurement.slots.apFlux = None
        self.selectMeasurement.slots.calibFlux = None


class ZogyImagePsfMatchConfig(ImagePsfMatchConfig):
    """Configuration of `ZogyImagePsfMatchTask`: the image-PSF-matching config plus ``zogyConfig``."""

    zogyConfig = ConfigField(dtype=ZogyConfig, doc="ZogyTask config to use.")
