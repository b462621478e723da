"""The one exception type for user mistakes, and Ctrl-C with what it leaves behind.

Anything raised as :class:`EraserError` is a problem with the user's input (a bad request, a
missing column, an incompatible adapter); the CLI prints its message on one line and exits
with status 2 instead of showing a traceback. Every other exception is a bug.
"""


class EraserError(Exception):
    """A user error: bad input, incompatible files, or an unusable numerical result."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that had already published something: ``outcome`` says what
    stays and what happens to the work that was cut short (the CLI prints it)."""

    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome
