"""The one exception type users see: a one-line message that names the cause and the fix."""


class RWKVRelaxError(Exception):
    """Bad input or a missing toolchain. CLIs print ``error: <message>`` and exit 2, no traceback."""


class CheckpointError(RWKVRelaxError):
    """A checkpoint that cannot be read, is of another architecture, or does not match the table."""


class ConfigError(RWKVRelaxError):
    """An unknown preset, a malformed config file, or inconsistent shapes."""
