"""The admin API's argument check: each call's arguments against the Manager's type hints.

For every method of :data:`vvfs.node.codec.API_METHODS` a pydantic model is
built once from the signature and type hints of the
:class:`vvfs.control.manager.Manager` method (the one place the types are
declared), in strict mode: a JSON value of the wrong type is refused, never
converted (``"10"`` is not an ``int``, ``1.5`` is not an ``int``, a string
is not a ``list[str]``, a plain list is not a ``tuple``), arguments the
method does not take are refused, required ones must be given.  A
``VolumeSpec`` (decoded by :mod:`vvfs.node.codec`) has its fields checked
the same way.  What the values mean (a size that fits, a known device) is
left to the Manager: that answers its own 4xx errors.

:func:`check` raises :class:`vvfs.errors.ArgumentError` (HTTP 400) with one
line naming the method, the argument and what was wrong.  Pure: nothing
here blocks or awaits; the first call of a method builds its model.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

import pydantic

from vvfs.control.manager import Manager
from vvfs.errors import ArgumentError

__all__ = ["check", "model_of"]

#: revalidate_instances: a VolumeSpec that codec decoded is an instance already;
#: without it pydantic would take it as it is, field types unchecked.
_CONFIG = pydantic.ConfigDict(strict=True, extra="forbid", revalidate_instances="always",
                              arbitrary_types_allowed=False)


@functools.cache
def model_of(method: str) -> type[pydantic.BaseModel]:
    """The pydantic model of ``Manager.<method>``'s keyword arguments (cached).

    Raises NameError or TypeError when a hint cannot be resolved or is
    missing (a test builds every model of API_METHODS).
    """
    fn = getattr(Manager, method)
    hints = typing.get_type_hints(fn)  # NameError: a hint names a type not importable here
    fields: dict[str, Any] = {}
    for name, param in list(inspect.signature(fn).parameters.items())[1:]:  # not self
        if name not in hints or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"Manager.{method}: argument {name} has no type hint, or is"
                            " *args/**kwargs: the admin API cannot check it")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints[name], default)
    return pydantic.create_model(f"{method}_arguments", __config__=_CONFIG, **fields)


def check(method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return *kwargs* checked against ``Manager.<method>``; only those given.

    Raises ArgumentError naming the first problem (and how many more).
    """
    model = model_of(method)
    try:
        checked = model.model_validate(kwargs)
    except pydantic.ValidationError as exc:
        raise ArgumentError(f"{method}: {_first(exc)}") from None
    return {name: getattr(checked, name) for name in checked.model_fields_set}


def _first(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"argument {where}: {first['msg']}{more}"
