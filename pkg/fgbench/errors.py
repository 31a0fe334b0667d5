"""The errors fgbench reports to users as one clear line (see cli.main)."""


class FgbenchError(Exception):
    """A problem with the user's input: config, data or paths. Never a bug."""


class ConfigError(FgbenchError):
    """A config value is missing, unknown or out of range."""


class DataError(FgbenchError):
    """A dataset is missing or its files are malformed."""


class TrainingError(FgbenchError):
    """Training cannot go on (for example the loss became NaN)."""


class CheckpointError(FgbenchError):
    """A weights file (a seed method's released checkpoint) is missing, unreadable, or its keys do
    not fit the fgbench model it is loaded into."""


def exit_on_config_error(error) -> None:
    """For the Snakefiles: the one line ``fgbench: config error: ...`` on stderr and exit status 2,
    the status ``fgbench`` gives every input error (1 is left to bugs)."""
    import sys

    print(f"fgbench: config error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)
