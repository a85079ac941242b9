"""Tests of the pipe_base-equivalent task shell (jaxdiff.tasks._base)."""

import datetime
import logging
import pickle
import platform
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.tasks import _base
from jaxdiff.tasks._base import Struct, Task, TaskMetadata, logInfo, timeMethod
from jaxdiff.tasks._config import Config, Field, FieldValidationError

ITEMS = (
    "Utc",
    "CpuTime",
    "UserTime",
    "SystemTime",
    "MaxResidentSetSize",
    "MinorPageFaults",
    "MajorPageFaults",
    "BlockInputs",
    "BlockOutputs",
    "VoluntaryContextSwitches",
    "InvoluntaryContextSwitches",
)


class GrandConfig(Config):
    scale = Field(dtype=float, doc="scale", default=2.0, check=lambda x: x > 0)


class GrandTask(Task):
    ConfigClass = GrandConfig
    _DefaultName = "grand"

    @timeMethod
    def run(self, x):
        return Struct(out=jnp.asarray(x) * self.config.scale, note="done")


class ChildConfig(Config):
    grand = GrandTask.makeField("sub-subtask")
    offset = Field(dtype=int, doc="offset", default=1)


class ChildTask(Task):
    ConfigClass = ChildConfig
    _DefaultName = "child"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("grand")

    @timeMethod
    def run(self, x):
        self.metadata["lastOffset"] = self.config.offset
        return self.grand.run(x).out + self.config.offset


class ParentConfig(Config):
    child = ChildTask.makeField("subtask")
    other = GrandTask.makeField("second subtask")


class ParentTask(Task):
    ConfigClass = ParentConfig
    _DefaultName = "parent"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.makeSubtask("child")
        self.makeSubtask("other")

    @timeMethod
    def run(self, x):
        with self.timer("inner") as t:
            y = t.track(self.child.run(x))
        return Struct(result=y)


# ----------------------------------------------------------------------------- Task tree


def test_names_task_dict_and_loggers():
    task = ParentTask()
    assert task.getName() == "parent" and task.getFullName() == "parent"
    assert task.child.getName() == "child" and task.child.getFullName() == "parent.child"
    assert task.child.grand.getFullName() == "parent.child.grand"
    expected = ["parent", "parent.child", "parent.child.grand", "parent.other"]
    assert list(task.getTaskDict()) == expected
    assert list(task.child.grand.getTaskDict()) == expected  # the dict is shared by the tree
    assert task.getTaskDict()["parent.child.grand"]() is task.child.grand
    d = task.getTaskDict()
    d.clear()  # a copy
    assert len(task.getTaskDict()) == 4
    assert task.log.name == "jaxdiff.parent"
    assert task.child.grand.log.name == "jaxdiff.parent.child.grand"
    assert ParentTask(log=logging.getLogger("pipeline")).log.name == "pipeline.parent"
    assert ParentTask(name="top").getFullName() == "top"
    with pytest.raises(RuntimeError, match="must not contain '.'"):
        ParentTask(name="a.b")


def test_subtask_configs_are_the_parents_fields():
    config = ParentConfig()
    config.child.grand.scale = 3.0
    task = ParentTask(config=config)
    assert task.config is config
    assert task.child.config is config.child.value
    assert task.child.grand.config.scale == 3.0
    config.child.grand.scale = 5.0  # not frozen, shared object
    assert task.child.grand.config.scale == 5.0


def test_construction_errors():
    with pytest.raises(
        RuntimeError, match="name is required for a task unless it has attribute _DefaultName"
    ):
        Task()
    with pytest.raises(RuntimeError, match="name is required for a subtask"):
        GrandTask(parentTask=ParentTask())
    task = ParentTask()
    with pytest.raises(KeyError, match="parent's config does not have field 'missing'"):
        task.makeSubtask("missing")

    class RequiredConfig(Config):
        value = Field(dtype=int, doc="must be set", default=None)

    class NeedsValue(Task):
        ConfigClass = RequiredConfig
        _DefaultName = "needsValue"

    with pytest.raises(
        FieldValidationError, match="'value' of RequiredConfig failed validation: Required value"
    ):
        NeedsValue()  # config.validate() runs on construction
    assert NeedsValue(config=RequiredConfig(value=1)).config.value == 1


def test_pickle_round_trip():
    task = ParentTask()
    task.config.child.offset = 4
    clone = pickle.loads(pickle.dumps(task))
    assert type(clone) is ParentTask and clone.getFullName() == "parent"
    assert clone.config.child.offset == 4 and clone.config == task.config
    assert list(clone.getTaskDict()) == list(task.getTaskDict())


# ----------------------------------------------------------------------------- timing and metadata


