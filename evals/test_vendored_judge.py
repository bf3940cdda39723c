"""The official SORRY-Bench evaluator files, wherever they are, match the committed SHA-256 pins. It runs
in the CPU suite and, through the `in_report` marker, in every claim run, so the report shows the pins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.run.pins import SORRY_BENCH_MANIFEST, SORRY_BENCH_NAME, read_manifest, sha256_file, vendor_root

PINS = read_manifest(SORRY_BENCH_MANIFEST)


@pytest.mark.in_report
@pytest.mark.parametrize("rel, expected", sorted(PINS.items()), ids=sorted(PINS))
def test_vendored_judge_sha256(rel: str, expected: str) -> None:
    path = vendor_root() / SORRY_BENCH_NAME / rel
    if not path.is_file():
        pytest.skip(f"{path} is absent; run `python -m harness fetch-judge` or set HARNESS_VENDOR_DIR")
    actual = sha256_file(path)
    assert actual == expected, f"{path}: sha256 {actual}, pinned {expected} in {SORRY_BENCH_MANIFEST}"


def test_pin_checks_join_claim_runs():
    """`-m gpu` selects the pin checks beside the claims, so the claim report lists them."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--experiment", "demo", "--collect-only", "-q",
         "-p", "no:cacheprovider", "-p", "no:xdist", "evals/test_vendored_judge.py", "evals/test_claims.py"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    selected = proc.stdout.splitlines()
    assert any("test_claims.py::test_baseline_refuses" in line for line in selected), proc.stdout[-2000:]
    pins = [line for line in selected if "test_vendored_judge_sha256[" in line]
    assert len(pins) == len(PINS), proc.stdout[-2000:]
    assert not any("test_pin_checks_join_claim_runs" in line for line in selected)
