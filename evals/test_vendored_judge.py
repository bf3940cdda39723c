"""The official SORRY-Bench evaluator files, wherever they are, match the committed SHA-256 pins. It runs
in the CPU suite and, through the `in_report` marker, in every claim run, so the report shows the pins."""

from __future__ import annotations

import pytest

from harness.pins import SORRY_BENCH_MANIFEST, SORRY_BENCH_NAME, read_manifest, sha256_file, vendor_root

PINS = read_manifest(SORRY_BENCH_MANIFEST)


@pytest.mark.in_report
@pytest.mark.parametrize("rel, expected", sorted(PINS.items()), ids=sorted(PINS))
def test_vendored_judge_sha256(rel: str, expected: str) -> None:
    path = vendor_root() / SORRY_BENCH_NAME / rel
    if not path.is_file():
        pytest.skip(f"{path} is absent; run `python -m harness fetch-judge` or set HARNESS_VENDOR_DIR")
    actual = sha256_file(path)
    assert actual == expected, f"{path}: sha256 {actual}, pinned {expected} in {SORRY_BENCH_MANIFEST}"
