"""Errors a user can cause. Entry scripts turn them into one line and exit code 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it, in one line."""
