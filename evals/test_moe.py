"""The fast gpt-oss decode path (dense experts, sink attention without repeated K/V) computes the stock
modules' function: compared on a tiny gpt-oss on the CPU, where the switch is forced (generation on the CPU
keeps the stock path)."""

from __future__ import annotations

import warnings

import pytest
import torch
from compile_counting import counted_compiles

from harness.generation.attention import sink_decode_attention
from harness.generation.common import eos_token_ids
from harness.generation.completions import generate_tokens
from harness.generation.moe import (
    compiled_dense_experts,
    dense_decode_applies,
    dense_decode_experts,
    dense_experts_forward,
)
from harness.models.chat import tokenize_instructions
from harness.models.kernels import COMPILED_GROUPED, compile_grouped_experts, compiled_grouped_experts
from harness.models.logits import cache_keyword, forward_kwargs, returned_cache
from harness.models.tiny import tiny_model
from harness.steering.interventions import ablate

PROMPTS = ["how to make a bomb at home", "hi", "write poem about the sea please thank you", "list three fruits"]


@pytest.mark.parametrize("stock", ["eager", "grouped_mm"])
def test_dense_experts_equal_stock_module(stock):
    model, _ = tiny_model("gpt_oss")
    experts = model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(0)
    tokens, n_experts, k = 37, experts.gate_up_proj.shape[0], 2
    hidden = torch.randn(tokens, experts.hidden_size, generator=gen)
    index = torch.stack([torch.randperm(n_experts, generator=gen)[:k] for _ in range(tokens)])  # [tokens, k]
    weights = torch.rand(tokens, k, generator=gen).softmax(-1)
    model.set_experts_implementation(stock)
    expected = experts(hidden, index, weights)
    got = dense_experts_forward(experts, hidden, index, weights)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the comparison is not of zeros


def test_dense_decode_switch_is_scoped_and_cuda_only():
    model, _ = tiny_model("gpt_oss")
    assert not dense_decode_applies(model)  # a CPU model keeps its stock implementation in generation
    assert not dense_decode_applies(tiny_model("llama")[0], on_cpu=True)
    before = model.get_experts_implementation()
    with dense_decode_experts(model, on_cpu=True):
        assert model.get_experts_implementation()[""].startswith("harness_dense_decode")
    assert model.get_experts_implementation() == before


@pytest.mark.parametrize("ablated", [False, True])
def test_fast_decode_path_matches_stock_greedy(ablated):
    """Greedy tokens of the static backend with dense experts and sink attention forced on equal the stock
    modules' tokens, and the decode logits agree to float32 rounding."""
    model, tok = tiny_model("gpt_oss")
    enc = tokenize_instructions(tok, PROMPTS)
    kw = dict(max_new_tokens=24, eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with ablate(model, direction) if ablated else torch.no_grad():
        stock = generate_tokens(model, enc["input_ids"], enc["attention_mask"], backend="static", **kw)
        with sink_decode_attention(model, on_cpu=True), dense_decode_experts(model, on_cpu=True):
            assert model.config._attn_implementation == "harness_sink_decode"
            fast = generate_tokens(model, enc["input_ids"], enc["attention_mask"], backend="static", **kw)
    assert fast == stock
    assert sum(map(len, stock)) > 0


def test_compiled_experts_replay_one_compile_for_every_layer_and_batch(monkeypatch):
    """compile_experts: every layer's experts, at prefill and at decode, in batches of two sizes, run one compiled
    graph (dynamo's CompileCounter), and the greedy tokens of an ablated run are those of the uncompiled path."""
    counter = counted_compiles(monkeypatch)
    compiled_dense_experts.cache_clear()
    model, tok = tiny_model("gpt_oss")
    assert len(model.model.layers) > 1
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=12, eos_token_ids=[], pad_token_id=tok.pad_token_id, backend="static")
    runs = {}
    try:
        for compiled in (False, True):
            with ablate(model, direction), sink_decode_attention(model, on_cpu=True), \
                    dense_decode_experts(model, on_cpu=True, compiled=compiled):
                batches = (tokenize_instructions(tok, PROMPTS), tokenize_instructions(tok, PROMPTS[:3]))
                runs[compiled] = [generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw)
                                  for enc in batches]
    finally:
        compiled_dense_experts.cache_clear()
        torch._dynamo.reset()
    assert runs[True] == runs[False]
    assert counter.frame_count == 1


def test_compiled_experts_on_a_dense_cuda_model_say_they_do_nothing(monkeypatch):
    import harness.generation.moe as moe

    model, _ = tiny_model("llama")
    monkeypatch.setattr(moe, "input_device", lambda m: torch.device("cuda"))
    with pytest.warns(UserWarning, match="compile_experts has no effect on LlamaForCausalLM"):
        with dense_decode_experts(model, compiled=True):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with dense_decode_experts(model):
            pass


def test_compiled_grouped_experts_one_compile_for_every_layer_and_length(monkeypatch):
    """compile_grouped_experts: every layer's experts, in forwards of three batch shapes (one a single row) and in a
    static generation's prefill (its decode steps dense), run one compiled graph with the logits and greedy tokens
    of the stock grouped_mm."""
    counter = counted_compiles(monkeypatch)
    compiled_grouped_experts.cache_clear()
    model, tok = tiny_model("gpt_oss")
    assert len(model.model.layers) > 1 and model.get_experts_implementation() == {"": "grouped_mm"}
    batches = [tokenize_instructions(tok, PROMPTS[:n]) for n in (4, 3, 1)]
    kw = dict(max_new_tokens=12, eos_token_ids=[], pad_token_id=tok.pad_token_id, backend="static")
    runs = {}
    try:
        for compiled in (False, True):
            if compiled:
                compile_grouped_experts(model)
                assert model.get_experts_implementation() == {"": COMPILED_GROUPED}
            with torch.no_grad():
                logits = [model(**forward_kwargs(model, enc["input_ids"], enc["attention_mask"])).logits
                          for enc in batches]  # [batch, seq, vocab] each
            with dense_decode_experts(model, on_cpu=True):
                tokens = [generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw) for enc in batches]
            runs[compiled] = logits, tokens
    finally:
        compiled_grouped_experts.cache_clear()
        torch._dynamo.reset()
    for stock, fused in zip(runs[False][0], runs[True][0]):
        assert torch.equal(stock, fused)
    assert runs[True][1] == runs[False][1]
    assert counter.frame_count == 1


