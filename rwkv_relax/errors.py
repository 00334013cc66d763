"""The exception types users see: one-line messages that name the cause and the fix.

A leaf module: every stage raises these, and the CLIs turn them into one ``error:`` line."""


class RWKVRelaxError(Exception):
    """Bad input or a missing toolchain. CLIs print ``error: <message>`` and exit 2, no traceback."""


class CheckpointError(RWKVRelaxError):
    """A checkpoint that cannot be read, is of another architecture, or does not match the table."""


class ConfigError(RWKVRelaxError):
    """An unknown preset, a malformed config file, or inconsistent shapes."""


class ToolchainError(RWKVRelaxError):
    """A compiler, linker or runtime piece needed for a target is missing."""
