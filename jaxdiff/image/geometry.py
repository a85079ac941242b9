"""Pixel geometry in LSST's vocabulary: the inclusive integer box :class:`Box2I`.

Conventions (as in ``lsst.geom.Box2I`` and afw's ``ImageBase``):

* ``xy0 = (x0, y0)`` is the PARENT position of array element ``[0, 0]``; a pixel's integer
  position is its centre;
* ``Box2I`` is inclusive: ``width = maxX - minX + 1``.

Also the ``xy0`` normaliser shared by the containers of :mod:`jaxdiff.image.image`.
"""

__all__ = ["Box2I"]


def _xy0(xy0):
    if xy0 is None:
        return (0, 0)
    if hasattr(xy0, "getX"):
        xy0 = (xy0.getX(), xy0.getY())
    x0, y0 = xy0
    if int(x0) != x0 or int(y0) != y0:
        raise ValueError(f"xy0 must be integers, got {xy0}")
    return (int(x0), int(y0))


class Box2I:
    """Inclusive integer pixel box, as ``lsst.geom.Box2I``.

    Parameters
    ----------
    minimum : tuple of int
        ``(minX, minY)``.
    dimensions : tuple of int
        ``(width, height)``.
    """

    __slots__ = ("minX", "minY", "width", "height")

    def __init__(self, minimum=(0, 0), dimensions=(0, 0)):
        self.minX, self.minY = (int(v) for v in _xy0(minimum))
        w, h = dimensions
        if w < 0 or h < 0:
            raise ValueError(f"box dimensions must be non-negative, got {dimensions}")
        self.width, self.height = int(w), int(h)

    @classmethod
    def fromMinMax(cls, minimum, maximum):
        """Box from inclusive corners ``(minX, minY)`` and ``(maxX, maxY)``."""
        return cls(minimum, (maximum[0] - minimum[0] + 1, maximum[1] - minimum[1] + 1))

    @property
    def maxX(self):
        """Largest x inside the box (inclusive), ``minX + width - 1``."""
        return self.minX + self.width - 1

    @property
    def maxY(self):
        """Largest y inside the box (inclusive), ``minY + height - 1``."""
        return self.minY + self.height - 1

    def getMinX(self):
        """Return the smallest x inside the box."""
        return self.minX

    def getMinY(self):
        """Return the smallest y inside the box."""
        return self.minY

    def getMaxX(self):
        """Return the largest x inside the box (inclusive)."""
        return self.maxX

    def getMaxY(self):
        """Return the largest y inside the box (inclusive)."""
        return self.maxY

    def getBeginX(self):
        """Return the first x of the box, as ``getMinX``."""
        return self.minX

    def getBeginY(self):
        """Return the first y of the box, as ``getMinY``."""
        return self.minY

    def getEndX(self):
        """Return one past the largest x (exclusive end)."""
        return self.minX + self.width

    def getEndY(self):
        """Return one past the largest y (exclusive end)."""
        return self.minY + self.height

    def getMin(self):
        """Return the inclusive lower corner ``(minX, minY)``."""
        return (self.minX, self.minY)

    def getMax(self):
        """Return the inclusive upper corner ``(maxX, maxY)``."""
        return (self.maxX, self.maxY)

    def getWidth(self):
        """Return the width in pixels."""
        return self.width

    def getHeight(self):
        """Return the height in pixels."""
        return self.height

    def getDimensions(self):
        """Return ``(width, height)``."""
        return (self.width, self.height)

    def getArea(self):
        """Return the number of pixels, ``width * height``."""
        return self.width * self.height

    def isEmpty(self):
        """Return True if the box has no pixels."""
        return self.width == 0 or self.height == 0

    def getCenter(self):
        """Centre as floats, ``((minX + maxX)/2, (minY + maxY)/2)``."""
        return (0.5 * (self.minX + self.maxX), 0.5 * (self.minY + self.maxY))

    def contains(self, other):
        """Return True if a point ``(x, y)`` or another box lies inside this box."""
        if isinstance(other, Box2I):
            return (
                other.minX >= self.minX
                and other.minY >= self.minY
                and other.maxX <= self.maxX
                and other.maxY <= self.maxY
            )
        x, y = other
        return self.minX <= x <= self.maxX and self.minY <= y <= self.maxY

    def overlaps(self, other):
        """Return True if this box and ``other`` share at least one pixel."""
        return not (
            other.maxX < self.minX
            or other.minX > self.maxX
            or other.maxY < self.minY
            or other.minY > self.maxY
        )

    def clippedTo(self, other):
        """Return the intersection with ``other`` (an empty box if they do not overlap)."""
        x0, y0 = max(self.minX, other.minX), max(self.minY, other.minY)
        x1, y1 = min(self.maxX, other.maxX), min(self.maxY, other.maxY)
        if x1 < x0 or y1 < y0:
            return Box2I((x0, y0), (0, 0))
        return Box2I.fromMinMax((x0, y0), (x1, y1))

    def grow(self, n):
        """Return a box grown by ``n`` pixels on every side (negative shrinks)."""
        return Box2I((self.minX - n, self.minY - n), (self.width + 2 * n, self.height + 2 * n))

    def slices(self, xy0=(0, 0)):
        """Array slices ``(rows, cols)`` of this box in an array whose origin is ``xy0``."""
        x0, y0 = xy0
        return (
            slice(self.minY - y0, self.minY - y0 + self.height),
            slice(self.minX - x0, self.minX - x0 + self.width),
        )

    def __eq__(self, other):
        return isinstance(other, Box2I) and (
            self.minX,
            self.minY,
            self.width,
            self.height,
        ) == (other.minX, other.minY, other.width, other.height)

    def __hash__(self):
        return hash((self.minX, self.minY, self.width, self.height))

    def __repr__(self):
        return f"Box2I(minimum=({self.minX}, {self.minY}), dimensions=({self.width}, {self.height}))"
