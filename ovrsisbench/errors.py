"""Exceptions for mistakes a user can fix; the CLI prints them as one line and exits with 2."""


class UserError(Exception):
    """A user mistake (bad name, missing folder, bad file): shown as one line, no traceback."""


class DataError(UserError):
    """A dataset file that is missing, unreadable or inconsistent; the message names the file."""


def did_you_mean(word: str, known: list[str] | tuple[str, ...]) -> str:
    """``" (did you mean 'x'?)"`` for the known name closest to a mistyped ``word``, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
