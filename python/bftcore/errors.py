"""Exceptions the CLI turns into exit codes: BadInput -> 2 (one-line reason), CheckFailed -> 1."""


class BadInput(Exception):
    """The user's input cannot be used; the message is the one-line reason shown to them."""


class CheckFailed(Exception):
    """A measured check did not hold (the figures were still printed)."""
