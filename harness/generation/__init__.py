"""Completions stage: one `generate` in front of one module per backend, and what decodes with them.

- `completions`: `generate` (instructions -> completions, resumable, OOM-halving) and `generate_tokens`;
- `transformers_backend`, `static`, `vllm_backend`: one module per backend; `common`: what they share;
- `attention`, `moe`, `projections`: the kernels the static backend switches in for decode (on CUDA, but for
  `projections`);
- `reasoning`: a raw completion split into reasoning and answer.

May import: config, run, data, models, steering.
"""

from harness.generation.completions import generate

__all__ = ["generate"]
