"""A small, dependency-free equivalent of ``lsst.pex.config``.

Configs are mutable objects whose fields are declared as class attributes::

    class MyConfig(Config):
        size = RangeField(dtype=int, doc="Kernel size.", default=21, min=1)
        names = ListField(dtype=str, doc="Mask planes.", default=("BAD", "SAT"))

Semantics follow pex_config: instantiation sets the field defaults, runs the `Config.setDefaults`
hook and then applies keyword overrides; every assignment is type-checked (with autocasting of
numeric types) and runs the field's ``check`` immediately, raising `FieldValidationError`;
`Config.validate` checks required values, list lengths and cross-field constraints; `Config.freeze`
makes the whole tree read-only.

A `Config` is mutable and therefore unhashable, so it cannot be a `jax.jit` static argument.
`Config.to_params` returns an immutable, hashable snapshot (`ConfigParams`) for that purpose.
"""

from __future__ import annotations

import ast
import copy
import difflib
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableSequence, Sequence
from typing import Any

__all__ = [
    "Config",
    "ConfigChoiceField",
    "ConfigField",
    "ConfigParams",
    "ConfigurableField",
    "ChoiceField",
    "Field",
    "FieldValidationError",
    "ListField",
    "RangeField",
]


def _join(prefix: str | None, name: str) -> str:
    if not prefix:
        return name
    return prefix + name if name.startswith("[") else f"{prefix}.{name}"


class FieldValidationError(ValueError):
    """Raised when a config field is given an invalid value, or a frozen config is modified.

    Parameters
    ----------
    field : `Field`
        The offending field.
    config : `Config`
        The config instance that holds the field.
    msg : `str`
        What is wrong, and how to fix it.
    """

    def __init__(self, field: Field, config: Config, msg: str):
        self.fieldType = type(field)
        self.fieldName = field.name
        self.fullname = _join(config._name, field.name)
        self.configType = type(config)
        super().__init__(
            f"{self.fieldType.__name__} '{self.fullname}' of {self.configType.__name__} "
            f"failed validation: {msg}"
        )


# --------------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------------


def _castScalar(dtype: type, value: Any) -> tuple[bool, Any]:
    """Autocast ``value`` to ``dtype``; return ``(ok, castValue)``.

    ``float`` accepts any `numbers.Real` (numpy floats and ints included), ``int`` any
    `numbers.Integral` (numpy ints included, floats rejected), ``complex`` any `numbers.Complex`;
    `bool` is never accepted for a numeric field (stricter than pex_config, which casts ``True`` to
    ``1``), and a `bool` field accepts only `bool`.
    """
    if dtype is bool or isinstance(value, bool):
        return (dtype is bool and isinstance(value, bool)), value
    for abc, kind in ((numbers.Integral, int), (numbers.Real, float), (numbers.Complex, complex)):
        if dtype is kind:
            return (True, kind(value)) if isinstance(value, abc) else (False, value)
    return isinstance(value, dtype), value


