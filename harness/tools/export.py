"""What a run hands on to other tools: the refusal direction (safetensors + a JSON sidecar), steer files for
lm-evaluation-harness's `--model steered`, the weight-edited model as a standard checkpoint, and the baseline
model those steer files apply to (written as a checkpoint, or named by its pinned hub snapshot or local path).

lm-evaluation-harness's steered model (lm_eval/models/hf_steered.py, 0.4.13) reads a torch file mapping a hook
point (a module name under `model.base_model`, hooked on its output; a tuple output is edited in its first
element) to {"action", "steering_vector", "steering_coefficient", "bias"}; "clamp" sets the component along the
unit vector to the coefficient, "add" adds coefficient x vector at every position. Both run in the model's dtype.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.models.arch import embeddings, layer_modules, layers
from harness.steering.interventions import select_layers

DIRECTION_FILE = "direction.safetensors"
SIDECAR_FILE = "direction.json"
STEER_ABLATION_FILE = "steer-ablation.pt"
STEER_ACTADD_FILE = "steer-actadd.pt"
MODEL_DIR = "weight_edited"
BASELINE_DIR = "baseline"
MANIFEST_FILE = "export.json"  # written last: its presence says the export finished


def base_module_name(model: nn.Module, module: nn.Module) -> str:
    """`module`'s name under `model.base_model`, as lm-evaluation-harness's hook points are written."""
    for name, candidate in model.base_model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model.base_model).__name__}")


def _block_inputs(model: nn.Module) -> list[str]:
    """Block i's input as a module output: the token embeddings for block 0, else block i-1's output."""
    return [base_module_name(model, embeddings(model)), *(base_module_name(model, b) for b in layers(model)[:-1])]


def ablation_hookpoints(model: nn.Module, chosen: list[int]) -> list[str]:
    """Every point where `harness.steering.interventions.ablate` projects r-hat out, as module outputs: each chosen
    block's input and each module that writes the residual stream inside it (attention and MLP output
    projections, or the post-norms of families that write through one). Clamping block outputs alone would
    let a block's MLP read what its attention wrote along r-hat; that is the gap between lm-eval's clamp at
    block outputs and this harness's ablation."""
    inputs = _block_inputs(model)
    mods = layer_modules(model)
    points = [inputs[i] for i in chosen]
    points += [base_module_name(model, m) for i in chosen for m in mods[i].residual_outputs]
    return list(dict.fromkeys(points))


def steer_config(model: nn.Module, unit: torch.Tensor, raw: torch.Tensor, layer: int, actadd_coeff: float,
                 ablated_layers: Sequence[int] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{"ablation": ..., "actadd": ...} steer configs for `--model steered`.

    ablation: "clamp" to 0 at every point `ablation_hookpoints` names for `ablated_layers` (the blocks the
    experiment's `ablation` condition touches; None: every block), so
    lm-eval runs the same intervention as this harness's ablation (which equals the weight edit), up to
    rounding: lm-eval clamps in the model's dtype, the harness in float32.
    actadd: "add" of coeff x the raw diff-in-means vector at the input of block `layer` (the output of block
    `layer - 1`, or of the embeddings for layer 0, where families that scale embeddings inside the model,
    such as Gemma, see it before that scaling)."""
    chosen = select_layers(len(layers(model)), "all", ablated_layers)
    vec = unit.detach().float().cpu().contiguous()
    ablation = {p: {"action": "clamp", "steering_vector": vec, "steering_coefficient": 0.0, "bias": None}
                for p in ablation_hookpoints(model, chosen)}
    actadd = {_block_inputs(model)[layer]: {"action": "add", "steering_vector": raw.detach().float().cpu().contiguous(),
                                           "steering_coefficient": float(actadd_coeff), "bias": None}}
    return {"ablation": ablation, "actadd": actadd}


def baseline_source(model_record: dict[str, Any], rehearsed: bool) -> dict[str, str] | None:
    """lm-eval's `pretrained=` (and `revision=`) for the model the steer files apply to, where a pinned source
    names it exactly; None where the model in memory exists nowhere else (a refusal-tuned or GGUF-dequantised
    demo model, random rehearsal weights) and must be written as a checkpoint."""
    if rehearsed or model_record.get("refusal_tune") or model_record.get("gguf_file"):
        return None
    if model_record.get("path"):
        return {"pretrained": str(model_record["path"])}
    return {"pretrained": str(model_record["id"]), "revision": str(model_record["revision"])}


def lm_eval_commands(out: Path, baseline: dict[str, str], dtype: str, device: str) -> dict[str, str]:
    """The `lm_eval` command lines for the baseline, each steer file and the weight-edited checkpoint; TASK is
    the caller's choice (any lm-eval task; `--include_path DIR` for a local one)."""
    def args(**kv: str) -> str:
        return ",".join(f"{k}={v}" for k, v in kv.items())

    common = f"--tasks TASK --apply_chat_template --device {device} --batch_size 8"
    base = {**baseline, "dtype": dtype}
    return {
        "baseline": f"lm_eval --model hf --model_args {args(**base)} {common}",
        "ablation": f"lm_eval --model steered --model_args {args(**base, steer_path=str(out / STEER_ABLATION_FILE))} "
                    f"{common}",
        "actadd": f"lm_eval --model steered --model_args {args(**base, steer_path=str(out / STEER_ACTADD_FILE))} "
                  f"{common}",
        "weight_edited": f"lm_eval --model hf --model_args {args(pretrained=str(out / MODEL_DIR), dtype=dtype)} "
                         f"{common}",
    }


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
               raw: torch.Tensor, sidecar: dict[str, Any], actadd_coeff: float, baseline: dict[str, str] | None,
               dtype: str = "float32", device: str = "cpu", ablated_layers: Sequence[int] | None = None,
               inlp_basis: torch.Tensor | None = None) -> list[Path]:
    """Every export of one run under `out`; returns the paths written. `baseline` names the pinned model the
    steer files apply to (`baseline_source`); None writes `model` itself to `out/baseline`."""
    from harness.steering.weights import save_model

    out = out.resolve()
    # The sidecar names the model the direction applies to: the pinned source, or the checkpoint written beside it.
    sidecar = {**sidecar, "baseline": baseline or {"pretrained": BASELINE_DIR}}
    written = [save_direction(out, unit, raw, sidecar, inlp_basis), out / SIDECAR_FILE]
    steer = steer_config(model, unit, raw, sidecar["layer"], actadd_coeff, ablated_layers)
    for name, file in (("ablation", STEER_ABLATION_FILE), ("actadd", STEER_ACTADD_FILE)):
        torch.save(steer[name], out / file)
        written.append(out / file)
    if baseline is None:
        written.append(save_model(model, tokenizer, out / BASELINE_DIR))
        baseline = {"pretrained": str(out / BASELINE_DIR)}
    if edited is not None:
        written.append(save_model(edited, tokenizer, out / MODEL_DIR))
    commands = lm_eval_commands(out, baseline, dtype, device)
    if edited is None:
        commands.pop("weight_edited")
    manifest = out / MANIFEST_FILE
    manifest.write_text(json.dumps({"files": sorted(str(p.relative_to(out)) for p in written),
                                    "baseline": baseline, "lm_eval": commands}, indent=1) + "\n")
    return [*written, manifest]


def read_manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / MANIFEST_FILE).read_text())
