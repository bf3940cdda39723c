"""What a run hands on to other tools: the refusal direction (safetensors + a JSON sidecar), a steer file for
lm-evaluation-harness's `--model steered`, and the weight-edited model as a standard checkpoint.

lm-evaluation-harness's steered model (lm_eval/models/hf_steered.py) reads a torch file mapping a hook point
(a module name under `model.base_model`, hooked on its output) to {"action", "steering_vector",
"steering_coefficient", "bias"}; "clamp" sets the component along the vector to the coefficient, "add" adds
coefficient x vector at every position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.arch import embeddings, layers

DIRECTION_FILE = "direction.safetensors"
SIDECAR_FILE = "direction.json"
STEER_ABLATION_FILE = "steer-ablation.pt"
STEER_ACTADD_FILE = "steer-actadd.pt"
MODEL_DIR = "weight_edited"
MANIFEST_FILE = "export.json"  # written last: its presence says the export finished


def base_module_name(model: nn.Module, module: nn.Module) -> str:
    """`module`'s name under `model.base_model`, as lm-evaluation-harness's hook points are written."""
    for name, candidate in model.base_model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model.base_model).__name__}")


def _residual_hookpoints(model: nn.Module) -> list[str]:
    """Where the residual stream is, as module outputs: the token embeddings, then each block's output."""
    return [base_module_name(model, embeddings(model)), *(base_module_name(model, b) for b in layers(model))]


def steer_config(model: nn.Module, unit: torch.Tensor, raw: torch.Tensor, layer: int, actadd_coeff: float,
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """{"ablation": ..., "actadd": ...} steer configs for `--model steered`.

    ablation: "clamp" to 0 at the embeddings and every block's output, so every block reads a residual
    stream without the direction. The harness also removes it between a block's attention and MLP, so this is
    the same intervention only up to what a block's attention writes along r-hat before its MLP reads it.
    actadd: "add" of coeff x the raw diff-in-means vector at the input of block `layer` (the output of block
    `layer - 1`, or of the embeddings for layer 0, where families that scale embeddings inside the model,
    such as Gemma, see it before that scaling)."""
    points = _residual_hookpoints(model)
    vec = unit.detach().float().cpu().contiguous()
    ablation = {p: {"action": "clamp", "steering_vector": vec, "steering_coefficient": 0.0, "bias": None}
                for p in points}
    actadd = {points[layer]: {"action": "add", "steering_vector": raw.detach().float().cpu().contiguous(),
                              "steering_coefficient": float(actadd_coeff), "bias": None}}
    return {"ablation": ablation, "actadd": actadd}


def save_direction(out: Path, unit: torch.Tensor, raw: torch.Tensor, sidecar: dict[str, Any],
                   inlp_basis: torch.Tensor | None = None) -> Path:
    """direction.safetensors (`direction`: [d_model] unit, `vector`: [d_model] raw diff-in-means, and
    `inlp_basis`: [k, d_model] where fitted) with direction.json beside it."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"direction": unit.detach().float().cpu().contiguous(), "vector": raw.detach().float().cpu().contiguous()}
    if inlp_basis is not None:
        tensors["inlp_basis"] = inlp_basis.detach().float().cpu().contiguous()
    path = out / DIRECTION_FILE
    save_file(tensors, str(path), metadata={"layer": str(sidecar["layer"]), "pos": str(sidecar["pos"])})
    (out / SIDECAR_FILE).write_text(json.dumps({**sidecar, "tensors": {k: list(v.shape) for k, v in tensors.items()}},
                                               indent=1, sort_keys=True) + "\n")
    return path


def load_direction(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return load_file(str(out / DIRECTION_FILE)), json.loads((out / SIDECAR_FILE).read_text())


def export_run(out: Path, *, model: nn.Module, edited: nn.Module | None, tokenizer, unit: torch.Tensor,
               raw: torch.Tensor, sidecar: dict[str, Any], actadd_coeff: float,
               inlp_basis: torch.Tensor | None = None) -> list[Path]:
    """Every export of one run under `out`; returns the paths written."""
    from harness.weights import save_model

    written = [save_direction(out, unit, raw, sidecar, inlp_basis), out / SIDECAR_FILE]
    steer = steer_config(model, unit, raw, sidecar["layer"], actadd_coeff)
    for name, file in (("ablation", STEER_ABLATION_FILE), ("actadd", STEER_ACTADD_FILE)):
        torch.save(steer[name], out / file)
        written.append(out / file)
    if edited is not None:
        written.append(save_model(edited, tokenizer, out / MODEL_DIR))
    manifest = out / MANIFEST_FILE
    manifest.write_text(json.dumps(sorted(str(p.relative_to(out)) for p in written), indent=1) + "\n")
    return [*written, manifest]
