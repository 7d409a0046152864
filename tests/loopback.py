"""A file server on 127.0.0.1 for download tests: HTTP Range requests, and a switch that cuts the
next transfer short (what a dropped connection does), so resuming can be tested for real."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _target(self) -> Path | None:
        path = (self.server.root / self.path.split("?")[0].lstrip("/")).resolve()
        return path if path.is_file() and self.server.root in path.parents else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        target = self._target()
        if target is None:
            self.send_error(404)
            return
        data = target.read_bytes()
        start = 0
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes=") and self.server.ranges:
            start = int(ranged[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        chunk = data[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if not body:
            return
        if self.server.cut_after is not None:  # send part of it, then drop the connection
            self.wfile.write(chunk[: self.server.cut_after])
            self.wfile.flush()
            self.server.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(chunk)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.ranges = True
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str, str | None]] = []


class FileServer:
    """``with FileServer(folder) as srv: srv.url("name")``; ``srv.cut_after = n`` cuts the next transfer."""

    def __init__(self, root: Path) -> None:
        self.server = _Server(Path(root))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return self.server.requests

    def __setattr__(self, name, value) -> None:
        if name in ("cut_after", "ranges"):
            setattr(self.server, name, value)
        else:
            super().__setattr__(name, value)
