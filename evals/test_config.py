"""Experiment files: every bad input stops with one message naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import ExperimentError, available_experiments, load_experiment

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[model]
id = "org/model"
revision = "0123456789abcdef0123456789abcdef01234567"

[data.construction]
dataset = { name = "demo_policy_prompts" }
fit_areas = 8

[thresholds]
baseline_refusal_harmful_min = 0.8
baseline_refusal_harmless_max = 0.2
refusal_drop_pp_min = { ablation = 50 }
stability_cosine_min = 0.8
harmless_refusal_max = 0.2
harmless_kl_max = 0.1
capability_max_drop = 0.05
ce_max_delta = 0.1
edit_logit_gap_max = 0.001
selection_score_drop_min = -1e9
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path):
    exp = load_experiment(write(tmp_path, GOOD))
    assert exp.name == "exp" and exp.model.revision.startswith("0123")


@pytest.mark.parametrize(
    "edit, field",
    [
        (("[model]", "[model]\ncolour = 'red'"), "model.colour"),
        (("revision = \"0123456789abcdef0123456789abcdef01234567\"", "revision = \"main\""), "model.revision"),
        (("fit_areas = 8", "fit_areas = 0"), "data.construction.fit_areas"),
        (("stability_cosine_min = 0.8\n", ""), "thresholds.stability_cosine_min"),
        (("[thresholds]", "[thresholds]\nsurprise = 1"), "thresholds.surprise"),
    ],
)
def test_bad_field_is_named(tmp_path, edit, field):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and f"`{field}`" in str(err.value)


def test_invalid_toml_names_file(tmp_path):
    path = write(tmp_path, "[model\nid=")
    with pytest.raises(ExperimentError, match="not valid TOML") as err:
        load_experiment(path)
    assert str(path) in str(err.value)


def test_unknown_experiment_lists_available():
    with pytest.raises(ExperimentError) as err:
        load_experiment("no-such-experiment")
    for name in available_experiments():
        assert name in str(err.value)


def test_unknown_experiment_option_stops_pytest():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--experiment", "no-such-experiment", "-q", "-p", "no:xdist",
         "evals/test_claims.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "unknown experiment 'no-such-experiment'" in out and "available:" in out


@pytest.mark.parametrize("name", available_experiments())
def test_every_experiment_in_the_repo_validates(name):
    exp = load_experiment(name)
    for condition in exp.intervention.conditions:
        assert condition in exp.thresholds.refusal_drop_pp_min, f"{name}: no refusal-drop bound for {condition}"
    for method in exp.direction.compare_methods:
        assert method in exp.thresholds.methods_drop_pp_min, f"{name}: no methods_drop_pp_min bound for {method}"


@pytest.mark.parametrize("form", ["separate", "joined"])
def test_experiment_option_takes_a_path_outside_the_checkout(form, tmp_path):
    """`--experiment /elsewhere/x.toml` (as the README writes options) and `--experiment=/elsewhere/x.toml` both
    reach the claims: the option is a plugin loaded before arguments are parsed, not a conftest's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    toml = tmp_path / "elsewhere.toml"
    toml.write_text((root / "experiments" / "demo.toml").read_text())
    option = ["--experiment", str(toml)] if form == "separate" else [f"--experiment={toml}"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", *option, "--collect-only", "-p", "no:xdist",
         "-p", "no:cacheprovider"],
        cwd=root, env={**os.environ}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "test_baseline_refuses" in proc.stdout
    assert "unrecognized arguments" not in proc.stderr
    # Either pytest found the project's ini file, or the plugin applied its settings and says so.
    assert ("configfile: pyproject.toml" in proc.stdout) != ("settings applied from" in proc.stdout), proc.stdout[:800]


