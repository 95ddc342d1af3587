"""The rbzoo exception hierarchy.

Every error a user can cause (bad file, bad flag, bad data) is an :class:`RbzooError`; the CLI
prints its message on one line and exits non-zero. Anything else is a bug.
"""


class RbzooError(Exception):
    """Base class of every error rbzoo raises on purpose."""

    exit_code = 2


class CodecError(RbzooError):
    """A mask blob is malformed (format.md §3)."""


class CheckpointError(RbzooError):
    """A checkpoint file is missing, malformed, or does not match its declared network."""


class ConfigError(RbzooError):
    """A configuration value or command-line option is invalid or contradictory."""


class OutputExistsError(RbzooError):
    """A command would overwrite its own input, or an existing output without --force."""


class DataError(RbzooError):
    """A dataset is missing, malformed, or does not fit the model."""


class EvalStateError(RbzooError):
    """A saved evaluation state does not match the requested evaluation."""


class HubError(RbzooError):
    """A Hub operation failed (network, auth, unknown repo or revision, bad card)."""


class VerificationError(RbzooError):
    """A downloaded model does not reproduce the results its card claims."""

    exit_code = 3


class RbzooWarning(UserWarning):
    """Something was repaired or skipped and the user should know (the CLI prints it on one line)."""
