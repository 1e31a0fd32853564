"""One writer per output: a lease in OUT/_lease.json with a heartbeat its holder refreshes.

Scheduled scoring fires every night whether or not last night's run has finished; two writers on one
OUT would score every file twice and one's clean-up could delete the other's staged chunks. The lease
makes the second run wait (`--wait`) or stop with TryLater (exit 75, EX_TEMPFAIL). A holder that died
stops refreshing; once a contender has seen the lease unchanged for the TTL on its own monotonic
clock, it takes it over. No decision compares two machines' clocks: the holder's wall-clock heartbeat
is only a hint for how long a contender is worth waiting (a lease that looks abandoned at the
contender's first look is watched for one TTL even past --wait), so a contender whose clock is minutes
ahead never takes a live lease.

Each acquisition has its own token. A take-over also names the tokens to fence: the stale holder's,
and those it had not fenced yet. The store writes a fence per token (store.py) that freezes what that
holder committed, so a holder that wakes up after losing its lease can never add a commit.

Every change of the lease file is a compare-and-swap, so two contenders can never both win:
* local paths (and shared mounts): exclusive create (a link, which fails if the name exists) for a new
  lease; take-over, refresh and release under a short mutex, a POSIX record lock (fcntl.lockf, NFS
  too) on OUT/_lease.lock that the kernel drops when its process dies, so it never has to be judged
  stale and cannot be broken while a frozen holder is inside it;
* s3://: conditional PUTs — `If-None-Match: *` to create, `If-Match: <etag>` to refresh, take over or
  release (a "released" record, never a delete: S3 has no conditional delete), through boto3 because
  pyarrow exposes neither (S3 has honoured both since 2024; moto too). A conditional PUT that botocore
  retried after it had landed fails its own condition: reading back our own record counts as success.
Other URI schemes have no such primitive here and are refused (pass --no-lease to run anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

from vehicle_ray import durable
from vehicle_ray.errors import InputError, LeaseLost, TryLater

LEASE_FILE = "_lease.json"
DEFAULT_TTL_S = 120.0  # a heartbeat every TTL/4: a live holder is never more than ~30 s behind
MUTEX_WAIT_S = 60.0  # the local mutex is held for milliseconds; a minute means a holder frozen inside it
POLL_S = 2.0  # a waiting contender's look at the lease: a few cheap reads a minute

# Wall-clock time for the record's stamps (since, heartbeat) and messages, never for a decision;
# tests skew it.
wall_clock = time.time

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseRecord:
    token: str
    holder: str  # host:pid, for the "held by" message
    run_id: str
    since: float
    heartbeat: float
    ttl: float
    pid_space: str = ""  # boot id + PID namespace of the holder: where its pid means something
    fences: tuple[str, ...] = ()  # tokens of holders this one took over (fenced by its store recovery)
    released: bool = False  # its holder finished and let go (S3 keeps the object: no conditional delete)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fences", tuple(self.fences))  # JSON gives a list

    def dead_here(self) -> bool:
        """Its process is gone from this very machine and PID namespace: a run killed here a minute
        ago need not be waited for (a container that shares the host name but not the PID namespace
        is not mistaken for dead)."""
        pid = int(self.holder.rpartition(":")[2])
        return self.pid_space == pid_space() != "" and not _alive(pid)

    def to_fence(self) -> tuple[str, ...]:
        """What a take-over of this record must fence: this holder and whoever it took over (nothing
        after a release: a holder fences what it took over before it releases)."""
        return () if self.released else (self.token, *self.fences)

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


class LeaseBackend(Protocol):
    """Compare-and-swap on one small file. `version` is whatever identifies the current content;
    `create` and `swap` return the version they wrote, or None when the condition failed."""

    def read(self) -> tuple[LeaseRecord, str] | None: ...
    def create(self, record: LeaseRecord) -> str | None: ...
    def swap(self, record: LeaseRecord, expected_version: str) -> str | None: ...
    def delete(self, expected_version: str) -> bool: ...
    def create_beside(self, name: str, data: bytes) -> bool: ...
    def read_beside(self, name: str) -> bytes | None: ...


def pid_space() -> str:
    """This machine's boot id and this process's PID namespace ("" where /proc does not tell)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _decode(data: bytes) -> LeaseRecord:
    return LeaseRecord(**json.loads(data.decode()))


_THREAD_LOCKS: dict[Path, threading.Lock] = {}  # POSIX record locks do not exclude threads of one process


