"""User-facing errors: a mistake in input data or config, reported as one line, no traceback.

Anything raised as a ``UserError`` is caught at the command-line entry points, printed as
``error: <message>`` and turned into a non-zero exit. Everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; the message names the file/line or config key."""

    exit_code = 2


class DataError(UserError):
    """Bad input data: the message starts with ``FILE:LINE:`` where a line is known."""


class ConfigError(UserError):
    """A bad config value: the message starts with the config key."""


class TrainingDiverged(UserError):
    """The loss or the validation metric became NaN or infinite: lower the learning rate."""


class RunStopped(Exception):
    """Raised from inside training to end a run early on purpose (e.g. a pruned sweep trial).

    ``state`` is recorded on the MLflow run as the tag ``state``; the run ends KILLED.
    """

    state = "STOPPED"
