"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class BitconvError(Exception):
    """A problem with the user's input or environment; the message names the thing and says what to do."""
