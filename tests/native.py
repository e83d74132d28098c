"""The optional C extensions in tests: compared with their Python twins where built, skipped with the reason where
not; CI (make test, .ci/run) sets WITBUILD_REQUIRE_NATIVE=1, which turns "not built" into a failure."""

import os

import pytest

REQUIRED = os.environ.get("WITBUILD_REQUIRE_NATIVE") == "1"


def not_built_reason(name: str) -> str:
    return (f"{name} is not built (no C compiler at install time): the stage runs the Python twins; "
            "WITBUILD_REQUIRE_NATIVE=1 makes this a failure")


def needs(module, name: str):
    """Skip a C-vs-Python test where the extension is not built (a failure under WITBUILD_REQUIRE_NATIVE=1)."""
    return pytest.mark.skipif(module is None and not REQUIRED, reason=not_built_reason(name))


def check_built(module, name: str) -> None:
    """The body of a test_*_core_is_built: skip with the reason, or fail where the build is required."""
    if module is None and not REQUIRED:
        pytest.skip(not_built_reason(name))
    assert module is not None, f"{name} not built: pip install -e . with a C compiler and the Python headers"


def wall_clock(seconds: float) -> float:
    """A test's wall-clock deadline, stretched by WITBUILD_DEADLINE_FACTOR (make sanitize sets it: ASan slows
    torch/gloo many-fold, which is not a hang)."""
    return seconds * float(os.environ.get("WITBUILD_DEADLINE_FACTOR", "1"))


def without_sanitizer_preload(monkeypatch) -> None:
    """Keep make sanitize's LD_PRELOAD of the ASan runtime out of the programs a test starts that run none of our C
    (Spark's JVM, Ray's daemons, their Python workers): under it procps' `ps`, which Spark's launcher script calls,
    deadlocks at start in glibc's textdomain lock, and Ray's raylet misses ray.init's fixed 30 s to register on a
    loaded machine. This process keeps the runtime it loaded."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        monkeypatch.delenv("LD_PRELOAD")
