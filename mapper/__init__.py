"""Pure address resolution, free-space accounting and placement (no I/O).

``mapper`` turns a :class:`metadata.model.Pool` configuration into answers:
where volume bytes live on devices (:class:`VolumeMap`), which extents are
free (:func:`free_runs`, :func:`usage`, :func:`class_usage`), which volumes
a host sees (:func:`visible`, :func:`visible_volumes`) and what the
configuration becomes after a change (:func:`create_volume` and friends,
each returning a new pool).  It imports only ``metadata`` and never opens a
file.
"""

from .alloc import (
    ClassUsage,
    DeviceUsage,
    class_usage,
    free_runs,
    fresh_mirror_runs,
    fresh_runs,
    usage,
    used_by,
)
from .layout import Loc, Piece, ResolveError, Span, VolumeMap, regrown_spans
from .namespace import visible, visible_volumes
from .placement import (
    FITS,
    PlacementError,
    VolumeSpec,
    add_device,
    create_volume,
    create_volumes,
    remove_device,
    remove_volume,
    rename_volume,
    resize_volume,
    set_attributes,
)
from .units import SizeError, human_size, parse_size

__all__ = [
    "FITS",
    "ClassUsage",
    "DeviceUsage",
    "Loc",
    "Piece",
    "PlacementError",
    "ResolveError",
    "SizeError",
    "Span",
    "VolumeMap",
    "VolumeSpec",
    "add_device",
    "class_usage",
    "create_volume",
    "create_volumes",
    "free_runs",
    "fresh_mirror_runs",
    "fresh_runs",
    "human_size",
    "parse_size",
    "regrown_spans",
    "remove_device",
    "remove_volume",
    "rename_volume",
    "resize_volume",
    "set_attributes",
    "usage",
    "used_by",
    "visible",
    "visible_volumes",
]
