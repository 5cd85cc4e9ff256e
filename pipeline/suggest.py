""""Did you mean": the names closest to a misspelt one, for the line that refuses it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str], *, most: int = 1) -> str:
    """`` (did you mean X?)`` naming the choice closest to ``word`` (the ``most`` closest, best first), or ``""``
    when none is close: put it right after the misspelt name, before the list of valid ones.

    >>> did_you_mean("secnds", ["seconds", "anchor", "mode"])
    ' (did you mean seconds?)'
    """
    close = difflib.get_close_matches(str(word), sorted({str(c) for c in choices}), n=most, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
