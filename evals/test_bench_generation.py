"""GPU benchmarks of generation and activation capture (`-m bench`; skipped without CUDA).

A random-init Gemma-2B-shaped model (vocab 256000, d_model 2048, 18 layers, MQA) in bf16, warm,
100 prompts x 40 tokens -> 512 greedy tokens. Targets (issue "fast generation", the time tightened by issue 23):
- static backend, decode step compiled and captured as a CUDA graph, with ablation hooks on every
  layer: <= 1.0 s (1.56 s on an H200 at issue 23's start) and >= 3.6x plain `model.generate` measured in the same
  run; the weight-read floor (512 steps x weight bytes / the measured copy bandwidth) is recorded beside it;
- hook overhead vs the same backend unhooked: <= 5% on the compiled path, where the hook arithmetic fuses into the
  traced step; <= 25% on the uncompiled CUDA-graph path, whose hooks run eagerly (see HOOK_OVERHEAD_EAGER_MAX);
- activation capture (all layers, 5 positions) >= 50% of the plain forward's tokens/s.
Results go to $HARNESS_BENCH_DIR (default reports/bench/) as JSON with GPU and library versions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import bench_floor
import pytest
import torch
from greedy_agreement import token_agreement

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="generation benchmarks need a CUDA GPU"),
]

N_PROMPTS, PROMPT_LEN, NEW_TOKENS = 100, 40, 512
TARGET_S, TARGET_SPEEDUP, HOOK_OVERHEAD_MAX, CAPTURE_FRACTION_MIN = 1.0, 3.6, 0.05, 0.5
HOOK_OVERHEAD_EAGER_MAX = 0.25
"""Eager hooks in the uncompiled graph (`interventions.FUSE_DECODE_HOOKS` off: compiling them costs a cold run more
than they save it, evals/test_bench_hooks.py) launch ~5 small kernels each, 13.6 us a hook a step on an H100
(interventions.FUSED_MAX_ROWS): 54 hooks add ~0.73 ms to the ~5.4 ms step of the f6e68db profile, ~14%. Beyond
25% a hook does more than its arithmetic (a host sync, a graph break, a recapture)."""
RESULTS: dict = {}
FLOOR: dict = {}  # NEW_TOKENS steps each reading every weight once, at the measured bandwidth (KV reads come on top)


def _results_path() -> Path:
    root = Path(os.environ.get("HARNESS_BENCH_DIR", Path(__file__).resolve().parent.parent / "reports" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root / "generation.json"


def _record(**entries) -> None:
    import transformers

    RESULTS.update(entries)
    RESULTS["env"] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    RESULTS["workload"] = {"prompts": N_PROMPTS, "prompt_tokens": PROMPT_LEN, "new_tokens": NEW_TOKENS, "dtype": "bf16"}
    RESULTS["weight_read_floor"] = FLOOR
    _results_path().write_text(json.dumps(RESULTS, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def gemma_2b():
    from transformers import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig(
        vocab_size=256000,
        hidden_size=2048,
        intermediate_size=16384,
        num_hidden_layers=18,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=8192,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GemmaForCausalLM(config).to(torch.bfloat16).eval().requires_grad_(False)
    model.generation_config.eos_token_id = None  # every row runs the full 512 steps in every backend
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(10, config.vocab_size, (N_PROMPTS, PROMPT_LEN), generator=gen).cuda()
    attention_mask = torch.ones_like(input_ids)
    direction = torch.randn(config.hidden_size, generator=gen)
    bandwidth, weights = bench_floor.copy_bandwidth(), bench_floor.weight_bytes(model)
    FLOOR.update(weight_bytes=weights, copy_bandwidth_bytes_per_s=bandwidth, seconds=NEW_TOKENS * weights / bandwidth)
    return model, input_ids, attention_mask, direction / direction.norm()


def _timed(fn, warmup: int = 1, repeats: int = 2) -> tuple[float, object]:
    """Median wall seconds of `fn()` after `warmup` calls (device synchronised around each call)."""
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def _run(model, input_ids, attention_mask, backend, compile_step=False):
    from harness.generation.completions import generate_tokens

    return lambda: generate_tokens(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=NEW_TOKENS,
        backend=backend,
        eos_token_ids=(),
        compile_step=compile_step,
    )


@pytest.fixture(scope="module")
def plain_generate(gemma_2b):
    """(seconds, tokens) of plain `model.generate` on the workload, measured once per run for every speedup."""
    model, input_ids, mask, _ = gemma_2b
    return _timed(_run(model, input_ids, mask, "transformers"), warmup=1, repeats=1)


def test_static_backend_with_ablation(gemma_2b, plain_generate, benchmark):
    """The uncompiled CUDA-graph path: its eager hooks' overhead is held to HOOK_OVERHEAD_EAGER_MAX; its time and
    speedup are recorded but not held to the TARGET_S / TARGET_SPEEDUP targets, which the compiled path (next test)
    is the one to meet."""
    from harness.steering.interventions import ablate

    model, input_ids, mask, direction = gemma_2b
    plain_s, plain_out = plain_generate
    static_s, static_out = _timed(_run(model, input_ids, mask, "static"), repeats=3)
    with ablate(model, direction.cuda()):
        hooked_s, hooked_out = _timed(_run(model, input_ids, mask, "static"), repeats=3)
        benchmark.pedantic(_run(model, input_ids, mask, "static"), rounds=1, iterations=1)
    assert all(len(r) == NEW_TOKENS for r in hooked_out)
    _record(
        static_graph={
            "plain_generate_s": plain_s,
            "static_s": static_s,
            "static_ablated_s": hooked_s,
            "speedup_ablated_vs_plain": plain_s / hooked_s,
            "hook_overhead": hooked_s / static_s - 1,
            "ablated_x_floor": hooked_s / FLOOR["seconds"],
            "greedy_agreement_static_vs_plain_bf16": token_agreement(static_out, plain_out),
        }
    )
    assert hooked_s / static_s - 1 <= HOOK_OVERHEAD_EAGER_MAX, f"eager hook overhead {hooked_s / static_s - 1:.1%}"


def test_static_compiled_with_ablation(gemma_2b, plain_generate):
    """The same workload with the decode step fused by torch.compile before graph capture: the path
    that must meet the TARGET_S target and the TARGET_SPEEDUP over plain generate timed in this run."""
    from harness.steering.interventions import ablate

    model, input_ids, mask, direction = gemma_2b
    plain_s, plain_out = plain_generate
    t0 = time.perf_counter()
    static_s, static_out = _timed(_run(model, input_ids, mask, "static", compile_step=True), repeats=3)
    with ablate(model, direction.cuda()):
        hooked_s, hooked_out = _timed(_run(model, input_ids, mask, "static", compile_step=True), repeats=3)
        _, eager_hooked = _timed(_run(model, input_ids, mask, "static"), warmup=0, repeats=1)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    _run(model, input_ids[:, 7:], mask[:, 7:], "static", compile_step=True)()  # a shorter prompt, same bucket
    recompiles = counters["stats"]["unique_graphs"] - graphs
    _record(
        static_compiled={
            "static_s": static_s,
            "static_ablated_s": hooked_s,
            "plain_generate_s": plain_s,
            "speedup_ablated_vs_plain": plain_s / hooked_s,
            "greedy_agreement_static_vs_plain_bf16": token_agreement(static_out, plain_out),
            "hook_overhead": hooked_s / static_s - 1,
            "ablated_x_floor": hooked_s / FLOOR["seconds"],
            "wall_incl_compile_s": time.perf_counter() - t0,
            # hooks honoured under compile: closer to the uncompiled ablated run than to the unablated one
            "agreement_ablated_compiled_vs_ablated_graph": token_agreement(hooked_out, eager_hooked),
            "agreement_ablated_compiled_vs_unablated_compiled": token_agreement(hooked_out, static_out),
            "recompiles_for_shorter_prompt": recompiles,
        }
    )
    assert recompiles == 0, f"a 33-token prompt recompiled the decode step {recompiles} time(s)"
    honoured = token_agreement(hooked_out, eager_hooked) > token_agreement(hooked_out, static_out)
    assert honoured, "hooks ignored under compile"
    assert hooked_s <= TARGET_S, f"compiled static+ablation took {hooked_s:.2f} s > {TARGET_S} s"
    assert plain_s / hooked_s >= TARGET_SPEEDUP, f"compiled speedup {plain_s / hooked_s:.2f}x < {TARGET_SPEEDUP}x"
    assert hooked_s / static_s - 1 <= HOOK_OVERHEAD_MAX, f"hook overhead {hooked_s / static_s - 1:.1%}"


def test_compiled_slot_windows(gemma_2b, monkeypatch):
    """`static.COMPILED_SLOT_WINDOWS` off and on, the compiled ablated step on this workload: the record that turned
    it on (an H100, 2026-12-07). Asserted only what must hold when it is on: one compile for every window and for a
    shorter prompt in the same cache bucket, and the whole-cache compile's tokens."""
    from torch._dynamo.utils import counters

    from harness.generation import static
    from harness.steering.interventions import ablate

    model, input_ids, mask, direction = gemma_2b
    seconds, tokens = {}, {}
    with ablate(model, direction.cuda()):
        for on in (False, True):
            monkeypatch.setattr(static, "COMPILED_SLOT_WINDOWS", on)
            seconds[on], tokens[on] = _timed(_run(model, input_ids, mask, "static", compile_step=True), repeats=3)
        graphs = counters["stats"]["unique_graphs"]
        _run(model, input_ids[:, 7:], mask[:, 7:], "static", compile_step=True)()
        recompiles = counters["stats"]["unique_graphs"] - graphs
    agreement = token_agreement(tokens[True], tokens[False])
    _record(
        compiled_slot_windows={
            "whole_cache_ablated_s": seconds[False],
            "windows_ablated_s": seconds[True],
            "windows_x_floor": seconds[True] / FLOOR["seconds"],
            "agreement_windows_vs_whole_cache": agreement,
            "recompiles_for_shorter_prompt": recompiles,
        }
    )
    assert recompiles == 0, f"a 33-token prompt recompiled the windowed step {recompiles} time(s)"
    assert agreement >= 0.99, f"windowed compiled tokens agree {agreement:.4f} with the whole cache's"


