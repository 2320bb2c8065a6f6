"""Exceptions for mistakes a user can fix; the CLI prints them as one line and exits with 2."""


class UserError(Exception):
    """A user mistake (bad name, missing folder, bad file): shown as one line, no traceback."""


class DataError(UserError):
    """A dataset file that is missing, unreadable or inconsistent; the message names the file."""
