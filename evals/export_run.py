"""What `python -m harness export` runs: the export alone, no claim (named so that pytest never collects it
unless it is given by path). Its `export` marker keeps it out of every claim run's report and snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.export
def test_export(exported: list[Path]) -> None:
    missing = [str(p) for p in exported if not p.exists()]
    assert not missing, f"export wrote no {', '.join(missing)}"
