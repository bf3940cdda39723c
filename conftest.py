"""Root conftest: the harness's pytest plugins (options, session fixtures, snapshot reports)."""

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

# fixtures.options is installed as a pytest11 entry point (pyproject.toml); without an install it loads here.
_INSTALLED = any(ep.value == "fixtures.options" for ep in entry_points(group="pytest11"))
pytest_plugins = [
    *([] if _INSTALLED else ["fixtures.options"]),
    "fixtures.report",
    "fixtures.model",
    "fixtures.direction",
    "fixtures.completions",
    "fixtures.coherence",
    "fixtures.claims",
    "fixtures.environment",
    "fixtures.export",
    "fixtures.verdict",
]


def pytest_configure(config) -> None:
    """Under xdist each worker gets one thread: N workers x N threads on N cores is several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


SHARED_DIRS = ("HARNESS_DATA_DIR", "HARNESS_VENDOR_DIR", "HARNESS_TOKENIZERS_DIR")


def pytest_sessionstart(session) -> None:
    """In CI (CI=true) ../shared always lies beside the checkout: a missing copy fails the run at once instead
    of quietly skipping every test that reads it."""
    if not os.environ.get("CI") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    missing = [f"{var}={os.environ.get(var, '(unset)')}" for var in SHARED_DIRS
               if not (os.environ.get(var) and Path(os.environ[var]).is_dir() and any(Path(os.environ[var]).iterdir()))]
    if missing:
        pytest.exit(f"CI: the shared data, judge files and tokenizers must be present: {', '.join(missing)} "
                    "(tox points them at ../shared beside the checkout)", returncode=3)
