"""The project's exception types (all also ValueError, so callers may catch either)."""


class WorldFlowError(ValueError):
    """Base class: bad input to a worldflow entry point."""


class ConfigError(WorldFlowError):
    """A configuration field has an invalid value."""


class CheckpointError(WorldFlowError):
    """A checkpoint is missing, truncated, corrupted or does not match its config."""
