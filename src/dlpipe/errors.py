"""The one exception type a user sees: a clear message, no traceback."""


class PipelineError(Exception):
    """Bad input (params, data files, weights) or a run that cannot go on.

    The message names the key or the file and says what was expected. The CLI
    prints it on one line and exits with status 2.
    """
