"""Photo mode: a real photo animated by READ's motion (see docs/PHOTO.md).

READ animates a synthetic driver portrait (``driver_portrait()``); ``MotionReader`` reads the
driver's mouth, blinks and head offset per frame; ``PhotoRenderer`` warps the visitor's photo with
them. ``is_photo`` is the ``render="auto"`` rule. Importing this package loads no model.
"""
from .domain import is_photo
from .motion import Motion, MotionReader, driver_portrait
from .render import PhotoRenderer, find_face

__all__ = ["Motion", "MotionReader", "PhotoRenderer", "driver_portrait", "find_face", "is_photo"]