@pytest.mark.parametrize("edit, option, message", [
    (("\nkl_max = 1.0\n", "\nkl_maxx = 1.0\n"), [], "field `direction.selection.kl_maxx`: Extra inputs are not permitted"),
    (("", ""), ["--limit", "2"], "--limit must be at least 4, got 2"),
    (('sha256 = "b179', 'sha256 = "a179'), [], "the model cannot be loaded"),
])
def test_a_run_that_cannot_start_says_so_once_and_writes_no_report(edit, option, message, tmp_path):
    """A bad experiment file, option or pinned model stops the run with one message naming what is wrong, before
    any claim runs, and leaves no report behind."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    toml = tmp_path / "bad.toml"
    text = (root / "experiments" / "demo.toml").read_text()
    assert edit[0] in text
    toml.write_text(text.replace(*edit, 1))
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", f"--experiment={toml}", *option, "-q", "-p", "no:xdist",
         "-p", "no:cacheprovider", "evals/test_claims.py"],
        cwd=root, env={**os.environ, "HARNESS_REPORTS_DIR": str(reports)}, capture_output=True, text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]
    assert out.count(message) == 1 or (message == "the model cannot be loaded" and out.count(message) <= 2), out
    assert "passed" not in out and not any(reports.glob("*/report.md")), out[-3000:]


REFERENCE = """
[reference]
judgments = { name = "sorry_bench_reference_judgments" }
conditions = { baseline = "baseline" }
tolerance_pp = 5.0
confidence = 0.90
"""


def test_reference_loads_with_its_equivalence_settings(tmp_path):
    ref = load_experiment(write(tmp_path, GOOD + REFERENCE)).reference
    assert (ref.tolerance_pp, ref.confidence, ref.agreement_min) == (5.0, 0.90, 0.0)


@pytest.mark.parametrize("edit, field", [
    (("tolerance_pp = 5.0", "tolerance_pp = 0"), "reference.tolerance_pp"),
    (("tolerance_pp = 5.0", "tolerance_pp = 100"), "reference.tolerance_pp"),
    (("confidence = 0.90", "confidence = 0.5"), "reference.confidence"),
    (("confidence = 0.90", "confidence = 1.0"), "reference.confidence"),
    (("confidence = 0.90", "confidence = 0.90\nmargin = 3"), "reference.margin"),
])
def test_bad_reference_field_is_named(tmp_path, edit, field):
    path = write(tmp_path, (GOOD + REFERENCE).replace(*edit))
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert f"`{field}`" in str(err.value)


def test_reference_conditions_must_be_run(tmp_path):
    path = write(tmp_path, (GOOD + REFERENCE).replace('baseline = "baseline"', 'no_such_condition = "edited"'))
    with pytest.raises(ExperimentError, match="reference.conditions names \\['no_such_condition'\\]"):
        load_experiment(path)


STUDY_RECIPE = """
[direction]
compare_methods = []
per_layer = true
read_point = "layer_output"
safe_mean_projection = true
fit_prompts = "construction"

[intervention]
conditions = ["weight_edit"]
norm_preserving = true
edit_modules = ["attn_out", "mlp_down"]

