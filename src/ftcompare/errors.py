"""User-facing errors: the CLI prints `error: <message>` (one line: what is wrong, what to do) and exits 2."""


class FtcError(Exception):
    """An error caused by input the user can fix."""


class ConfigError(FtcError):
    """A config file or override is wrong."""
