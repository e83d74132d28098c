"""Shared pytest fixtures."""

import pytest

from demo.imageserver import ImageServer


@pytest.fixture
def image_server():
    """A loopback-only HTTP server (demo/imageserver.py), stopped when the test ends."""
    with ImageServer() as server:
        yield server
