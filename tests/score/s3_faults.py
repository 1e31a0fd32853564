"""A fault-injecting HTTP proxy in front of the suite's moto S3 server (moto has no failure hooks).

Every request is forwarded to moto unchanged, except reads (GET/HEAD) of chosen objects: while an
object's fault budget lasts, the proxy answers as a throttled S3 does, 503 SlowDown, without asking
moto. Path-style addressing (`/bucket/key`, what pyarrow uses with an endpoint override) names the
object. Point AWS_ENDPOINT_URL at `proxy.url` to send a process's S3 traffic through it.
With `ignore_conditions` it also plays an older S3-compatible gateway that accepts conditional
writes and ignores them: If-None-Match / If-Match are dropped before moto sees the request.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "expect"}
FOREVER = -1


class FaultProxy:
    """`faults`: "/bucket/key" -> reads still to fail (FOREVER: every one); `reads`: reads seen per
    object, faulted or not; `faulted`: reads answered 503 per object. Thread-safe, in this process."""

    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.faults: dict[str, int] = {}
        self.reads: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.ignore_conditions = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, key: str, times: int) -> None:
        with self._lock:
            self.faults[key] = times

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _should_fail(self, method: str, path: str) -> bool:
        key = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if method not in ("GET", "HEAD") or key.endswith("/"):
            return False
        with self._lock:
            self.reads[key] += 1
            left = self.faults.get(key, 0)
            if left == 0:
                return False
            if left > 0:
                self.faults[key] = left - 1
            self.faulted[key] += 1
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the AWS SDK expects

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                if proxy._should_fail(self.command, self.path):
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                dropped = HOP_BY_HOP | ({"if-none-match", "if-match"} if proxy.ignore_conditions else set())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        return Handler

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
