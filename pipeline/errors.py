"""The one exception type muzarr raises for anything a user can fix."""


class MuzarrError(Exception):
    """Bad input, configuration or store: the message says what was wrong, where, and what to do.

    The command-line tools print it as one line and exit with status 2; library callers
    catch it like any other exception.
    """
