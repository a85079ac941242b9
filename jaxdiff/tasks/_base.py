"""Pure-Python equivalent of the ``lsst.pipe.base`` task shell: `Task`, `Struct`, `TaskMetadata`.

Also provides the ``lsst.utils.timer`` pair `timeMethod` / `logInfo`. The behaviour mirrors LSST
(pipe_base ``task.py`` and ``struct.py``, utils ``timer.py``) with one JAX-specific addition: because JAX
dispatches work asynchronously, timers wait for JAX results before writing their ``...End*``
entries (see `timeMethod` and `Task.timer`). JAX is imported only if the caller already did.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import platform
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from ._config import Config, ConfigurableField

try:
    import resource
except ImportError:  # pragma: no cover - non-POSIX
    resource = None

__all__ = ["Struct", "Task", "TaskMetadata", "TimerHandle", "blockUntilReady", "logInfo", "timeMethod"]

_LOG_PREFIX = "jaxdiff"


# --------------------------------------------------------------------------------------------------
# TaskMetadata
# --------------------------------------------------------------------------------------------------


class TaskMetadata:
    """Hierarchical metadata: scalars, arrays and nested `TaskMetadata`, addressed by dotted keys.

    ``md["a.b"] = 1`` creates the nested metadata ``a`` on demand. `add` appends to an array (a
    scalar is promoted to a one-element array first) and ``md[key]`` on an array returns its last
    element; `getArray` returns the whole list.
    """

    _scalarTypes = (str, int, float, bool)

    def __init__(self) -> None:
        self._scalars: dict[str, Any] = {}
        self._arrays: dict[str, list] = {}
        self._metadata: dict[str, TaskMetadata] = {}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskMetadata:
        """Build from a (nested) mapping."""
        md = cls()
        for key, value in d.items():
            md[key] = value
        return md

    @staticmethod
    def _split(key: str) -> tuple[str, str | None]:
        if not isinstance(key, str):
            raise KeyError(f"Key {key!r} is not a string.")
        head, _, rest = key.partition(".")
        if not head or (_ and not rest):
            raise KeyError(f"Key {key!r} has an empty component.")
        return head, (rest or None)

    @classmethod
    def _scalar(cls, value: Any) -> Any:
        if hasattr(value, "dtype") and getattr(value, "shape", None) == () and hasattr(value, "item"):
            value = value.item()  # numpy / 0-d array scalars
        return value if isinstance(value, cls._scalarTypes) else None

    @classmethod
    def _classify(cls, value: Any) -> tuple[str, Any]:
        """Return ``(slot, convertedValue)`` with slot in {"scalar", "array", "metadata"}."""
        if isinstance(value, TaskMetadata):
            return "metadata", value
        if isinstance(value, Mapping):
            return "metadata", cls.from_dict(value)
        scalar = cls._scalar(value)
        if scalar is not None:
            return "scalar", scalar
        if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
            value = value.tolist()
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            items = [cls._scalar(v) for v in value]
            if any(v is None for v in items) or len({type(v) for v in items}) > 1:
                raise ValueError(
                    f"TaskMetadata arrays must hold items of one type (str/int/float/bool): {value!r}"
                )
            return "array", items
        raise ValueError(f"TaskMetadata does not support values of type {value!r}.")

    def _child(self, head: str, create: bool) -> TaskMetadata:
        if head not in self._metadata:
            if not create:
                raise KeyError(f"'{head}' not found in TaskMetadata")
            self._scalars.pop(head, None)
            self._arrays.pop(head, None)
            self._metadata[head] = TaskMetadata()
        return self._metadata[head]

    def __setitem__(self, key: str, value: Any) -> None:
        head, rest = self._split(key)
        if rest is not None:
            self._child(head, create=True)[rest] = value
            return
        slot, value = self._classify(value)
        for name, store in (("scalar", self._scalars), ("array", self._arrays), ("metadata", self._metadata)):
            if name == slot:
                store[head] = value
            else:
                store.pop(head, None)

    def add(self, key: str, value: Any) -> None:
        """Append ``value`` (a scalar or a list of scalars) to the array ``key``, creating it if needed.

        Raises
        ------
        ValueError
            If ``key`` holds nested metadata, or the value type differs from the array's items.
        """
        head, rest = self._split(key)
        if rest is not None:
            self._child(head, create=True).add(rest, value)
            return
        if head in self._metadata:
            raise ValueError(f"'{head}' holds nested TaskMetadata; cannot add values to it.")
        slot, value = self._classify(value)
        if slot == "metadata":
            raise ValueError(f"Cannot add nested metadata to '{head}'; assign it with md[key] = value.")
        new = [value] if slot == "scalar" else value
        if head in self._scalars:
            self._arrays[head] = [self._scalars.pop(head)]
        old = self._arrays.setdefault(head, [])
        if old and new and type(old[0]) is not type(new[0]):
            raise ValueError(
                f"Cannot add {type(new[0]).__name__} values to '{head}', which holds {type(old[0]).__name__}."
            )
        old.extend(new)

    def __getitem__(self, key: str) -> Any:
        head, rest = self._split(key)
        if rest is not None:
            return self._child(head, create=False)[rest]
        if head in self._scalars:
            return self._scalars[head]
        if head in self._arrays and self._arrays[head]:
            return self._arrays[head][-1]
        if head in self._metadata:
            return self._metadata[head]
        raise KeyError(f"'{key}' not found in TaskMetadata")

    def getScalar(self, key: str) -> Any:
        """Scalar value (last element if ``key`` holds an array)."""
        return self[key]

    def getArray(self, key: str) -> list:
        """All values of ``key`` as a list (a scalar or nested metadata is wrapped in a list)."""
        head, rest = self._split(key)
        if rest is not None:
            return self._child(head, create=False).getArray(rest)
        if head in self._arrays:
            return list(self._arrays[head])
        return [self[head]]

    def get(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]``, or ``default`` if missing."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            head, rest = self._split(key)  # type: ignore[arg-type]
        except KeyError:
            return False
        if rest is not None:
            return head in self._metadata and rest in self._metadata[head]
        return head in self._scalars or head in self._arrays or head in self._metadata

    def __delitem__(self, key: str) -> None:
        head, rest = self._split(key)
        if rest is not None:
            del self._child(head, create=False)[rest]
            return
        for store in (self._scalars, self._arrays, self._metadata):
            if head in store:
                del store[head]
                return
        raise KeyError(f"'{key}' not found in TaskMetadata")

    def __iter__(self) -> Iterator[str]:
        yield from self._scalars
        yield from self._arrays
        yield from self._metadata

    def __len__(self) -> int:
        return len(self._scalars) + len(self._arrays) + len(self._metadata)

    def keys(self) -> tuple[str, ...]:
        """Top-level keys (scalars, then arrays, then nested metadata)."""
        return tuple(self)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Top-level ``(key, value)`` pairs; arrays are given whole."""
        yield from self._scalars.items()
        yield from self._arrays.items()
        yield from self._metadata.items()

    def names(self) -> set[str]:
        """All keys, including every nested key as a dotted path and its parents."""
        out = set()
        for key, value in self.items():
            out.add(key)
            if isinstance(value, TaskMetadata):
                out.update(f"{key}.{sub}" for sub in value.names())
        return out

    def paramNames(self, topLevelOnly: bool) -> set[str]:
        """Keys of leaf values (nested leaves as dotted paths unless ``topLevelOnly``)."""
        out = set()
        for key, value in self.items():
            if not isinstance(value, TaskMetadata):
                out.add(key)
            elif not topLevelOnly:
                out.update(f"{key}.{sub}" for sub in value.paramNames(topLevelOnly=False))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain nested `dict` (arrays as list copies)."""
        return {
            k: v.to_dict() if isinstance(v, TaskMetadata) else (list(v) if isinstance(v, list) else v)
            for k, v in self.items()
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskMetadata):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TaskMetadata({self.to_dict()!r})"


# --------------------------------------------------------------------------------------------------
# Struct
# --------------------------------------------------------------------------------------------------


class Struct(types.SimpleNamespace):
    """Attribute bag returned by ``run`` methods (safer than a named tuple: access is by name only).

    Raises
    ------
    RuntimeError
        If an item name starts with ``__`` or clashes with an existing attribute (e.g. ``getDict``).
    """

    def __init__(self, **keyArgs: Any):
        for name, value in keyArgs.items():
            self.__safeAdd(name, value)

    def __safeAdd(self, name: str, value: Any) -> None:
        if hasattr(self, name):
            raise RuntimeError(f"Item {name!r} already exists")
        if name.startswith("__"):
            raise RuntimeError(f"Item name {name!r} invalid; must not begin with __")
        setattr(self, name, value)

    def getDict(self) -> dict[str, Any]:
        """Shallow copy of the items as a `dict`."""
        return self.__dict__.copy()

    def mergeItems(self, struct: Struct, *nameList: str) -> None:
        """Copy the items ``nameList`` (all items if empty) of ``struct`` into this one."""
        names = nameList or tuple(struct.getDict())
        for name in names:
            self.__safeAdd(name, getattr(struct, name))

    def copy(self) -> Struct:
        """Shallow copy."""
        return Struct(**self.getDict())

    def __len__(self) -> int:
        return len(self.__dict__)

    def __repr__(self) -> str:
        items = "; ".join(f"{name}={value}" for name, value in self.getDict().items())
        return f"{type(self).__name__}({items})"


# --------------------------------------------------------------------------------------------------
# Timing (lsst.utils.timer equivalents)
# --------------------------------------------------------------------------------------------------


def _jaxArrays(obj: Any, jax: Any, depth: int = 4) -> list:
    """Collect the JAX arrays reachable from ``obj``.

    These are pytree leaves, `Struct` items, and (up to ``depth`` levels) attributes of plain
    objects such as exposures.
    """
    found: list = []
    seen: set[int] = set()

    def visit(x: Any, level: int) -> None:
        if id(x) in seen or isinstance(x, (str, bytes, int, float, type, types.ModuleType)):
            return
        seen.add(id(x))
        if isinstance(x, jax.Array):
            found.append(x)
            return
        if isinstance(x, types.SimpleNamespace):
            children = list(vars(x).values())
        else:
            try:
                leaves = jax.tree_util.tree_leaves(x)
            except Exception:  # e.g. a dict with unsortable keys
                leaves = list(x.values()) if isinstance(x, Mapping) else [x]
            if len(leaves) == 1 and leaves[0] is x:
                if level <= 0 or not hasattr(x, "__dict__") or callable(x):
                    return
                children = list(vars(x).values())
            else:
                children = leaves
        for child in children:
            visit(child, level - 1)

    visit(obj, depth)
    return found


def blockUntilReady(obj: Any) -> Any:
    """Wait until every JAX array reachable from ``obj`` is computed; return ``obj``.

    A no-op (and no import) when JAX has not been imported by anyone yet.
    """
    jax = sys.modules.get("jax")
    if jax is not None:
        arrays = _jaxArrays(obj, jax)
        if arrays:
            jax.block_until_ready(arrays)
    return obj


def _rusage() -> dict[str, Any]:
    if resource is None:  # pragma: no cover
        return {}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rssScale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return {
        "UserTime": ru.ru_utime,
        "SystemTime": ru.ru_stime,
        "MaxResidentSetSize": int(ru.ru_maxrss * rssScale),
        "MinorPageFaults": ru.ru_minflt,
        "MajorPageFaults": ru.ru_majflt,
        "BlockInputs": ru.ru_inblock,
        "BlockOutputs": ru.ru_oublock,
        "VoluntaryContextSwitches": ru.ru_nvcsw,
        "InvoluntaryContextSwitches": ru.ru_nivcsw,
    }


def logInfo(
    obj: Any,
    prefix: str,
    logLevel: int = logging.DEBUG,
    metadata: TaskMetadata | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Record UTC time, CPU time and resource usage under keys ``<prefix><Item>``.

    Items, each appended with `TaskMetadata.add`: ``Utc`` (ISO string, timezone-aware), ``CpuTime``,
    ``UserTime``, ``SystemTime``, ``MaxResidentSetSize`` (bytes), ``MinorPageFaults``,
    ``MajorPageFaults``, ``BlockInputs``, ``BlockOutputs``, ``VoluntaryContextSwitches``,
    ``InvoluntaryContextSwitches``; plus scalars ``__version__ = 1`` and ``nodeName``. A log line
    goes to the logger ``"timer." + obj.log.name`` at ``logLevel``.

    Parameters
    ----------
    obj : object
        Usually a `Task`; its ``metadata`` and ``log`` attributes are used when present.
    prefix : `str`
        Key prefix, e.g. ``"runStart"``.
    logLevel : `int`, optional
        Level of the log line.
    metadata : `TaskMetadata`, optional
        Where to write instead of ``obj.metadata``.
    logger : `logging.Logger`, optional
        Logger whose name replaces ``obj.log.name``.
    """
    values = {"Utc": datetime.datetime.now(datetime.UTC).isoformat(), "CpuTime": time.process_time()}
    values.update(_rusage())
    if metadata is None:
        metadata = getattr(obj, "metadata", None)
    if metadata is not None:
        metadata["__version__"] = 1
        metadata["nodeName"] = platform.node()
        for item, value in values.items():
            metadata.add(prefix + item, value)
    if logger is None:
        logger = getattr(obj, "log", None)
    if logger is not None:
        timerLog = logging.getLogger("timer." + logger.name)
        if timerLog.isEnabledFor(logLevel):
            timerLog.log(logLevel, "%s", "; ".join(f"{prefix}{k}={v}" for k, v in values.items()))


