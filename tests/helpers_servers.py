"""HTTP servers on 127.0.0.1 for the tests that download or read over HTTP.

:class:`Server` serves bytes from memory and can misbehave on purpose (drop a connection, ignore
``Range``); :class:`NoListing` and :class:`Ranged` are ``http.server`` handlers serving a folder
without listing it, ignoring or honouring ``Range``.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path


class Server:
    """Serves ``files`` over HTTP with ``Range: bytes=N-`` support; records every request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> body bytes sent before hanging up (once)
        self.ignore_range: set[str] = set()
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                if self.path not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[self.path]
                start = 0
                wanted = self.headers.get("Range")
                if wanted and self.path not in server.ignore_range:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
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
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"{self.url}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class NoListing(http.server.SimpleHTTPRequestHandler):
    """The stdlib server, quiet, without folder listings, and (like the stdlib) ignoring Range."""

    def list_directory(self, path):
        self.send_error(404, "no listings here")

    def log_message(self, *args):
        pass


class Ranged(NoListing):
    """The same server, honouring single byte ranges (as nginx, S3 or GitHub Pages do)."""

    def do_GET(self):
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not match or not os.path.isfile(path):
            return super().do_GET()
        data = Path(path).read_bytes()
        first, last = match.groups()
        start, stop = (len(data) - int(last), len(data)) if not first else (int(first), int(last) + 1 if last else len(data))
        start, stop = max(0, start), min(len(data), stop)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        self.wfile.write(data[start:stop])
