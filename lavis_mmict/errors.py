"""Errors that mean the user's config or files are wrong: train.py/evaluate.py report every
:class:`UserError` as one ``<script>: error: ...`` line and exit status 1 (``--debug``: traceback).

Derive a new error of the user's input from :class:`UserError` (and from the builtin it refines,
so existing ``except ValueError`` code keeps working)."""


class UserError(Exception):
    """Marker: the message says what is wrong in the user's config, files or disk, and where."""


class ConfigError(UserError, ValueError):
    """The experiment config names something that does not exist or is no longer read (the
    message says what, where, and what to write instead)."""


class DataError(UserError, ValueError):
    """An annotation file or split cannot be used as configured (the message names the file,
    split or record)."""


class DiskFullError(UserError, OSError):
    """A file could not be written: no space left on the device (the message names the file)."""
