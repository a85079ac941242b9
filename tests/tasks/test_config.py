"""Tests of the pex_config equivalent (jaxdiff.tasks._config) and the LSST config classes."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.tasks._base import Task
from jaxdiff.tasks._config import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigField,
    ConfigParams,
    ConfigurableField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
)
from jaxdiff.tasks.config import (
    DetectionConfig,
    ImagePsfMatchConfig,
    PsfMatchConfig,
    PsfMatchConfigAL,
    PsfMatchConfigDF,
    SourceDetectionConfig,
    SubtractBackgroundConfig,
    WarperConfig,
    ZogyConfig,
    ZogyImagePsfMatchConfig,
)


class InnerConfig(Config):
    x = Field(dtype=float, doc="x", default=1.5, check=lambda v: v >= 0)
    names = ListField(
        dtype=str, doc="names", default=("a", "b"), itemCheck=lambda s: s.isupper() or s.islower()
    )


class AConfig(Config):
    n = Field(dtype=int, doc="n", default=3)
    f = Field(dtype=float, doc="f", default=0.5)
    flag = Field(dtype=bool, doc="flag", default=True)
    label = Field(dtype=str, doc="label", default=None, optional=True)
    required = Field(dtype=str, doc="required", default="yes")
    r = RangeField(dtype=int, doc="r", default=2, min=0, max=10, inclusiveMax=True)
    mode = ChoiceField(dtype=str, doc="mode", allowed={"fast": "", "slow": ""}, default="fast")
    ints = ListField(dtype=int, doc="ints", default=(1, 2, 3), length=3)
    inner = ConfigField(dtype=InnerConfig, doc="inner")
    choice = ConfigChoiceField(doc="choice", typemap={"I": InnerConfig, "Z": ZogyConfig}, default="I")

    def setDefaults(self):
        super().setDefaults()
        self.inner.x = 2.5


class DummyTask(Task):
    ConfigClass = InnerConfig
    _DefaultName = "dummy"

    def __init__(self, *args, tag=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag


# ----------------------------------------------------------------------------- generic Config


def test_defaults_setDefaults_and_overrides():
    c = AConfig(n=7, label="hi")
    assert (c.n, c.f, c.flag, c.label, c.r, c.mode) == (7, 0.5, True, "hi", 2, "fast")
    assert c.inner.x == 2.5  # setDefaults ran after the field defaults
    assert c.ints == [1, 2, 3] and c.ints == (1, 2, 3)
    assert c.choice.name == "I" and c.choice.active is c.choice["I"]
    assert c.choice["Z"].maxPsfCentroidDist == 0.2
    c.validate()
    assert c.history["n"][-1] == (7, "assignment")


def test_autocast_and_type_errors():
    c = AConfig()
    c.f = np.float32(0.25)
    assert type(c.f) is float and c.f == 0.25
    c.f = 3  # ints are Real
    assert type(c.f) is float and c.f == 3.0
    c.n = np.int64(5)
    assert type(c.n) is int and c.n == 5
    for field, bad in [
        ("n", 2.0),
        ("n", True),
        ("f", "1"),
        ("f", False),
        ("flag", 1),
        ("flag", np.bool_(True)),
        ("label", 3),
    ]:
        with pytest.raises(FieldValidationError, match=field):
            setattr(c, field, bad)
    assert c.n == 5  # failed assignments leave the value unchanged
    assert issubclass(FieldValidationError, ValueError)


def test_check_runs_at_assignment_time():
    c = AConfig()
    with pytest.raises(FieldValidationError, match=r"inner\.x.*-1\.0 is not a valid value"):
        c.inner.x = -1.0
    with pytest.raises(FieldValidationError, match=r"must lie in \[0, 10\]"):
        c.r = 11
    c.r = 10  # inclusiveMax
    with pytest.raises(FieldValidationError, match="choose one of"):
        c.mode = "medium"
    with pytest.raises(
        FieldValidationError, match="Item at position 1 with value .MiXed. is not a valid value"
    ):
        c.inner.names = ["ok", "MiXed"]
    with pytest.raises(FieldValidationError, match="Item"):
        c.inner.names.append("MiXed")
    assert c.inner.names == ["a", "b"]
    with pytest.raises(FieldValidationError, match="not a list"):
        c.ints = "123"


def test_validate_required_and_length():
    c = AConfig()
    c.required = None  # accepted at assignment, rejected by validate
    with pytest.raises(FieldValidationError, match="Required value cannot be None"):
        c.validate()
    c = AConfig()
    c.ints.append(4)
    with pytest.raises(FieldValidationError, match="Required list length=3, got 4"):
        c.validate()


def test_unknown_field_is_rejected_with_suggestion():
    c = AConfig()
    with pytest.raises(AttributeError, match="Did you mean 'flag'"):
        c.flg = True
    with pytest.raises(AttributeError, match="no field 'nope'"):
        AConfig(nope=1)


def test_freeze_is_recursive():
    c = AConfig()
    c.freeze()
    for action in (
        lambda: setattr(c, "n", 1),
        lambda: setattr(c.inner, "x", 1.0),
        lambda: c.ints.append(1),
        lambda: setattr(c.choice, "name", "Z"),
        lambda: setattr(c.choice["Z"], "doSpatialGrid", True),
    ):
        with pytest.raises(FieldValidationError, match="Cannot modify a frozen Config"):
            action()
    assert c.n == 3 and c.choice.name == "I"
    thawed = copy.deepcopy(c)
    holder = AConfig()
    holder.inner = c.inner  # assigning copies and thaws
    holder.inner.x = 9.0
    assert c.inner.x == 2.5 and thawed.inner.x == 2.5


def test_eq_compare_todict_and_string_round_trip():
    a, b = AConfig(), AConfig()
    assert a == b and a.compare(b)
    b.choice["Z"].gridInnerSize = 16.0
    b.choice.name = "Z"
    b.inner.names = ["x"]
    assert a != b
    messages = []
    assert not a.compare(b, shortcut=False, output=messages.append)
    assert any("gridInnerSize" in m for m in messages) and any("choice.name" in m for m in messages)
    d = b.toDict()
    assert d["choice"]["name"] == "Z" and d["choice"]["values"]["Z"]["gridInnerSize"] == 16.0
    assert d["inner"] == {"x": 2.5, "names": ["x"]}
    c = AConfig()
    c.loadFromString(b.saveToString())
    assert c == b
    with pytest.raises(ValueError, match="Unsupported statement"):
        c.loadFromString("import os\n")
    assert a.compare(AConfig(f=0.5 + 1e-12))
    assert a != AConfig(f=0.5 + 1e-12)


def test_pickle_and_deepcopy_round_trip():
    c = ZogyImagePsfMatchConfig()
    c.kernel.name = "DF"
    c.kernel["DF"].forwardRegularizationOrders = [3]
    for other in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c)):
        assert other == c
        with pytest.raises(FieldValidationError):
            other.kernel["DF"].forwardRegularizationOrders.append(4)


def test_configurable_field_proxy():
    class ParentConfig(Config):
        sub = DummyTask.makeField("a dummy subtask")
        other = ConfigurableField(doc="explicit", target=DummyTask, ConfigClass=InnerConfig)

    c = ParentConfig()
    assert c.sub.target is DummyTask and c.sub.ConfigClass is InnerConfig
    assert isinstance(c.sub.value, InnerConfig)
    c.sub.x = 4.0  # attribute forwarding to .value
    assert c.sub.value.x == 4.0
    task = c.sub.apply(name="standalone", tag="t")
    assert task.config is c.sub.value and task.tag == "t" and task.getName() == "standalone"

    c.sub.retarget(ZogyLikeTask)
    assert c.sub.target is ZogyLikeTask and isinstance(c.sub.value, ZogyConfig)
    c.sub = ZogyConfig(gridInnerSize=4.0)
    assert c.sub.gridInnerSize == 4.0
    with pytest.raises(FieldValidationError, match="not a ZogyConfig"):
        c.sub = InnerConfig()
    c.validate()
    c.freeze()
    with pytest.raises(FieldValidationError, match="frozen"):
        c.sub.retarget(DummyTask)


class ZogyLikeTask(Task):
    ConfigClass = ZogyConfig
    _DefaultName = "zogyLike"


# ----------------------------------------------------------------------------- to_params


def test_to_params_is_hashable_frozen_and_value_based():
    a, b = ZogyImagePsfMatchConfig(), ZogyImagePsfMatchConfig()
    pa, pb = a.to_params(), b.to_params()
    assert isinstance(pa, ConfigParams)
    assert pa == pb and hash(pa) == hash(pb)
    assert pa.zogyConfig.ignoreMaskPlanes == (
        "INTRP",
        "EDGE",
        "DETECTED",
        "SAT",
        "CR",
        "BAD",
        "NO_DATA",
        "DETECTED_NEGATIVE",
    )
    assert pa.kernel.name == "AL" and pa.kernel.active.kernelSize == 21
    assert pa["zogyConfig"]["maxPsfCentroidDist"] == 0.2
    with pytest.raises(AttributeError, match="immutable"):
        pa.zogyConfig.maxPsfCentroidDist = 1.0
    b.kernel["DF"].lambdaValue = 0.5  # inactive choice: same params
    assert b.to_params() == pa
    b.zogyConfig.maxPsfCentroidDist = 0.3
    assert b.to_params() != pa
    assert pickle.loads(pickle.dumps(pa)) == pa


def test_to_params_as_jit_static_argument_without_recompiling():
    traces = []

    def f(x, params):
        traces.append(params)
        return x * params.maxPsfCentroidDist + params.gridInnerSize

    jf = jax.jit(f, static_argnames="params")
    x = jnp.ones(3)
    out = jf(x, params=ZogyConfig().to_params())
    np.testing.assert_allclose(np.asarray(out), 8.2, rtol=1e-6)
    jf(x, params=ZogyConfig().to_params())  # equal config -> cache hit
    assert len(traces) == 1
    out = jf(x, params=ZogyConfig(gridInnerSize=4.0).to_params())
    assert len(traces) == 2
    np.testing.assert_allclose(np.asarray(out), 4.2, rtol=1e-6)
    with pytest.raises(ValueError, match="Non-hashable"):
        jf(x, params=ZogyConfig())  # a mutable Config itself is not a valid static argument


# ----------------------------------------------------------------------------- LSST configs


def test_all_lsst_configs_validate_by_default():
    for cls in (
        ZogyConfig,
        DetectionConfig,
        PsfMatchConfig,
        PsfMatchConfigAL,
        PsfMatchConfigDF,
        ImagePsfMatchConfig,
        ZogyImagePsfMatchConfig,
        WarperConfig,
        SubtractBackgroundConfig,
        SourceDetectionConfig,
    ):
        cls().validate()
    DetectionConfig(fpGrowPix=10).validate()


def test_zogy_config_defaults():
    c = ZogyConfig()
    assert c.templateFluxScaling == 1.0 and c.scienceFluxScaling == 1.0
    assert c.scaleByCalibration is True and c.correctBackground is False
    assert c.ignoreMaskPlanes == [
        "INTRP",
        "EDGE",
        "DETECTED",
        "SAT",
        "CR",
        "BAD",
        "NO_DATA",
        "DETECTED_NEGATIVE",
    ]
    assert c.maxPsfCentroidDist == 0.2
    assert c.doSpatialGrid is False
    assert c.gridInnerSize == 8 and isinstance(c.gridInnerSize, float)
    assert c.doScaleVariance is False and c.doNormalizeScore is False
    assert ZogyConfig(scaleByCalibration=False).scaleByCalibration is False


def test_psf_match_config_defaults():
    c = PsfMatchConfig()
    expected = dict(
        useAfwBackground=False,
        fitForBackground=False,
        kernelBasisSet="alard-lupton",
        kernelSize=21,
        scaleByFwhm=True,
        kernelSizeFwhmScaling=6.0,
        kernelSizeMin=21,
        kernelSizeMax=35,
        spatialModelType="chebyshev1",
        spatialKernelOrder=2,
        spatialBgOrder=1,
        sizeCellX=128,
        sizeCellY=128,
        nStarPerCell=3,
        maxSpatialIterations=3,
        usePcaForSpatialKernel=False,
        subtractMeanForPca=True,
        numPrincipalComponents=5,
        singleKernelClipping=True,
        kernelSumClipping=True,
        spatialKernelClipping=True,
        checkConditionNumber=False,
        candidateResidualMeanMax=0.25,
        candidateResidualStdMax=1.5,
        useCoreStats=False,
        candidateCoreRadius=3,
        maxKsumSigma=3.0,
        maxConditionNumber=5.0e7,
        conditionNumberType="EIGENVALUE",
        maxSpatialConditionNumber=1.0e10,
        iterateSingleKernel=False,
        constantVarianceWeighting=True,
        calculateKernelUncertainty=False,
        useBicForKernelBasis=False,
    )
    for name, value in expected.items():
        assert getattr(c, name) == value, name
    assert c.badMaskPlanes == ["NO_DATA", "EDGE", "SAT"]
    w = c.warpingConfig
    assert (w.warpingKernelName, w.maskWarpingKernelName, w.interpLength, w.cacheSize, w.growFullMask) == (
        "lanczos3",
        "bilinear",
        10,
        1000000,
        16,
    )
    b = c.afwBackgroundConfig
    assert (b.statisticsProperty, b.undersampleStyle, b.binSize, b.binSizeX, b.binSizeY, b.algorithm) == (
        "MEANCLIP",
        "REDUCE_INTERP_ORDER",
        128,
        0,
        0,
        "AKIMA_SPLINE",
    )
    assert b.ignoredPixelMask == ["BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA"]
    assert (b.isNanSafe, b.useApprox, b.approxOrderX, b.approxOrderY, b.weighting) == (
        False,
        True,
        6,
        -1,
        True,
    )
    d = c.detectionConfig
    assert (
        d.detThreshold,
        d.detThresholdType,
        d.detOnTemplate,
        d.fpNpixMin,
        d.fpNpixMax,
        d.fpGrowKernelScaling,
        d.fpGrowPix,
        d.scaleByFwhm,
    ) == (10.0, "pixel_stdev", True, 5, 500, 1.0, 30, True)
    assert d.badMaskPlanes == ["NO_DATA", "EDGE", "SAT"]


def test_al_and_df_config_defaults():
    al = PsfMatchConfigAL()
    assert (
        al.alardNGauss,
        al.alardGaussBeta,
        al.alardMinSig,
        al.alardDegGaussDeconv,
        al.alardMinSigDeconv,
        al.alardNGaussDeconv,
    ) == (3, 2.0, 0.7, 3, 0.4, 3)
    assert al.alardDegGauss == [4, 2, 2] and al.alardSigGauss == [0.7, 1.5, 3.0]
    assert al.kernelBasisSet == "alard-lupton" and al.maxConditionNumber == 5.0e7 and al.kernelSize == 21
    df = PsfMatchConfigDF()
    assert df.kernelBasisSet == "delta-function" and df.maxConditionNumber == 5.0e6
    assert (
        df.usePcaForSpatialKernel is True
        and df.subtractMeanForPca is True
        and df.useBicForKernelBasis is False
    )
    assert (
        df.useRegularization,
        df.regularizationType,
        df.centralRegularizationStencil,
        df.regularizationBorderPenalty,
        df.lambdaType,
        df.lambdaValue,
        df.lambdaScaling,
        df.lambdaStepType,
        df.lambdaMin,
        df.lambdaMax,
        df.lambdaStep,
    ) == (True, "centralDifference", 9, 3.0, "absolute", 0.2, 1e-4, "log", -1.0, 2.0, 0.1)
    assert df.forwardRegularizationOrders == [1, 2]


def test_image_psf_match_config_defaults():
    c = ZogyImagePsfMatchConfig()
    assert isinstance(c, ImagePsfMatchConfig)
    assert c.kernel.name == "AL" and isinstance(c.kernel.active, PsfMatchConfigAL)
    assert isinstance(c.kernel["DF"], PsfMatchConfigDF)
    assert c.selectDetection.reEstimateBackground is False and c.selectDetection.thresholdValue == 10.0
    assert c.selectDetection.thresholdType == "stdev" and c.selectDetection.nSigmaToGrow == 2.4
    assert c.selectDetection.tempLocalBackground.binSize == 64
    assert c.selectMeasurement.algorithms.names == [
        "base_SdssCentroid",
        "base_PsfFlux",
        "base_PixelFlags",
        "base_SdssShape",
        "base_GaussianFlux",
        "base_SkyCoord",
    ]
    assert (
        c.selectMeasurement.slots.modelFlux is None
        and c.selectMeasurement.slots.centroid == "base_SdssCentroid"
    )
    assert c.zogyConfig == ZogyConfig()
    c.kernel.name = "DF"
    assert c.kernel.active.useRegularization is True
    with pytest.raises(FieldValidationError, match="Unknown choice 'XX'"):
        c.kernel.name = "XX"


@pytest.mark.parametrize(
    "cls, field, bad",
    [
        (ZogyConfig, "maxPsfCentroidDist", "0.2"),
        (ZogyConfig, "ignoreMaskPlanes", ["BAD", 3]),
        (DetectionConfig, "detThreshold", 2.0),
        (DetectionConfig, "fpNpixMax", 501),
        (DetectionConfig, "fpGrowPix", 9),
        (DetectionConfig, "detThresholdType", "sigma"),
        (PsfMatchConfig, "kernelSize", 20),
        (PsfMatchConfig, "nStarPerCell", 0),
        (PsfMatchConfig, "maxSpatialIterations", 6),
        (PsfMatchConfig, "sizeCellX", 31),
        (PsfMatchConfig, "kernelBasisSet", "pca"),
        (PsfMatchConfig, "spatialModelType", "legendre"),
        (PsfMatchConfigAL, "alardMinSig", 0.2),
        (PsfMatchConfigDF, "centralRegularizationStencil", 7),
        (PsfMatchConfigDF, "forwardRegularizationOrders", [1, 4]),
        (WarperConfig, "warpingKernelName", "cubic"),
    ],
)
def test_lsst_field_checks_fire_on_assignment(cls, field, bad):
    c = cls()
    with pytest.raises(FieldValidationError, match=field):
        setattr(c, field, bad)


def test_al_cross_field_validation():
    c = PsfMatchConfigAL()
    c.alardNGauss = 2
    with pytest.raises(FieldValidationError, match=r"len\(alardDegGauss\) = 3 but alardNGauss = 2"):
        c.validate()
    c.alardDegGauss = [4, 2]
    c.alardSigGauss = [0.7, 1.5]
    c.validate()


def test_check_error_message_names_the_rule():
    with pytest.raises(
        FieldValidationError, match=r"PsfMatchConfigAL.*20 is not a valid value; it must be odd"
    ):
        PsfMatchConfigAL(kernelSize=20)
