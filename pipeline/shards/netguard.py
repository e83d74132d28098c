"""Fetch policy for the `shards` stage: which addresses may be contacted, how much may be read, what is decoded.

Used by `pipeline.shards` inside every img2dataset download worker. img2dataset fetches with
`urllib.request.urlopen(request, timeout=...)`, which goes through the process-wide opener; the worker
installs `build_guarded_opener(policy)` as that opener before it downloads a shard, so every request,
and every redirect it follows, passes through the checks below. Nothing here sends traffic by itself.
Errors carry a reason token (`refused_address`, `body_too_large`, `decompression_bomb`, `truncated_image`)
that `pipeline.common.downloads.failure_reason` maps back from img2dataset's error message.
The checks, one by one: the comment below the imports.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from PIL import Image

from pipeline.common.downloads import (BAD_URL, BODY_TOO_LARGE, DECOMPRESSION_BOMB, REFUSED_ADDRESS,
                                      TRUNCATED_IMAGE)

# The checks
#
# - Schemes: only `http` and `https` have handlers (no `file:`, `ftp:`, `data:`; no proxies from the
#   environment either, since a proxy would hide the address actually contacted).
# - Addresses: a host is resolved (getaddrinfo) when the connection is opened, and the connection is refused
#   unless *every* resolved address is globally routable (`ipaddress.is_global`), so loopback, private
#   (RFC 1918, ULA), link-local (including the cloud metadata address 169.254.169.254), CGNAT, multicast,
#   reserved and unspecified addresses are refused, as are IPv4-mapped IPv6 forms of them. The socket is then
#   opened to the very address that was checked, not to a second resolution, so a DNS-rebinding answer that
#   changes between check and connect cannot slip through. `allow_loopback` admits loopback only (tests, demo).
#   Limitation: an HTTP proxy or a NAT in front of the worker can still route a public address to a private
#   host; run workers in a network without such routes for defence in depth.
# - Bodies: `Content-Length` above `max_bytes` is refused before reading; otherwise at most `max_bytes + 1`
#   bytes are read, within `body_timeout` seconds overall (a server that trickles bytes forever is cut off,
#   which urllib's per-read timeout alone would not do).
# - Images: before anything decodes the body, its header is read with PIL (no pixel decode) and an image of
#   more than `max_pixels` pixels is refused as a decompression bomb: img2dataset decodes with OpenCV, whose
#   own limit is 2**30 pixels (a 20000x20000 PNG of a few KB would take 1.2 GB). A JPEG or PNG whose end
#   marker is missing is decoded once with PIL and refused if it is truncated (OpenCV would otherwise
#   accept a half-grey picture).

ALLOWED_SCHEMES = ("http", "https")

JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
PNG_SIGNATURE, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
END_MARKER_WINDOW = 64  # bytes at the end searched for EOI/IEND (encoders may pad a few bytes after it)


@dataclass(frozen=True)
class FetchPolicy:
    """What a download worker may fetch. Picklable: it travels to img2dataset's worker processes."""
    allow_loopback: bool = False
    max_bytes: int = 32 << 20        # 32 MiB: well above a 12-megapixel camera JPEG (~5-8 MB)
    max_pixels: int = 89_478_485     # PIL.Image.MAX_IMAGE_PIXELS default (~0.25 GB at 24 bit)
    body_timeout: float = 30.0       # seconds for the whole body, after the headers arrived


class FetchRefused(OSError):
    """A fetch refused by the policy. An OSError so urllib wraps it in URLError like a network error."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def is_refused_address(address: str, allow_loopback: bool = False) -> bool:
    """True unless `address` (an IPv4/IPv6 literal) is globally routable, or loopback while allowed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    except ValueError:
        return True  # not an address at all: refuse rather than guess
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_loopback and ip.is_loopback:
        return False
    return not ip.is_global or ip.is_multicast


def url_refusal(url: object, allow_loopback: bool = False) -> str | None:
    """Reason a URL is refused without any network look-up (bad scheme/host, refused IP literal), else None."""
    if not isinstance(url, str):
        return BAD_URL
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return BAD_URL
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not host:
        return BAD_URL
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a host name: checked when the connection opens
    return REFUSED_ADDRESS if is_refused_address(host, allow_loopback) else None


