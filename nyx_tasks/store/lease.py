"""One writer per (root, partition, stage output) at a time: a lease file with an owner and
an expiry, `partitions/<p>/<output>/_LEASE.json`.

It is taken with an exclusive create whose content is complete when the file appears (a local
disk: the record written to a temp file, then hard-linked into place, which fails when the lease
exists; an object store: `open(..., "xb")`, a conditional put at close: on S3 one PUT of the
whole record with `If-None-Match: *`, refused with FileExistsError when the lease exists), renewed
by a heartbeat thread while a step of the stage runs, and released when the stage commits. The owner is
a run, not a process: every task of one Airflow run (plan, the mapped shards, commit)
shares it, so they renew the same lease; any other writer is refused in one line naming
the holder, or waits when asked to. A holder that dies stops renewing; once the expiry
passes (or at once, for a CLI process on this host that no longer exists) the next writer
takes the lease over (by moving the expired file aside, then the
exclusive create, so two late-comers cannot both win). An empty or unreadable lease (a
write that failed before this layout, a torn file) counts as expired: it is moved aside and
the take-over is logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from nyx_tasks.core.base import StageError
from nyx_tasks.core.log import get_logger
from nyx_tasks.store.artifacts import ArtifactStore

LEASE = "_LEASE.json"
UNREADABLE = {"owner": "?", "expires": 0.0, "nonce": "?", "unreadable": True}  # what a torn lease counts as
DEFAULT_TTL = 600.0  # seconds a lease lives without a renewal; covers the scheduling gap between tasks
POLL = 5.0  # seconds between tries while waiting

_PROCESS_OWNER = f"cli:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def process_owner() -> str:
    """The owner of writes started from this process (the CLI, a test): one per process."""
    return _PROCESS_OWNER


def _process_gone(held: dict) -> bool:
    """A CLI run's lease whose process is provably gone (same host, no such pid). An Airflow run's
    lease outlives each task process by design, so only its expiry frees it."""
    if not str(held.get("owner", "")).startswith("cli:") or held.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return False


class LeaseHeld(StageError):
    """Another run is writing this stage output now."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


