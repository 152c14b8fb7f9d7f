"""The command line's user-facing error, shared by :mod:`.cli` and its sub-command modules."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
