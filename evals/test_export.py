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

from harness.arch import layers
from harness.capability import last_position_logits
from harness.export import base_module_name, export_run, load_direction, steer_config
from harness.hooks import block_input
from harness.interventions import ablate, actadd
from harness.tiny import tiny_model
from harness.weights import orthogonalize

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


def test_steer_ablation_leaves_no_direction_in_any_block_input(llama):
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
    # Not the same intervention (attention writes between a block's hooks), but close to it.
    assert (steered - ablated).abs().max() < (steered - last_position_logits(model, tok, PROMPTS)).abs().max()


def test_export_round_trip(llama, tmp_path):
    model, tok, raw, unit = llama
    edited = orthogonalize(model, unit)
    basis = torch.linalg.qr(torch.randn(model.config.hidden_size, 2))[0].T
    written = export_run(tmp_path, model=model, edited=edited, tokenizer=tok, unit=unit, raw=raw,
                         sidecar={"layer": 2, "pos": -1, "model_id": "tiny"}, actadd_coeff=1.0, inlp_basis=basis)
    assert all(Path(p).exists() for p in written)
    tensors, sidecar = load_direction(tmp_path)
    assert torch.equal(tensors["direction"], unit) and torch.equal(tensors["vector"], raw)
    assert torch.equal(tensors["inlp_basis"], basis)
    assert sidecar["tensors"]["direction"] == [model.config.hidden_size] and sidecar["layer"] == 2
    steer = torch.load(tmp_path / "steer-ablation.pt", weights_only=True)
    assert {v["action"] for v in steer.values()} == {"clamp"} and len(steer) == len(layers(model)) + 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "weight_edited").eval()
    with ablate(model, unit):
        ablated = last_position_logits(model, tok, PROMPTS)
    assert torch.allclose(last_position_logits(loaded, tok, PROMPTS), ablated, atol=1e-4)
    assert (loaded.get_input_embeddings().weight @ unit).abs().max() < 1e-5


def test_cli_exports_a_rehearsed_experiment(tmp_path):
    """`python -m harness export` end to end on the tiny Qwen3 rehearsal; the checkpoint loads and carries the edit."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "PYTHONHASHSEED": "0"}
    env.setdefault("HARNESS_TOKENIZERS_DIR", str(ROOT.parent / "shared" / "tokenizers"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "harness", "export", "--experiment", "qwen3-8b", "--rehearse", "tiny",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    tensors, sidecar = load_direction(out)
    assert sidecar["model_id"] == "Qwen/Qwen3-8B" and sidecar["revision"] and len(sidecar["weights_sha256"]) == 64
    assert "block" in sidecar["hook_point"] and sidecar["post_instruction"].endswith("</think>\n\n")
    loaded = AutoModelForCausalLM.from_pretrained(out / "weight_edited")
    unit = tensors["direction"]
    assert (loaded.get_input_embeddings().weight.float() @ unit).abs().max() < 1e-2  # bf16 weights
    from harness.environment import state_dict_sha256

    assert state_dict_sha256(loaded) == sidecar["weight_edited_sha256"]
    assert not (ROOT / "reports" / "qwen3-8b-rehearse-tiny-export").exists()
    assert json.loads((out / "direction.json").read_text())["layer"] == sidecar["layer"]
