"""LSST task shell: ``ZogyImagePsfMatchTask``, ``ImagePsfMatchTask`` and their configs.

The classes mirror ``lsst.ip.diffim`` (the public surface of ip_diffim's ``zogy.py`` and ``imagePsfMatch.py``)
on top of a small re-implementation of ``lsst.pipe.base.Task``/``Struct`` and ``lsst.pex.config``
(:mod:`jaxdiff.tasks._base`, :mod:`jaxdiff.tasks._config`).  camelCase names here follow LSST.
"""

from ._base import Struct, Task, TaskMetadata, timeMethod
from ._config import (
    ChoiceField,
    Config,
    ConfigChoiceField,
    ConfigField,
    ConfigurableField,
    Field,
    FieldValidationError,
    ListField,
    RangeField,
)
from .config import (
    ImagePsfMatchConfig,
    PsfMatchConfig,
    PsfMatchConfigAL,
    PsfMatchConfigDF,
    ZogyConfig,
    ZogyImagePsfMatchConfig,
)
from .image_psf_match import ImagePsfMatchTask
from .zogy import ZogyImagePsfMatchTask, ZogyTask

__all__ = [
    "ChoiceField",
    "Config",
    "ConfigChoiceField",
    "ConfigField",
    "ConfigurableField",
    "Field",
    "FieldValidationError",
    "ImagePsfMatchConfig",
    "ImagePsfMatchTask",
    "ListField",
    "PsfMatchConfig",
    "PsfMatchConfigAL",
    "PsfMatchConfigDF",
    "RangeField",
    "Struct",
    "Task",
    "TaskMetadata",
    "ZogyConfig",
    "ZogyImagePsfMatchConfig",
    "ZogyImagePsfMatchTask",
    "ZogyTask",
    "timeMethod",
]
