"""Errors that mean the user's config or files are wrong (train.py/evaluate.py report them as one line)."""


class ConfigError(ValueError):
    """The experiment config names something that does not exist or is no longer read (the
    message says what, where, and what to write instead)."""
