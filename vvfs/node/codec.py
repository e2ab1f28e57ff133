"""The admin API's wire format: API values to JSON and back, and error codes.

Both ends of the admin socket (:mod:`vvfs.node.admin`, :mod:`vvfs.node.client`) use
this module, so that a :class:`vvfs.control.manager.Manager` call made through a running
node takes and returns exactly the values it would offline.

Encoding
--------
JSON values (``None``, booleans, numbers, strings, lists, and dicts with
string keys) stand for themselves.  Every other value is a *tagged object*
``{"$type": NAME, "value": V}``:

=================  ===========================================================
NAME               V
=================  ===========================================================
``tuple``          a list of encoded items (``list_devices`` returns a tuple)
``dict``           an encoded dict that itself has a ``"$type"`` key (escape)
``Pool``           ``Pool.to_dict()`` (the document a metadata slot holds)
``Volume``         the volume's fields; segments as ``{"start", "length",
                   "stripes", "stripe_size", "areas": [[{"device", "start"}]]}``
``Device`` ...     the fields of the dataclass or named tuple, each encoded:
                   ``Device``, ``VolumeSpec``, ``PoolReport``, ``PoolShow``,
                   ``DeviceUsage``, ``ClassUsage``
=================  ===========================================================

Decoding builds only these types; anything else is a :class:`CodecError`.

Reading a request (:func:`loads`) is bounded: integers must fit in 64 bits
(:data:`MAX_INT`), floats must be finite (no ``NaN``, ``Infinity`` or
``1e400``), strings hold no NUL, and arrays and objects nest at most
:data:`MAX_DEPTH` deep (checked before parsing); anything else is a
:class:`CodecError` naming the argument, never a crash.  Whether the
values have the types the method declares is :mod:`vvfs.node.arguments`'.
Nothing here blocks or awaits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import mapper
from metadata.errors import ConfigError
from metadata.model import Area, Device, Pool, Segment, Volume
from vvfs.control.manager import PoolReport, PoolShow
from vvfs.errors import CodecError

TAG = "$type"
#: Largest magnitude of an integer in a request: what a catalog column holds.
MAX_INT = (1 << 63) - 1
#: Deepest nesting of arrays and objects in a request (real ones nest < 10).
MAX_DEPTH = 32

#: The :class:`vvfs.control.manager.Manager` methods callable through the admin socket:
#: every public method a ``vv`` command uses, nothing else.
API_METHODS: frozenset[str] = frozenset({
    "create_pool", "create_volumes", "list_pools", "show_pool", "export_pool", "import_pool",
    "destroy_pool",
    "scan", "add_device", "remove_device", "list_devices", "list_classes",
    "create_volume", "list_volumes", "show_volume", "remove_volume", "resize_volume",
    "rename_volume", "rebuild_catalog",
    "move_volume", "evacuate_device", "move_status", "scrub_volume", "scrub_status",
    "list_events", "set_volume", "device_paths", "fail_device", "online_device", "resync_pool",
    "resync_status", "replace_device",
})

# Exit statuses of the command lines (the same numbers as tools/common.py).
# ---------------------------------------------------------------------------
# per-type encoders and decoders


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _from_fields(cls: type) -> Callable[[Any], Any]:
    def build(value: Any) -> Any:
        if not isinstance(value, dict):
            raise CodecError(f"{cls.__name__}: expected an object")
        return cls(**{k: decode(v) for k, v in value.items()})

    return build


def _named_tuple(obj: Any) -> dict[str, Any]:
    return {k: encode(v) for k, v in obj._asdict().items()}


def _volume(v: Volume) -> dict[str, Any]:
    return dataclasses.asdict(v)


def _volume_from(value: Any) -> Volume:
    d = dict(value)
    segments = []
    for s in d.pop("segments"):
        s = dict(s)
        areas = [[Area(**a) for a in leg] for leg in s.pop("areas")]
        segments.append(Segment(areas=areas, **s))
    return Volume(segments=segments, **d)


def _pool_from(value: Any) -> Pool:
    try:
        return Pool.from_dict(value)
    except ConfigError as exc:
        raise CodecError(f"Pool: {exc}") from None


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    Pool: Pool.to_dict,
    Volume: _volume,
    Device: _fields,
    mapper.VolumeSpec: _fields,
    PoolReport: _fields,
    PoolShow: _fields,
    mapper.DeviceUsage: _named_tuple,
    mapper.ClassUsage: _named_tuple,
}

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "Pool": _pool_from,
    "Volume": _volume_from,
    "Device": _from_fields(Device),
    "VolumeSpec": _from_fields(mapper.VolumeSpec),
    "PoolReport": _from_fields(PoolReport),
    "PoolShow": _from_fields(PoolShow),
    "DeviceUsage": _from_fields(mapper.DeviceUsage),
    "ClassUsage": _from_fields(mapper.ClassUsage),
    "tuple": lambda value: tuple(decode(v) for v in value),
    "dict": lambda value: {k: decode(v) for k, v in value.items()},
}


# ---------------------------------------------------------------------------
# reading a request body

#: A JSON string (or the unterminated rest of one) or a bracket.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[][{}]', re.DOTALL)


class _OutOfRange:
    """A number of a request that no argument can hold (found by :func:`_refuse_unbounded`)."""

    def __init__(self, text: str, why: str) -> None:
        self.text, self.why = text, why

    def message(self) -> str:
        shown = self.text
        if len(shown) > 24:
            shown = f"{shown[:20]}... ({len(shown)} characters)"
        return f"{shown} {self.why}"


def _int(text: str) -> int | _OutOfRange:
    # more digits than MAX_INT has: refuse before converting (int() of long text is slow)
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_INT:
        return _OutOfRange(text, f"is out of range (at most {MAX_INT} either way)")
    return value


def _float(text: str) -> float | _OutOfRange:
    value = float(text)
    return value if math.isfinite(value) else _OutOfRange(text, "is out of range of a float")


def _constant(name: str) -> _OutOfRange:
    return _OutOfRange(name, "is not a number JSON allows")


def bounded_int(text: str) -> int:
    """*text* as an integer of at most :data:`MAX_INT` either way; else CodecError."""
    value = _int(text)
    if isinstance(value, _OutOfRange):
        raise CodecError(f"number {value.message()}")
    return value


def _where(path: list[str]) -> str:
    return f"argument {'.'.join(path)}: " if path else ""


def _refuse_deep(text: str) -> None:
    """Refuse *text* if its arrays and objects nest deeper than :data:`MAX_DEPTH`.

    Scans brackets outside strings (no recursion, no parsing), so that the
    parser never meets deep nesting; names the top-level key being read.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth, key = 0, ""
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            key = token.strip('"')[:40] if depth == 1 else key
        elif token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise CodecError(f"{_where([key] if key else [])}"
                                 f"nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _refuse_unbounded(doc: Any) -> None:
    """Refuse a number in *doc* out of range, or a string with a NUL, naming its path.

    One pass over the values without paths (a 1 MiB body is many values);
    the path is looked for only once something is wrong.
    """
    todo = [doc]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, _OutOfRange):
            raise CodecError(f"{_where(_path(doc, value) or [])}number {value.message()}")
        elif isinstance(value, str) and "\0" in value:
            raise CodecError(f"{_where(_path(doc, value) or [])}a string holds a NUL character")


