"""Root conftest: the harness's pytest plugins (options, session fixtures, snapshot reports)."""

import os

pytest_plugins = [
    "fixtures.options",
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
