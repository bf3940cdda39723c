"""GPU benchmark of the decode-step choices for a compiled experiment (`-m bench`; skipped without CUDA): which
of `[generation] hooked_step` (with compile_step) or `compile_experts` its TOML should name, measured on random
weights of the real config (bf16).

For each choice, in a process of its own with empty compile caches, in the order a run meets them: the baseline's
batch (its cold compile), the baseline again (what a weight-edited condition costs: the same step), and the ablation
condition. `graph` compiles the baseline's step and runs ablation as an uncompiled CUDA graph; `shared` runs both
through `shared_hooks` and one compiled step; `experts` runs both as uncompiled CUDA graphs around one compile of the
dense experts. Batches are the TOML's widest (`compiled_rows`, else `joint_batch_size`), of Harmony-formatted prompts;
random weights never stop early, so every row decodes `HARNESS_BENCH_NEW_TOKENS` tokens (default 512; the TOML's
1024 doubles the decode part). A half-size set (`half_set_s`, outside `total_s`) reuses the compiled step padded to
the same rows, or the experts' compile at its own size. The model's own compiles for prefill passes (`[model]
compile_grouped_experts`), alike for every choice, are made before the clock and the compile count.

Asserted: `shared` and `experts` compile once for baseline and ablation, the shared ablation honours the hooks
(closer to the graph's ablated tokens than to the unablated ones), and the TOML names the faster choice for this
workload.
Results: $HARNESS_BENCH_DIR (default reports/bench/) as <experiment>-compile-paths.json, the previous file's content
kept under `earlier`.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from compile_counting import counted_compiles
from greedy_agreement import token_agreement

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the compile-path benchmark needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "gpt-oss-20b"
CHOICES = ("graph", "shared", "experts")


def _path(name: str) -> Path:
    root = Path(os.environ.get("HARNESS_BENCH_DIR", ROOT / "reports" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{name}-compile-paths.json"


def _workload(gen) -> tuple[int, int]:
    """(rows, new tokens a row): the TOML's widest batch, HARNESS_BENCH_NEW_TOKENS (default 512)."""
    rows = gen.compiled_rows or gen.joint_batch_size or gen.batch_size
    return rows, int(os.environ.get("HARNESS_BENCH_NEW_TOKENS", "512"))


def toml_choice(gen) -> str:
    """The choice an experiment's `[generation]` names."""
    return "experts" if gen.compile_experts else gen.hooked_step


