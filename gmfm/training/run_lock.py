"""One run per folder: an exclusive lock file naming its holder, taken over when the holder is dead."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".gmfm-run.lock"


class RunFolderBusyError(RuntimeError):
    """Another live process trains into this folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` holds ``folder/.gmfm-run.lock`` (pid, host) for the block.

    A second process gets :class:`RunFolderBusyError` naming the holder. A lock left by a process that no
    longer exists (killed) on this host is taken over.
    """

    def __init__(self, folder: str | Path) -> None:
        """A lock on the run folder ``folder``, not yet taken (the folder must exist to take it)."""
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or take it over from a dead holder on this host.

        Raises:
            RunFolderBusyError: naming the holder, if a live process (or one on another host) holds it.
            PermissionError: if the lock file cannot be written in the folder.
        """
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        # The lock appears complete or not at all: written to a private file, then hard-linked in place.
        tmp = self.path.with_name(f"{LOCK_NAME}.{me['pid']}")
        try:
            tmp.write_text(json.dumps(me))
        except OSError as err:
            raise PermissionError(f"cannot write to the run folder {self.path.parent}: {err.strerror}") from None
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    holder = self._holder()
                    if holder is not None and (holder.get("host") != me["host"] or _alive(int(holder.get("pid", -1)))):
                        raise RunFolderBusyError(
                            f"{self.path.parent} is in use by another training run (process {holder.get('pid')} on "
                            f"{holder.get('host')}); wait for it to finish or choose another --out") from None
                    try:  # stale: its holder is gone
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                self.held = True
                return
        finally:
            tmp.unlink(missing_ok=True)
        raise RunFolderBusyError(f"could not take the lock {self.path}")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "{}") or None
        except (OSError, json.JSONDecodeError):
            return None

    def release(self) -> None:
        """Remove the lock file if this lock holds it."""
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
