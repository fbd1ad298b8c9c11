"""User-facing errors: each carries one line that names the problem."""


class EdgegenError(Exception):
    """A problem the user can fix (bad input, missing model, absent device).

    The CLI prints ``str(error)`` as one line and exits non-zero; it never shows a traceback for it.
    """
