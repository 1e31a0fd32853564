"""Transient vs permanent read errors (score/decode.py): the classification, the retry with backoff
inside a decode batch, and the error kinds that errors/ rows carry. Pure functions and a fake file
system: no Ray, no network."""

import errno
import io
import types

import numpy as np
import pytest
from PIL import Image

from vehicle_ray.errors import InputError
from vehicle_ray.score import decode
from vehicle_ray.score.decode import (
    ERROR_KINDS,
    OTHER_KIND,
    TRANSIENT,
    DecodeError,
    RetryBudget,
    backoff_s,
    decode_batch,
    error_kind,
    is_transient,
    read_file,
)
from vehicle_ray.score.options import ERROR_KIND_NAMES, ScoreOptions, parse_error_kinds

TRANSIENT_ERRORS = [
    # pyarrow's S3 client, as seen here against moto behind a 503 proxy and with moto down
    OSError(
        "When reading information for key 'd/x.jpg' in bucket 'bkt': AWS Error UNKNOWN (HTTP status 503) "
        "during HeadObject operation: No response body."
    ),
    OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."),
    OSError(
        "When reading information for key 'd/x.jpg' in bucket 'bkt': AWS Error NETWORK_CONNECTION during "
        "HeadObject operation: curlCode: 7, Could not connect to server; Details: Failed to connect"
    ),
    OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was reached"),
    OSError("AWS Error THROTTLING during GetObject operation: Rate exceeded"),
    OSError("AWS Error INTERNAL_FAILURE during GetObject operation: We encountered an internal error."),
    OSError("AWS Error SERVICE_UNAVAILABLE during GetObject operation"),
    OSError("AWS Error REQUEST_TIMEOUT during GetObject operation"),
    OSError("AWS Error UNKNOWN (HTTP status 500) during GetObject operation: InternalError"),
    OSError("AWS Error UNKNOWN (HTTP status 502) during GetObject operation"),
    OSError("google::cloud::Status(UNAVAILABLE: Connection reset by peer)"),
    OSError("google::cloud::Status(DEADLINE_EXCEEDED: deadline exceeded)"),
    OSError("HTTP status code 429: Too Many Requests"),
    OSError(errno.ECONNRESET, "Connection reset by peer"),
    OSError(errno.ETIMEDOUT, "Connection timed out"),
    OSError(errno.ESTALE, "Stale file handle"),
    ConnectionResetError("reset"),
    ConnectionRefusedError("refused"),
    TimeoutError("read timed out"),
]

PERMANENT_ERRORS = [
    FileNotFoundError("Path does not exist 'bkt/d/x.jpg'"),
    PermissionError(errno.EACCES, "Permission denied"),
    IsADirectoryError("is a directory"),
    OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"),
    OSError("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body."),
    OSError("AWS Error NO_SUCH_KEY during GetObject operation: The specified key does not exist."),
    OSError(errno.EIO, "Input/output error"),  # a bad sector locally: retrying does not help
    OSError("Failed to open local file"),
    # words inside an object key or bucket name are not the error's words
    OSError("When reading information for key 'throttled/503/timeout.jpg' in bucket 'slowdown': HTTP status 404"),
    OSError("Failed to open local file '/dumps/connection reset/unavailable.jpg'. Detail: [errno 2] No such file"),
    ValueError("not an OSError at all"),
]


@pytest.mark.parametrize("exc", TRANSIENT_ERRORS, ids=lambda e: str(e)[:60])
def test_transient_errors_are_recognised(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT_ERRORS, ids=lambda e: str(e)[:60])
def test_permanent_errors_are_not_retried(exc):
    assert not is_transient(exc)


def test_every_error_message_has_a_kind_and_the_kinds_are_the_options():
    assert error_kind("empty file (0 bytes)") == "empty"
    assert error_kind("image too large: 3000x3000 exceeds the 4000000-pixel limit") == "too_large"
    assert error_kind("not an image (unrecognised or unsupported format)") == "not_image"
    assert error_kind("corrupt or truncated image: broken data stream") == "corrupt"
    assert error_kind("file not found") == "not_found"
    assert error_kind("cannot read file: Input/output error") == "read"
    assert error_kind(f"{TRANSIENT} (3 tries): SlowDown") == "transient"
    assert error_kind("something a newer version wrote") == OTHER_KIND
    # what --retry-errors accepts: every kind an errors/ row can have (a transient one never is one)
    assert set(ERROR_KIND_NAMES) == (set(ERROR_KINDS.values()) - {"transient"}) | {OTHER_KIND}


