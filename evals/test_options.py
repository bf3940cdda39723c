"""The first hour: options that only a claim run reads are refused elsewhere, skips say why, and every tox env
reads the same data folders."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("option", [["--limit", "2"], ["--rehearse", "tiny"], ["--export", "out"]])
def test_a_claim_run_option_without_a_claim_run_is_a_usage_error(option):
    proc = subprocess.run([sys.executable, "-m", "pytest", *option, "--collect-only", "-q", "-p", "no:xdist",
                           "-p", "no:cacheprovider", "evals/test_stats.py"],
                          cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-2000:]
    assert f"{option[0]} only apply to a claim run" in out and "-m gpu" in out, out[-2000:]


def test_skips_print_their_reason_and_failures_stay_listed(tmp_path):
    (tmp_path / "test_two.py").write_text("import pytest\n\ndef test_skipped():\n    pytest.skip('no data here')\n\n"
                                          "def test_failed():\n    assert False\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                           "-p", "no:xdist", "-p", "no:cacheprovider", str(tmp_path / "test_two.py")],
                          cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "SKIPPED [1] test_two.py:4: no data here" in out, out[-2000:]
    assert "FAILED test_two.py::test_failed" in out, out[-2000:]


def _tox() -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    return ini


def _setenv(section: configparser.SectionProxy) -> dict[str, str]:
    lines = [line.strip() for line in section.get("setenv", "").splitlines() if "=" in line]
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}


def test_every_tox_env_reads_the_same_data_vendor_and_tokenizer_folders():
    ini = _tox()
    base = _setenv(ini["testenv"])
    folders = ("HARNESS_DATA_DIR", "HARNESS_VENDOR_DIR", "HARNESS_TOKENIZERS_DIR")
    assert all("shared" in base[k] for k in folders), base
    for name in ini.sections():
        if name.startswith("testenv:") and "setenv" in ini[name]:
            env = _setenv(ini[name])
            assert {k: env.get(k) for k in folders} == {k: base[k] for k in folders}, name


def test_ci_installs_the_transformers_the_demo_snapshots_were_recorded_with():
    import json

    software = json.loads((ROOT / "reports" / "demo" / "results.json").read_text())["environment"]["software"]
    deps = _tox()["testenv"]["deps"].split()
    assert f"transformers=={software['transformers']}" in deps, deps


STAGE = """
import pytest
from tqdm.auto import tqdm


@pytest.fixture(scope="session")
def long_stage():
    return sum(1 for _ in tqdm(range(3), desc="demo: refusal fine-tune", unit="step"))


@pytest.mark.gpu
def test_claim(long_stage):
    assert long_stage == 3
"""


def test_a_claim_runs_stages_show_their_progress_bars(tmp_path):
    """A session stage's tqdm bar (stage name, count, ETA) reaches the terminal in a claim run that passes,
    instead of being swallowed by pytest's capture."""
    from test_config import GOOD
    from test_verdict import CONFTEST

    (tmp_path / "exp.toml").write_text(GOOD)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_stage.py").write_text(STAGE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-m", "gpu",
                           "--experiment", str(tmp_path / "exp.toml"), "test_stage.py"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "demo: refusal fine-tune" in out and "3/3" in out, out[-3000:]


def test_a_committed_report_is_rewritten_only_with_snapshot_update(tmp_path):
    from fixtures.report import RUNS_DIR, report_dir

    reports = tmp_path / "reports"
    (reports / "demo").mkdir(parents=True)
    (reports / "demo" / "results.json").write_text("{}\n")
    assert report_dir(reports, "demo", update=False) == reports / "demo"  # not a git checkout: written in place
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "reports/demo/results.json"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "report"], cwd=tmp_path, check=True)
    assert report_dir(reports, "demo", update=False) == reports / RUNS_DIR / "demo"
    assert report_dir(reports, "demo", update=True) == reports / "demo"
    assert report_dir(reports, "demo-limit40", update=False) == reports / "demo-limit40"  # never committed


def test_the_repositorys_demo_report_is_committed_and_runs_are_ignored():
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "reports/demo/results.json"], cwd=ROOT,
                             capture_output=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", "reports/runs/demo/results.json"], cwd=ROOT)
    assert tracked.returncode == 0 and ignored.returncode == 0
