"""The ``train`` commands' options, made from the settings they fill: one declaration per setting.

A :class:`~training.run.config.TrainConfig` field carries its type, default, help text and
:class:`~training.run.config.CliOption`; :func:`config_options` turns fields into click options, so
``run``, ``sweep``, ``reproduce``, ``predict`` and ``embed`` share ``--device``, ``--seed``,
``--model-opt``... as declared once, and :func:`config_values` turns what was given back into
the fields' values. Options that are not settings of a run (``--repeats``, ``--out``, the
launcher's) are declared with the command that reads them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from pipeline.config import parse_spec
from training.run.config import CliOption, TrainConfig

__all__ = ["CLI_FIELDS", "config_options", "config_values"]

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
#: the TrainConfig fields a command line can set, in the order ``train run --help`` lists them
CLI_FIELDS = tuple(name for name, f in _FIELDS.items() if f.metadata["cli"].shown)


def config_options(*names: str, **changes: dict[str, Any]) -> Callable:
    """A decorator adding the options of TrainConfig fields ``names``, in that order; ``changes``
    maps a field to click settings that differ for this command (``store={"required": True}``)."""
    options = [_option(name, **changes.get(name, {})) for name in names]

    def decorate(command):
        for option in reversed(options):  # click lists options in decorator order, top first
            command = option(command)
        return command

    return decorate


def config_values(given: dict[str, Any]) -> dict[str, Any]:
    """The fields' values from the options' (``given``, by field name): ``K=V`` pairs merged into a
    dict, text parsed where the field says (``--augment``); a bad pair is one :class:`MuzarrError`."""
    values = {}
    for name, value in given.items():
        cli: CliOption = _FIELDS[name].metadata["cli"]
        if cli.pairs:
            value = {key: v for pair in value for key, v in parse_spec(pair, what=cli.flag or _flag(name)).items()}
        elif cli.parse is not None and value is not None:
            value = cli.parse(value)
        values[name] = value
    return values


def _option(name: str, **change: Any) -> Callable:
    field = _FIELDS[name]
    cli: CliOption = field.metadata["cli"]
    hint = _HINTS[name]
    base = _not_none(hint)
    default = None if field.default is dataclasses.MISSING else field.default
    flag = cli.flag or _flag(name)
    settings: dict[str, Any] = {"help": field.metadata["help"], "metavar": cli.metavar}
    if base is bool and default is None:  # not given: the protocol decides
        flag = f"{flag}/--no-{flag[2:]}"
        settings["default"] = None
    elif base is bool:  # a flag turns the default over: --amp, --no-emissions
        settings.update(is_flag=True, flag_value=not default, default=default)
    elif cli.pairs:
        settings.update(multiple=True, metavar=cli.metavar or "K=V")
    else:
        settings.update(type=_click_type(base, cli), default=default, show_default=default is not None)
    settings.update(change)
    return click.option(flag, name, **settings)


def _click_type(base: type, cli: CliOption) -> Any:
    if cli.choices:
        return click.Choice(list(cli.choices))
    if cli.min is None and cli.max is None:
        return base if base in (int, float) else str
    if base is int:
        return click.IntRange(min=cli.min, max=cli.max)
    return click.FloatRange(min=cli.min, max=cli.max, min_open=cli.min_open)


def _not_none(hint: Any) -> Any:
    """``int`` for ``int | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
