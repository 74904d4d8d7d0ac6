"""Checking a value against a type annotation, with a message that names the setting.

Settings arrive as JSON (job files, ``--set key=value``), where ``2.5``, ``true`` and ``"false"`` all
parse; a dataclass field annotated ``int`` or ``bool`` must not take them silently. :func:`checked`
accepts exactly what the annotation says (an ``int`` for a ``float`` field too, a list for a tuple
field), refuses non-finite numbers, and raises :class:`~CardiacUDALib.errors.InputDataError` naming
the setting otherwise. Torch-free: the job files are checked in the Slicer process too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any

from CardiacUDALib.errors import InputDataError

_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin in (tuple, list):
        arguments = typing.get_args(annotation)
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return f"a list of {len(arguments)} values ({', '.join(_describe(a) for a in arguments)})"
        return f"a list of {_describe(arguments[0]) if arguments else 'values'}"
    if origin is dict:
        return "an object"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _matches(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(does ``value`` fit ``annotation``, the value converted: tuples for tuple fields)."""
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            fits, converted = _matches(value, option)
            if fits:
                return True, converted
        return False, value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, value
        arguments = typing.get_args(annotation)
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            if len(value) != len(arguments):
                return False, value
            element_types = arguments
        else:
            element_types = (arguments[0] if arguments else Any,) * len(value)
        converted = []
        for item, element_type in zip(value, element_types):
            fits, item = _matches(item, element_type)
            if not fits:
                return False, value
            converted.append(item)
        return True, tuple(converted) if origin is tuple else converted
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    if annotation is list:
        return isinstance(value, list), value
    if annotation is type(None) or annotation is None:
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return fits, float(value) if fits else value
    if annotation is str:
        return isinstance(value, str), value
    return isinstance(value, annotation), value


def checked(value: Any, annotation: Any, name: str) -> Any:
    """``value`` if it fits ``annotation`` (converted: lists to tuples, ints to floats); else a clear error."""
    fits, converted = _matches(value, annotation)
    if not fits:
        shown = f"the string {value!r}" if isinstance(value, str) else repr(value)
        raise InputDataError(f"{name} must be {_describe(annotation)}, not {shown}")
    return converted


REQUIRED = object()


def checked_field(
    record: dict[str, Any], key: str, annotation: Any, what: str, default: Any = REQUIRED
) -> Any:
    """``record[key]`` checked against ``annotation``; a missing key takes ``default`` or is an error.

    ``what`` names the record in messages, e.g. "the segment job" -> "the segment job's 'cases' must be ...".
    """
    if key not in record:
        if default is REQUIRED:
            raise InputDataError(f"{what} has no {key!r}")
        return default
    return checked(record[key], annotation, f"{what}'s {key!r}")


def check_known_fields(record: dict[str, Any], known: set[str], what: str) -> None:
    """Refuse keys of ``record`` outside ``known`` (a typo would otherwise be ignored silently)."""
    unknown = sorted(set(record) - known)
    if unknown:
        raise InputDataError(
            f"{what} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields (``from __future__ import annotations`` safe)."""
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in dataclasses.fields(cls)}