@dataclass
class Lease:
    store: ArtifactStore
    rel: str  # the stage output's directory, relative to the root
    owner: str
    ttl: float = DEFAULT_TTL
    what: str = ""  # for messages: "chunk (partition demo)"
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def path_rel(self) -> str:
        return f"{self.rel}/{LEASE}"

    def read(self) -> dict | None:
        """The lease as stored; an empty or unreadable one counts as expired (`UNREADABLE`)."""
        return self._read(self.path_rel)

    def _read(self, rel: str) -> dict | None:
        # a fresh look: an object store's file system keeps directory listings (s3fs), in which
        # another writer's lease, or its removal, would not show
        self.store.fs.invalidate_cache(self.store.path(rel))
        try:
            found = self.store.read_json(rel)
        except (ValueError, OSError):
            return dict(UNREADABLE)
        return found if found is None or isinstance(found, dict) else dict(UNREADABLE)

    def _record(self) -> dict:
        t = _now()
        return {"owner": self.owner, "nonce": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                "renewed_at": _iso(t), "expires": t + self.ttl, "expires_at": _iso(t + self.ttl)}

    def _create(self) -> bool:
        """Exclusive create, the record complete when the file appears; False when the lease exists.
        A failed write leaves no lease behind."""
        self.store.fs.makedirs(self.store.path(self.rel), exist_ok=True)
        record = self._record()
        data = json.dumps(record, indent=2).encode()
        if self.store.is_local:
            linked = self._link_into_place(data)
            if linked is not None:
                return linked
        try:
            f = self.store.fs.open(self.store.path(self.path_rel), "xb")
        except FileExistsError:
            return False
        try:
            with f:
                f.write(data)
        except FileExistsError:  # an object store checks the conditional put at close: the lease exists
            return False
        except BaseException:
            self._discard(record["nonce"])
            raise
        return True

    def _discard(self, nonce: str) -> None:
        """Remove what a failed create left: a half-written file (ours, the create being exclusive) or
        our own record; never another writer's complete lease (an object store's failed put wrote none)."""
        with contextlib.suppress(Exception):
            left = self.read()
            if left is not None and (left.get("unreadable") or left.get("nonce") == nonce):
                self.store.fs.rm(self.store.path(self.path_rel))

    def _link_into_place(self, data: bytes) -> bool | None:
        """Local disk: write a temp file, then hard-link it as the lease (atomic, fails if the lease
        exists). None when the file system cannot hard-link (then the exclusive create is used)."""
        tmp = self.store.path(f"{self.rel}/_LEASE.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.store.path(self.path_rel))
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                return None
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _take_over(self, expired: dict) -> bool:
        """Move an expired lease aside and create ours; False when someone else moved it first."""
        aside = f"{self.rel}/_LEASE.expired.{uuid.uuid4().hex[:8]}.json"
        try:
            self.store.fs.mv(self.store.path(self.path_rel), self.store.path(aside))
        except (FileNotFoundError, OSError):
            return False
        moved = self._read(aside) or {}
        if moved.get("nonce") != expired.get("nonce"):  # we moved a fresh lease someone just took: put it back
            self.store.fs.mv(self.store.path(aside), self.store.path(self.path_rel))
            return False
        self.store.remove(aside)
        return self._create()

    def try_acquire(self) -> dict | None:
        """Take or renew the lease. Returns None on success, else the holder's record."""
        for _ in range(3):
            if self._create():
                return None
            held = self.read()
            if held is None:
                continue  # released between our create and our read
            if held.get("owner") == self.owner:
                self.renew()
                return None
            gone = _process_gone(held)
            if held.get("expires", 0) > _now() and not gone:
                return held
            if self._take_over(held):
                why = ("it was empty or unreadable (a write that failed part-way); moved aside"
                       if held.get("unreadable") else "its process is gone" if gone
                       else f"expired at {held.get('expires_at')}")
                get_logger("lease").warning("%s: took over the lease of %s (%s)", self.what, held.get("owner"), why)
                return None
        # three tries lost to other writers: never a win by default (a None read here is not ours)
        return self.read() or {"owner": "another writer (the lease changed hands during three tries)",
                               "expires": _now()}

    def acquire(self, wait: bool = False, timeout: float | None = None) -> None:
        """Take the lease, or refuse in one line naming the holder; with `wait`, poll until it is free
        (at most `timeout` seconds when given)."""
        start = _now()
        last_log = 0.0
        while True:
            held = self.try_acquire()
            if held is None:
                return
            msg = (f"{self.what}: another run is writing this output now: {held.get('owner')} "
                   f"(host {held.get('host', '?')}, pid {held.get('pid', '?')}, lease until {held.get('expires_at')})")
            if not wait or (timeout is not None and _now() - start > timeout):
                raise LeaseHeld(msg + ". Wait for it (--wait), or remove "
                                f"{self.store.url(self.path_rel)} if that run is gone.")
            if _now() - last_log > 30:
                get_logger("lease").info("%s; waiting", msg)
                last_log = _now()
            time.sleep(POLL)

    def renew(self) -> None:
        """Extend our lease; refuse when another owner holds it now (ours expired and was taken)."""
        held = self.read()
        if held is not None and held.get("owner") != self.owner and held.get("expires", 0) > _now():
            raise LeaseHeld(f"{self.what}: lost the lease to {held.get('owner')} (ours expired); "
                            "this run's work on the stage stops here; re-run it when that run is done.")
        self.store.write_json_atomic(self.path_rel, self._record())

    def release(self) -> None:
        held = self.read()
        if held is not None and held.get("owner") == self.owner:
            self.store.remove(self.path_rel)

    # ------------------------------------------------------------ heartbeat
    def __enter__(self) -> Lease:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="nyx-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception as e:  # the step notices at its next lease check (marker, commit)
                get_logger("lease").error("%s: lease renewal failed: %s", self.what, e)
                return


def stage_leases(store: ArtifactStore, partition: str | None = None) -> list[tuple[str, dict]]:
    """(stage output folder, lease record) of every lease under the root's partitions (or one
    partition's), sorted; a torn lease's record is `UNREADABLE`. For `nyx lease list`."""
    pattern = store.path(f"partitions/{partition or '*'}/**/{LEASE}")
    found = []
    for path in sorted(store.fs.glob(pattern)):
        rel = path[len(store.path("")):].lstrip("/").rsplit("/", 1)[0]
        record = Lease(store, rel, "?").read()
        if record is not None:
            found.append((rel, record))
    return found


def lease_state(record: dict, now: float | None = None) -> str:
    """live | expired | process gone | unreadable: what `try_acquire` would make of it."""
    if record.get("unreadable"):
        return "unreadable"
    if _process_gone(record):
        return "process gone"
    return "live" if record.get("expires", 0) > (now or _now()) else "expired"
