""""Did you mean": the names closest to a misspelt one, for the line that refuses it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def did_you_mean(names: str | Iterable[Any], choices: Iterable[Any], *, quote: bool = False) -> str:
    """`` (did you mean X?)`` naming the choice closest to each misspelt name in ``names``, or ``""`` when
    none is close: put it right after the misspelt name, before the list of valid ones. ``quote`` writes
    the names as Python literals (``'crnn'``), as a message that quotes the misspelt name does.

    >>> did_you_mean("secnds", ["seconds", "anchor", "mode"])
    ' (did you mean seconds?)'
    >>> did_you_mean(["crnnn"], ["crnn", "cnn"], quote=True)
    " (did you mean 'crnn'?)"
    """
    names = [names] if isinstance(names, str) else list(names)
    options = sorted({str(c) for c in choices})
    close = dict.fromkeys(m for n in names for m in difflib.get_close_matches(str(n), options, n=1, cutoff=0.6))
    return f" (did you mean {' or '.join(map(repr, close) if quote else close)}?)" if close else ""
