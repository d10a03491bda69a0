"""One exception type for user errors: the CLI turns it into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, data), not a bug in bitsieve."""


def one_line(msg) -> str:
    """Control characters (a newline in a file name) escaped, so a message is always exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg))