def guarded_create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None,
                              *, allow_loopback: bool = False, **_):
    """socket.create_connection that resolves once, refuses non-global answers, and connects to what it checked."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise OSError(f"name resolution failed for {host}: {err}") from err
    refused = [info[4][0] for info in infos if is_refused_address(info[4][0], allow_loopback)]
    if refused:
        raise FetchRefused(REFUSED_ADDRESS, f"{host} resolves to {refused[0]}")
    last_error: OSError | None = None
    for family, socktype, proto, _, sockaddr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            sock.close()
            last_error = err
    raise last_error or OSError(f"no address for {host}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, allow_loopback: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(guarded_create_connection, allow_loopback=allow_loopback)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, allow_loopback: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(guarded_create_connection, allow_loopback=allow_loopback)


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.connection = functools.partial(_GuardedHTTPConnection, allow_loopback=policy.allow_loopback)

    def http_open(self, req):
        return self.do_open(self.connection, req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.connection = functools.partial(_GuardedHTTPSConnection, allow_loopback=policy.allow_loopback)

    def https_open(self, req):
        return self.do_open(self.connection, req, context=self._context)


def image_refusal(body: bytes, max_pixels: int) -> str | None:
    """Reason to refuse an image body before decoding it (decompression bomb, truncated file), else None."""
    size = jpeg_or_png_size(body)  # a few header bytes: PIL's Image.open costs ~70 us an image (measured)
    if size is not None and not missing_end_marker(body):
        return DECOMPRESSION_BOMB if size[0] * size[1] > max_pixels else None
    try:
        with Image.open(io.BytesIO(body)) as img:  # other formats, and JPEG/PNG without an end marker
            if img.width * img.height > max_pixels:
                return DECOMPRESSION_BOMB
            if missing_end_marker(body):
                img.load()  # decode once to tell trailing junk (fine) from truncation
    except Image.DecompressionBombError:
        return DECOMPRESSION_BOMB
    except (OSError, SyntaxError, ValueError) as err:
        # Unknown formats are left to img2dataset's decoder (it reports "not an image"); a truncated file
        # that PIL recognised shows up here as "image file is truncated" / "broken data stream".
        return TRUNCATED_IMAGE if "truncated" in str(err) or "broken" in str(err) else None
    return None


JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_or_png_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's SOF segment header, or None (other format, malformed)."""
    if body.startswith(PNG_SIGNATURE) and body[12:16] == b"IHDR" and len(body) >= 24:
        return int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
    if not body.startswith(JPEG_SOI):
        return None
    pos = 2
    while pos + 9 <= len(body):
        if body[pos] != 0xFF:
            return None
        marker = body[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in JPEG_SOF:
            return int.from_bytes(body[pos + 7:pos + 9], "big"), int.from_bytes(body[pos + 5:pos + 7], "big")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(body[pos + 2:pos + 4], "big")
    return None


def missing_end_marker(body: bytes) -> bool:
    """True for a JPEG without its EOI marker or a PNG without its IEND chunk near the end of the body."""
    tail = body[-END_MARKER_WINDOW:]
    if body.startswith(JPEG_SOI):
        return JPEG_EOI not in tail
    if body.startswith(PNG_SIGNATURE):
        return PNG_IEND not in tail
    return False


class BoundedResponse:
    """Wraps an http.client response: `read()` returns at most max_bytes within body_timeout, then checks it."""

    def __init__(self, response, policy: FetchPolicy):
        self._response = response
        self._policy = policy

    def __getattr__(self, name):
        return getattr(self._response, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._response.close()

    def read(self, amt: int | None = None) -> bytes:
        limit, deadline = self._policy.max_bytes, time.monotonic() + self._policy.body_timeout
        chunks, size = [], 0
        while amt is None or size < amt:
            want = min(1 << 16, *(n for n in (amt and amt - size, getattr(self._response, "length", None)) if n))
            chunk = self._response.read(want)  # at most what is left: http.client allocates `want` bytes a call
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FetchRefused(BODY_TOO_LARGE, f"more than {limit} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"body not received within {self._policy.body_timeout} s: timed out")
            if getattr(self._response, "length", None) == 0:  # Content-Length reached: skip the read of b""
                break
        body = b"".join(chunks)
        reason = image_refusal(body, self._policy.max_pixels) if amt is None else None
        if reason:
            raise FetchRefused(reason, f"{len(body)} bytes")
        return body


class BoundedBodyProcessor(urllib.request.BaseHandler):
    """Refuses a declared oversized body and wraps the final response in a BoundedResponse."""
    handler_order = 1001  # after HTTPErrorProcessor (1000): only successful, post-redirect responses get here

    def __init__(self, policy: FetchPolicy):
        self.policy = policy

    def http_response(self, request, response):
        if isinstance(response, BoundedResponse):  # already wrapped on the redirected request's own way back
            return response
        declared = response.headers.get("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.policy.max_bytes:
            response.close()
            raise FetchRefused(BODY_TOO_LARGE, f"Content-Length {declared} > {self.policy.max_bytes}")
        return BoundedResponse(response, self.policy)

    https_response = http_response


def build_guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only the guarded http(s) handlers, redirects, error processing and the body bound."""
    opener = urllib.request.OpenerDirector()
    for handler in (GuardedHTTPHandler(policy), GuardedHTTPSHandler(policy), urllib.request.UnknownHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPErrorProcessor(), BoundedBodyProcessor(policy)):
        opener.add_handler(handler)
    return opener
