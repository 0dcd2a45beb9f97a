"""User-facing errors.

Anything raised as :class:`AnnobootError` is a problem with the user's input (a path, a config
key, a file); the CLI prints its message alone, without a traceback. The message must name the
culprit and, where there is one, the fix.
"""


class AnnobootError(Exception):
    """Bad input from the user: the message names the file or option and what is wrong."""

    @property
    def plain_message(self) -> str:
        """The message alone: a DataLoader worker's error reaches the main process as a copy
        whose message starts with the worker's traceback."""
        text = str(self)
        marker = f"{type(self).__name__}: "
        return text.rsplit(marker, 1)[-1].strip() if "Traceback" in text and marker in text else text
