"""Settings that come in as data, checked against the types they must have: one checker for every mapping.

Settings arrive as a YAML or JSON mapping or as ``K=V`` text on the command line, and become a
frozen dataclass once, at the edge. :func:`typed_fields` checks such a mapping against a
dataclass's type hints (unknown keys, wrong types); :func:`coerce` checks one value against one
hint; :func:`expected_type` checks a value against the type of a default (a feature's parameter,
a recipe's option, where the default is all there is to go by). Every refusal is one
:class:`MuzarrError` naming where, the key, the value and the type expected::

    catalog dataset 'demo': train: lr='fast' must be a number

Strings are read as what they spell (``"1e-4"`` is 0.0001, ``"true"`` is True, ``"none"`` is
None where None is allowed): YAML reads ``1e-4`` as a string and the command line gives only
strings. Floats are finite unless a field's metadata says ``{"finite": False}``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from pipeline.errors import MuzarrError
from pipeline.suggest import did_you_mean

__all__ = ["coerce", "expected_type", "hint_of", "typed_fields"]

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")
_UNIONS = (typing.Union, types.UnionType)


class _Mismatch(Exception):
    """The value does not fit the hint: :func:`coerce` says so in one line, with ``expected`` when
    the value calls for more than the hint's name (a number, but not a finite one)."""

    def __init__(self, expected: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected


def typed_fields(cls: type, data: dict[str, Any], *, where: str) -> dict[str, Any]:
    """``data`` checked against the init fields of dataclass ``cls`` and converted to their types.

    An unknown key is one :class:`MuzarrError` naming ``where``, the key, the closest valid key and
    every valid key; a value of the wrong type names the key, the value and the type expected.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((k for k in data if k not in fields), key=str)
    if unknown:
        raise MuzarrError(f"{where}: unknown key(s) {unknown}{did_you_mean(unknown, fields, quote=True)}; valid keys: {', '.join(fields)}")
    return {
        key: coerce(hints[key], value, where=f"{where}: {key}", finite=fields[key].metadata.get("finite", True))
        for key, value in data.items()
    }


def coerce(hint: Any, value: Any, *, where: str, parse: bool = True, finite: bool = True) -> Any:
    """``value`` as type ``hint`` says, or one :class:`MuzarrError` ``{where}={value!r} must be {type}``.

    ``parse``: strings are read as the numbers and booleans they spell, and whole numbers pass for
    integers (``1e3``, ``32.0``); without it a value must already have its type (JSON, a store's
    attributes). ``finite``: NaN and infinities are refused where a number is expected.
    Hints this checker does not know (a dataclass, a class of the caller's) pass the value through:
    that type's constructor checks it.
    """
    try:
        return _convert(hint, value, parse=parse, finite=finite)
    except _Mismatch as mismatch:
        raise MuzarrError(f"{where}={value!r} must be {mismatch.expected or _describe(hint)}") from None


def expected_type(value: Any, default: Any) -> str | None:
    """What ``value`` should be to stand where ``default`` does, or ``None`` when it fits (no string
    is read as a number here): ``"an integer"``, ``"a number or null"``, ``"a list of integers"``..."""
    hint = hint_of(default)
    try:
        _convert(hint, value, parse=False, finite=False)
    except _Mismatch as mismatch:
        return mismatch.expected or _describe(hint)
    return None


def hint_of(default: Any) -> Any:
    """The type a setting has, going by its default: ``int`` for 3, ``float | None`` for None (an
    optional number), ``tuple[int, ...]`` for ``(8, 16)``; ``Any`` where the default says nothing."""
    if default is None:
        return float | None
    if isinstance(default, (bool, int, float, str)):
        return type(default)
    if isinstance(default, (tuple, list)):
        elements = {repr(hint_of(d)) for d in default}  # nested tuple hints compare by what they say
        return tuple[hint_of(default[0]), ...] if len(elements) == 1 else tuple
    return Any


def _convert(hint: Any, value: Any, *, parse: bool, finite: bool) -> Any:
    origin = typing.get_origin(hint)
    if origin in _UNIONS:
        options = typing.get_args(hint)
        if type(None) in options and (value is None or (parse and isinstance(value, str) and value.lower() == "none")):
            return None
        specific = None
        for option in options:
            if option is not type(None):
                try:
                    return _convert(option, value, parse=parse, finite=finite)
                except _Mismatch as mismatch:
                    specific = specific or mismatch.expected
        raise _Mismatch(specific)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if parse and isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if hint is int:
        return _integer(value, parse=parse)
    if hint is float:
        return _number(value, parse=parse, finite=finite)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if hint is tuple or origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            try:
                return tuple(_convert(args[0], v, parse=parse, finite=finite) for v in value)
            except _Mismatch:
                raise _Mismatch(_describe(hint, finite=finite)) from None
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    return value


def _integer(value: Any, *, parse: bool) -> int:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if not parse or not isinstance(value, (str, float)):
        raise _Mismatch
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)
    except ValueError:
        raise _Mismatch from None
    if not number.is_integer():  # also NaN and infinities
        raise _Mismatch
    return int(number)


def _number(value: Any, *, parse: bool, finite: bool) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        number = float(value)
    elif parse and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Mismatch from None
    else:
        raise _Mismatch
    if finite and not math.isfinite(number):
        raise _Mismatch("a finite number")
    return number


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping", tuple: "a list"}
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings", dict: "mappings", tuple: "lists"}


def _describe(hint: Any, *, finite: bool = False, plural: bool = False) -> str:
    """``hint`` in words: ``an integer``, ``a number or null``, ``a list of integers``."""
    names = _PLURALS if plural else _NAMES
    origin = typing.get_origin(hint)
    if origin in _UNIONS:
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        text = " or ".join(_describe(o, finite=finite, plural=plural) for o in options)
        return f"{text} or null" if len(options) < len(typing.get_args(hint)) else text
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return ("lists of " if plural else "a list of ") + _describe(args[0], finite=finite, plural=True)
        return names[tuple]
    if hint is float and finite and plural:
        return "finite numbers"
    return names.get(origin or hint, "values of another type" if plural else "a value of another type")
