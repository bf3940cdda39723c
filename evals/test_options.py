"""The first hour: options that only a claim run reads are refused elsewhere, skips say why, and every tox env
reads the same data folders."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tomllib
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


def test_skips_print_their_reason():
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-rs" in addopts.split()


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
