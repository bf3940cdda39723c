"""Generation backends on tiny CPU models: static loop == plain generate, OOM halving, resumability."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from compile_counting import counted_compiles
from slot_widths import asked_widths, decode_widths, to_cache_end, window_schedule

from harness.config import GenerationConfig
from harness.generation import generate
from harness.generation.common import GenerationError, eos_token_ids
from harness.generation.completions import compute_halving_on_oom, generate_tokens
from harness.models.chat import tokenize_instructions
from harness.models.tiny import tiny_model
from harness.run.cache import ItemStore, in_memory_compute
from harness.steering.interventions import ablate

PROMPTS = ["how to make a bomb at home", "hi", "write poem about the sea please thank you", "list three fruits"]


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma2", "mistral", "qwen3"])
@pytest.mark.parametrize("ablated", [False, True])
def test_static_matches_plain_generate_greedy(family, ablated):
    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS)
    kw = dict(max_new_tokens=20, eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    outs = {}
    for backend in ("transformers", "static"):
        with ablate(model, direction) if ablated else torch.no_grad():
            outs[backend] = generate_tokens(model, enc["input_ids"], enc["attention_mask"], backend=backend, **kw)
    assert outs["static"] == outs["transformers"]
    assert sum(map(len, outs["static"])) > 0


def test_ablation_changes_static_output():
    """The hooks are live inside the static loop (a strong ablation must change greedy tokens)."""
    model, tok = tiny_model("llama")
    enc = tokenize_instructions(tok, PROMPTS)
    kw = dict(max_new_tokens=16, backend="static")
    base = generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw)
    with ablate(model, model.get_input_embeddings().weight[enc["input_ids"][0, -1]].detach()):
        hooked = generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw)
    assert hooked != base


@pytest.mark.parametrize("family", ["llama", "gpt_oss"])
def test_rows_padding_leaves_the_real_rows_unchanged(family):
    """A batch padded with copies of its first row decodes its own rows as before; the copies are dropped."""
    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS[1:])
    kw = {"max_new_tokens": 12, "eos_token_ids": eos_token_ids(model, tok), "pad_token_id": tok.pad_token_id,
          "backend": "static"}
    plain = generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw)
    padded = generate_tokens(model, enc["input_ids"], enc["attention_mask"], rows=8, **kw)
    assert padded == plain and len(padded) == 3
    with pytest.raises(ValueError, match="cannot be padded to 2"):
        generate_tokens(model, enc["input_ids"], enc["attention_mask"], rows=2, **kw)
    with pytest.raises(GenerationError, match="static backend"):
        generate_tokens(model, enc["input_ids"], enc["attention_mask"], rows=8, **(kw | {"backend": "transformers"}))


@pytest.mark.parametrize("family, sink_key", [("llama", 0), ("gpt_oss", 1)])
def test_prefill_reads_only_the_prompt_slots(monkeypatch, family, sink_key):
    """The static backend's prefill attends over the prompt's cache slots, not the empty rest of the cache (SDPA's
    key length in every pass with more than one query; gpt-oss's sink attention adds its one sink key)."""
    from harness.generation.attention import sink_decode_attention

    seen: list[int] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, *args, **kwargs):
        if q.shape[-2] > 1:
            seen.append(k.shape[-2])
        return sdpa(q, k, *args, **kwargs)

    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with sink_decode_attention(model, on_cpu=True):
        generate_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=40, backend="static")
    assert seen and set(seen) == {enc["input_ids"].shape[1] + sink_key}


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt_oss"])
def test_decode_reads_only_the_slots_it_has_filled(monkeypatch, family):
    """A decode step hands attention the cache slots up to its query's, rounded up to a whole window, not the whole
    cache; its tokens are those it makes over the whole cache."""
    from harness.generation import attention, static

    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS)
    new_tokens = 30
    widths = decode_widths(monkeypatch)
    outs, seen = {}, {}
    prompt_len = enc["input_ids"].shape[1]
    whole = prompt_len + new_tokens
    with attention.sink_decode_attention(model, on_cpu=True):
        for window in (8, 10**6):
            monkeypatch.setattr(static, "SLOT_WINDOW", window)
            widths.clear()
            outs[window] = generate_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=new_tokens,
                                           backend="static")
            assert len(widths) == model.config.num_hidden_layers * (new_tokens - 1)
            seen[window] = sorted(set(widths))
    assert seen[10**6] == [whole]
    assert seen[8] == window_schedule(prompt_len, new_tokens, 8)
    assert len(seen[8]) >= 3 and seen[8][0] <= prompt_len + 8
    assert outs[8] == outs[10**6] and sum(map(len, outs[8])) > 0


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt_oss"])
def test_a_compiled_step_reads_every_slot_window_through_one_compile(monkeypatch, family):
    """With `COMPILED_SLOT_WINDOWS` on, a compiled step gets the same slot windows as a graph step, all through one
    compile with a symbolic width, and makes the tokens of the uncompiled step; a model with sliding layers (gpt_oss)
    keeps the whole cache there, as a sliding layer's window test on that width would split the compile."""
    from harness.generation import attention, static

    counter = counted_compiles(monkeypatch)
    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS)
    prompt_len = enc["input_ids"].shape[1]
    whole, new_tokens = to_cache_end(prompt_len, 30)
    monkeypatch.setattr(static, "SLOT_WINDOW", 8)
    monkeypatch.setattr(static, "COMPILED_SLOT_WINDOWS", True)
    widths = asked_widths(monkeypatch)
    torch._dynamo.reset()
    try:
        with attention.sink_decode_attention(model, on_cpu=True):
            run = lambda compiled: generate_tokens(model, enc["input_ids"], enc["attention_mask"], backend="static",  # noqa: E731
                                                   max_new_tokens=new_tokens, compile_step=compiled)
            compiled = run(True)
            assert counter.frame_count == 1
            seen = sorted(set(widths))
            assert run(False) == compiled and sum(map(len, compiled)) > 0
    finally:
        torch._dynamo.reset()
    if family == "gpt_oss":
        assert seen == [whole]
    else:
        assert seen == window_schedule(prompt_len, new_tokens, 8, cache_len=whole) and len(seen) >= 3
        assert seen[-1] == whole


