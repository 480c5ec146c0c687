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


class TfvaeWarning(UserWarning):
    """Something a user should know about, but that does not stop the work."""


class DataWarning(TfvaeWarning):
    """The data look wrong for the chosen model (blank images, values out of range)."""


class Interrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C or SIGTERM at a clean point.

    The message says what was kept and the command that continues the run.
    A KeyboardInterrupt, so code that stops on Ctrl-C keeps doing so.
    """