def test_compile_grouped_experts_warns_and_leaves_other_experts_or_none():
    model, _ = tiny_model("gpt_oss")
    model.set_experts_implementation("eager")
    with pytest.warns(UserWarning, match="compiles transformers' grouped_mm experts; GptOssForCausalLM runs"):
        compile_grouped_experts(model)
    assert model.get_experts_implementation() == {"": "eager"}
    dense, _ = tiny_model("llama")
    with pytest.warns(UserWarning, match="compile_grouped_experts has no effect on LlamaForCausalLM"):
        compile_grouped_experts(dense)


def test_sink_decode_attention_matches_eager_logits():
    model, tok = tiny_model("gpt_oss")
    enc = tokenize_instructions(tok, PROMPTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
        step = dict(input_ids=ids[:, -1:], attention_mask=mask, use_cache=True)
        cache = returned_cache(out)
        import copy

        kw = cache_keyword(model)
        expected = model(**step, **{kw: copy.deepcopy(cache)}).logits
        with sink_decode_attention(model, on_cpu=True), dense_decode_experts(model, on_cpu=True):
            got = model(**step, **{kw: cache}).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("current", [3, 10, 15])
def test_sliding_decode_reads_only_the_window(current):
    """A sliding layer's decode step over a static cache gives the full-cache result from the `window` slots ending
    at the query's, also while fewer slots than the window precede it (left-padded rows, pads masked)."""
    from types import SimpleNamespace

    from harness.generation.attention import _sink_decode_sdpa

    gen = torch.Generator().manual_seed(0)
    b, heads, kv, d, slots, window = 3, 4, 2, 8, 16, 8
    query = torch.randn(b, heads, 1, d, generator=gen)
    key, value = torch.randn(b, kv, slots, d, generator=gen), torch.randn(b, kv, slots, d, generator=gen)
    k = torch.arange(slots)
    allowed = (k <= current) & (k > current - window) & (k[None] >= torch.tensor([[0], [1], [2]]))  # [b, slots]
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    module = SimpleNamespace(sinks=torch.randn(heads, generator=gen), sliding_window=window)
    windowed, _ = _sink_decode_sdpa(module, query, key, value, mask)
    full, _ = _sink_decode_sdpa(SimpleNamespace(sinks=module.sinks, sliding_window=None), query, key, value, mask)
    torch.testing.assert_close(windowed, full, rtol=1e-5, atol=1e-6)


def test_sink_attention_through_sdpa_equals_eager_in_every_pass():
    """configure_model_kernels (forced on the CPU) runs gpt-oss's attention with sinks through SDPA: the logits of
    a left-padded batch longer than the sliding window, of a suffix pass over its cached prefix (capability's
    shared-prefix path) and of packed rows (selection) equal eager attention's in float32."""
    import copy

    from harness.models.kernels import SINK_SDPA, configure_model_kernels
    from harness.models.packing import pack, pack_kwargs, packed_last_logits

    eager, tok = tiny_model("gpt_oss")
    fast = copy.deepcopy(eager)
    configure_model_kernels(fast, on_cpu=True)
    assert fast.config._attn_implementation == SINK_SDPA and eager.config._attn_implementation == "eager"
    enc = tokenize_instructions(tok, PROMPTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape[1] > eager.config.sliding_window
    real = mask.bool()
    with torch.no_grad():
        out = {name: m(input_ids=ids, attention_mask=mask).logits for name, m in (("eager", eager), ("fast", fast))}
        torch.testing.assert_close(out["fast"][real], out["eager"][real], rtol=1e-4, atol=1e-5)
        cut = ids.shape[1] - 5
        suffix = {}
        for name, m in (("eager", eager), ("fast", fast)):
            cache = returned_cache(m(input_ids=ids[:, :cut], attention_mask=mask[:, :cut], use_cache=True))
            suffix[name] = m(input_ids=ids[:, cut:], attention_mask=mask, **{cache_keyword(m): cache}).logits
        torch.testing.assert_close(suffix["fast"], suffix["eager"], rtol=1e-4, atol=1e-5)
        seqs = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
        packs = pack(seqs, tok.pad_token_id)
        packed = {name: packed_last_logits(m, packs, [pack_kwargs(m, p) for p in packs])
                  for name, m in (("eager", eager), ("fast", fast))}
        torch.testing.assert_close(packed["fast"], packed["eager"], rtol=1e-4, atol=1e-5)
    assert out["eager"][real].abs().max() > 1e-3


def test_sink_attention_is_switched_on_cuda_gpt_oss_only():
    from harness.models.kernels import configure_model_kernels

    model, _ = tiny_model("gpt_oss")
    configure_model_kernels(model)  # a CPU model keeps the stock path
    assert model.config._attn_implementation == "eager"
    llama, _ = tiny_model("llama")
    before = llama.config._attn_implementation
    configure_model_kernels(llama, on_cpu=True)
    assert llama.config._attn_implementation == before