def _path(doc: Any, target: object) -> list[str] | None:
    """Keys and indexes from *doc* to *target*, leaving out tagged objects' ``$type``/``value``
    (``spec.size``); None if it is not there.  Recursive: *doc* nests at most MAX_DEPTH deep.
    """
    if doc is target:
        return []
    steps = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in steps:
        below = _path(value, target)
        if below is not None:
            return below if isinstance(doc, dict) and TAG in doc else [str(key), *below]
    return None


def loads(body: bytes) -> Any:
    """Parse a request body as JSON, within the bounds of the module docstring.

    Raises :class:`CodecError` with a one-line message (naming the argument
    where there is one) for a body that is not UTF-8 JSON, nests too deep,
    or holds a number out of range (or ``NaN``, ``Infinity``) or a NUL
    character in a string.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("the request body is not UTF-8") from None
    _refuse_deep(text)
    try:
        doc = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except ValueError:
        raise CodecError("the request body is not JSON") from None
    _refuse_unbounded(doc)
    return doc


# ---------------------------------------------------------------------------
# the two entry points


def encode(obj: Any) -> Any:
    """Return a JSON-ready form of *obj* (see the module docstring)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    enc = _ENCODERS.get(type(obj))
    if enc is not None:
        return {TAG: type(obj).__name__, "value": enc(obj)}
    if isinstance(obj, tuple):
        return {TAG: "tuple", "value": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise CodecError("cannot encode a dict with keys that are not strings")
        doc = {k: encode(v) for k, v in obj.items()}
        return {TAG: "dict", "value": doc} if TAG in obj else doc
    raise CodecError(f"cannot encode a value of type {type(obj).__name__}")


def decode(doc: Any) -> Any:
    """Rebuild the value that :func:`encode` turned into *doc*."""
    if isinstance(doc, list):
        return [decode(v) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if TAG not in doc:
        return {k: decode(v) for k, v in doc.items()}
    name = doc[TAG]
    dec = _DECODERS.get(name) if isinstance(name, str) else None
    if dec is None:
        raise CodecError(f"unknown value type {name!r}")
    try:
        return dec(doc.get("value"))
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CodecError(f"malformed {name} value: {exc}") from None