def _link_new(target: Path, data: bytes, tmp: str | Path) -> bool:
    """Create `target` once with `data`: written and synced under `tmp` (durable.write_file), then
    linked into place (atomic, fails if it exists; unlike atomic_write's rename, which replaces) and
    its directory synced. False, and nothing written, when `target` exists."""
    durable.write_file(tmp, data)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    durable.sync_dir(target.parent)
    return True


class LocalLeaseBackend:
    def __init__(self, path: Path):
        self.path, self.mutex = path, path.with_suffix(".lock")
        self._thread_lock = _THREAD_LOCKS.setdefault(self.mutex, threading.Lock())

    @staticmethod
    def _version(record: LeaseRecord) -> str:
        return record.token + str(record.heartbeat)

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            record = _decode(self.path.read_bytes())
        except FileNotFoundError:
            return None
        return record, self._version(record)

    def _temp(self, record: LeaseRecord) -> Path:
        return self.path.with_suffix(f".{record.token}.tmp")

    def create(self, record: LeaseRecord) -> str | None:
        """Written completely (and synced) under a temp name, then linked into place (atomic, fails
        if it exists): a reader never sees an empty or half-written lease, not after a power cut either."""
        if not _link_new(self.path, record.encode(), self._temp(record)):
            return None
        return self._version(record)

    def swap(self, record: LeaseRecord, expected_version: str) -> str | None:
        with self._mutex():
            current = self.read()
            if current is None or current[1] != expected_version:
                return None
            durable.atomic_write(self.path, record.encode(), tmp=self._temp(record))
            return self._version(record)

    def delete(self, expected_version: str) -> bool:
        with self._mutex():
            current = self.read()
            if current is None or current[1] != expected_version:
                return False
            self.path.unlink()
            durable.sync_dir(self.path.parent)
            return True

    def create_beside(self, name: str, data: bytes) -> bool:
        """Create OUT/`name` once (a fence): False when it exists. Synced, then linked into place."""
        target = self.path.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return _link_new(target, data, durable.temp_sibling(target))

    def read_beside(self, name: str) -> bytes | None:
        try:
            return (self.path.parent / name).read_bytes()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        """fcntl.lockf on OUT/_lease.lock for the milliseconds of one read-compare-replace."""
        deadline = time.monotonic() + MUTEX_WAIT_S
        with self._thread_lock, open(self.mutex, "a") as f:
            while True:
                try:
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"lease mutex {self.mutex} held for {MUTEX_WAIT_S:g}s") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)


