"""The one exception type a user sees: a clear message, no traceback."""


class PipelineError(Exception):
    """Bad input (params, data files, weights) or a run that cannot go on.

    The message names the key or the file and says what was expected. The CLI
    prints it on one line and exits with status 2.
    """


EXCERPT_CHARS = 80  # the longest quote of a value a message holds


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, '...' at the end: a message quotes the start
    of a value (a key, a cell, a member name), never a megabyte of it."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