def test_timer_and_time_method_metadata_keys():
    task = ParentTask()
    x = jnp.arange(3.0)
    result = task.run(x)
    np.testing.assert_allclose(np.asarray(result.result), np.arange(3.0) * 2.0 + 1.0)

    md = task.metadata
    expected = {f"{p}{phase}{item}" for p in ("run", "inner") for phase in ("Start", "End") for item in ITEMS}
    assert md.names() == expected | {"__version__", "nodeName"}
    assert md["__version__"] == 1 and md["nodeName"] == platform.node()
    assert len([k for k in md.names() if k.startswith("run")]) == 22
    assert md["runStartCpuTime"] <= md["innerStartCpuTime"] <= md["innerEndCpuTime"] <= md["runEndCpuTime"]
    assert (
        isinstance(md["runStartMaxResidentSetSize"], int) and md["runStartMaxResidentSetSize"] > 2**20
    )  # bytes
    utc = datetime.datetime.fromisoformat(md["runStartUtc"])
    assert utc.tzinfo is not None and abs(utc - datetime.datetime.now(datetime.UTC)).total_seconds() < 60
    assert md.getArray("runStartCpuTime") == [md["runStartCpuTime"]]

    task.run(x)  # arrays are appended
    assert len(md.getArray("runStartCpuTime")) == 2 and len(md.getArray("innerEndUtc")) == 2
    assert md.getArray("runEndCpuTime")[0] <= md.getArray("runStartCpuTime")[1]
    assert md["runEndCpuTime"] == md.getArray("runEndCpuTime")[-1]

    full = task.getFullMetadata()
    assert list(full.keys()) == ["parent", "parent:child", "parent:child:grand", "parent:other"]
    assert full["parent:child:grand"] is task.child.grand.metadata  # not a copy
    assert full["parent:child.lastOffset"] == 1
    assert "parent:child:grand.runEndCpuTime" in full.names()
    assert len(full["parent:child:grand"].getArray("runEndUtc")) == 2
    assert full["parent:other"].names() == set()  # never ran
    assert set(full.to_dict()) == {"parent", "parent:child", "parent:child:grand", "parent:other"}


def test_empty_metadata_empties_every_task():
    task = ParentTask()
    task.run(1.0)
    assert len(task.child.grand.metadata) > 0
    task.child.emptyMetadata()  # from any task in the tree
    assert all(len(ref().metadata) == 0 for ref in task.getTaskDict().values())
    assert all(len(v) == 0 for _, v in task.getFullMetadata().items())


def test_end_entries_are_written_on_exceptions():
    class Failing(Task):
        _DefaultName = "failing"

        @timeMethod
        def run(self):
            raise ValueError("boom")

    task = Failing()
    with pytest.raises(ValueError, match="boom"):
        task.run()
    assert "runEndCpuTime" in task.metadata
    with pytest.raises(KeyError):
        with task.timer("block"):
            raise KeyError("x")
    assert "blockEndUtc" in task.metadata and "blockStartUtc" in task.metadata


def test_time_method_blocks_on_jax_results_before_end(monkeypatch):
    calls = []
    real = jax.block_until_ready

    def spy(x):
        calls.append(("block", "runEndUtc" in task.child.grand.metadata, x))
        return real(x)

    monkeypatch.setattr(jax, "block_until_ready", spy)
    task = ParentTask()
    result = task.child.grand.run(jnp.ones((64, 64)))
    assert result.out.is_ready()
    grandCalls = [c for c in calls if any(a is result.out for a in c[2])]
    assert len(grandCalls) == 1 and grandCalls[0][1] is False  # blocked before the End entry was written


def test_block_until_ready_finds_arrays_in_structs_and_objects(monkeypatch):
    seen = []
    monkeypatch.setattr(jax, "block_until_ready", lambda xs: seen.extend(xs) or xs)
    a, b, c, d = (jnp.full(2, float(i)) for i in range(4))
    image = types.SimpleNamespace(array=b)

    class Exposure:
        def __init__(self):
            self.image = image
            self.mask = np.zeros(2)
            self.extra = {"psf": c}

    value = Struct(diff=Exposure(), pair=(a, 1, "s"), tree={"k": [d]}, none=None)
    assert _base.blockUntilReady(value) is value
    assert {id(x) for x in seen} == {id(a), id(b), id(c), id(d)}


def test_timer_log_line_goes_to_timer_logger(caplog):
    task = ParentTask()
    with caplog.at_level(logging.DEBUG, logger="timer.jaxdiff.parent.other"):
        task.other.run(1.0)
    records = [r for r in caplog.records if r.name == "timer.jaxdiff.parent.other"]
    assert len(records) == 2
    assert records[0].levelno == logging.DEBUG and "runStartCpuTime=" in records[0].getMessage()
    assert "runEndInvoluntaryContextSwitches=" in records[1].getMessage()


def test_log_info_on_a_plain_object():
    holder = types.SimpleNamespace(metadata=TaskMetadata())
    logInfo(holder, "fooStart")
    logInfo(holder, "fooStart")
    assert len(holder.metadata.getArray("fooStartCpuTime")) == 2
    assert holder.metadata.paramNames(topLevelOnly=True) == {f"fooStart{i}" for i in ITEMS} | {
        "__version__",
        "nodeName",
    }