def timeMethod(
    _func: Callable | None = None,
    *,
    metadata: TaskMetadata | None = None,
    logger: logging.Logger | None = None,
    logLevel: int = logging.DEBUG,
) -> Callable:
    """Record ``<name>Start*`` / ``<name>End*`` `logInfo` entries around a method (a decorator).

    Before the End entry is written the returned value is waited for (`blockUntilReady`: every JAX
    array in it, including `Struct` items and exposure-like attributes), so the End entries time the
    computation rather than JAX's asynchronous dispatch. If the environment variable
    ``LSST_UTILS_DISABLE_TIMER`` is set when the decorator is applied, the method is returned as is.
    """

    def decorate(func: Callable) -> Callable:
        if "LSST_UTILS_DISABLE_TIMER" in os.environ:
            return func

        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            logInfo(self, func.__name__ + "Start", logLevel, metadata=metadata, logger=logger)
            try:
                return blockUntilReady(func(self, *args, **kwargs))
            finally:
                logInfo(self, func.__name__ + "End", logLevel, metadata=metadata, logger=logger)

        return wrapper

    return decorate if _func is None else decorate(_func)


class TimerHandle:
    """Yielded by `Task.timer`: register JAX values that must be finished before the End entry."""

    def __init__(self) -> None:
        self._values: list = []

    def track(self, value: Any) -> Any:
        """Register ``value`` (anything holding JAX arrays) and return it unchanged."""
        self._values.append(value)
        return value


