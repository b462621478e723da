"""The one exception type for user mistakes.

Anything raised as :class:`EraserError` is a problem with the user's input (a bad request, a
missing column, an incompatible adapter); the CLI prints its message on one line and exits
with status 2 instead of showing a traceback. Every other exception is a bug.
"""


class EraserError(Exception):
    """A user error: bad input, incompatible files, or an unusable numerical result."""