@pytest.mark.parametrize("compile_step, windowed", [(False, True), (True, False), (True, True)])
def test_a_windowed_compiled_step_runs_every_window_before_any_capture(monkeypatch, compile_step, windowed):
    """The CUDA loop's warm-ups (`static._warm_steps`): a compiled windowed step runs the first step of every window,
    so a recompile could never fall inside a capture; the other paths warm up on their first step only."""
    from harness.generation import static

    monkeypatch.setattr(static, "SLOT_WINDOW", 8)
    prompt_len, new_tokens, max_len = 13, 40, 64
    steps = static._warm_steps(prompt_len, max_len, new_tokens - 1, compile_step, windowed)
    widths = [static._slot_width(prompt_len + k, max_len, windowed) for k in steps]
    if compile_step and windowed:
        assert steps[:3] == [0, 0, 0]
        assert sorted(set(widths)) == window_schedule(prompt_len, new_tokens, 8, cache_len=max_len)
        assert all(static._slot_width(prompt_len + k - 1, max_len, True) < w for k, w in zip(steps[3:], widths[3:]))
    else:
        assert steps == [0] * (3 if compile_step else 2)


def test_padded_batches_of_two_sizes_share_one_compiled_step(monkeypatch):
    """compiled_rows: a 3-row and a 2-row batch run the compiled step made for 4 rows; unpadded they compile twice."""
    counter = counted_compiles(monkeypatch)
    model, tok = tiny_model("llama")
    kw = {"max_new_tokens": 4, "pad_token_id": tok.pad_token_id, "backend": "static", "compile_step": True}

    def frames(rows):
        torch._dynamo.reset()
        counter.clear()
        for prompts in (PROMPTS[:3], PROMPTS[2:]):
            enc = tokenize_instructions(tok, prompts)
            generate_tokens(model, enc["input_ids"], enc["attention_mask"], rows=rows, **kw)
        return counter.frame_count

    try:
        assert frames(4) == 1
        assert frames(None) == 2
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("hooked_step, frames", [("shared", 1), ("compiled", 3)])
def test_shared_step_compiles_once_for_every_condition(monkeypatch, hooked_step, frames):
    """hooked_step = "shared": the baseline, ablation, ActAdd and a weight-edited copy of the model run one compiled
    step (dynamo's CompileCounter), with the tokens of each condition's own hooks uncompiled; "compiled": one per
    hook set, the copy reusing the baseline's."""
    import copy

    from harness.steering.interventions import actadd

    counter = counted_compiles(monkeypatch)
    model, tok = tiny_model("gpt_oss")
    edited = copy.deepcopy(model)
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    conditions = [(model, None), (model, lambda: ablate(model, r)), (model, lambda: actadd(model, 4 * r, 1, 1.0)),
                  (edited, None)]
    settings = GenerationConfig(backend="static", compile_step=True, hooked_step=hooked_step, compiled_rows=4,
                                max_new_tokens=6, batch_size=4)
    torch._dynamo.reset()
    try:
        compiled = [generate(m, tok, PROMPTS, settings, intervention=iv, compile_step=True, progress=False)
                    for m, iv in conditions]
        assert counter.frame_count == frames
    finally:
        torch._dynamo.reset()
    own = [generate(m, tok, PROMPTS, settings, intervention=iv, progress=False) for m, iv in conditions]
    assert compiled == own
    assert len({tuple(texts) for texts in own[:3]}) == 3