[stability]
areas = "all"
"""


def test_per_layer_recipe_loads(tmp_path):
    exp = load_experiment(write(tmp_path, STUDY_RECIPE + GOOD))
    assert exp.direction.per_layer and exp.direction.read_point == "layer_output"
    assert exp.intervention.edit_modules == ["attn_out", "mlp_down"]


@pytest.mark.parametrize("edit, message", [
    (("per_layer = true", "per_layer = true\nlayer = 3"), "drop direction.layer"),
    (("compare_methods = []", "compare_methods = [\"diff_in_means\"]"), "compare_methods = []"),
    (("conditions = [\"weight_edit\"]", "conditions = [\"weight_edit\", \"ablation\"]"), "weight edit only"),
    (("edit_modules = [\"attn_out\", \"mlp_down\"]", "edit_modules = [\"embed\", \"attn_out\"]"), "without \"embed\""),
    (("edit_modules = [\"attn_out\", \"mlp_down\"]", ""), "without \"embed\""),
    (("edit_modules = [\"attn_out\", \"mlp_down\"]", "edit_modules = [\"o_proj\"]"), "intervention.edit_modules"),
    (("edit_modules = [\"attn_out\", \"mlp_down\"]", "edit_modules = [\"attn_out\", \"attn_out\"]"), "distinct"),
    (("areas = \"all\"", "areas = \"fit\""), "stability.areas"),
    (("per_layer = true", "per_layer = false"), "read_point"),
])
def test_per_layer_recipe_errors_name_the_field(tmp_path, edit, message):
    path = write(tmp_path, STUDY_RECIPE.replace(*edit) + GOOD)
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("extra, message", [
    ("[direction]\nfit_prompts = \"construction\"\n", "no validation prompts to select"),
    ("[intervention]\nkeep_tie = true\nedit_modules = [\"attn_out\"]\n", "drop keep_tie"),
    ("[direction]\nread_point = \"layer_output\"\n", "needs direction.per_layer"),
    ("[direction.selection]\nshared_prefix = true\n", "replaced by packed = true"),
])
def test_single_direction_recipe_errors(tmp_path, extra, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, extra + GOOD))


def test_single_direction_thresholds_stay_required(tmp_path):
    with pytest.raises(ExperimentError, match="selection_score_drop_min is required"):
        load_experiment(write(tmp_path, GOOD.replace("selection_score_drop_min = -1e9\n", "")))


@pytest.mark.parametrize("section, fields, message", [
    ("DatasetRef", {"name": "jbb", "sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
    ("DatasetRef", {"name": "jbb", "revision": "main"}, "revision must be a 40-hex commit"),
    ("JudgeConfig", {"evaluator_commit": "v1"}, "revision must be a 40-hex commit"),
    ("ModelConfig", {"id": "m", "path": "/m", "sha256": "0" * 63}, "sha256 must be 64 lowercase hex digits"),
])
def test_every_pin_field_is_checked(section, fields, message):
    """Pins are one checked type (`Revision`, `Sha256`) wherever a section takes one."""
    import pydantic

    import harness.config as config

    with pytest.raises(pydantic.ValidationError, match=message):
        getattr(config, section)(**fields)


@pytest.mark.parametrize("generation, message", [
    ('backend = "static"\ncompile_step = true\nbatch_size = 8\njoint_batch_size = 16\ncompiled_rows = 12',
     "narrower than the widest batch"),
    ('backend = "static"\ncompiled_rows = 12', "only apply to"),
    ('backend = "transformers"\ncompile_step = true\nhooked_step = "graph"', "only apply to"),
    ('backend = "static"\ncompile_step = true\nhooked_step = "own"', "hooked_step"),
    ('backend = "static"\ncompile_step = true\ncompile_experts = true', "compile_experts applies to"),
    ('backend = "transformers"\ncompile_experts = true', "compile_experts applies to"),
])
def test_compile_settings_errors(tmp_path, generation, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, GOOD + "\n[generation]\n" + generation))


def test_hooked_step_decides_which_steps_compile_and_share(tmp_path):
    gen = load_experiment(write(tmp_path, GOOD + '\n[generation]\nbackend = "static"\ncompile_step = true\n'
                                'hooked_step = "graph"\ncompiled_rows = 32')).generation
    assert gen.compiles(hooked=False) and not gen.compiles(hooked=True)
    assert not gen.shares_step(hooked=False)
    assert gen.step_note(hooked=True) == "uncompiled CUDA graph" and gen.step_note(hooked=False) == "compiled step"
    own = gen.model_copy(update={"hooked_step": "compiled"})
    assert own.compiles(hooked=True) and not own.shares_step(hooked=True)
    shared = gen.model_copy(update={"hooked_step": "shared"})
    assert shared.compiles(hooked=True) and shared.shares_step(hooked=True) and shared.shares_step(hooked=False)
    assert "shared" in shared.step_note(hooked=False)
    off = gen.model_copy(update={"compile_step": False})
    assert not off.compiles(hooked=False) and off.step_note(hooked=True) == ""


def test_compile_experts_compiles_no_step(tmp_path):
    """compile_experts: no condition compiles or shares a step, and the report says what ran."""
    gen = load_experiment(write(tmp_path, GOOD + '\n[generation]\nbackend = "static"\ncompile_experts = true\n'
                                )).generation
    assert not gen.compiles(hooked=False) and not gen.compiles(hooked=True) and not gen.shares_step(hooked=False)
    assert gen.step_note(hooked=True) == gen.step_note(hooked=False) == "uncompiled CUDA graph around compiled experts"
