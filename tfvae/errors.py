"""Errors a user can cause, raised where the input enters the library.

Every error here says what was wrong and what to do. They subclass
``ValueError`` so callers that already catch ``ValueError`` keep working, and
the CLI turns them into ``click.ClickException`` (a message and exit code 1,
never a traceback).
"""


class TfvaeError(ValueError):
    """Base class of the errors a user can cause and fix."""


class DataError(TfvaeError):
    """A data set could not be found, read or used as asked."""


class ConfigError(TfvaeError):
    """An option or configuration value is invalid."""


class RunDirError(TfvaeError):
    """A run or export directory is missing, incomplete or not a tfvae directory."""
