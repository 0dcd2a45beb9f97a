"""User-facing errors.

Anything raised as :class:`AnnobootError` is a problem with the user's input (a path, a config
key, a file); the CLI prints its message alone, without a traceback. The message must name the
culprit and, where there is one, the fix.
"""


class AnnobootError(Exception):
    """Bad input from the user: the message names the file or option and what is wrong."""
