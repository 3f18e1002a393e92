"""Typed errors. Every `BitconvError` is a problem with the user's input or environment: its message is one line
that names the file, tensor or option and says what to do, and the CLI prints it without a traceback.

A broken invariant inside bitconv is not a `BitconvError`: it is an `InternalError` (or an assert), and the CLI
lets its traceback through, because the user cannot fix it and a developer needs the stack.
"""


class BitconvError(Exception):
    """A problem with the user's input or environment; the message names the thing and says what to do."""


class OptionError(BitconvError, ValueError):
    """An option (a CLI flag or a config field) has a value bitconv cannot use."""


class SourceError(BitconvError):
    """A source checkpoint (Hub id, folder, GGUF file) cannot be found or read."""


class FormatError(BitconvError):
    """A bitconv folder or packed file is malformed, corrupt, or of a version this bitconv cannot read."""


class DataError(BitconvError):
    """A data set (text, labelled examples, images) is missing, empty or malformed."""


class ExportError(BitconvError):
    """A model cannot be exported to the asked target (unsupported architecture, scheme or output)."""


class HubError(BitconvError):
    """The Hugging Face Hub refused or could not be reached."""


class TrainingError(BitconvError):
    """Training cannot go on (diverged, or a checkpoint that does not match the run)."""


class OutputError(BitconvError):
    """An output path cannot be written (exists, read-only, inside the input, ...)."""


class InternalError(RuntimeError):
    """A broken invariant inside bitconv: a bug, reported with its traceback."""