# --------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------


def _unpickleTask(cls: type, kwargs: dict[str, Any]) -> Task:
    return cls(**kwargs)


class Task:
    """Base class for tasks (equivalent of ``lsst.pipe.base.Task``).

    Parameters
    ----------
    config : `Config`, optional
        Configuration; defaults to ``ConfigClass()`` (top-level task) or the parent's config field
        ``name`` (subtask). It is validated here but not frozen.
    name : `str`, optional
        Brief name; required for subtasks, defaults to ``_DefaultName`` otherwise.
    parentTask : `Task`, optional
        Parent; the subtask then shares the parent's task dictionary and logs to a child logger.
    log : `logging.Logger`, optional
        Parent logger for a top-level task (default: ``"jaxdiff.<fullName>"``).

    Raises
    ------
    RuntimeError
        If no name can be determined.
    FieldValidationError
        If the config does not validate.
    """

    ConfigClass: ClassVar[type[Config]] = Config
    _DefaultName: ClassVar[str | None] = None

    def __init__(
        self,
        config: Config | None = None,
        *,
        name: str | None = None,
        parentTask: Task | None = None,
        log: logging.Logger | None = None,
    ):
        self.metadata = TaskMetadata()
        self._parentTask = parentTask
        if parentTask is not None:
            if name is None:
                raise RuntimeError("name is required for a subtask")
            self._fullName = parentTask._fullName + "." + name
            if config is None:
                config = getattr(parentTask.config, name)
                config = getattr(config, "value", config)  # unwrap a ConfigurableField proxy
            self._taskDict = parentTask._taskDict
            self.log = parentTask.log.getChild(name)
        else:
            name = name or self._DefaultName
            if name is None:
                raise RuntimeError("name is required for a task unless it has attribute _DefaultName")
            self._fullName = name
            if config is None:
                config = self.ConfigClass()
            self._taskDict: dict[str, weakref.ReferenceType[Task]] = {}
            loggerName = name
            if log is not None and log.name:
                loggerName = f"{log.name}.{name}"
            elif not name.startswith(_LOG_PREFIX + "."):
                loggerName = f"{_LOG_PREFIX}.{name}"
            self.log = logging.getLogger(loggerName)
        if "." in name:
            raise RuntimeError(f"Task name {name!r} must not contain '.'; use a plain brief name.")
        self._name = name
        self.config = config
        config.validate()
        self._taskDict[self._fullName] = weakref.ref(self)

    def getName(self) -> str:
        """Brief name of the task (``"sub"``)."""
        return self._name

    def getFullName(self) -> str:
        """Hierarchical name (``"top.sub.subsub"``)."""
        return self._fullName

    def getTaskDict(self) -> dict[str, weakref.ReferenceType[Task]]:
        """Shallow copy of the tree's ``{fullName: weakref(task)}`` dict, in creation order."""
        return self._taskDict.copy()

    def emptyMetadata(self) -> None:
        """Replace the metadata of every task in the tree by an empty `TaskMetadata`."""
        for ref in self._taskDict.values():
            task = ref()
            if task is not None:
                task.metadata = TaskMetadata()

    def getFullMetadata(self) -> TaskMetadata:
        """Metadata of all tasks in the tree, keyed by full name with ``.`` replaced by ``:``.

        The values are the tasks' own metadata objects (not copies).
        """
        full = TaskMetadata()
        for fullName, ref in self._taskDict.items():
            task = ref()
            if task is not None:
                full[fullName.replace(".", ":")] = task.metadata
        return full

    def makeSubtask(self, name: str, **keyArgs: Any) -> None:
        """Create subtask ``name`` from the `ConfigurableField` ``self.config.<name>``.

        The subtask is set as attribute ``name``; ``keyArgs`` are passed to its constructor.
        """
        field = getattr(self.config, name, None)
        if field is None:
            raise KeyError(f"{self.getFullName()}'s config does not have field {name!r}")
        setattr(self, name, field.apply(name=name, parentTask=self, **keyArgs))

    @contextlib.contextmanager
    def timer(self, name: str, logLevel: int = logging.DEBUG) -> Iterator[TimerHandle]:
        """Record ``<name>Start*`` / ``<name>End*`` timing entries around a block of code.

        JAX dispatch is asynchronous, so on normal exit the End entry waits first for every value
        registered with the yielded handle's ``track`` and then for ``jax.effects_barrier()``.
        Note that ``effects_barrier`` only waits for side-effecting computations; pure results
        must be tracked (or blocked on) to be timed::

            with self.timer("convolve") as t:
                out = t.track(convolve(image, kernel))
        """
        logInfo(self, name + "Start", logLevel)
        handle = TimerHandle()
        try:
            yield handle
            blockUntilReady(handle._values)
            jax = sys.modules.get("jax")
            if jax is not None:
                jax.effects_barrier()
        finally:
            logInfo(self, name + "End", logLevel)

    @classmethod
    def makeField(cls, doc: str) -> ConfigurableField:
        """Return a `ConfigurableField` targeting this task, for declaring it as a subtask in a config."""
        return ConfigurableField(doc=doc, target=cls)

    def __reduce__(self):
        kwargs = dict(config=self.config, name=self._name, parentTask=self._parentTask)
        return (_unpickleTask, (type(self), kwargs))
