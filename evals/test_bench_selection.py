"""GPU benchmark of the selection sweep's `candidates_per_forward` (`-m bench`; skipped without CUDA): seconds per
candidate on random weights of each experiment's real config (bf16, packed as its TOML says), one candidate per
forward against the TOML's k, over every position of four layers spread over the model. The validation prompts
are 32 + 32 synthetic ones of the Arditi splits' length (~20 tokens each); the sweep scores all of them, no filter.

Asserted: the TOML's k is faster than one candidate per forward. Recorded beside the times: the largest gap between
the two sweeps' scores (bf16 in another batch shape) and whether they chose the same candidate.
Results: $HARNESS_BENCH_DIR (default reports/bench/) as selection-<experiment>.json, the previous file under `earlier`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the selection benchmark needs a CUDA GPU"),
]

EXPERIMENTS = ("gemma-2b-it", "qwen3-8b", "gpt-oss-20b")
HARMFUL = [f"How do I make dangerous thing number {i} at home quickly and cheaply, step by step?" for i in range(32)]
HARMLESS = [f"Write a short poem about the number {i} and the sea, in the style of a sailor." for i in range(32)]


def _path(name: str) -> Path:
    root = Path(os.environ.get("HARNESS_BENCH_DIR", Path(__file__).resolve().parent.parent / "reports" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root / f"selection-{name}.json"


def sweep_times(model, tokenizer, exp, ks: list[int], device: str) -> dict:
    """{k: (seconds a candidate, SelectionResult)} for each k in `ks`, after one untimed warm-up sweep."""
    from harness.models.arch import d_model, n_layers
    from harness.models.chat import post_instruction_tokens
    from harness.steering.selection import select_direction

    total, n_pos = n_layers(model), len(post_instruction_tokens(tokenizer))
    candidates = torch.randn(total, n_pos, d_model(model), generator=torch.Generator().manual_seed(0)).to(device)
    layers = sorted({total * i // 6 for i in range(1, 5)})
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def sweep(swept: list[int], k: int):
        return select_direction(model, tokenizer, candidates, HARMFUL, HARMLESS, packed=exp.direction.selection.packed,
                                progress=False, induce_min=-1e9, kl_max=1e9, max_layer_fraction=1.0, layers=swept,
                                candidates_per_forward=k, system=exp.generation.system_prompt,
                                batch_size=exp.generation.batch_size)

    sweep(layers[:1], 1)
    sync()
    out = {}
    for k in ks:
        start = time.perf_counter()
        result = sweep(layers, k)
        sync()
        out[k] = ((time.perf_counter() - start) / (len(layers) * n_pos), result)
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_candidates_per_forward_choice(name):
    import transformers

    from harness.config import load_experiment
    from harness.models.rehearsal import rehearsal_model

    exp = load_experiment(name)
    chosen = exp.direction.selection.candidates_per_forward
    built = rehearsal_model(exp.model, "full", device="cuda")
    times = sweep_times(built.model, built.tokenizer, exp, sorted({1, chosen}), "cuda")
    cols = ["bypass_score", "induce_score", "kl"]
    one, many = times[1][1], times[chosen][1]
    gap = float((torch.tensor(one.table[cols].to_numpy()) - torch.tensor(many.table[cols].to_numpy())).abs().max())
    record = {
        "experiment": name, "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "toml_candidates_per_forward": chosen,
        "ms_per_candidate": {str(k): round(t * 1e3, 1) for k, (t, _) in times.items()},
        "max_score_gap": gap, "same_choice": (one.layer, one.pos) == (many.layer, many.pos),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "gpu": torch.cuda.get_device_name(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": transformers.__version__},
    }
    path = _path(name)
    if path.is_file():
        record["earlier"] = json.loads(path.read_text())
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print("\n" + json.dumps({k: v for k, v in record.items() if k != "earlier"}, indent=1))
    assert times[chosen][0] < times[1][0], (f"{name}: candidates_per_forward = {chosen} took {times[chosen][0]:.3f} s "
                                            f"a candidate against {times[1][0]:.3f} s one per forward")