def measure(model, tokenizer, choice: str, rows: int, new_tokens: int, device: str, template_kwargs: dict) -> dict:
    """Seconds, step compiles and tokens of one choice on `rows` prompts (see the module docstring)."""
    from harness.generation.completions import generate_tokens
    from harness.generation.moe import compiled_dense_experts
    from harness.models.chat import tokenize_instructions
    from harness.models.logits import forward_kwargs
    from harness.steering.interventions import ablate, shared_hooks

    instructions = [f"Explain topic number {i} in {'great ' * (i % 7)}detail, with examples." for i in range(rows)]
    enc = tokenize_instructions(tokenizer, instructions, answer_prefix=False, **template_kwargs).to(device)
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    shared, experts = choice == "shared", choice == "experts"

    def run(n: int, hooked: bool) -> tuple[float, list[list[int]]]:
        step = shared or (choice == "graph" and not hooked)
        sync()
        t0 = time.perf_counter()
        with shared_hooks(model) if shared else nullcontext(), ablate(model, r) if hooked else nullcontext():
            out = generate_tokens(model, enc["input_ids"][:n], enc["attention_mask"][:n], max_new_tokens=new_tokens,
                                  backend="static", compile_step=step, compile_experts=experts,
                                  rows=rows if step else None)
        sync()
        return time.perf_counter() - t0, out

    compiled_dense_experts.cache_clear()
    torch._dynamo.reset()
    with torch.no_grad():
        # every choice's prefills meet the model's own compiles (`[model] compile_grouped_experts`) alike: made
        # here, before the count and the clock, so that `step_compiles` counts what the choice compiles
        model(**forward_kwargs(model, enc["input_ids"][:2], enc["attention_mask"][:2]))
    try:
        with pytest.MonkeyPatch.context() as patch:
            counter = counted_compiles(patch, "inductor")
            first_s, base = run(rows, False)
            again_s, _ = run(rows, False)
            half_s, _ = run(rows // 2, False)
            ablated_s, ablated = run(rows, True)
    finally:
        compiled_dense_experts.cache_clear()
        torch._dynamo.reset()
    return {"baseline_first_s": first_s, "baseline_again_s": again_s, "ablation_s": ablated_s,
            "half_set_s": half_s, "step_compiles": counter.frame_count,
            "total_s": first_s + again_s + ablated_s, "tokens": {"baseline": base, "ablation": ablated}}


def _measure_on_gpu(choice: str, out: str) -> None:
    """One choice in this (fresh) process: the experiment's model on CUDA, its figures to the JSON file `out`."""
    from harness.config import load_experiment
    from harness.models.rehearsal import rehearsal_model

    exp = load_experiment(EXPERIMENT)
    gen = exp.generation
    t0 = time.perf_counter()
    built = rehearsal_model(exp.model, "full", device="cuda")
    built.model.generation_config.eos_token_id = None
    figures = {"model_build_s": time.perf_counter() - t0}
    rows, new_tokens = _workload(gen)
    template_kwargs = dict(exp.chat.template_kwargs or {})
    figures |= measure(built.model, built.tokenizer, choice, rows, new_tokens, "cuda", template_kwargs)
    Path(out).write_text(json.dumps(figures))


def test_hooked_step_choice(tmp_path):
    """Each choice in its own process with its own empty inductor and Triton caches: cold, as a pod run meets it."""
    import platform
    import subprocess
    import sys

    import transformers

    from harness.config import load_experiment

    exp = load_experiment(EXPERIMENT)
    gen = exp.generation
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    results = {}
    for choice in CHOICES:
        out, cache = tmp_path / f"{choice}.json", tmp_path / f"cache-{choice}"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton"),
               "PYTHONHASHSEED": "0", "PYTHONPATH": pythonpath}
        proc = subprocess.run([sys.executable, __file__, choice, str(out)], env=env, cwd=ROOT, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        results[choice] = json.loads(out.read_text())
    tokens = {choice: results[choice].pop("tokens") for choice in CHOICES}
    agree = {
        "shared_ablation_vs_graph_ablation": token_agreement(tokens["shared"]["ablation"], tokens["graph"]["ablation"]),
        "shared_ablation_vs_unablated": token_agreement(tokens["shared"]["ablation"], tokens["shared"]["baseline"]),
        "shared_baseline_vs_compiled_baseline": token_agreement(tokens["shared"]["baseline"],
                                                                tokens["graph"]["baseline"]),
    }
    faster = min(CHOICES, key=lambda c: results[c]["total_s"])
    path = _path(EXPERIMENT)
    record = {
        "experiment": EXPERIMENT, "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "workload": dict(zip(("rows", "new_tokens"), _workload(gen)), dtype=exp.model.dtype),
        "toml_choice": toml_choice(gen), "faster_choice": faster, **results, "agreement": agree,
        "gpu": torch.cuda.get_device_name(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": transformers.__version__},
        "compile_cache": "cold: each choice ran in its own process with empty inductor and Triton cache folders",
    }
    if path.is_file():
        record["earlier"] = json.loads(path.read_text())
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print("\n" + json.dumps({c: results[c] for c in CHOICES} | {"agreement": agree}, indent=1))
    assert results["shared"]["step_compiles"] == 1, results["shared"]
    assert results["experts"]["step_compiles"] == 1, results["experts"]
    assert agree["shared_ablation_vs_graph_ablation"] > agree["shared_ablation_vs_unablated"], agree
    named = toml_choice(gen)
    assert named == faster, f"{EXPERIMENT}'s TOML names {named!r}; {faster!r} was faster " \
        f"({results[faster]['total_s']:.1f} s vs {results[named]['total_s']:.1f} s)"


if __name__ == "__main__":
    import sys

    _measure_on_gpu(*sys.argv[1:3])
