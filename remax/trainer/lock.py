"""One run per output directory at a time.

`run_lock(out)` holds `out/remax.lock` (the holder's pid, host and start time, one JSON
line) for the whole of `Trainer.train()`: taken before anything is written to `out`,
released on the way out, however the run ends. A second run on the same directory is
refused in one line that names the holder. A lock left by a process that died (same host,
pid gone) is stale and taken over, with a notice; a lock from another host cannot be
checked and is refused, saying how to remove it. Under several processes only rank 0
takes it (the others write nothing to `out`); every rank learns whether it got it.

The file is not dot-named, so the clean-up of killed writes (`clean_leftovers`) never
touches it, and it is not one of a run's files, so `--overwrite True` leaves it alone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from remax.errors import InputError

LOCK_FILE = "remax.lock"


class RunLocked(InputError):
    """Another live run holds the output directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_holder(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe(holder: Optional[dict[str, Any]]) -> str:
    if not holder:
        return "a run whose lock file cannot be read"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {since})"


def is_stale(holder: Optional[dict[str, Any]]) -> bool:
    """A lock of a dead process on this host. Unreadable or foreign locks are not stale:
    they cannot be checked, and taking one over could mix two runs."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not _alive(pid)


def check_unlocked(out: Path) -> None:
    """Refuse now if a live run holds `out` (the CLI calls it before launching processes)."""
    path = Path(out).expanduser() / LOCK_FILE
    if path.exists():
        holder = read_holder(path)
        if not is_stale(holder):
            raise _locked(Path(out), path, holder)


def _locked(out: Path, path: Path, holder: Optional[dict[str, Any]]) -> RunLocked:
    foreign = holder and holder.get("host") != socket.gethostname()
    fix = (f"if that run is gone, delete {path}" if foreign or not holder
           else "wait for it to finish, stop it, or pass another --output_dir")
    return RunLocked(f"output_dir {str(out)!r} is in use by another remax run, {describe(holder)}; {fix}")


class RunLock:
    def __init__(self, out: Path) -> None:
        self.out = Path(out).expanduser()
        self.path = self.out / LOCK_FILE
        self.created_dir = False
        self.held = False

    def acquire(self) -> "RunLock":
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self.created_dir = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if not is_stale(holder):
                    self._undo_dir()
                    raise _locked(self.out, self.path, holder) from None
                from remax.trainer.resume import notice

                notice(f"taking over the lock of a run that is gone ({describe(holder)})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return self
        self._undo_dir()
        raise RunLocked(f"output_dir {str(self.out)!r}: another run took the lock first; pass another --output_dir")

    def release(self) -> None:
        if self.held:
            holder = read_holder(self.path)
            if holder and holder.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except OSError as err:  # pragma: no cover
                    if err.errno != errno.ENOENT:
                        raise
            self.held = False
        self._undo_dir()

    def _undo_dir(self) -> None:
        """A directory this lock created and nothing else filled is removed again."""
        if self.created_dir:
            try:
                self.out.rmdir()
            except OSError:
                pass  # the run wrote into it: it stays
            self.created_dir = False


@contextmanager
def run_lock(out: Path, dist: Any = None) -> Iterator[Optional[RunLock]]:
    """Hold `out`'s lock for the block; rank 0 takes it and every rank learns the outcome."""
    main = dist is None or dist.is_main
    lock, error = None, None
    if main:
        try:
            lock = RunLock(out).acquire()
        except RunLocked as err:
            error = err
    ok = dist.from_main(error is None) if dist is not None else error is None
    if error is not None:
        raise error
    if not ok:
        raise RunLocked(f"output_dir {str(out)!r} is in use by another remax run (rank 0 says why)")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


__all__ = ["LOCK_FILE", "RunLock", "RunLocked", "check_unlocked", "run_lock"]
