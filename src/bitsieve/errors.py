"""One exception type for user errors: the CLI turns it into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, data), not a bug in bitsieve."""
