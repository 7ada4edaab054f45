"""The errors a user can cause or meet, each reported by the CLI as one line.

Every error the CLI turns into a single line on stderr derives from `RemaxError`;
`exit_code` is what `remax` exits with (2 for bad input, as argparse does)."""

from __future__ import annotations


class RemaxError(Exception):
    """A failure explained in one line that names the fix; the CLI prints it without a traceback."""

    exit_code = 1


class InputError(RemaxError, ValueError):
    """Bad input (config, data, paths): nothing was written; exit code 2."""

    exit_code = 2


class RunStopped(RemaxError):
    """The run stopped early (a signal, a failing reward, non-finite gradients, a failed
    checkpoint write) after saving what it could; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
