"""Cross-checks of the jaxdiff task shell against the real ``lsst.pipe.base`` / ``lsst.pex.config``.

Skipped unless the optional LSST packages are installed (``pip install jaxdiff[lsst]``).
"""

import jax.numpy as jnp
import pytest

from jaxdiff.tasks import _base, _config

pipeBase = pytest.importorskip(
    "lsst.pipe.base",
    reason="lsst-pipe-base is not installed (optional extra jaxdiff[lsst]); parity not checked",
)
pexConfig = pytest.importorskip("lsst.pex.config", reason="lsst-pex-config is not installed")
lsstTimer = pytest.importorskip("lsst.utils.timer", reason="lsst-utils is not installed")


def makeTree(TaskBase, ConfigBase, Field, timeMethod):
    """The same three-level task tree, built on either implementation."""

    class GrandConfig(ConfigBase):
        scale = Field(dtype=float, doc="scale", default=2.0)

    class GrandTask(TaskBase):
        ConfigClass = GrandConfig
        _DefaultName = "grand"

        @timeMethod
        def run(self, x):
            return x * self.config.scale

    class ChildConfig(ConfigBase):
        grand = GrandTask.makeField("sub-subtask")

    class ChildTask(TaskBase):
        ConfigClass = ChildConfig
        _DefaultName = "child"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.makeSubtask("grand")

        @timeMethod
        def run(self, x):
            self.metadata["lastValue"] = 1.5
            self.metadata.add("values", 3)
            return self.grand.run(x) + 1

    class ParentConfig(ConfigBase):
        child = ChildTask.makeField("subtask")
        other = GrandTask.makeField("second subtask")

    class ParentTask(TaskBase):
        ConfigClass = ParentConfig
        _DefaultName = "parent"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.makeSubtask("child")
            self.makeSubtask("other")

        @timeMethod
        def run(self, x):
            with self.timer("inner"):
                y = self.child.run(x)
            return y

    return ParentTask


@pytest.fixture
def trees():
    lsst = makeTree(pipeBase.Task, pexConfig.Config, pexConfig.Field, lsstTimer.timeMethod)()
    ours = makeTree(_base.Task, _config.Config, _config.Field, _base.timeMethod)()
    return lsst, ours


def test_task_dict_and_names_match(trees):
    lsst, ours = trees
    assert list(ours.getTaskDict()) == list(lsst.getTaskDict())
    assert ours.child.grand.getFullName() == lsst.child.grand.getFullName() == "parent.child.grand"
    assert ours.child.getName() == lsst.child.getName()


def test_full_metadata_names_match(trees):
    lsst, ours = trees
    for task in trees:
        for _ in range(2):
            task.run(jnp.arange(3.0))
    lsstMd, ourMd = lsst.getFullMetadata(), ours.getFullMetadata()
    lsstNames = {n for n in lsstMd.names() if not n.endswith("nodeName")}
    ourNames = {n for n in ourMd.names() if not n.endswith("nodeName")}
    assert ourNames == lsstNames
    assert list(ourMd.keys()) == list(lsstMd.keys())
    for key in ("parent.runStartCpuTime", "parent:child.values", "parent:child:grand.runEndUtc"):
        assert len(ourMd.getArray(key)) == len(lsstMd.getArray(key)) == 2
    assert ourMd["parent:child.lastValue"] == lsstMd["parent:child.lastValue"] == 1.5
    assert ourMd["parent.__version__"] == lsstMd["parent.__version__"] == 1
    lsst.emptyMetadata()
    ours.emptyMetadata()
    assert ours.getFullMetadata().names() == lsst.getFullMetadata().names() == set(ourMd.keys())


def test_struct_matches():
    lsst, ours = pipeBase.Struct(a=1, b="x"), _base.Struct(a=1, b="x")
    assert repr(ours) == repr(lsst)
    assert ours.getDict() == lsst.getDict() and len(ours) == len(lsst)
    for bad in ({"getDict": 1}, {"__x": 1}):
        with pytest.raises(RuntimeError) as lsstError:
            pipeBase.Struct(**bad)
        with pytest.raises(RuntimeError) as ourError:
            _base.Struct(**bad)
        assert str(ourError.value) == str(lsstError.value)


def test_task_metadata_matches():
    def fill(md):
        md["a"] = 1
        md.add("a", 2)
        md["n.x"] = "s"
        md.add("arr", [1.0, 2.0])
        return md

    lsst, ours = fill(pipeBase.TaskMetadata()), fill(_base.TaskMetadata())
    assert ours.to_dict() == lsst.to_dict()
    assert ours.names() == lsst.names()
    assert ours.paramNames(topLevelOnly=False) == lsst.paramNames(topLevelOnly=False)
    assert ours["a"] == lsst["a"] and ours.getArray("arr") == lsst.getArray("arr")
    for md in (lsst, ours):
        with pytest.raises(ValueError):
            md["bad"] = None
        with pytest.raises(KeyError):
            md["missing"]


def test_config_semantics_match():
    def makeConfig(Config, Field, ListField, ChoiceField):
        class C(Config):
            n = Field(dtype=int, doc="n", default=3, check=lambda x: x > 0)
            f = Field(dtype=float, doc="f", default=0.5)
            names = ListField(dtype=str, doc="names", default=("A", "B"))
            mode = ChoiceField(dtype=str, doc="mode", allowed={"x": "", "y": ""}, default="x")

        return C

    Lsst = makeConfig(pexConfig.Config, pexConfig.Field, pexConfig.ListField, pexConfig.ChoiceField)
    Ours = makeConfig(_config.Config, _config.Field, _config.ListField, _config.ChoiceField)
    lsst, ours = Lsst(), Ours()
    assert ours.toDict() == lsst.toDict()
    for name, value in (("n", 0), ("n", 1.5), ("mode", "z"), ("f", "s")):
        with pytest.raises(pexConfig.FieldValidationError):
            setattr(lsst, name, value)
        with pytest.raises(_config.FieldValidationError):
            setattr(ours, name, value)
    lsst.f, ours.f = 2, 2
    assert type(lsst.f) is type(ours.f) is float
    assert lsst.names == ["A", "B"] and ours.names == ["A", "B"]
    lsst.freeze()
    ours.freeze()
    with pytest.raises(pexConfig.FieldValidationError, match="frozen"):
        lsst.n = 5
    with pytest.raises(_config.FieldValidationError, match="frozen"):
        ours.n = 5
