"""The locks of an output folder.

* **Bookkeeping lock** (:func:`locked`, file ``.batch.lock``): held for a moment around each change of
  ``results.jsonl`` / ``errors.jsonl``, so that shards sharing a folder never interleave a line.
* **Run lock** (:class:`RunLock`, one file ``.batch.run.<host>-<pid>-<token>.lock`` per live run): held
  for a whole run. A run stops at once, before any model loads, when a live run already covers one of its
  items: an unsharded run conflicts with every other run; shard I/N with the same shard and with a split
  into another N (those overlap); shards I/N and J/N (I != J) of one split share the folder. Liveness is
  the kernel's: a run holds an exclusive ``flock`` on its own file while it lives, so the file of a run
  that died (kill -9, a crash) is unlocked and the next run deletes it (takes the folder over). Without
  ``fcntl`` (Windows) a file counts as live while its PID runs on this host, and always for another host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sys
import time
from pathlib import Path

from vision.batch.errors import OutputInUseError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".batch.lock"
RUN_PREFIX = ".batch.run."
RUN_SUFFIX = ".lock"


@contextlib.contextmanager
def locked(lock_path: Path):
    """An exclusive lock on the output folder's bookkeeping files (shards may share one folder)."""
    if fcntl is None:  # Windows: the run lock alone keeps one process per output folder
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def host_tag() -> str:
    """This machine's name, reduced to the characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:32] or "host"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def shards_overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Whether runs over shards ``a`` and ``b`` (``None``: every item) can share an item."""
    if a is None or b is None:
        return True
    return a[1] != b[1] or a[0] == b[0]


def _read_claim(path: Path) -> dict | None:
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None


def _is_live(path: Path, claim: dict | None) -> bool:
    """Whether the run that wrote the lock file ``path`` still runs."""
    if fcntl is not None:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:  # it ended meanwhile
            return False
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its process lives
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
    if claim is None:
        return False
    return claim.get("host") != socket.gethostname() or pid_alive(int(claim.get("pid", 0)))


def _in_use_message(folder: Path, path: Path, claim: dict | None) -> str:
    if claim is None:
        who = f"a run whose lock file {path.name} cannot be read"
    else:
        shard = claim.get("shard")
        who = (f"PID {claim.get('pid')} on host {claim.get('host')}, started {claim.get('started')}"
               + (f", shard {shard[0]}/{shard[1]}" if shard else ""))
    return (f"the output folder {folder} is in use by another run ({who}). Wait for it to finish or choose "
            "another --output; to split one job across processes give each one --shard I/N with the same N.")


class RunLock:
    """One live run's claim on an output folder (``shard``: ``(I, N)`` or ``None`` for every item).

    ``with RunLock(folder, shard):`` acquires it (or raises :class:`OutputInUseError` naming the other
    run's PID and host) and releases it at the end; the lock file of a dead run is taken over.
    """

    def __init__(self, folder: str | os.PathLike, shard: tuple[int, int] | None = None):
        self.folder = Path(folder)
        self.shard = shard
        self.path = self.folder / f"{RUN_PREFIX}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{RUN_SUFFIX}"
        self._handle = None

    def acquire(self) -> RunLock:
        with locked(self.folder / LOCK_NAME):  # one starting run at a time looks at the others
            for path in sorted(self.folder.glob(f"{RUN_PREFIX}*{RUN_SUFFIX}")):
                claim = _read_claim(path)
                if not _is_live(path, claim):
                    with contextlib.suppress(OSError):
                        path.unlink()  # its run is gone: take over
                    continue
                other = tuple(claim["shard"]) if claim and claim.get("shard") else None
                if claim is None or shards_overlap(self.shard, other):
                    raise OutputInUseError(_in_use_message(self.folder, path, claim))
            claim = {"pid": os.getpid(), "host": socket.gethostname(),
                     "shard": list(self.shard) if self.shard else None,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
            handle = open(self.path, "w", encoding="utf-8")
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.write(json.dumps(claim) + "\n")
            handle.flush()
            self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        with locked(self.folder / LOCK_NAME):  # a starting run never sees the file unlocked but present
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._handle.close()
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
