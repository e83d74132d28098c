"""Shared pytest fixtures."""

import os

import pytest

# Tests reach only 127.0.0.1: stop albumentations (imported by img2dataset) from checking PyPI for updates.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from demo.imageserver import ImageServer


@pytest.fixture
def image_server():
    """A loopback-only HTTP server (demo/imageserver.py), stopped when the test ends."""
    with ImageServer() as server:
        yield server
