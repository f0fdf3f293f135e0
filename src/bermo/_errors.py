"""Helpers for the command lines' one-line error messages."""


def one_line(error):
    """The first line of an exception's message (or its type's name)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
