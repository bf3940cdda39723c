"""Packed prompts (harness.models.packing) give each prompt the last-token logits a left-padded batch gives it."""

from __future__ import annotations

import pytest
import torch

from harness.models.arch import NotAttentionOnly
from harness.models.logits import forward_logits, left_pad
from harness.models.packing import pack, packed_last_logits
from harness.models.tiny import tiny_model

# Sliding windows (8 tokens in the tiny configs), soft-capping, MQA, attention sinks and a Gemma 4 MoE block included.
FAMILIES = ("llama", "mistral", "gemma", "gemma2", "gemma3", "qwen3", "gpt_oss")


def _seqs(vocab: int, shared: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab, (shared,), generator=gen).tolist()
    return [prefix + torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def _padded_last_logits(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    ids, mask = left_pad(seqs, pad_id)
    return forward_logits(model, ids, mask, last_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_logits_equal_a_padded_batch(family):
    model, tok = tiny_model(family)
    model = model.float()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    seqs = _seqs(len(tok), shared=5, lengths=[3, 11, 1, 7, 14, 2, 9])  # some past the 8-token sliding window
    want = _padded_last_logits(model, seqs, pad)  # [7, vocab]
    # Rows of at most 24 tokens, two rows per forward: several rows, several forwards, a right-padded row.
    packs = pack(seqs, pad, row_tokens=24, forward_tokens=48)
    assert len(packs) > 1 and any(p.input_ids.shape[0] > 1 for p in packs)
    with torch.inference_mode():
        got = packed_last_logits(model, packs).cpu()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_packing_shares_the_prefix_once_per_row_and_keeps_prompt_order():
    seqs = _seqs(100, shared=4, lengths=[2, 3, 30, 1])
    packs = pack(seqs, 0, row_tokens=16)
    assert len(packs) == 1
    (p,) = packs
    # Row 0: prefix + 2 + 3 tokens; the 30-token rest gets a row of its own; the last prompt starts a third row.
    assert p.input_ids.shape == (3, 34)
    assert [r for r, _ in p.ends] == [0, 0, 1, 2]
    assert (p.segment[:, :4] == -1).all()
    for k, (r, c) in enumerate(p.ends):
        assert p.input_ids[r, c] == seqs[k][-1] and p.position_ids[r, c] == len(seqs[k]) - 1


def test_a_prompt_that_is_all_shared_prefix_keeps_its_last_token():
    seqs = [[5, 6, 7], [5, 6, 7, 8]]
    (p,) = pack(seqs, 0)
    assert p.input_ids[0, :2].tolist() == [5, 6] and p.ends[0] == (0, 2)


def test_padding_changes_nothing_packing_reads():
    model, tok = tiny_model("llama")
    model = model.float()
    seqs = _seqs(len(tok), shared=0, lengths=[4, 9, 2])
    with torch.inference_mode():
        one_row = packed_last_logits(model, pack(seqs, 0)).cpu()
        apart = packed_last_logits(model, pack(seqs, 0, row_tokens=9, forward_tokens=1000)).cpu()
    torch.testing.assert_close(one_row, apart, atol=2e-5, rtol=1e-5)


def test_a_recurrent_layer_cannot_be_packed():
    model, tok = tiny_model("qwen3_5")
    seqs = _seqs(len(tok), shared=2, lengths=[3, 4])
    with pytest.raises(NotAttentionOnly, match="linear_attention"):
        packed_last_logits(model, pack(seqs, 0))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        pack([], 0)
    with pytest.raises(ValueError, match="empty"):
        pack([[1, 2], []], 0)
    with pytest.raises(ValueError, match="share at most 1"):
        pack([[1, 2], [1, 3]], 0, shared=2)
