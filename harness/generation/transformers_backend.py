"""The "transformers" backend: plain `model.generate` (dynamic cache)."""

from __future__ import annotations

import torch


def hf_generate(model, input_ids, attention_mask, max_new_tokens, temperature, eos, pad_token_id) -> torch.Tensor:
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
        "do_sample": False
    }
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos) or None,
        pad_token_id=pad_token_id,
        **sampling,
    )
    return out[:, input_ids.shape[1] :]