def test_disable_timer_env_var(monkeypatch):
    monkeypatch.setenv("LSST_UTILS_DISABLE_TIMER", "1")

    def run(self):
        return 1

    assert timeMethod(run) is run
    monkeypatch.delenv("LSST_UTILS_DISABLE_TIMER")
    assert timeMethod(run) is not run


# ----------------------------------------------------------------------------- Struct


def test_struct_behaviour():
    s = Struct(a=1, b="x")
    assert (s.a, s.b, len(s)) == (1, "x", 2)
    assert repr(s) == "Struct(a=1; b=x)"  # str() of the values, as LSST
    assert s.getDict() == {"a": 1, "b": "x"}
    s.getDict()["a"] = 5
    assert s.a == 1
    s.c = 3.0  # plain assignment adds items
    assert len(s) == 3
    t = s.copy()
    assert t == s and t is not s
    t.a = 2
    assert t != s and s.a == 1
    u = Struct(z=0)
    u.mergeItems(s, "a", "c")
    assert u.getDict() == {"z": 0, "a": 1, "c": 3.0}
    u2 = Struct()
    u2.mergeItems(s)
    assert u2 == s
    assert Struct(a=1) == types.SimpleNamespace(a=1)


def test_struct_errors():
    with pytest.raises(RuntimeError, match="Item name '__x' invalid; must not begin with __"):
        Struct(__x=1)
    with pytest.raises(RuntimeError, match="Item 'getDict' already exists"):
        Struct(getDict=1)
    s = Struct(a=1)
    with pytest.raises(RuntimeError, match="Item 'a' already exists"):
        s.mergeItems(Struct(a=2))


# ----------------------------------------------------------------------------- TaskMetadata


def test_task_metadata_scalars_arrays_nested():
    md = TaskMetadata()
    md["a"] = 1
    md["b"] = np.float64(2.5)
    assert type(md["b"]) is float
    md["arr"] = [1, 2, 3]
    assert md["arr"] == 3 and md.getArray("arr") == [1, 2, 3]
    md["nested.x.y"] = "deep"
    assert isinstance(md["nested"], TaskMetadata) and md["nested.x.y"] == "deep"
    assert md["nested"]["x.y"] == "deep"
    md.add("a", 5)  # scalar promoted to array
    assert md["a"] == 5 and md.getArray("a") == [1, 5]
    md.add("a", [6, 7])
    assert md.getArray("a") == [1, 5, 6, 7]
    md.add("new", True)
    assert md.getArray("new") == [True] and md.getScalar("new") is True
    assert md.getArray("b") == [2.5]
    assert md.names() == {"a", "b", "arr", "new", "nested", "nested.x", "nested.x.y"}
    assert md.paramNames(topLevelOnly=True) == {"a", "b", "arr", "new"}
    assert md.paramNames(topLevelOnly=False) == {"a", "b", "arr", "new", "nested.x.y"}
    assert md.keys() == ("b", "arr", "a", "new", "nested")  # scalars, arrays, nested
    assert len(md) == 5 and "nested.x.y" in md and "nested.q" not in md and "zz" not in md
    assert md.to_dict() == {
        "b": 2.5,
        "arr": [1, 2, 3],
        "a": [1, 5, 6, 7],
        "new": [True],
        "nested": {"x": {"y": "deep"}},
    }
    assert TaskMetadata.from_dict(md.to_dict()) == md
    md["arr"] = "now a scalar"  # re-assignment removes the other slot
    assert md.getArray("arr") == ["now a scalar"]
    del md["nested.x.y"]
    assert "nested.x" in md and "nested.x.y" not in md
    del md["a"]
    assert "a" not in md
    assert md.get("missing", 42) == 42
    with pytest.raises(KeyError, match="'missing' not found"):
        md["missing"]
    with pytest.raises(KeyError):
        del md["missing"]


def test_task_metadata_type_checks():
    md = TaskMetadata()
    with pytest.raises(ValueError, match="does not support values of type None"):
        md["x"] = None
    with pytest.raises(ValueError, match="does not support values of type"):
        md["x"] = object()
    with pytest.raises(ValueError, match="one type"):
        md["x"] = [1, "a"]
    md["f"] = 1.5
    with pytest.raises(ValueError, match="Cannot add str values to 'f'"):
        md.add("f", "text")
    md["sub"] = {"k": 1}
    with pytest.raises(ValueError, match="nested TaskMetadata"):
        md.add("sub", 1)
    with pytest.raises(ValueError, match="Cannot add nested metadata"):
        md.add("g", {"k": 1})
    with pytest.raises(KeyError, match="empty component"):
        md["a..b"] = 1
    with pytest.raises(KeyError, match="not a string"):
        md[3] = 1
    md["arr"] = np.arange(3)
    assert md.getArray("arr") == [0, 1, 2] and type(md["arr"]) is int
