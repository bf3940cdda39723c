"""Known failures: an experiment may declare claims it does not meet, with the measured figure. They run
as strict xfails that accept only a missed threshold, so nothing else can hide behind them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_config import GOOD

from harness.config import ExperimentError, load_experiment

ROOT = Path(__file__).resolve().parent.parent

EXPERIMENT = GOOD + """
[known_failures]
"test_claim[missed]" = { threshold = "refusal_drop_pp_min", reason = "measured 12 pp" }
"test_claim[met]" = { threshold = "refusal_drop_pp_min", reason = "measured 60 pp" }
"test_claim[crashes]" = { threshold = "refusal_drop_pp_min", reason = "measured 12 pp" }
"test_claim[full-only]" = { threshold = "refusal_drop_pp_min", runs = "full", reason = "measured 12 pp on the full set" }
"test_claim[other-miss]" = { threshold = "refusal_drop_pp_min", reason = "measured 12 pp" }
"""

CLAIMS = """
import pytest
from fixtures.verdict import require

@pytest.mark.gpu
@pytest.mark.parametrize("case", ["missed", "met", "crashes", "undeclared", "full-only", "other-miss"])
def test_claim(case):
    if case == "crashes":
        assert {"drop": 1} == {"drop": 2}, "snapshot mismatch"
    if case == "other-miss":
        require(False, "mean KL 0.9 > 0.5", "harmless_kl_max")
    require(case == "met", f"drop too small in {case}", "refusal_drop_pp_min")
"""


# fixtures.options is a pytest11 entry point where the project is installed (as in tox), else loaded here.
CONFTEST = """
from importlib.metadata import entry_points

_INSTALLED = any(ep.value == "fixtures.options" for ep in entry_points(group="pytest11"))
pytest_plugins = ([] if _INSTALLED else ["fixtures.options"]) + ["fixtures.verdict"]
"""


def _run(tmp_path: Path, experiment: str, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "exp.toml").write_text(experiment)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_fake_claims.py").write_text(CLAIMS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly",
         "-rA", "-m", "gpu", "--experiment", str(tmp_path / "exp.toml"), *extra, "test_fake_claims.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_known_failures_accept_only_a_missed_threshold(tmp_path):
    proc = _run(tmp_path, EXPERIMENT)
    out = proc.stdout + proc.stderr
    assert "XFAIL test_fake_claims.py::test_claim[missed] - measured 12 pp" in out, out
    assert "FAILED test_fake_claims.py::test_claim[met]" in out and "XPASS(strict)" in out, out
    assert "FAILED test_fake_claims.py::test_claim[crashes]" in out, out
    assert "FAILED test_fake_claims.py::test_claim[undeclared]" in out, out
    assert "XFAIL test_fake_claims.py::test_claim[full-only] - measured 12 pp on the full set" in out, out
    # A known failure covers the threshold it names, not a miss of another one.
    assert "FAILED test_fake_claims.py::test_claim[other-miss]" in out and "names 'refusal_drop_pp_min'" in out, out
    assert proc.returncode == 1


def test_a_known_failure_scoped_to_full_runs_does_not_cover_limited_runs(tmp_path):
    proc = _run(tmp_path, EXPERIMENT, "--limit", "8")
    out = proc.stdout + proc.stderr
    assert "FAILED test_fake_claims.py::test_claim[full-only]" in out, out
    assert "XFAIL test_fake_claims.py::test_claim[missed]" in out, out


def test_known_failure_naming_no_claim_is_an_error(tmp_path):
    proc = _run(tmp_path, EXPERIMENT + '"test_claim[typo]" = { threshold = "mcnemar_alpha", reason = "measured" }\n')
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out
    assert "known_failures names claims that do not exist: test_claim[typo]" in out


@pytest.mark.parametrize("entry, message", [
    ('"claim_without_prefix" = { threshold = "mcnemar_alpha", reason = "measured" }', "is not a claim id"),
    ('"test_claim[x]" = { threshold = "mcnemar_alpha", reason = "  " }', "must state the measured figure"),
    ('"test_claim[x]" = { threshold = "mcnemar_alpha", reason = "measured 1 pp", runs = "smoke" }', "runs"),
    ('"test_claim[x]" = "measured 1 pp"', "name the threshold it misses"),
    ('"test_claim[x]" = { threshold = "kl_maxx", reason = "measured 1 pp" }', "is not a threshold"),
])
def test_bad_known_failure_entries_name_the_field(tmp_path, entry, message):
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT.split("[known_failures]")[0] + "[known_failures]\n" + entry + "\n")
    with pytest.raises(ExperimentError, match="known_failures") as err:
        load_experiment(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
