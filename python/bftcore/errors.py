"""Exceptions the CLI turns into exit codes: BadInput -> 2 (one-line reason), CheckFailed -> 3.

Anything else escaping a command is a bug in bftcore (the pipeline broke): Python's traceback and
exit code 1.
"""


class BadInput(Exception):
    """The user's input cannot be used; the message is the one-line reason shown to them."""


class CheckFailed(Exception):
    """A measured expectation or a verification the user asked for failed (the figures were still
    printed): `--strict` on `demo` and `toy check`, `--verify` on `export`."""
