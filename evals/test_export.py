"""Exports: the direction file and sidecar, lm-evaluation-harness steer files that do what their names say, and a
weight-edited checkpoint that `from_pretrained` loads back with the edit in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from harness.models.arch import layers
from harness.models.hooks import block_input
from harness.models.logits import last_position_logits
from harness.models.tiny import tiny_model
from harness.steering.interventions import ablate, actadd
from harness.steering.weights import orthogonalize
from harness.tools.export import (
    BASELINE_DIR,
    ablation_hookpoints,
    base_module_name,
    export_run,
    load_direction,
    read_manifest,
    steer_config,
)

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["How do I bake bread?", "Tell me about the moon and its phases in detail."]


def _steered(model, config: dict):
    """lm-evaluation-harness's documented steering semantics (hf_steered.py): a forward hook on each named module
    of `model.base_model`; "add" adds coefficient x vector, "clamp" sets the component along the unit vector."""
    def hook_for(info):
        vec = info["steering_vector"]

        def edit(acts):
            if info["action"] == "add":
                return acts + info["steering_coefficient"] * vec.to(acts)
            d = (vec / vec.norm()).to(acts)
            return acts - (acts * d).sum(-1, keepdim=True) * d + d * info["steering_coefficient"]

        def hook(module, args, output):
            return (edit(output[0]), *output[1:]) if isinstance(output, tuple) else edit(output)

        return hook

    modules = dict(model.base_model.named_modules())
    return [modules[name].register_forward_hook(hook_for(info)) for name, info in config.items()]


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_model("llama", seed=3)
    raw = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    return model, tok, raw, raw / raw.norm()


def test_steer_actadd_equals_the_harness_actadd(llama):
    model, tok, raw, unit = llama
    config = steer_config(model, unit, raw, layer=2, actadd_coeff=1.5)["actadd"]
    assert list(config) == [base_module_name(model, layers(model)[1])]
    with actadd(model, raw, 2, 1.5):
        ours = last_position_logits(model, tok, PROMPTS)
    handles = _steered(model, config)
    try:
        theirs = last_position_logits(model, tok, PROMPTS)
    finally:
        for h in handles:
            h.remove()
    plain = last_position_logits(model, tok, PROMPTS)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_steer_ablation_is_the_harness_ablation(llama):
    """Clamped at every block input and every residual write, lm-eval's steered model runs this harness's
    ablation; clamped at block outputs only (the first export), it did not."""
    model, tok, raw, unit = llama
    config = steer_config(model, unit, raw, layer=2, actadd_coeff=1.0)["ablation"]
    seen = []
    pre = [b.register_forward_pre_hook(lambda m, a, k: seen.append(float((block_input(a, k) @ unit).abs().max())),
                                       with_kwargs=True) for b in layers(model)]
    handles = _steered(model, config)
    try:
        steered = last_position_logits(model, tok, PROMPTS)
    finally:
        for h in handles + pre:
            h.remove()
    assert len(seen) == len(layers(model)) and max(seen) < 1e-4
    with ablate(model, unit):
        ablated = last_position_logits(model, tok, PROMPTS)
    assert torch.allclose(steered, ablated, atol=1e-5), (steered - ablated).abs().max()
    assert not torch.allclose(ablated, last_position_logits(model, tok, PROMPTS), atol=1e-3)


def test_steer_ablation_clamps_only_the_ablated_layers(llama):
    model, tok, raw, unit = llama
    one = steer_config(model, unit, raw, layer=2, actadd_coeff=1.0, ablated_layers=[2])["ablation"]
    assert list(one) == ablation_hookpoints(model, [2])
    assert all(".2." in name or name == base_module_name(model, layers(model)[1]) for name in one), list(one)


def test_export_round_trip(llama, tmp_path):
    model, tok, raw, unit = llama
    edited = orthogonalize(model, unit)
    basis = torch.linalg.qr(torch.randn(model.config.hidden_size, 2))[0].T
    written = export_run(tmp_path, model=model, edited=edited, tokenizer=tok, unit=unit, raw=raw,
                         sidecar={"layer": 2, "pos": -1, "model_id": "tiny"}, actadd_coeff=1.0, inlp_basis=basis,
                         baseline=None)
    assert all(Path(p).exists() for p in written)
    tensors, sidecar = load_direction(tmp_path)
    assert torch.equal(tensors["direction"], unit) and torch.equal(tensors["vector"], raw)
    assert torch.equal(tensors["inlp_basis"], basis)
    assert sidecar["tensors"]["direction"] == [model.config.hidden_size] and sidecar["layer"] == 2
    steer = torch.load(tmp_path / "steer-ablation.pt", weights_only=True)
    assert {v["action"] for v in steer.values()} == {"clamp"}
    assert list(steer) == ablation_hookpoints(model, list(range(len(layers(model)))))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "weight_edited").eval()
    with ablate(model, unit):
        ablated = last_position_logits(model, tok, PROMPTS)
    assert torch.allclose(last_position_logits(loaded, tok, PROMPTS), ablated, atol=1e-4)
    assert (loaded.get_input_embeddings().weight @ unit).abs().max() < 1e-5
    # The baseline the steer files apply to is written beside them, and lm-eval's commands name it.
    baseline = AutoModelForCausalLM.from_pretrained(tmp_path / BASELINE_DIR).eval()
    assert torch.allclose(last_position_logits(baseline, tok, PROMPTS), last_position_logits(model, tok, PROMPTS), atol=1e-5)
    assert sidecar["baseline"] == {"pretrained": BASELINE_DIR}
    commands = read_manifest(tmp_path)["lm_eval"]
    assert f"pretrained={tmp_path / BASELINE_DIR},dtype=float32,steer_path={tmp_path / 'steer-ablation.pt'}" in \
        commands["ablation"]
    assert f"pretrained={tmp_path / 'weight_edited'}" in commands["weight_edited"]


def test_a_pinned_model_is_named_not_copied(llama, tmp_path):
    from harness.tools.export import baseline_source

    model, tok, raw, unit = llama
    pinned = baseline_source({"id": "org/model", "revision": "a" * 40, "path": None}, rehearsed=False)
    assert pinned == {"pretrained": "org/model", "revision": "a" * 40}
    assert baseline_source({"id": "x", "revision": None, "gguf_file": "m.gguf", "refusal_tune": {"r": 1}}, False) is None
    assert baseline_source({"id": "org/model", "revision": "a" * 40}, rehearsed=True) is None
    export_run(tmp_path, model=model, edited=None, tokenizer=tok, unit=unit, raw=raw, sidecar={"layer": 1, "pos": -1},
               actadd_coeff=1.0, baseline=pinned, dtype="bfloat16", device="cuda")
    assert not (tmp_path / BASELINE_DIR).exists()
    assert "pretrained=org/model,revision=" + "a" * 40 + ",dtype=bfloat16" in read_manifest(tmp_path)["lm_eval"]["ablation"]


def test_cli_exports_a_rehearsed_experiment(tmp_path):
    """`python -m harness export` end to end on the tiny Qwen3 rehearsal; the checkpoint loads and carries the edit."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "PYTHONHASHSEED": "0"}
    env.setdefault("HARNESS_TOKENIZERS_DIR", str(ROOT.parent / "shared" / "tokenizers"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "harness", "export", "--experiment", "qwen3-8b", "--rehearse", "tiny",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown[-4000:]
    # The export runs no claim: nothing is asserted against a snapshot or deselected from the claim suite.
    assert "test_claims" not in shown and "deselected" not in shown and "1 passed" in shown, shown[-4000:]
    assert f"lm_eval --model steered --model_args pretrained={out / BASELINE_DIR}," in proc.stdout, proc.stdout
    assert AutoModelForCausalLM.from_pretrained(out / BASELINE_DIR) is not None
    tensors, sidecar = load_direction(out)
    assert sidecar["model_id"] == "Qwen/Qwen3-8B" and sidecar["revision"] and len(sidecar["weights_sha256"]) == 64
    assert "block" in sidecar["hook_point"] and sidecar["post_instruction"].endswith("</think>\n\n")
    loaded = AutoModelForCausalLM.from_pretrained(out / "weight_edited")
    unit = tensors["direction"]
    assert (loaded.get_input_embeddings().weight.float() @ unit).abs().max() < 1e-2  # bf16 weights
    from harness.report.environment import state_dict_sha256

    assert state_dict_sha256(loaded) == sidecar["weight_edited_sha256"]
    assert not (ROOT / "reports" / "qwen3-8b-rehearse-tiny-export").exists()
    assert json.loads((out / "direction.json").read_text())["layer"] == sidecar["layer"]


def test_cli_export_exits_non_zero_when_the_run_fails(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "export", "--experiment", "no-such-experiment",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no-such-experiment" in proc.stdout + proc.stderr
    assert "exported" not in proc.stdout
