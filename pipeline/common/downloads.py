"""Why a download failed: the reason names of the `shards` manifest, and img2dataset's error messages grouped
into them. `pipeline.shards` counts its rows by these reasons; `pipeline.stats` groups the error messages of
shard parquet files the same way.
"""

from __future__ import annotations

import re

# netguard's reasons (its errors carry these tokens in their messages)
REFUSED_ADDRESS = "refused_address"
BAD_URL = "bad_url"
BODY_TOO_LARGE = "body_too_large"
DECOMPRESSION_BOMB = "decompression_bomb"
TRUNCATED_IMAGE = "truncated_image"

# Failure reasons of img2dataset's downloads (manifest counters)
TIMEOUT = "timeout"
REDIRECT_LOOP = "redirect_loop"
OPT_OUT = "opt_out"
NOT_AN_IMAGE = "not_an_image"
TOO_SMALL = "too_small"
IMAGE_AREA_TOO_LARGE = "image_area_too_large"
ASPECT_RATIO_TOO_LARGE = "aspect_ratio_too_large"
DNS_ERROR = "dns_error"
CONNECTION_ERROR = "connection_error"
HASH_MISMATCH = "hash_mismatch"
SHARD_FAILED = "shard_failed"        # img2dataset gave up on a whole shard (after max_shard_retry)
NOT_WRITTEN = "not_written"          # a row missing from its shard's parquet (img2dataset's writer dropped it)
OTHER_ERROR = "other_error"

# img2dataset's error messages -> reason, first match wins (messages from urllib, OpenCV, its resizer, netguard).
ERROR_PATTERNS: list[tuple[re.Pattern, str]] = [(re.compile(p, re.IGNORECASE), r) for p, r in [
    (rf"\b{REFUSED_ADDRESS}\b", REFUSED_ADDRESS),
    (rf"\b{BODY_TOO_LARGE}\b", BODY_TOO_LARGE),
    (rf"\b{DECOMPRESSION_BOMB}\b", DECOMPRESSION_BOMB),
    (rf"\b{TRUNCATED_IMAGE}\b", TRUNCATED_IMAGE),
    (r"infinite loop|redirect", REDIRECT_LOOP),
    (r"X-Robots-Tag", OPT_OUT),
    (r"timed out|timeout", TIMEOUT),
    (r"image too small", TOO_SMALL),
    (r"image area too large", IMAGE_AREA_TOO_LARGE),
    (r"aspect ratio too large", ASPECT_RATIO_TOO_LARGE),
    (r"unknown url type|no host given|URL can't contain|invalid url", BAD_URL),
    (r"name resolution|Name or service not known|nodename nor servname|getaddrinfo", DNS_ERROR),
    (r"connection|remote end closed|IncompleteRead|EOF occurred|certificate|SSL", CONNECTION_ERROR),
    (r"hash mismatch", HASH_MISMATCH),
    (r"decod|imdecode|cannot identify|not an image|cv2|empty", NOT_AN_IMAGE),
]]
HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")
TRANSIENT_REASONS = frozenset({TIMEOUT, DNS_ERROR, CONNECTION_ERROR, SHARD_FAILED, "http_status_408",
                               "http_status_429"})


def failure_reason(error_message: str | None) -> str:
    """Group one of img2dataset's error messages into a snake_case reason."""
    message = error_message or ""
    status = HTTP_STATUS.search(message)
    if status and "redirect error" not in message:
        return f"http_status_{status.group(1)}"
    for pattern, reason in ERROR_PATTERNS:
        if pattern.search(message):
            return reason
    return OTHER_ERROR


def is_transient(reason: str) -> bool:
    """Worth retrying later: timeouts, connection trouble, 408/429 and 5xx responses."""
    return reason in TRANSIENT_REASONS or re.fullmatch(r"http_status_5\d\d", reason) is not None
