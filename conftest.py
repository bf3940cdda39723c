"""Root conftest: the harness's pytest plugins (options, session fixtures, snapshot reports)."""

import os
from importlib.metadata import entry_points

# fixtures.options is installed as a pytest11 entry point (pyproject.toml); without an install it loads here.
_INSTALLED = any(ep.value == "fixtures.options" for ep in entry_points(group="pytest11"))
pytest_plugins = [
    *([] if _INSTALLED else ["fixtures.options"]),
    "fixtures.report",
    "fixtures.model",
    "fixtures.direction",
    "fixtures.completions",
    "fixtures.claims",
    "fixtures.verdict",
]


def pytest_configure(config) -> None:
    """Under xdist each worker gets one thread: N workers x N threads on N cores is several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
