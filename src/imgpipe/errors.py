"""User-facing failures: each message is one line naming the file, row or parameter at fault."""

import os
import sys
from collections.abc import Callable


class ImgpipeError(Exception):
    """Bad input or configuration that the user can fix; shown as one line, never as a traceback."""


class ConfigError(ImgpipeError):
    """A parameter in params.yaml is missing, of the wrong type, or out of range."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(), turning an ImgpipeError, or an OSError naming its file, into one line on stderr
    and exit status 1.

    Then the process ends at once: every output is written and closed by now, and the interpreter's
    own teardown (unloading torch's libraries and the like) took about 2 s of every train stage.
    """
    try:
        main()
        status = 0
    except ImgpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    except OSError as error:  # the machine's, not the code's: a full disk, a file in a folder's way, no permission
        print(f"error: {machine_error(error)}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def machine_error(error: OSError) -> str:
    """An OSError in one line: the file it names and why (a traceback's last line without its errno)."""
    return f"{error.filename}: {error.strerror}" if error.filename else f"{error.strerror or error}"


class InvalidSetting(ValueError):
    """Raised by library code for a bad argument; stages report it under its params.yaml key."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def require(ok: bool, name: str, reason: str) -> None:
    if not ok:
        raise InvalidSetting(name, reason)


def is_int(value) -> bool:
    """A whole number as YAML gives one: `true` is a bool, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
