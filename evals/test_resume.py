"""A generation run killed with SIGKILL resumes without recomputing or losing a finished item."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.run.cache import ItemStore

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS = 24

DRIVER = textwrap.dedent(
    f"""
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from harness.run.cache import ItemStore
    from harness.config import GenerationConfig
    from harness.generation import generate
    from harness.models.tiny import tiny_model

    model, tok = tiny_model("llama", seed=3)
    prompts = [f"Write a short note about item number {{i}}, please." for i in range({N_PROMPTS})]
    store = ItemStore("completions/resume", "tiny-llama")
    save = store.save

    def slow_save(batch):
        save(batch)
        print("SAVED", len(batch), flush=True)
        if os.environ.get("SLOW"):
            time.sleep(30)

    store.save = slow_save
    out = generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, batch_size=4), store=store,
                   progress=False)
    print("RESULT", json.dumps({{"recomputed": store.recomputed, "completions": out}}), flush=True)
    """
)


def _run(cache: Path, slow: bool = False) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    if slow:
        env["SLOW"] = "1"
    return subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_sigkill_mid_generation_then_resume(tmp_path):
    killed = _run(tmp_path / "killed", slow=True)
    assert killed.stdout is not None
    saved = 0
    for line in killed.stdout:
        if line.startswith("SAVED"):
            saved += 1
            if saved == 2:
                os.kill(killed.pid, signal.SIGKILL)
                break
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL

    finished = len(_read_store(tmp_path / "killed"))
    assert 0 < finished < N_PROMPTS

    resumed = _result(_run(tmp_path / "killed"))
    fresh = _result(_run(tmp_path / "fresh"))
    assert resumed["recomputed"] == N_PROMPTS - finished  # nothing finished was generated again
    assert fresh["recomputed"] == N_PROMPTS
    assert resumed["completions"] == fresh["completions"]  # and nothing was lost or changed


def _read_store(cache: Path) -> dict:
    old = os.environ.get("HARNESS_CACHE_DIR")
    os.environ["HARNESS_CACHE_DIR"] = str(cache)
    try:
        return ItemStore("completions/resume", "tiny-llama").load()
    finally:
        if old is None:
            os.environ.pop("HARNESS_CACHE_DIR")
        else:
            os.environ["HARNESS_CACHE_DIR"] = old