def test_backoff_doubles_with_jitter_and_is_capped():
    assert [backoff_s(k, uniform=lambda lo, hi: lo) for k in (1, 2, 3)] == [0.5, 1.0, 2.0]  # no jitter: half
    assert [backoff_s(k, uniform=lambda lo, hi: hi) for k in (1, 2, 3)] == [1.0, 2.0, 4.0]  # full delay
    assert backoff_s(20, uniform=lambda lo, hi: hi) == decode.BACKOFF_CAP_S
    waits = [backoff_s(2) for _ in range(200)]
    assert 1.0 <= min(waits) < max(waits) <= 2.0  # jittered, within [d/2, d]


class FlakyFS:
    """A pyarrow-like file system whose reads fail with `errors` (one per try) before they succeed."""

    def __init__(self, data: dict[str, bytes], errors: dict[str, list[Exception]]):
        self.data, self.errors, self.opened = data, errors, []

    def open_input_file(self, path: str):
        self.opened.append(path)
        if self.errors.get(path):
            raise self.errors[path].pop(0)
        if path not in self.data:
            raise FileNotFoundError(path)
        return io.BytesIO(self.data[path])


def flaky_root(data, errors):
    fs = FlakyFS(data, errors)
    return types.SimpleNamespace(fs=fs, path=lambda rel: rel), fs


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(decode, "BACKOFF_BASE_S", 0.001)


def slow_down() -> OSError:
    return OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.")


def test_a_transient_failure_is_retried_until_the_read_succeeds(fast_backoff):
    root, fs = flaky_root({"a": b"bytes"}, {"a": [slow_down(), slow_down()]})
    assert read_file(root, "a") == b"bytes"
    assert fs.opened == ["a"] * 3


def test_a_transient_failure_that_outlasts_the_tries_is_a_transient_decode_error(fast_backoff):
    root, fs = flaky_root({"a": b"bytes"}, {"a": [slow_down() for _ in range(5)]})
    with pytest.raises(DecodeError, match=rf"^{TRANSIENT} \(3 tries\): AWS Error SLOW_DOWN"):
        read_file(root, "a")
    assert len(fs.opened) == decode.READ_TRIES == 3


def test_a_permanent_failure_is_not_retried(fast_backoff):
    root, fs = flaky_root({}, {"a": [OSError("AWS Error ACCESS_DENIED: Access Denied")]})
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        read_file(root, "a")
    assert fs.opened == ["a"]


def test_the_batch_budget_stops_retrying_in_an_outage(monkeypatch):
    """Once a batch has lost its budget to transient failures, a failing file gets one try only."""
    # a deterministic clock: failed tries take no time, every wait is 0.02 s and is not slept
    monkeypatch.setattr(decode, "backoff_s", lambda attempt: 0.02)
    monkeypatch.setattr(decode.time, "monotonic", lambda: 0.0)
    monkeypatch.setattr(decode.time, "sleep", lambda seconds: None)
    root, fs = flaky_root({}, {name: [slow_down() for _ in range(9)] for name in "abc"})
    budget = RetryBudget(0.05)  # the first file's two waits (0.04 s), then nothing left for a third
    for name in "abc":
        with pytest.raises(DecodeError, match=TRANSIENT):
            read_file(root, name, budget)
    assert fs.opened.count("c") == 1 and len(fs.opened) < 3 * decode.READ_TRIES
    assert budget.left < 0.02


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_decode_batch_tells_transient_from_permanent_failures(fast_backoff):
    good = jpeg()
    root, _ = flaky_root(
        {"ok": good, "flaky": good, "down": good, "corrupt": good[: len(good) // 2], "denied": good},
        {
            "flaky": [slow_down()],  # fails once, then reads: scored
            "down": [slow_down() for _ in range(5)],  # outlasts the tries: deferred by the store
            "denied": [PermissionError(errno.EACCES, "Permission denied")],
        },
    )
    names = ["ok", "flaky", "down", "corrupt", "denied", "missing"]
    out = decode_batch({"path": np.array(names), "rel": np.array(names)}, root, 8, "squish", 10**8)
    kinds = [error_kind(e) if e else "" for e in out["error"]]
    assert kinds == ["", "", "transient", "corrupt", "read", "not_found"]
    assert out["image"][1].any() and not out["image"][2].any()


def test_retry_errors_option_is_validated():
    assert parse_error_kinds("read, corrupt") == ("read", "corrupt")
    assert parse_error_kinds("all") == ERROR_KIND_NAMES
    assert parse_error_kinds(None) == ()
    assert ScoreOptions(incremental=True, retry_errors=("read",)).retry_errors == ("read",)
    with pytest.raises(InputError, match="--retry-errors takes kinds among .* \\(got transient, bogus\\)"):
        ScoreOptions(incremental=True, retry_errors=("transient", "bogus"))
    with pytest.raises(InputError, match="--retry-errors needs --incremental"):
        ScoreOptions(retry_errors=("read",))
