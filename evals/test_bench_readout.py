"""GPU benchmark of the contiguous read-out input (`harness.models.kernels.contiguous_readout`; `-m bench`, skipped
without CUDA): a last-position forward (`logits_to_keep=1`, what every last-token pass, generation prefill and judge
prefill asks) of random weights of each experiment's real config in bf16, 32 prompts x 150 tokens and 232 x 40, with
the read-out's input made contiguous (as every CUDA model is configured) and without (the stock strided slice).

Asserted: the configured forward is faster than the stock one, and its logits are the stock ones.
Results: $HARNESS_BENCH_DIR (default reports/bench/) as readout.json, one GPU's figures; another GPU's previous record
under `earlier`.
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
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the read-out benchmark needs a CUDA GPU"),
]

EXPERIMENTS = ("gemma-2b-it", "qwen3-8b", "gpt-oss-20b")
SHAPES = ((32, 150), (232, 40))


def _path() -> Path:
    root = Path(os.environ.get("HARNESS_BENCH_DIR", Path(__file__).resolve().parent.parent / "reports" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root / "readout.json"


def _ms(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_contiguous_readout_input(name):
    from harness.config import load_experiment
    from harness.models.arch import unembedding
    from harness.models.kernels import _contiguous_input
    from harness.models.rehearsal import rehearsal_model

    built = rehearsal_model(load_experiment(name).model, "full", device="cuda")
    model, head = built.model, unembedding(built.model)
    hooks = head._forward_pre_hooks
    assert _contiguous_input in hooks.values(), "a CUDA model is configured with the contiguous read-out input"
    entry = {}
    with torch.inference_mode():
        for rows, seq in SHAPES:
            ids = torch.randint(10, 100000, (rows, seq), device="cuda")

            def forward():
                return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                             logits_to_keep=1).logits

            configured, configured_ms = forward(), _ms(forward)
            saved = dict(hooks)
            hooks.clear()
            try:
                stock, stock_ms = forward(), _ms(forward)
            finally:
                hooks.update(saved)
            entry[f"{rows}x{seq}"] = {"configured_ms": configured_ms, "stock_ms": stock_ms,
                                      "logits_equal": bool(torch.equal(configured, stock))}
    model = built = head = None  # freed before the next experiment's model
    torch.cuda.empty_cache()
    path = _path()
    earlier = json.loads(path.read_text()) if path.exists() else {}
    record = {k: v for k, v in earlier.items() if k != "earlier"}
    same_gpu = record.get("gpu") == torch.cuda.get_device_name()
    results = {**(record.get("results", {}) if same_gpu else {}), name: entry}  # one GPU's figures in one record
    path.write_text(json.dumps({
        "what": __doc__.split("\n\n")[0],
        "results": results,
        "gpu": torch.cuda.get_device_name(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda},
        **({"earlier": record} if record and not same_gpu else {}),
    }, indent=1) + "\n")
    print(json.dumps({name: entry}, indent=1))
    for shape, e in entry.items():
        assert e["logits_equal"], f"{name} {shape}: the contiguous read-out changed the logits"
        assert e["configured_ms"] < e["stock_ms"], f"{name} {shape}: {e}"
