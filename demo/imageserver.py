"""A local HTTP server on 127.0.0.1 that serves real images and misbehaves on purpose.

Used by the `shards` tests (through the `image_server` fixture in tests/conftest.py), the download
benchmark and the demo. It binds an ephemeral port on loopback only, serves from an in-memory route
table, and stops (waking any deliberately slow handler) when the `with` block ends.

    with ImageServer() as server:
        server.add("/a.jpg", make_jpeg(64, 48, seed=1))
        url = server.url("/a.jpg")
        misbehaving = add_misbehaving_routes(server)   # {expected reason: url}

Misbehaving routes: 404, 500, a response slower than the client timeout, a redirect loop, an HTML body,
a truncated JPEG, a decompression bomb (a 20000x20000 PNG of ~50 KB), an `X-Robots-Tag: noai` opt-out.

For a demo, it can serve a folder while a command runs (`$IMAGE_SERVER` holds its base URL; the
misbehaving routes are added too), and stops when the command ends:

    python -m demo.imageserver --folder work/demo/world/www/files --port 8765 -- python -m pipeline.shards ...
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import mimetypes
import os
import random
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic picture (gradient plus a few rectangles), so encoders do real work and sizes vary."""
    rng = random.Random(seed)
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        draw.rectangle((x0, y0, x0 + width // 4, y0 + height // 4), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_jpeg(width: int, height: int, seed: int = 0, quality: int = 85) -> bytes:
    return encode(make_image(width, height, seed), "JPEG", quality=quality)


def make_png(width: int, height: int, seed: int = 0) -> bytes:
    return encode(make_image(width, height, seed), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit greyscale PNG of width x height that compresses to a few tens of KB (written row by row)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed all-black pixels
    compressor, parts = zlib.compressobj(9), []
    for _ in range(0, height, 1000):
        parts.append(compressor.compress(row * 1000))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            route = Route(b"not found", 404, "text/plain")
        if route.delay_s and self.server.stopping.wait(route.delay_s):
            return  # the server is shutting down: drop the slow request
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(route.body)))
        self.send_header("Connection", "close")
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, refused body): nothing to report
        self.close_connection = True

    def log_message(self, format, *args):
        log.debug("imageserver: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default backlog of 5 drops connections from 64 download threads


class ImageServer:
    """Threaded HTTP server on 127.0.0.1:<ephemeral> serving `routes`; use as a context manager."""

    def __init__(self, port: int = 0):
        """port 0: an ephemeral port (tests); a fixed one when URLs were written beforehand (the demo)."""
        try:  # loopback only, always: the host is not a parameter (DEVELOPERS.md, "Network safety")
            self._httpd = _Server(("127.0.0.1", port), _Handler)
        except OSError as e:
            raise SystemExit(f"imageserver: cannot listen on 127.0.0.1:{port}: {e.strerror} "
                             "(another demo running? set DEMO_PORT)") from None
        self._httpd.routes = {}
        self._httpd.stopping = threading.Event()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="imageserver", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **route) -> str:
        """Serve body (with Route's status/content_type/headers/delay_s) at path; returns its URL."""
        self._httpd.routes[path] = Route(body, **route)
        return self.url(path)

    @contextlib.contextmanager
    def routes_restored(self) -> Iterator[None]:
        """Routes changed inside the block are put back when it ends (a server shared by several tests)."""
        saved = dict(self._httpd.routes)
        try:
            yield
        finally:
            self._httpd.routes = saved

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def add_misbehaving_routes(server: ImageServer, slow_s: float = 4.0) -> dict[str, str]:
    """Add one route per way of failing; returns {expected failure reason: url}. slow_s must exceed the timeout."""
    jpeg = make_jpeg(96, 80, seed=99)
    return {
        "http_status_404": server.url("/missing.jpg"),
        "http_status_500": server.add("/error.jpg", b"boom", status=500, content_type="text/plain"),
        "timeout": server.add("/slow.jpg", jpeg, delay_s=slow_s),
        "redirect_loop": server.add("/loop", status=302, content_type="text/plain", headers={"Location": "/loop"}),
        "not_an_image": server.add("/page.jpg", b"<html><body>not an image</body></html>", content_type="text/html"),
        "truncated_image": server.add("/truncated.jpg", jpeg[: len(jpeg) // 2]),
        "decompression_bomb": server.add("/bomb.png", make_bomb_png(), content_type="image/png"),
        "opt_out": server.add("/noai.jpg", jpeg, headers={"X-Robots-Tag": "noai"}),
    }


def add_folder(server: ImageServer, folder: Path, prefix: str = "/files") -> dict[str, str]:
    """Serve every file of folder (not recursive) under prefix; returns {file name: url}."""
    urls = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        urls[path.name] = server.add(f"{prefix}/{path.name}", path.read_bytes(), content_type=content_type)
    return urls


def main(argv: list[str] | None = None) -> int:
    """Serve --folder (and the misbehaving routes) on 127.0.0.1 while a command runs; return its exit code."""
    p = argparse.ArgumentParser(prog="python -m demo.imageserver", description=main.__doc__)
    p.add_argument("--folder", type=Path, required=True, help="files to serve under /files/<name>")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: an ephemeral one)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run while serving")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not args.folder.is_dir():
        p.error("give an existing --folder and a command after --")
    with ImageServer(args.port) as server:
        add_folder(server, args.folder)
        add_misbehaving_routes(server)
        env = {**os.environ, "IMAGE_SERVER": server.url("")}
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
