"""Errors a user can act on.

Every expected failure (bad config, bad corpus, unreachable storage, mismatched checkpoint) raises a subclass of
RepeatlabError whose message is one line naming the field or file, what was wrong and what is allowed. The CLI prints
that line and exits non-zero; tracebacks are for bugs only.
"""


class RepeatlabError(Exception):
    """An expected, user-facing failure with a one-line message."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(RepeatlabError):
    """A study config field has a value that is not allowed."""


class CorpusError(RepeatlabError):
    """A corpus could not be read, is empty, or is too small for what was asked."""


class StorageError(RepeatlabError):
    """A storage URL could not be reached, read or written."""


class PlanError(RepeatlabError):
    """A mixture plan cannot be built as requested, or does not match its corpus."""


class CheckpointError(RepeatlabError):
    """A checkpoint is missing, corrupt, or belongs to another config."""


class TrainError(RepeatlabError):
    """Training cannot start or continue with these settings."""


class AnalysisError(RepeatlabError):
    """Eval records are missing or inconsistent for the analysis asked for."""


class IntegrityError(RepeatlabError):
    """A file's content does not match the sha256 recorded when it was written."""


class RecordError(RepeatlabError):
    """A stored record (point.json, done.json, eval.json, ...) has an unknown, missing or mistyped field."""
