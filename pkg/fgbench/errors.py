"""The errors fgbench reports to users as one clear line (see cli.main)."""


class FgbenchError(Exception):
    """A problem with the user's input: config, data or paths. Never a bug."""


class ConfigError(FgbenchError):
    """A config value is missing, unknown or out of range."""


class DataError(FgbenchError):
    """A dataset is missing or its files are malformed."""


class TrainingError(FgbenchError):
    """Training cannot go on (for example the loss became NaN)."""
