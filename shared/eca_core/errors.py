"""The project's error types: one hierarchy, caught once in the CLI layer (one line, exit 2).

Every error a user can fix (a bad file, a bad parameter, a busy run directory) derives from
:class:`ECAError`. The domain packages subclass it (``DataError``, ``SlideError``, ...). They also
derive from ``ValueError`` where the problem is a bad value, so library callers can catch either.
"""

from __future__ import annotations


class ECAError(Exception):
    """An error the user can fix; the CLI prints its message in one line and exits with code 2."""


class ConfigError(ECAError, ValueError):
    """A configuration value or pipeline definition is invalid (names the key and the value)."""


class InputError(ECAError, ValueError):
    """An input file is missing, unreadable or holds invalid data (names the file and the problem)."""


class UnsafeFileError(InputError):
    """A file would run code when loaded (a pickle referencing a forbidden global); it was not loaded."""


class LockError(ECAError):
    """Another live process holds the run directory."""