def test_activation_capture_throughput(gemma_2b):
    """mean_activations over all layers and 5 positions vs the plain forward on the same batches."""
    from harness.models.chat import tokenize_instructions
    from harness.models.tiny import tiny_tokenizer
    from harness.steering.activations import mean_activations

    model = gemma_2b[0]
    tokenizer = tiny_tokenizer("gemma")  # its ids are valid in the 256000 vocab; the model is random anyway
    words = "explain why sky is blue give me recipe for cake tell story of cat plan trip paris".split()
    instructions = [" ".join(words[(i + k) % len(words)] for k in range(48 + i % 17)) for i in range(256)]
    batch_size = 64
    batches = [
        tokenize_instructions(tokenizer, instructions[k : k + batch_size]).to("cuda")
        for k in range(0, len(instructions), batch_size)
    ]
    tokens = sum(int(b["attention_mask"].numel()) for b in batches)

    def plain():
        with torch.inference_mode():
            for b in batches:
                model(**b, use_cache=False, logits_to_keep=1)

    def capture():
        return mean_activations(model, tokenizer, instructions, positions=5, batch_size=batch_size, progress=False)

    plain_s, _ = _timed(plain, repeats=3)
    capture_s, acts = _timed(capture, repeats=3)
    assert acts.shape == (18, 5, 2048) and torch.isfinite(acts).all()
    fraction = plain_s / capture_s
    _record(
        activation_capture={
            "prompts": len(instructions),
            "padded_tokens": tokens,
            "plain_forward_tokens_per_s": tokens / plain_s,
            "capture_tokens_per_s": tokens / capture_s,
            "capture_fraction_of_plain": fraction,
        }
    )
    assert fraction >= CAPTURE_FRACTION_MIN, f"capture runs at {fraction:.0%} of the plain forward's tokens/s"


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "graph"])
def test_step_kernel_time(gemma_2b, compiled):
    """Where the ablated decode step's time goes, compiled and as an uncompiled CUDA graph (what the gemma-2b-it
    rehearsal runs): a record for the 1.0 s target, not a bound. Per-step wall time of the warm run against the GPU's
    kernel time per step (the gap is time the GPU waits), and the kernels that take the most GPU time, from
    torch.profiler over a 129-token run (its prefill and graph capture included). Asserted only what must hold:
    kernels never take longer than the wall clock they ran in. First run: one H100 at f6e68db (generation_h100.json;
    its compiled profiled_run_s, 18.7 s, held the step's recompile for the 129-token length, warmed up since)."""
    from torch.profiler import ProfilerActivity, profile

    from harness.steering.interventions import ablate

    model, input_ids, mask, direction = gemma_2b

    def run(new_tokens: int):
        from harness.generation.completions import generate_tokens

        return lambda: generate_tokens(model, input_ids, mask, max_new_tokens=new_tokens, backend="static",
                                       eos_token_ids=(), compile_step=compiled)

    with ablate(model, direction.cuda()):
        long_s, _ = _timed(run(NEW_TOKENS), repeats=1)
        short_s, _ = _timed(run(16), repeats=1)
        run(129)()  # a compiled step recompiles for this length's cache bucket: outside the profiled run
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            run(129)()
            torch.cuda.synchronize()
            profiled_s = time.perf_counter() - t0
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:15]
    _record(
        **{f"{'compiled' if compiled else 'graph'}_step_kernels": {
            "wall_ms_per_step": 1e3 * (long_s - short_s) / (NEW_TOKENS - 16),
            "floor_ms_per_step": 1e3 * FLOOR["seconds"] / NEW_TOKENS,
            "profiled_run_s": profiled_s,
            "kernel_s_in_profiled_run": kernel_s,
            "top_kernels": [{"name": e.key[:120], "calls": e.count, "ms": e.self_device_time_total / 1e3} for e in top],
        }}
    )
    assert 0 < kernel_s <= profiled_s, f"{kernel_s:.3f} s of kernels in a {profiled_s:.3f} s run"