class S3LeaseBackend:
    def __init__(self, bucket: str, key: str):
        import boto3  # only for s3:// outputs; honours AWS_ENDPOINT_URL like pyarrow

        self.bucket, self.key, self.client = bucket, key, boto3.client("s3")

    def _precondition_failed(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "409")

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return _decode(obj["Body"].read()), obj["ETag"]

    def _put(self, key: str, body: bytes, **condition: str) -> str | None:
        """A conditional PUT: the new ETag, or None when the store refused the condition."""
        try:
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)["ETag"]
        except Exception as exc:
            if self._precondition_failed(exc):
                return None
            raise

    def _put_record(self, record: LeaseRecord, **condition: str) -> str | None:
        version = self._put(self.key, record.encode(), **condition)
        if version is None:  # refused, or botocore retried a PUT that had landed: is it ours?
            current = self.read()
            if current is not None and current[0] == record:
                return current[1]
        return version

    def create(self, record: LeaseRecord) -> str | None:
        return self._put_record(record, IfNoneMatch="*")

    def swap(self, record: LeaseRecord, expected_version: str) -> str | None:
        return self._put_record(record, IfMatch=expected_version)

    def _beside(self, name: str) -> str:
        return f"{self.key.rpartition('/')[0]}/{name}".lstrip("/")

    def create_beside(self, name: str, data: bytes) -> bool:
        """Create OUT/`name` once (a fence): False when it exists (If-None-Match: *)."""
        return self._put(self._beside(name), data, IfNoneMatch="*") is not None

    def read_beside(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._beside(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def probe(self) -> None:
        """Refuse a store that ignores conditional writes (some older S3-compatible gateways accept
        If-None-Match/If-Match and overwrite anyway): there the lease and the fences would be no lease
        at all. Three small requests per run, on a key beside the lease."""
        key = self._beside(f"_lease.probe.{uuid.uuid4().hex}")  # per run: two runs may probe at once
        etag = self._put(key, b"probe")
        ignored = self._put(key, b"again", IfNoneMatch="*") is not None
        ignored = ignored or self._put(key, b"again", IfMatch=f'"{uuid.uuid4().hex}"') is not None
        self.client.delete_object(Bucket=self.bucket, Key=key)
        if ignored or etag is None:
            raise InputError(
                f"s3://{self.bucket}/{key}: this store ignores conditional writes (If-None-Match/If-Match), "
                "so one writer per output cannot be guaranteed; use a store that honours them, or pass "
                "--no-lease if nothing else ever writes to this output"
            )

    def delete(self, expected_version: str) -> bool:
        """Release: a "released" copy of the record, put only over our own version (S3 general-purpose
        buckets have no conditional delete, and a read-then-delete could remove a taker's lease)."""
        current = self.read()
        if current is None or current[1] != expected_version:
            return False
        released = LeaseRecord(**{**asdict(current[0]), "released": True})
        return self._put_record(released, IfMatch=expected_version) is not None


def lease_backend(output: str, base: str, local: bool) -> LeaseBackend:
    """The backend for OUT: `base` is pyarrow's path of OUT (bucket/prefix for s3://)."""
    if local:
        return LocalLeaseBackend(Path(base) / LEASE_FILE)
    if urlparse(str(output)).scheme == "s3":
        bucket, _, prefix = base.partition("/")
        return S3LeaseBackend(bucket, f"{prefix.rstrip('/')}/{LEASE_FILE}".lstrip("/"))
    raise InputError(
        f"the overlap lease needs a local path or s3:// output, not {output}; "
        "pass --no-lease if nothing else writes to it"
    )


class Lease:
    """Held for one run: acquire (wait up to `wait` seconds), heartbeat in a thread, release.

    `check()` before each commit: a holder that lost its lease (it was frozen for longer than the TTL
    and someone took over) must stop before writing anything else. The store's fence (store.py)
    refuses the commits such a holder still attempts after a check. `taken_over` lists the tokens
    this acquisition must fence before it recovers the output."""

    def __init__(self, backend: LeaseBackend, run_id: str, ttl: float = DEFAULT_TTL_S):
        self.backend, self.ttl = backend, ttl
        self.record = LeaseRecord(
            token=uuid.uuid4().hex,
            holder=f"{socket.gethostname()}:{os.getpid()}",
            run_id=run_id,
            since=0.0,
            heartbeat=0.0,
            ttl=ttl,
            pid_space=pid_space(),
        )
        self.version: str | None = None
        self.lost: str | None = None
        self.taken_over: tuple[str, ...] = ()
        self.fenced = False  # the store wrote the fences of `taken_over` (store.fence)
        self._refreshed = time.monotonic()  # the last time the store confirmed the lease is ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self.record.token

    def acquire(self, wait: float = 0.0, poll: float = POLL_S) -> None:
        """Take the lease, waiting up to `wait` seconds for its holder to release it or go silent.
        A lease whose heartbeat looks older than its TTL (a hint only: clocks differ) is watched for
        its TTL even past `wait`, so a dead holder's lease is taken over without --wait too."""
        if isinstance(self.backend, S3LeaseBackend):
            self.backend.probe()
        deadline = time.monotonic() + wait
        watch = _Watch()
        while True:
            held = self._try_acquire(watch)
            if held is None:
                self._thread = threading.Thread(target=self._heartbeat, name="vehicle-ray-lease", daemon=True)
                self._thread.start()
                return
            if watch.first_look(held):
                deadline = max(deadline, watch.since + held.ttl + poll)
            if time.monotonic() >= deadline:
                raise TryLater(
                    f"another run holds the output (run {held.run_id} on {held.holder}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(held.since))} UTC, its lease refreshed "
                    f"within the last {held.ttl:g}s); try later, or pass --wait SECONDS"
                )
            time.sleep(min(poll, max(0.1, deadline - time.monotonic())))

    def _try_acquire(self, watch: _Watch) -> LeaseRecord | None:
        """None when acquired; otherwise the live holder's record."""
        version = self.backend.create(self._fresh(since=True))
        if version is not None:
            return self._acquired(version, ())
        current = self.backend.read()
        if current is None:  # released between our create and read: try again at once
            return self._try_acquire(watch)
        held, version = current
        if not (held.released or held.dead_here() or watch.unchanged_for(version, held.ttl)):
            return held
        mine = self.backend.swap(self._fresh(since=True, fences=held.to_fence()), version)
        if mine is None:
            return self._try_acquire(watch)  # someone else changed it first: look again
        if not held.released:
            logger.info(
                f"took over the lease of run {held.run_id} on {held.holder}: "
                + ("its process is gone" if held.dead_here() else f"unchanged for {held.ttl:g}s")
            )
        return self._acquired(mine, held.to_fence())

    def _acquired(self, version: str, taken_over: tuple[str, ...]) -> None:
        self.version, self.taken_over = version, taken_over
        self._refreshed = time.monotonic()  # confirmed now: a run that waited starts with a fresh lease
        return None

    def _fresh(self, since: bool = False, fences: tuple[str, ...] | None = None) -> LeaseRecord:
        """This holder's record stamped now (`since`: the acquisition's own moment, not the object's
        construction: a run that waited an hour must not start with an hour-old heartbeat)."""
        now = wall_clock()
        changes: dict = {"heartbeat": now, **({"since": now} if since else {})}
        if fences is not None:
            changes["fences"] = fences
        self.record = LeaseRecord(**{**asdict(self.record), **changes})
        return self.record

    def _heartbeat(self) -> None:
        """Refresh every TTL/4. A failed refresh (a store hiccup) is retried at the next beat; a
        refused one means someone else holds the lease now."""
        while not self._stop.wait(self.ttl / 4):
            try:
                version = self.backend.swap(self._fresh(), self.version) if self.version is not None else None
            except Exception as exc:  # noqa: BLE001 - any store error: try again at the next beat
                logger.warning(f"could not refresh the output's lease ({type(exc).__name__}: {exc}); retrying")
                continue
            if version is None:
                self.lost = "another run took the output's lease over (this run stalled beyond its TTL)"
                logger.warning(f"lease lost: {self.lost}")
                return
            self.version, self._refreshed = version, time.monotonic()

    def check(self) -> None:
        """Before every commit: the lease must be ours and confirmed within half its TTL, so that a
        run that stalled (or whose heartbeat could not reach the store) never commits over a run
        that took the lease over meanwhile."""
        if self.lost:
            raise LeaseLost(f"stopping before the next commit: {self.lost}")
        unconfirmed = time.monotonic() - self._refreshed
        if self.version is None or unconfirmed > self.ttl / 2:
            raise LeaseLost(
                f"stopping before the next commit: the output's lease has not been confirmed for "
                f"{unconfirmed:.0f}s (TTL {self.ttl:g}s)"
            )

    def confirm(self) -> None:
        """Before a destructive step (recover's deletions, clear, compaction, the run record): read
        the lease now; LeaseLost unless it is still ours."""
        current = self.backend.read()
        if current is None or current[0].token != self.token:
            self.lost = self.lost or "another run took the output's lease over (this run stalled beyond its TTL)"
            raise LeaseLost(f"stopping: {self.lost}")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours; LeaseLost when it was lost,
        so a run that lost its lease never ends as a success. A take-over whose fences were not
        written yet keeps its lease (to expire): the next take-over inherits the tokens to fence."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        version, self.version = self.version, None
        if self.lost:
            raise LeaseLost(f"this run lost the output's lease: {self.lost}")
        if version is not None and (self.fenced or not self.taken_over) and not self.backend.delete(version):
            self.lost = "another run took the output's lease over (this run stalled beyond its TTL)"
            raise LeaseLost(f"this run lost the output's lease: {self.lost}")

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()
            return
        with contextlib.suppress(LeaseLost):  # the exception already on its way says more
            self.release()


class _Watch:
    """A contender's own observation of the lease: which version it saw, and since when on its
    monotonic clock. Staleness is "unchanged for the TTL as this process measured it"."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.since = time.monotonic()
        self._looked = False

    def unchanged_for(self, version: str, ttl: float) -> bool:
        if version != self.version:
            self.version, self.since = version, time.monotonic()
        return time.monotonic() - self.since >= ttl

    def first_look(self, held: LeaseRecord) -> bool:
        """True once: at the first look at a lease whose heartbeat stamp (the holder's clock) is
        older than its TTL, i.e. a lease worth watching for one TTL before giving up."""
        if self._looked:
            return False
        self._looked = True
        return wall_clock() - held.heartbeat > held.ttl