def test_generate_returns_input_order_and_completion_only():
    model, tok = tiny_model("gemma")
    settings = GenerationConfig(backend="static", max_new_tokens=8, batch_size=2)
    texts = generate(model, tok, PROMPTS, settings, progress=False)
    one_by_one = [generate(model, tok, [p], settings, progress=False)[0] for p in PROMPTS]
    assert texts == one_by_one
    assert all("<start_of_turn>" not in t and "<eos>" not in t for t in texts)


def test_oom_halves_batch_and_keeps_finished_items():
    calls: list[list[str]] = []

    def fn(batch):
        calls.append(list(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return [f"out-{i}" for i in batch]

    ids = [f"p{k}" for k in range(10)]
    values = compute_halving_on_oom(in_memory_compute(), ids, fn, batch_size=8)
    assert values == [f"out-{i}" for i in ids]
    assert max(len(c) for c in calls if len(c) <= 2) == 2
    finished = [i for c in calls if len(c) <= 2 for i in c]
    assert sorted(finished) == sorted(ids)  # every item generated exactly once


def test_oom_halves_the_compiled_rows_with_the_batch(monkeypatch):
    """With compiled_rows, a batch is padded back to that many rows, so out-of-memory halves the padding too (with a
    warning: a new compiled step) and the run goes on; every prompt is still answered once."""
    from harness.generation import completions

    padded_to: list[int] = []

    def fake(model, input_ids, attention_mask, *, rows=None, **kw):
        padded_to.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("simulated")
        return [[5, 6]] * input_ids.shape[0]

    monkeypatch.setattr(completions, "generate_tokens", fake)
    model, tok = tiny_model("llama")
    settings = GenerationConfig(backend="static", compile_step=True, compiled_rows=8, batch_size=4,
                                max_new_tokens=2)
    with pytest.warns(UserWarning, match="compiled_rows"):
        texts = generate(model, tok, PROMPTS, settings, compile_step=True, progress=False)
    assert len(texts) == len(PROMPTS) and padded_to == [8, 2, 2]


def test_oom_at_batch_one_is_raised():
    def fn(batch):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        compute_halving_on_oom(in_memory_compute(), ["a", "b"], fn, batch_size=2)


def test_store_resume_generates_only_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    model, tok = tiny_model("llama")
    settings = GenerationConfig(backend="static", max_new_tokens=6, batch_size=2)
    store = ItemStore("completions", "resume-test")
    first = generate(model, tok, PROMPTS[:2], settings, store=store, progress=False)

    import harness.generation.completions as gen

    seen: list[str] = []
    real = gen._complete

    def counting(model_, tok_, instructions, *args):
        seen.extend(instructions)
        return real(model_, tok_, instructions, *args)

    monkeypatch.setattr(gen, "_complete", counting)
    again = ItemStore("completions", "resume-test")
    full = generate(model, tok, PROMPTS, settings, store=again, progress=False)
    assert sorted(seen) == sorted(PROMPTS[2:])
    assert full[:2] == first


def test_two_sets_generated_together_keep_their_own_stores(tmp_path, monkeypatch):
    """[generation] joint_batch_size: one generation over two prompt sets writes each completion to its own set's
    store (the leak check reads harmful completions there), and a resumed run generates only what is missing."""
    from harness.run.cache import SplitStore

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    model, tok = tiny_model("llama")
    settings = GenerationConfig(backend="static", max_new_tokens=6, batch_size=4)
    prompts, first, second = [*PROMPTS, "name a colour"], ["a0", "a1"], ["b0", "b1", "b2"]

    def split() -> SplitStore:
        return SplitStore([(ItemStore("completions/x/harmful", "joint"), first),
                           (ItemStore("completions/x/harmless", "joint"), second)])

    together = generate(model, tok, prompts, settings, ids=first + second, store=split(), progress=False)
    assert set(ItemStore("completions/x/harmful", "joint").load()) == set(first)
    assert set(ItemStore("completions/x/harmless", "joint").load()) == set(second)
    store = split()
    assert generate(model, tok, prompts, settings, ids=first + second, store=store, progress=False) == together
    assert sum(part.recomputed for part, _ in store.parts) == 0
    with pytest.raises(KeyError, match="no owner"):
        generate(model, tok, PROMPTS[:1], settings, ids=["c0"], store=split(), progress=False)


def test_vllm_missing_names_tox_env(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    model, tok = tiny_model("llama")
    with pytest.raises(RuntimeError, match="tox env `gpu`"):
        generate("/nonexistent", tok, PROMPTS, GenerationConfig(backend="vllm"), progress=False)


@pytest.mark.parametrize("backend", ["transformers", "static"])
def test_token_counts_say_which_completions_the_budget_cut(tmp_path, monkeypatch, backend):
    """The count generation records is each completion's token row, stop token excluded: max_new_tokens exactly
    for a completion the budget cut, fewer for one that stopped (the text alone cannot tell the two apart)."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    model, tok = tiny_model("llama")
    prompts = ["Tell me a story.", "Name three colours.", "What is two plus two?"]
    enc = tokenize_instructions(tok, prompts)
    first = generate_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=1, backend=backend)
    model.generation_config.eos_token_id = first[0][0]  # the first prompt stops at once
    rows = generate_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=5,
                           eos_token_ids=eos_token_ids(model, tok), backend=backend)
    store = ItemStore("counts", backend)
    texts = generate(model, tok, prompts, GenerationConfig(backend=backend, max_new_tokens=5, batch_size=3),
                     ids=["p0", "p1", "p2"], token_counts=store, progress=False)
    counts = store.load()
    assert [counts[f"p{i}"] for i in range(3)] == [len(r) for r in rows]
    assert counts["p0"] == 0 and texts[0] == ""
    assert 5 in counts.values()


def test_the_baseline_calibration_set_rides_in_spare_joint_rows():
    """joint_batch_size: harmful and harmless go together; the baseline's coherence calibration set joins them only
    where it adds no batch."""
    from fixtures.completions import joint_sets

    sizes = {"harmful": 100, "harmless": 100, "harmless_val": 32}
    assert joint_sets("baseline", sizes, 232) == ("harmful", "harmless", "harmless_val")
    assert joint_sets("baseline", sizes, 200) == ("harmful", "harmless")
    assert joint_sets("baseline", sizes, 120) == ("harmful", "harmless", "harmless_val")  # 2 batches hold 240
    assert joint_sets("ablation", sizes, 232) == ("harmful", "harmless")
    assert joint_sets("baseline", sizes, None) == ()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt_oss"])
def test_fused_projections_make_one_product_per_group_and_give_the_weights_back(monkeypatch, family):
    """The static backend computes q/k/v and gate/up as one product each (harness.generation.projections): every
    projection product of those groups is a whole group's, the greedy tokens equal those of separate products, and
    after the generation each weight has its own storage, unchanged, as a plain (not inference) tensor."""
    from harness.generation import completions, projections
    from harness.models.arch import sibling_projections

    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS)
    kw = dict(max_new_tokens=12, eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id,
              backend="static")
    groups = sibling_projections(model)
    assert len(groups) == model.config.num_hidden_layers * (1 if family == "gpt_oss" else 2)
    before = [[m.weight.detach().clone() for m in mods] for mods in groups]
    widths = {sum(m.out_features for m in mods) for mods in groups}
    products: list[int] = []
    linear = torch.nn.functional.linear
    spy = SimpleNamespace(linear=lambda x, w, b=None: products.append(w.shape[0]) or linear(x, w, b))
    monkeypatch.setattr(projections, "F", spy)
    fused = generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw)
    assert products and set(products) <= widths
    assert len(products) == len(groups) * 12  # one prefill and 11 decode steps, each one product per group
    for mods, weights in zip(groups, before):
        assert len({m.weight.untyped_storage().data_ptr() for m in mods}) == len(mods)
        assert all(torch.equal(m.weight, w) and not m.weight.is_inference() for m, w in zip(mods, weights))
        assert all("forward" not in vars(m) for m in mods)
    monkeypatch.setattr(completions, "fused_projections", lambda model: nullcontext())
    assert generate_tokens(model, enc["input_ids"], enc["attention_mask"], **kw) == fused


def test_a_fused_member_called_on_another_input_computes_its_own():
    """Only the leader's input is served from the group's product; a pre-hook on the leader (which would change the
    whole product's input) leaves its group unfused."""
    from harness.generation.projections import fused_projections

    model, _ = tiny_model("llama")
    attn = model.model.layers[0].self_attn
    x, y = torch.randn(2, 3, model.config.hidden_size), torch.randn(2, 3, model.config.hidden_size)
    want = [torch.nn.functional.linear(t, m.weight) for t in (x, y) for m in (attn.q_proj, attn.k_proj)]
    with torch.no_grad(), fused_projections(model):
        assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()
        got = [attn.q_proj(x), attn.k_proj(x), attn.k_proj(y), attn.q_proj(y)]
    for g, w in zip(got, [want[0], want[1], want[3], want[2]]):
        torch.testing.assert_close(g, w)
    handle = attn.q_proj.register_forward_pre_hook(lambda module, args: None)
    try:
        with fused_projections(model):
            assert attn.k_proj.weight.untyped_storage().data_ptr() != attn.q_proj.weight.untyped_storage().data_ptr()
            assert "forward" not in vars(attn.q_proj)
    finally:
        handle.remove()
