"""A local HTTP file server for download tests (standard library, 127.0.0.1 only, no internet).

It serves byte strings from a dict, honours ``Range: bytes=N-`` (206 with Content-Range) unless told not to, and can
cut a file's transfer after some bytes (the connection closes mid-body) a given number of times.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)
    """URL path ("/a/b.rar") -> bytes."""
    cuts: dict[str, list[int]] = field(default_factory=dict)
    """URL path -> byte counts: each request of that path sends at most the next count, then closes."""
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) of every request, in order."""


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        served = self.server.served  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        served.requests.append((self.path, range_header))
        data = served.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if range_header and served.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cuts = served.cuts.get(self.path)
        if cuts:
            body = body[: cuts.pop(0)]
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class LocalServer:
    """``with LocalServer(files) as server: server.url("/x.rar")``."""

    def __init__(self, files: dict[str, bytes] | None = None, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS."""
        self.served = Served(dict(files or {}))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._server.served = self.served  # type: ignore[attr-defined]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
