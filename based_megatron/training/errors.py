"""The one exception type for user errors in training (bad flags, configs, data or checkpoints)."""


class TrainingError(Exception):
    """A problem with the user's input: the message names the flag/file/field and what was expected."""