class Field:
    """A typed scalar config field.

    Parameters
    ----------
    dtype : `type`
        One of `str`, `bool`, `int`, `float`, `complex`.
    doc : `str`
        Documentation.
    default : optional
        Default value (`None` means "no default"; `validate` then fails unless ``optional``).
    check : callable, optional
        ``check(value) -> bool``, run on every non-`None` assignment.
    optional : `bool`, optional
        Whether `None` is a valid value at `Config.validate` time.
    deprecated : `str`, optional
        If given, assigning the field (other than its default) emits a `FutureWarning` with this text.
    """

    supportedTypes: tuple[type, ...] = (str, bool, int, float, complex)

    def __init__(
        self,
        dtype: type,
        doc: str,
        default: Any = None,
        check: Callable[[Any], bool] | None = None,
        optional: bool = False,
        deprecated: str | None = None,
    ):
        if dtype not in self.supportedTypes:
            raise ValueError(f"Unsupported Field dtype {dtype!r}; use one of {self.supportedTypes}.")
        self.dtype = dtype
        self.doc = doc
        self.check = check
        self.optional = optional
        self.deprecated = deprecated
        self.name = "<unbound>"
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self._owner = owner

    def __reduce__(self):
        # Pickle bound fields by reference (their checks may be lambdas).
        if getattr(self, "_owner", None) is None:
            return object.__reduce__(self)
        return (getattr, (self._owner, self.name))

    # -- descriptor protocol ----------------------------------------------------------------------
    def __get__(self, instance: Config | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance._storage[self.name]

    def __set__(self, instance: Config, value: Any) -> None:
        self._assign(instance, value, label="assignment")

    def _assign(self, instance: Config, value: Any, label: str) -> None:
        if instance._frozen:
            raise FieldValidationError(self, instance, "Cannot modify a frozen Config")
        if self.deprecated and label != "default":
            warnings.warn(f"Config field {self.name} is deprecated: {self.deprecated}", FutureWarning, 2)
        value = self._convert(instance, value)
        instance._storage[self.name] = value
        instance._history.setdefault(self.name, []).append((self._historyValue(value), label))

    def _convert(self, instance: Config, value: Any) -> Any:
        if value is None:
            return None
        return self._checkScalar(instance, value, self.check, what="Value")

    def _checkScalar(self, instance: Config, value: Any, check: Callable | None, what: str) -> Any:
        ok, value = _castScalar(self.dtype, value)
        if not ok:
            raise FieldValidationError(
                self,
                instance,
                f"{what} {value!r} has type {type(value).__name__}, expected {self.dtype.__name__}; "
                f"assign a value of type {self.dtype.__name__} instead.",
            )
        if check is not None and not check(value):
            raise FieldValidationError(
                self, instance, f"{what} {value!r} is not a valid value{self._hint()}."
            )
        return value

    def _hint(self) -> str:
        rule = getattr(self.check, "description", None)
        return f"; it {rule}" if rule else f" (field doc: {self.doc})"

    def _historyValue(self, value: Any) -> Any:
        return value

    # -- per-field hooks used by Config -----------------------------------------------------------
    def _setDefault(self, instance: Config) -> None:
        self._assign(instance, self.default, label="default")

    def validate(self, instance: Config) -> None:
        """Raise `FieldValidationError` if the stored value is invalid."""
        if not self.optional and self.__get__(instance) is None:
            raise FieldValidationError(self, instance, "Required value cannot be None; set it.")

    def _subconfigs(self, instance: Config) -> list[tuple[str, Config]]:
        return []

    def _leaves(self, instance: Config) -> list[tuple[str, Any]]:
        return [(self.name, self.__get__(instance))]

    def _toDict(self, instance: Config) -> Any:
        return self.__get__(instance)

    def _toParams(self, instance: Config) -> Any:
        return self.__get__(instance)


class RangeField(Field):
    """A numeric `Field` restricted to an interval.

    Parameters
    ----------
    min, max : `int` or `float`, optional
        Bounds (`None` = unbounded).
    inclusiveMin, inclusiveMax : `bool`, optional
        Whether the bounds are allowed values (defaults as pex_config: ``[min, max)``).
    """

    supportedTypes = (int, float)

    def __init__(
        self,
        dtype,
        doc,
        default=None,
        optional=False,
        min=None,
        max=None,
        inclusiveMin=True,
        inclusiveMax=False,
        deprecated=None,
    ):
        self.min, self.max = min, max
        self.inclusiveMin, self.inclusiveMax = inclusiveMin, inclusiveMax

        def inRange(x):
            lowOk = min is None or (x >= min if inclusiveMin else x > min)
            highOk = max is None or (x <= max if inclusiveMax else x < max)
            return lowOk and highOk

        super().__init__(dtype, doc, default=default, check=inRange, optional=optional, deprecated=deprecated)

    def _hint(self) -> str:
        low = "(-inf" if self.min is None else ("[" if self.inclusiveMin else "(") + str(self.min)
        high = "inf)" if self.max is None else str(self.max) + ("]" if self.inclusiveMax else ")")
        return f"; it must lie in {low}, {high}"


class ChoiceField(Field):
    """A `Field` whose value must be one of ``allowed`` (a mapping value → description)."""

    def __init__(self, dtype, doc, allowed: Mapping, default=None, optional=True, deprecated=None):
        if not allowed:
            raise ValueError("ChoiceField needs a non-empty 'allowed' mapping.")
        self.allowed = dict(allowed)
        super().__init__(
            dtype,
            doc,
            default=default,
            check=self.allowed.__contains__,
            optional=optional,
            deprecated=deprecated,
        )

    def _hint(self) -> str:
        return f"; choose one of {sorted(self.allowed, key=str)}"


class _ListProxy(MutableSequence):
    """List stored by a `ListField`; validates items on every mutation and honours freezing."""

    def __init__(self, config: Config, field: ListField, values: Iterable):
        self._config = config
        self._field = field
        self._list = [field._checkItem(config, v, i) for i, v in enumerate(values)]

    def _mutable(self) -> None:
        if self._config._frozen:
            raise FieldValidationError(self._field, self._config, "Cannot modify a frozen Config")

    def __getitem__(self, i):
        return self._list[i]

    def __setitem__(self, i, value):
        self._mutable()
        if isinstance(i, slice):
            value = [self._field._checkItem(self._config, v, i) for v in value]
        else:
            value = self._field._checkItem(self._config, value, i)
        self._list[i] = value

    def __delitem__(self, i):
        self._mutable()
        del self._list[i]

    def insert(self, i, value):
        self._mutable()
        self._list.insert(i, self._field._checkItem(self._config, value, i))

    def __len__(self):
        return len(self._list)

    def __eq__(self, other):
        if isinstance(other, (str, bytes)) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self._list, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return repr(self._list)


class ListField(Field):
    """A list of typed items.

    Parameters
    ----------
    itemCheck : callable, optional
        Run on every item at assignment and mutation time.
    listCheck : callable, optional
        Run on the whole list by `Config.validate`.
    length, minLength, maxLength : `int`, optional
        Length constraints, checked by `Config.validate` (as pex_config).
    """

    def __init__(
        self,
        dtype,
        doc,
        default=None,
        optional=False,
        listCheck=None,
        itemCheck=None,
        length=None,
        minLength=None,
        maxLength=None,
        deprecated=None,
    ):
        self.itemCheck, self.listCheck = itemCheck, listCheck
        self.length, self.minLength, self.maxLength = length, minLength, maxLength
        super().__init__(dtype, doc, default=default, optional=optional, deprecated=deprecated)

    def _checkItem(self, instance, value, index):
        return self._checkScalar(instance, value, self.itemCheck, what=f"Item at position {index} with value")

    def _convert(self, instance, value):
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise FieldValidationError(
                self, instance, f"Value {value!r} is not a list; assign a list or tuple."
            )
        return _ListProxy(instance, self, value)

    def _historyValue(self, value):
        return None if value is None else list(value)

    def validate(self, instance):
        super().validate(instance)
        value = self.__get__(instance)
        if value is None:
            return
        n = len(value)
        msg = None
        if self.length is not None and n != self.length:
            msg = f"Required list length={self.length}, got {n}"
        elif self.minLength is not None and n < self.minLength:
            msg = f"Minimum allowed list length={self.minLength}, got {n}"
        elif self.maxLength is not None and n > self.maxLength:
            msg = f"Maximum allowed list length={self.maxLength}, got {n}"
        elif self.listCheck is not None and not self.listCheck(value):
            msg = f"{list(value)} is not a valid value"
        if msg is not None:
            raise FieldValidationError(self, instance, msg)

    def _leaves(self, instance):
        value = self.__get__(instance)
        return [(self.name, None if value is None else list(value))]

    def _toDict(self, instance):
        value = self.__get__(instance)
        return None if value is None else list(value)

    def _toParams(self, instance):
        value = self.__get__(instance)
        return None if value is None else tuple(value)


class ConfigField(Field):
    """A nested config of type ``dtype`` (a `Config` subclass), defaulting to ``dtype()``.

    Assigning a ``dtype`` instance stores a copy; assigning the class resets to its defaults.
    """

    def __init__(self, dtype, doc, default=None, check=None, deprecated=None):
        if not (isinstance(dtype, type) and issubclass(dtype, Config)):
            raise ValueError(f"ConfigField dtype must be a Config subclass, got {dtype!r}.")
        self.dtype = dtype
        self.doc, self.check, self.optional, self.deprecated = doc, check, False, deprecated
        self.name = "<unbound>"
        self.default = default

    def _convert(self, instance, value):
        if value is self.dtype:
            value = self.dtype()
        elif type(value) is not self.dtype:
            raise FieldValidationError(
                self,
                instance,
                f"Value {value!r} has type {type(value).__name__}, expected {self.dtype.__name__}.",
            )
        else:
            value = copy.deepcopy(value)
        if self.check is not None and not self.check(value):
            raise FieldValidationError(self, instance, f"Value {value!r} is not a valid value.")
        value._thaw()
        value._setName(_join(instance._name, self.name))
        return value

    def _setDefault(self, instance):
        self._assign(instance, self.dtype if self.default is None else self.default, label="default")

    def _historyValue(self, value):
        return None

    def validate(self, instance):
        self.__get__(instance).validate()

    def _subconfigs(self, instance):
        return [(self.name, self.__get__(instance))]

    def _leaves(self, instance):
        return []

    def _toDict(self, instance):
        return self.__get__(instance).toDict()

    def _toParams(self, instance):
        return self.__get__(instance).to_params()


class _ConfigurableInstance:
    """Value of a `ConfigurableField`: a target (usually a Task class) plus its config.

    Attribute access not found on this proxy is forwarded to the config (``.value``).
    """

    def __init__(self, owner: Config, field: ConfigurableField, target, ConfigClass, value=None):
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_field", field)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_ConfigClass", ConfigClass)
        if value is None:
            value = ConfigClass()
        value._setName(_join(owner._name, field.name))
        object.__setattr__(self, "_value", value)

    target = property(lambda self: self._target, doc="Target callable (usually a Task class).")
    ConfigClass = property(lambda self: self._ConfigClass, doc="Config class of the target.")
    value = property(lambda self: self._value, doc="The sub-config (an instance of ``ConfigClass``).")

    def apply(self, *args, **kwargs):
        """Call ``target(*args, config=self.value, **kwargs)`` (how `Task.makeSubtask` builds subtasks)."""
        return self._target(*args, config=self._value, **kwargs)

    def retarget(self, target, ConfigClass=None):
        """Change the target; the sub-config is reset to defaults if ``ConfigClass`` changes."""
        if self._owner._frozen:
            raise FieldValidationError(self._field, self._owner, "Cannot modify a frozen Config")
        ConfigClass = self._field._configClassOf(target, ConfigClass)
        object.__setattr__(self, "_target", target)
        if ConfigClass is not self._ConfigClass:
            object.__setattr__(self, "_ConfigClass", ConfigClass)
            value = ConfigClass()
            value._setName(_join(self._owner._name, self._field.name))
            object.__setattr__(self, "_value", value)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._value, name)

    def __setattr__(self, name, value):
        setattr(self._value, name, value)

    def __eq__(self, other):
        if not isinstance(other, _ConfigurableInstance):
            return NotImplemented
        return (self._target, self._ConfigClass, self._value) == (
            other._target,
            other._ConfigClass,
            other._value,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"ConfigurableInstance(target={self._target!r}, value={self._value!r})"


class ConfigurableField(Field):
    """A config for a retargetable callable (usually a Task), as created by `Task.makeField`.

    Parameters
    ----------
    doc : `str`
        Documentation.
    target : callable
        Called as ``target(*args, config=subConfig, **kwargs)`` by ``apply``.
    ConfigClass : `type`, optional
        Config class of the target; defaults to ``target.ConfigClass``.
    """

    def __init__(self, doc, target, ConfigClass=None, default=None, check=None, deprecated=None):
        self.doc, self.check, self.optional, self.deprecated = doc, check, False, deprecated
        self.target = target
        self.ConfigClass = self._configClassOf(target, ConfigClass)
        self.dtype = self.ConfigClass
        self.name = "<unbound>"
        self.default = default

    @staticmethod
    def _configClassOf(target, ConfigClass):
        if not callable(target):
            raise TypeError(f"ConfigurableField target {target!r} is not callable.")
        ConfigClass = ConfigClass if ConfigClass is not None else getattr(target, "ConfigClass", None)
        if not (isinstance(ConfigClass, type) and issubclass(ConfigClass, Config)):
            raise TypeError(
                f"Cannot determine the ConfigClass of target {target!r}; give the target a ConfigClass "
                "attribute or pass ConfigClass= explicitly."
            )
        return ConfigClass

    def _convert(self, instance, value):
        if isinstance(value, _ConfigurableInstance):
            return _ConfigurableInstance(
                instance, self, value.target, value.ConfigClass, copy.deepcopy(value.value)
            )
        old = instance._storage.get(self.name)
        target, ConfigClass = (
            (self.target, self.ConfigClass) if old is None else (old.target, old.ConfigClass)
        )
        if value is ConfigClass:
            value = ConfigClass()
        elif not isinstance(value, ConfigClass):
            raise FieldValidationError(
                self, instance, f"Value {value!r} is not a {ConfigClass.__name__}; assign an instance of it."
            )
        else:
            value = copy.deepcopy(value)
            value._thaw()
        return _ConfigurableInstance(instance, self, target, ConfigClass, value)

    def _setDefault(self, instance):
        self._assign(instance, self.ConfigClass if self.default is None else self.default, label="default")

    def _historyValue(self, value):
        return None

    def validate(self, instance):
        self.__get__(instance).value.validate()

    def _subconfigs(self, instance):
        return [(self.name, self.__get__(instance).value)]

    def _leaves(self, instance):
        return [(self.name + ".<target>", self.__get__(instance).target)]

    def _toDict(self, instance):
        return self.__get__(instance).value.toDict()

    def _toParams(self, instance):
        return self.__get__(instance).value.to_params()


class _ChoiceProxy(Mapping):
    """Value of a `ConfigChoiceField`: one config per type name, with ``name`` selecting ``active``."""

    def __init__(self, owner: Config, field: ConfigChoiceField):
        self._owner, self._field = owner, field
        self._dict = {key: T() for key, T in field.typemap.items()}
        self._selection = field.default
        self._setName(_join(owner._name, field.name))

    def _setName(self, prefix):
        for key, cfg in self._dict.items():
            cfg._setName(f"{prefix}[{key!r}]")

    def _mutable(self):
        if self._owner._frozen:
            raise FieldValidationError(self._field, self._owner, "Cannot modify a frozen Config")

    @property
    def types(self):
        """The mapping of type name → config class."""
        return self._field.typemap

    @property
    def name(self) -> str | None:
        """Name of the selected (active) type."""
        return self._selection

    @name.setter
    def name(self, value):
        self._mutable()
        if value is not None and value not in self._dict:
            raise FieldValidationError(
                self._field, self._owner, f"Unknown choice {value!r}; choose one of {list(self._dict)}."
            )
        self._selection = value

    @property
    def active(self) -> Config | None:
        """The selected sub-config (`None` when no type is selected)."""
        return None if self._selection is None else self._dict[self._selection]

    def __getitem__(self, key):
        try:
            return self._dict[key]
        except KeyError:
            raise KeyError(f"{key!r} is not one of the choices {list(self._dict)}") from None

    def __setitem__(self, key, value):
        self._mutable()
        T = self._field.typemap.get(key)
        if T is None:
            raise KeyError(f"{key!r} is not one of the choices {list(self._dict)}")
        if value is T:
            value = T()
        elif type(value) is not T:
            raise FieldValidationError(self._field, self._owner, f"Value for {key!r} must be a {T.__name__}.")
        else:
            value = copy.deepcopy(value)
            value._thaw()
        value._setName(f"{_join(self._owner._name, self._field.name)}[{key!r}]")
        self._dict[key] = value

    def __iter__(self):
        return iter(self._dict)

    def __len__(self):
        return len(self._dict)

    def __eq__(self, other):
        if not isinstance(other, _ChoiceProxy):
            return NotImplemented
        return self._selection == other._selection and self._dict == other._dict

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"ConfigChoice(name={self._selection!r}, active={self.active!r})"


class ConfigChoiceField(Field):
    """Holds one config per entry of ``typemap``; ``.name`` selects which is ``.active``.

    Parameters
    ----------
    doc : `str`
        Documentation.
    typemap : `dict` [`str`, `type`]
        Choice name → `Config` subclass.
    default : `str`, optional
        Initially selected choice.
    optional : `bool`, optional
        Whether "no selection" passes `Config.validate`.
    """

    def __init__(self, doc, typemap, default=None, optional=False, deprecated=None):
        self.doc, self.check, self.optional, self.deprecated = doc, None, optional, deprecated
        self.typemap = dict(typemap)
        if default is not None and default not in self.typemap:
            raise ValueError(f"ConfigChoiceField default {default!r} is not in typemap {list(self.typemap)}.")
        self.dtype = _ChoiceProxy
        self.name = "<unbound>"
        self.default = default

    def _convert(self, instance, value):
        proxy = _ChoiceProxy(instance, self)
        if isinstance(value, _ChoiceProxy):
            for key, cfg in value.items():
                proxy[key] = cfg
            proxy._selection = value.name
        elif value is not None:
            raise FieldValidationError(
                self, instance, f"Cannot assign {value!r}; set '.name' or items instead."
            )
        return proxy

    def _setDefault(self, instance):
        self._assign(instance, None, label="default")

    def _historyValue(self, value):
        return None

    def validate(self, instance):
        active = self.__get__(instance).active
        if active is None:
            if not self.optional:
                raise FieldValidationError(self, instance, "Required value cannot be None; select a .name.")
            return
        active.validate()

    def _subconfigs(self, instance):
        return [(f"{self.name}[{key!r}]", cfg) for key, cfg in self.__get__(instance).items()]

    def _leaves(self, instance):
        return [(self.name + ".name", self.__get__(instance).name)]

    def _toDict(self, instance):
        proxy = self.__get__(instance)
        return {"name": proxy.name, "values": {key: cfg.toDict() for key, cfg in proxy.items()}}

    def _toParams(self, instance):
        proxy = self.__get__(instance)
        active = None if proxy.active is None else proxy.active.to_params()
        return ConfigParams("ConfigChoice", (("name", proxy.name), ("active", active)))


# --------------------------------------------------------------------------------------------------
# Frozen, hashable parameters
# --------------------------------------------------------------------------------------------------


class ConfigParams(Mapping):
    """Immutable, hashable snapshot of a `Config`, usable as a `jax.jit` static argument.

    Field values are reachable as attributes or items (``params.kernelSize``,
    ``params["kernelSize"]``). Lists become tuples, nested configs nested `ConfigParams`, and a
    `ConfigChoiceField` a ``ConfigParams`` with ``name`` and ``active`` (only the selected
    sub-config, so edits to inactive choices do not change the hash). Two snapshots are equal
    (and hash equally) when they come from the same config class and all values are equal.
    """

    __slots__ = ("_typeName", "_items", "_index", "_hash")

    def __init__(self, typeName: str, items: tuple[tuple[str, Any], ...]):
        object.__setattr__(self, "_typeName", typeName)
        object.__setattr__(self, "_items", tuple(items))
        object.__setattr__(self, "_index", dict(self._items))
        object.__setattr__(self, "_hash", hash((typeName, self._items)))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._index[name]
        except KeyError:
            raise AttributeError(f"{self._typeName} params have no field {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError(
            f"{self._typeName} params are immutable; change the Config and call to_params()."
        )

    def __getitem__(self, key):
        return self._index[key]

    def __iter__(self):
        return iter(self._index)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        if not isinstance(other, ConfigParams):
            return NotImplemented
        return self._typeName == other._typeName and self._items == other._items

    def __reduce__(self):
        return (ConfigParams, (self._typeName, self._items))

    def __repr__(self):
        body = ", ".join(f"{k}={v!r}" for k, v in self._items)
        return f"{self._typeName}Params({body})"


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class Config:
    """Base class for configs: declare `Field` instances as class attributes.

    Parameters
    ----------
    **kwargs
        Field overrides, applied after the defaults and `setDefaults`.
    """

    _fields: dict[str, Field] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__):
            fields.update({k: v for k, v in vars(base).items() if isinstance(v, Field)})
        cls._fields = fields

    def __init__(self, **kwargs: Any):
        object.__setattr__(self, "_storage", {})
        object.__setattr__(self, "_history", {})
        object.__setattr__(self, "_frozen", False)
        object.__setattr__(self, "_name", None)
        for field in self._fields.values():
            field._setDefault(self)
        self.setDefaults()
        self.update(**kwargs)

    def setDefaults(self) -> None:
        """Override to change defaults after construction; subclasses must call ``super().setDefaults()``."""

    def update(self, **kwargs: Any) -> None:
        """Assign several fields at once."""
        for name, value in kwargs.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._fields or name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        close = difflib.get_close_matches(name, self._fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AttributeError(
            f"{type(self).__name__} has no field {name!r}.{hint} Valid fields: {', '.join(self._fields)}."
        )

    def _setName(self, name: str | None) -> None:
        object.__setattr__(self, "_name", name)
        for field in self._fields.values():
            for suffix, sub in field._subconfigs(self):
                sub._setName(_join(name, suffix))

    # -- mapping-like helpers --------------------------------------------------------------------
    def __iter__(self):
        return iter(self._fields)

    def keys(self):
        """Field names."""
        return list(self._fields)

    def values(self):
        """Field values."""
        return [getattr(self, k) for k in self._fields]

    def items(self):
        """Return the ``(name, value)`` pairs."""
        return [(k, getattr(self, k)) for k in self._fields]

    @property
    def history(self) -> dict[str, list[tuple[Any, str]]]:
        """Per-field list of ``(value, label)`` assignments (label: default/assignment)."""
        return self._history

    # -- validation and freezing -----------------------------------------------------------------
    def validate(self) -> None:
        """Validate every field (recursively); subclasses add cross-field checks after ``super().validate()``.

        Raises
        ------
        FieldValidationError
            If a field value is invalid.
        """
        for field in self._fields.values():
            field.validate(self)

    def _thaw(self) -> None:
        object.__setattr__(self, "_frozen", False)
        for field in self._fields.values():
            for _, sub in field._subconfigs(self):
                sub._thaw()

    def freeze(self) -> None:
        """Make this config and all nested configs read-only."""
        object.__setattr__(self, "_frozen", True)
        for field in self._fields.values():
            for _, sub in field._subconfigs(self):
                sub.freeze()

    # -- conversion -------------------------------------------------------------------------------
    def toDict(self) -> dict[str, Any]:
        """Nested plain-Python `dict` of all field values."""
        return {name: field._toDict(self) for name, field in self._fields.items()}

    def to_params(self) -> ConfigParams:
        """Immutable, hashable snapshot of this config for use as a `jax.jit` static argument."""
        return ConfigParams(
            type(self).__name__, tuple((n, f._toParams(self)) for n, f in self._fields.items())
        )

    def _flat(self, prefix: str = "", targets: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in self._fields.values():
            for suffix, value in field._leaves(self):
                if targets or not suffix.endswith(".<target>"):
                    out[_join(prefix, suffix)] = value
            for suffix, sub in field._subconfigs(self):
                out.update(sub._flat(_join(prefix, suffix), targets))
        return out

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented if not isinstance(other, Config) else False
        return self.compare(other, rtol=0.0, atol=0.0)

    __hash__ = None  # type: ignore[assignment]

    def compare(
        self,
        other: Config,
        shortcut: bool = True,
        rtol: float = 1e-8,
        atol: float = 1e-8,
        output: Callable[[str], Any] | None = None,
    ) -> bool:
        """Compare two configs field by field (floats with tolerance; NaN equals NaN).

        Parameters
        ----------
        other : `Config`
            Config to compare with.
        shortcut : `bool`, optional
            Stop at the first difference.
        rtol, atol : `float`, optional
            Relative and absolute tolerance for floating-point values.
        output : callable, optional
            Called with a message for every difference found.
        """
        if type(other) is not type(self):
            if output is not None:
                output(f"Config types differ: {type(self).__name__} != {type(other).__name__}")
            return False
        mine, theirs = self._flat(), other._flat()
        equal = True
        for key in {**mine, **theirs}:
            a, b = mine.get(key, "<missing>"), theirs.get(key, "<missing>")
            if isinstance(a, float) and isinstance(b, float):
                same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
            else:
                same = a == b
            if not same:
                equal = False
                if output is not None:
                    output(f"Inequality in {key}: {a!r} != {b!r}")
                if shortcut:
                    break
        return equal

    def saveToString(self) -> str:
        """Python-like text (``config.<path>=<literal>`` lines) that `loadFromString` reads back.

        Targets of `ConfigurableField` are not saved.
        """
        lines = [f"config.{key}={value!r}" for key, value in self._flat(targets=False).items()]
        return "\n".join(lines) + "\n"

    def loadFromString(self, text: str) -> None:
        """Apply assignments written by `saveToString` (literal values only; nothing is executed)."""
        for node in ast.parse(text).body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                raise ValueError(f"Unsupported statement in config text: {ast.unparse(node)!r}")
            steps, target = [], node.targets[0]
            while isinstance(target, (ast.Attribute, ast.Subscript)):
                steps.append(target)
                target = target.value
            if not (isinstance(target, ast.Name) and target.id == "config"):
                raise ValueError(f"Assignments must start with 'config.': {ast.unparse(node)!r}")
            obj: Any = self
            value = ast.literal_eval(node.value)
            for i, step in enumerate(reversed(steps)):
                last = i == len(steps) - 1
                if isinstance(step, ast.Attribute):
                    if last:
                        setattr(obj, step.attr, value)
                    else:
                        obj = getattr(obj, step.attr)
                else:
                    key = ast.literal_eval(step.slice)
                    if last:
                        obj[key] = value
                    else:
                        obj = obj[key]

    def __repr__(self):
        body = ", ".join(f"{k}={v!r}" for k, v in self.toDict().items())
        return f"{type(self).__name__}({body})"
