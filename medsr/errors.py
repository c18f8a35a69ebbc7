"""Errors that the CLI turns into one line on stderr and exit code 1."""


class MedsrError(Exception):
    """A known, user-facing error: bad input, bad option, refused overwrite.

    The message is shown to the user as it is, on one line, without a traceback.
    """
