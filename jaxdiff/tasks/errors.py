"""Typed exceptions raised by the jaxdiff task shell.

They mirror ``lsst.pipe.base.AlgorithmError``: an algorithm failed on valid input data, and the
exception carries a small `metadata` dict (plain Python scalars) describing why. The pure JAX core
never raises these; it returns status codes that the tasks translate after the computation.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlgorithmError",
    "ImageStatisticsError",
    "InsufficientKernelSourcesError",
    "NoKernelCandidatesError",
    "PsfMatchingError",
    "ZogyNumericalError",
]


class AlgorithmError(RuntimeError):
    """An algorithm could not produce a result for these inputs.

    Parameters
    ----------
    message : `str`, optional
        What went wrong and how to fix it (a class default is used if omitted).
    metadata : `dict`, optional
        Diagnostic values (str/int/float/bool), e.g. for a task's metadata.
    """

    defaultMessage = "The algorithm failed on the given inputs."

    def __init__(self, message: str | None = None, *, metadata: dict[str, Any] | None = None):
        super().__init__(message or self.defaultMessage)
        self._metadata = dict(metadata) if metadata else {}

    @property
    def metadata(self) -> dict[str, Any]:
        """Diagnostic values describing the failure."""
        return self._metadata


class PsfMatchingError(AlgorithmError):
    """The PSF-matching kernel could not be solved (e.g. singular or ill-conditioned normal equations)."""

    defaultMessage = (
        "Cannot solve the PSF-matching kernel. Check the inputs for NaNs or masked stamps, reduce "
        "spatialKernelOrder, or use a smaller kernel basis."
    )


class NoKernelCandidatesError(PsfMatchingError):
    """No usable kernel candidate (stamp) survived selection and clipping."""

    defaultMessage = (
        "No kernel candidates are usable: every stamp was rejected or masked. Check the mask planes "
        "in badMaskPlanes, lower the detection threshold, or relax the candidate residual limits."
    )


class InsufficientKernelSourcesError(PsfMatchingError):
    """Too few sources were selected to constrain the PSF-matching kernel.

    Parameters
    ----------
    nSources, nRequired : `int`, optional
        Number of sources found and needed; recorded in `metadata` and the message.
    message, metadata : optional
        As for `AlgorithmError`.
    """

    defaultMessage = "Cannot compute PSF matching kernel: too few sources selected."

    def __init__(
        self,
        message: str | None = None,
        *,
        nSources: int | None = None,
        nRequired: int | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        metadata = dict(metadata or {})
        if nSources is not None and nRequired is not None:
            metadata.update(nSources=int(nSources), nRequired=int(nRequired))
            message = message or (
                f"{self.defaultMessage} Found {nSources}, need at least {nRequired}; lower nStarPerCell "
                "or the detection threshold, or supply more sources."
            )
        super().__init__(message, metadata=metadata)


class ZogyNumericalError(AlgorithmError):
    """The ZOGY computation produced unusable values.

    For example non-finite difference or score images, or a degenerate PSF/noise combination.
    """

    defaultMessage = (
        "ZOGY produced non-finite or degenerate results. Check that the PSFs are normalised and "
        "centred, the variance planes are positive and finite, and the images are registered."
    )


class ImageStatisticsError(AlgorithmError):
    """A statistic of one plane of one image could not be computed (e.g. too few usable pixels).

    Raised by the tasks after their jitted computations, instead of letting a NaN noise level,
    fill value, background or normalisation factor reach an output.

    Parameters
    ----------
    message : `str`, optional
        Replaces the generated message.
    image : `str`
        Which image: ``"science"``, ``"template"``, ``"difference"``, ``"score"``.
    plane : `str`
        Which plane: ``"image"`` or ``"variance"``.
    statistic : `str`
        What was being computed (e.g. ``"clipped mean (noise level)"``).
    value : `float`, optional
        The value obtained (NaN, 0, ...).
    nUsable : `int`, optional
        Number of pixels the statistic could use.
    hint : `str`, optional
        How to fix the input; a generic hint is used if omitted.
    metadata : `dict`, optional
        As for `AlgorithmError`; ``image``, ``plane``, ``statistic``, ``value`` and ``nUsable`` are
        added.

    Attributes
    ----------
    image, plane, statistic : `str`
        The constructor's arguments.
    hint : `str` or `None`
        The hint in the message.
    """

    defaultMessage = "A statistic of an input image could not be computed."

    def __init__(
        self,
        message: str | None = None,
        *,
        image: str,
        plane: str,
        statistic: str,
        value: float | None = None,
        nUsable: int | None = None,
        hint: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.image, self.plane, self.statistic = str(image), str(plane), str(statistic)
        metadata = dict(metadata or {})
        metadata.update(image=self.image, plane=self.plane, statistic=self.statistic)
        if value is not None:
            metadata["value"] = float(value)
        if nUsable is not None:
            metadata["nUsable"] = int(nUsable)
        if message is None:
            found = []
            if value is not None:
                found.append(f"got {float(value)!r}")
            if nUsable is not None:
                found.append(f"{int(nUsable)} usable pixel{'' if int(nUsable) == 1 else 's'}")
            found = f" ({', '.join(found)})" if found else ""
            hint = hint or (
                "Check that the plane has enough finite pixels (positive ones for a variance plane) "
                "outside the masked planes, or mask fewer planes."
            )
            what = f"the {self.statistic} of the {self.image} {self.plane} plane"
            message = f"Cannot compute {what}{found}. {hint}"
        self.hint = hint
        super().__init__(message, metadata=metadata)
