"""Static pytree auxiliary data: the hashable, comparable :class:`_Static` wrapper.

JAX looks up compiled functions by the hash and ``==`` of a pytree's static (auxiliary) data.  The
WCS and metadata of an :class:`~jaxdiff.image.Exposure` are astropy objects, not hashable by value,
so they are wrapped in :class:`_Static`, keyed by :func:`_static_key` (a SHA-1 of the WCS header
string or of the header text, sorted items for a dict): equal WCSs share one compilation.
"""

import hashlib


class _Static:
    """Hashable, comparable wrapper for static pytree auxiliary data (WCS, headers, ...).

    JAX compares static data with ``==`` and hashes it to look up compiled functions.  astropy
    objects are not hashable by value, so this wrapper keys them by a canonical string.
    """

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        self._key = _static_key(value)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def _static_key(value):
    if value is None:
        return None
    if hasattr(value, "to_header_string"):  # astropy WCS
        text = value.to_header_string(relax=True)
        return ("wcs", hashlib.sha1(text.encode()).hexdigest())
    if hasattr(value, "tostring") and hasattr(value, "cards"):  # astropy Header
        return ("header", hashlib.sha1(value.tostring().encode()).hexdigest())
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), repr(v)) for k, v in value.items())))
    try:
        hash(value)
        return ("value", value)
    except TypeError:
        return ("repr", repr(value))
