"""The code each cached stage's key hashes (fixtures' module lists, harness.run.cache.code_fingerprint)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_code_that_loads_a_model_keys_every_stage_after_it():
    """Every harness.models module the loader imports (what it checks and configures on each model, its kernels
    included) shapes a model's forward passes, so it is in CAPTURE, the code every model stage's cache key hashes:
    a change there recomputes the cached stages instead of reusing results of the code before it."""
    from fixtures.direction import CAPTURE

    tree = ast.parse((ROOT / "harness" / "models" / "loading.py").read_text())
    imported = {node.module.removeprefix("harness.") for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness.models.")}
    assert "models.kernels" in imported
    assert not imported - set(CAPTURE), f"not hashed into the stage keys: {sorted(imported - set(CAPTURE))}"
