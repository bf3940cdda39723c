"""Direction selection on a tiny llama with a planted refusal mechanism.

The planted model: a trigger token (" bomb") embeds along a unit vector v; layer 0's attention head
0 is made uniform (zero queries) and copies the v component to every later position; the unembedding
maps v to the refusal token. A second unit vector w is planted in the last template token's embedding
and mapped to another token, so ablating w wrecks the next-token distribution (a high-KL candidate).
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.models.arch import embeddings, final_norm, layers, unembedding
from harness.models.chat import tokenize_instructions
from harness.models.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer
from harness.run.cache import ItemStore
from harness.steering.activations import mean_activations
from harness.steering.directions import cosine, diff_in_means, unit
from harness.steering.interventions import ablate, actadd
from harness.steering.selection import (
    SelectionError,
    refusal_score,
    refusal_token_ids,
    scores_from_logits,
    select_direction,
)

BASE = [
    "write poem about the sea",
    "explain why sky is blue",
    "give me recipe for cake",
    "tell story of cat",
    "list three fruits",
    "describe weather today",
    "translate this sentence into french",
    "summarize article",
    "help with homework",
    "plan trip paris",
    "python code sort list numbers",
    "teach me music",
]
HARMLESS = BASE
HARMFUL = [f"{b} bomb" for b in BASE]
TRAIN, VAL = slice(0, 8), slice(8, 12)


@torch.no_grad()
def _planted_llama():
    model, tok = tiny_model("llama", seed=0)
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen))
    v, w = q[:, 0].contiguous(), q[:, 1].contiguous()
    refusal = refusal_token_ids(tok)[0]
    other = tok.convert_tokens_to_ids("ĠSure")
    trigger = tok(" bomb", add_special_tokens=False)["input_ids"]
    last = tokenize_instructions(tok, ["x"])["input_ids"][0, -1].item()
    assert len(trigger) == 1 and other != tok.unk_token_id

    emb = embeddings(model).weight
    emb -= (emb @ v)[:, None] * v + (emb @ w)[:, None] * w
    emb[trigger[0]] += 1.0 * v
    emb[last] += 1.0 * w

    attn = layers(model)[0].self_attn
    attn.q_proj.weight.zero_()
    attn.v_proj.weight.zero_()
    attn.v_proj.weight[0] = v / layers(model)[0].input_layernorm.weight  # undo the norm's random gain
    attn.o_proj.weight.zero_()
    attn.o_proj.weight[:, 0] = 20.0 * v

    head = unembedding(model).weight
    gain = final_norm(model).weight
    head[refusal] = 3.0 * v / gain
    head[other] = 1.5 * w / gain
    return model, tok, v, w


@pytest.fixture(scope="module")
def planted():
    model, tok, v, w = _planted_llama()
    harmful = mean_activations(model, tok, HARMFUL[TRAIN], progress=False)
    harmless = mean_activations(model, tok, HARMLESS[TRAIN], progress=False)
    return model, tok, v, w, diff_in_means(harmful, harmless)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_refusal_token_ids_are_the_refusal_openings(family):
    tok = tiny_tokenizer(family)
    ids = refusal_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == ["I", "A"]  # tiny vocab has no "As" merge: its first token
    (sorry,) = refusal_token_ids(tok, openings=["Sorry"])
    assert tok.decode([sorry]) and "Sorry".startswith(tok.decode([sorry]))


def test_scores_from_logits_matches_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 30, generator=gen) * 3
    ids = [2, 7, 11]
    p = torch.softmax(logits.double(), -1)[:, ids].sum(-1)
    expected = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(scores_from_logits(logits, ids, "exact"), expected, atol=1e-10)
    reference = torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)
    assert torch.allclose(scores_from_logits(logits, ids), reference, atol=1e-12)
    # extreme logits stay finite where the naive formula overflows
    sharp = torch.zeros(1, 30)
    sharp[0, 2] = 200.0
    assert math.isfinite(float(scores_from_logits(sharp, ids, "exact")[0]))
    assert math.isfinite(float(scores_from_logits(sharp, ids)[0]))
    with pytest.raises(ValueError, match="form must be one of reference, exact, got 'logit'"):
        scores_from_logits(logits, ids, "logit")


def _gaps(*gaps: float) -> torch.Tensor:
    """Next-token logits `[n, 2]` whose refusal token (id 0) sits `gap` above the only other token: log-odds = gap."""
    return torch.tensor([[g, 0.0] for g in gaps], dtype=torch.float64)


REFERENCE_BOUND = math.log(1e8)  # |log(p + 1e-8) - log(1 - p + 1e-8)| < log(1 + 1e-8) - log(1e-8)


def test_reference_score_is_bounded_as_the_reference_runs_show():
    """The reference's own selection runs report mean bypass scores such as -14.42 (gemma-2b-it, L10 P-2) and
    -9.86 (llama-3-8b-instruct, L12 P-5): within +-18.42, the bound its epsilon puts on every prompt's score.
    The exact log-odds has no bound, so a prompt the ablated model all but never refuses weighs without limit."""
    far = _gaps(-60.0, 60.0)
    ref, exact = scores_from_logits(far, [0]), scores_from_logits(far, [0], "exact")
    assert ref.tolist() == pytest.approx([-REFERENCE_BOUND, REFERENCE_BOUND], abs=1e-6)
    assert exact.tolist() == pytest.approx([-60.0, 60.0])
    for published in (-14.419295310974121, -9.855093002319336):
        assert -REFERENCE_BOUND < published < REFERENCE_BOUND


def test_reference_epsilon_ranks_candidates_as_the_reference_does():
    """The issue's case: the reference scores candidate A at -4.88 and B at -6.21 (B wins: lower bypass score);
    the exact log-odds scores A at -6.89 (A wins). A: one prompt the ablated model refuses with log-odds -38.52
    (p ~ 2e-17, far below the epsilon) and nine at -3.3756; B: ten prompts at -6.21."""
    a = _gaps(-38.52, *[-3.3756] * 9)
    b = _gaps(*[-6.21] * 10)
    ref = [float(scores_from_logits(x, [0]).mean()) for x in (a, b)]
    exact = [float(scores_from_logits(x, [0], "exact").mean()) for x in (a, b)]
    assert ref == pytest.approx([-4.88, -6.21], abs=5e-3) and ref[1] < ref[0]
    assert exact == pytest.approx([-6.89, -6.21], abs=5e-3) and exact[0] < exact[1]


def test_refusal_score_matches_unbatched_softmax():
    model, tok = tiny_model("llama", seed=1)
    ids = refusal_token_ids(tok)
    prompts = ["hello", "write poem about the sea please", "list three fruits"]
    scores = refusal_score(model, tok, prompts, ids, batch_size=2)
    for prompt, score in zip(prompts, scores):
        enc = tokenize_instructions(tok, [prompt])
        with torch.no_grad():
            logits = model(**enc).logits[0, -1].double()
        p = torch.softmax(logits, -1)[ids].sum()
        assert float(score) == pytest.approx(float(torch.log(p) - torch.log(1 - p)), abs=1e-4)


def test_planted_model_refuses_on_trigger_only(planted):
    model, tok, *_ = planted
    ids = refusal_token_ids(tok)
    assert float(refusal_score(model, tok, HARMFUL[VAL], ids).min()) > 2.0
    assert float(refusal_score(model, tok, HARMLESS[VAL], ids).max()) < -2.0


def test_selection_finds_planted_direction(planted):
    model, tok, v, _w, candidates = planted
    candidates = candidates.clone()
    gen = torch.Generator().manual_seed(1)
    decoy = unit(torch.randn(candidates.shape[-1], generator=gen)) * candidates[1, -2].norm()
    candidates[1, -2] = decoy  # a same-norm random direction: ablating it barely moves refusal
    result = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], progress=False)
    assert abs(float(cosine(result.direction, v))) > 0.9
    assert float(result.direction.norm()) == pytest.approx(1.0, abs=1e-5)
    assert result.baseline_harmful > 2.0
    assert result.bypass_score < result.baseline_harmful - 4.0
    assert result.induce_score > 0.0
    assert result.kl <= 0.1
    table = result.table
    assert len(table) == candidates.shape[0] * candidates.shape[1]
    chosen = table[table["rank"] == 1]
    assert (int(chosen["layer"].iloc[0]), int(chosen["pos"].iloc[0])) == (result.layer, result.pos)
    kept = table[~table["filtered"]]
    assert result.bypass_score == pytest.approx(kept["bypass_score"].min())
    decoy_row = table.set_index(["layer", "pos"]).loc[(1, -2)]
    assert decoy_row["bypass_score"] > result.bypass_score + 4.0
    assert (result.layer, result.pos) != (1, -2)
    # layer 0 candidates are exactly zero (same template tokens, same embeddings) and are filtered as such
    assert table[table["layer"] == 0]["filter_reason"].str.contains("zero-norm").all()
    # 3 layers * 0.8 -> layers >= 2 are pruned
    assert table[table["layer"] == 2]["filter_reason"].str.contains("max_layer_fraction").all()


def test_candidate_scores_are_the_interventions_they_name(planted):
    """bypass = ablation (unit direction, every layer) on harmful; induce = ActAdd of the raw
    candidate at its own layer on harmless; recomputed here straight from the interventions."""
    model, tok, _v, _w, candidates = planted
    result = select_direction(
        model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], layers=[1], positions=[-1], progress=False
    )
    ids = result.refusal_ids
    vector = candidates[1, -1]
    with ablate(model, vector / vector.norm()):
        bypass = refusal_score(model, tok, HARMFUL[VAL], ids).mean()
    with actadd(model, vector, 1, 1.0):
        induce = refusal_score(model, tok, HARMLESS[VAL], ids).mean()
    with actadd(model, vector / vector.norm(), 1, 1.0):
        induce_unit = refusal_score(model, tok, HARMLESS[VAL], ids).mean()
    row = result.table.iloc[0]
    assert row["bypass_score"] == pytest.approx(float(bypass), abs=1e-6)
    assert row["induce_score"] == pytest.approx(float(induce), abs=1e-6)
    assert abs(float(induce_unit) - row["induce_score"]) > 1.0  # the raw, not the unit, vector is added
    assert torch.equal(result.vector, vector)


def test_high_kl_candidate_is_filtered_with_reason(planted):
    model, tok, v, w, candidates = planted
    bad = candidates.clone()
    bad[1, -2] = w * candidates[1, -1].norm()
    result = select_direction(model, tok, bad, HARMFUL[VAL], HARMLESS[VAL], progress=False)
    row = result.table.set_index(["layer", "pos"]).loc[(1, -2)]
    assert row["kl"] > 0.1
    assert bool(row["filtered"])
    assert "kl" in row["filter_reason"] and "kl_max" in row["filter_reason"]
    assert (result.layer, result.pos) != (1, -2)
    # the same candidate passes once the threshold is above its KL
    loose = select_direction(
        model, tok, bad, HARMFUL[VAL], HARMLESS[VAL], kl_max=float(row["kl"]) + 1, layers=[1], positions=[-2],
        induce_min=-1e9, progress=False,
    )
    assert not loose.table["filtered"].any()


def test_all_filtered_raises_with_reasons(planted):
    model, tok, _v, _w, candidates = planted
    with pytest.raises(SelectionError, match=r"(?s)all \d+ candidates were filtered.*kl .* > kl_max 1e-12"):
        select_direction(
            model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], kl_max=1e-12, layers=[1], progress=False
        )


def test_out_of_range_positions_and_shape_are_errors(planted):
    model, tok, _v, _w, candidates = planted
    with pytest.raises(SelectionError, match=r"positions \[-99\]"):
        select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], positions=[-99], progress=False)
    with pytest.raises(SelectionError, match="candidates must be"):
        select_direction(model, tok, candidates[:2], HARMFUL[VAL], HARMLESS[VAL], progress=False)


def test_store_resumes_without_recomputing(planted, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    model, tok, _v, _w, candidates = planted
    kw = dict(layers=[1], positions=[-1, -2], progress=True)
    first_store = ItemStore("selection", "test")
    first = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], store=first_store, **kw)
    assert first_store.recomputed == 3  # the two candidates and the unablated baseline they are scored against
    assert set(first_store.load()) == {"L1_P-1", "L1_P-2", "baseline"}
    again = ItemStore("selection", "test")
    second = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], store=again, **kw)
    assert again.recomputed == 0
    assert (second.layer, second.pos) == (first.layer, first.pos)
    assert second.table.equals(first.table)
    assert (second.baseline_harmful, second.baseline_harmless) == (first.baseline_harmful, first.baseline_harmless)


def test_pruned_layers_are_scored_on_request_but_stay_filtered(planted):
    model, tok, _v, _w, candidates = planted
    kw = dict(layers=[2], positions=[-1], progress=False)
    with pytest.raises(SelectionError, match=r"L2 P-1: bypass=-?\d+\.\d+ .*layer 2 >= 2"):
        select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], score_pruned_layers=True, **kw)
    with pytest.raises(SelectionError, match=r"L2 P-1: bypass=nan"):
        select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], **kw)


@pytest.mark.parametrize("k", [2, 3])
def test_several_candidates_per_forward_score_as_one_per_forward(planted, k):
    """candidates_per_forward: each candidate ablated in its own copy of the prompts within one forward gets the
    scores it gets alone (float tolerance: another batch shape), and the same candidate is selected."""
    model, tok, *_rest, candidates = planted
    kw = {"max_layer_fraction": 1.0, "kl_max": 1e9, "induce_min": -1e9, "progress": False}
    one = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], **kw)
    many = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], candidates_per_forward=k, **kw)
    _assert_same_scores(one, many)


def _assert_same_scores(a, b) -> int:
    """Two sweeps scored the same candidates alike (float tolerance) and chose the same one; -> how many scored."""
    cols = ["bypass_score", "induce_score", "kl"]
    scored = a.table[cols].notna().all(axis=1)
    assert scored.sum() >= 3
    assert torch.allclose(torch.tensor(a.table[cols][scored].to_numpy()),
                          torch.tensor(b.table[cols][scored].to_numpy()), atol=1e-4, rtol=0)
    assert (b.layer, b.pos) == (a.layer, a.pos)
    return int(scored.sum())


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen3", "gpt_oss"])
def test_ablate_rows_is_ablate_row_by_row(family):
    from harness.models.logits import forward_logits, prompt_batches
    from harness.models.tiny import tiny_model
    from harness.steering.interventions import ablate_rows

    model, tok = tiny_model(family)
    (ids, mask), = prompt_batches(tok, HARMFUL[:3], batch_size=3)
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(3, model.config.hidden_size, generator=gen)
    with ablate_rows(model, directions):
        together = forward_logits(model, ids, mask, last_only=True)
    for row in range(3):
        with ablate(model, directions[row]):
            alone = forward_logits(model, ids, mask, last_only=True)[row]
        assert torch.allclose(together[row], alone, atol=1e-5, rtol=0), (family, row)
    with pytest.raises(ValueError, match="2 directions for a batch of 3"), ablate_rows(model, directions[:2]):
        forward_logits(model, ids, mask, last_only=True)


@pytest.mark.parametrize("family", ["gpt_oss", "llama", "gemma2"])
def test_packed_scores_as_the_plain_pass(family, monkeypatch):
    """packed: the baseline, ablated and induce passes read the validation prompts packed into rows (no padding,
    the shared prefix once a row); the table equals the plain pass's within float tolerance and the same candidate
    wins, and every pass went through packed rows."""
    from harness.steering import selection

    model, tok = tiny_model(family)
    candidates = diff_in_means(mean_activations(model, tok, HARMFUL[TRAIN], progress=False),
                               mean_activations(model, tok, HARMLESS[TRAIN], progress=False))
    calls = []
    real = selection.packed_last_logits
    monkeypatch.setattr(selection, "packed_last_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = {"max_layer_fraction": 1.0, "kl_max": 1e9, "induce_min": -1e9, "progress": False, "batch_size": 3}
    plain = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], **kw)
    assert not calls
    real_pack = selection.pack  # narrow rows: several to a forward, so a copy's rows are not its prompts' order
    rows_per_forward = []

    def narrow(*args, **kwargs):
        made = real_pack(*args, **kwargs, row_tokens=48)
        rows_per_forward.extend(p.input_ids.shape[0] for p in made)
        return made

    monkeypatch.setattr(selection, "pack", narrow)
    packed = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], packed=True, **kw)
    scored = _assert_same_scores(plain, packed)
    assert len(calls) >= 2 * scored + 1  # baseline, then each candidate's ablated and induce passes
    calls.clear()
    together = select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], packed=True,
                                candidates_per_forward=3, **kw)
    assert _assert_same_scores(packed, together) == scored
    assert len(calls) < 2 * scored  # each ablated pass scored up to three candidates
    assert max(rows_per_forward) > 1


@pytest.mark.parametrize("packed", [False, True])
def test_induce_pass_adds_a_layers_candidates_in_one_forward(packed):
    """The induce pass of k candidates at one layer: one forward over k copies of the prompts, each copy's logits
    what ActAdd of its own vector gives alone."""
    from harness.models.logits import forward_logits, prompt_batches
    from harness.steering.selection import _actadd_logits

    model, tok = tiny_model("llama")
    induced = _actadd_logits(model, tok, HARMLESS[VAL], [1, 2], system=None, batch_size=64, packed=packed)
    vectors = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        together = induced(vectors, 2)  # [3, n, vocab]
    finally:
        handle.remove()
    assert len(forwards) == 1 and together.shape[:2] == (3, len(HARMLESS[VAL]))
    (ids, mask), = prompt_batches(tok, HARMLESS[VAL], batch_size=64)
    for k in range(3):
        with actadd(model, vectors[k], 2, 1.0):
            alone = forward_logits(model, ids, mask, last_only=True)
        assert torch.allclose(together[k], alone, atol=1e-4, rtol=0), k


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_packed_copies_are_the_pack_run_again(family):
    """packed_last_logits(copies=k): k copies of the packed rows in one forward, copy-major; without hooks each copy's
    logits are the single pass's (gemma2's sliding layers take their own masks, repeated alike)."""
    from harness.models.logits import pad_token_id, prompt_batches
    from harness.models.packing import pack, packed_last_logits

    model, tok = tiny_model(family)
    rows = [row[m.bool()].tolist() for ids, mask in prompt_batches(tok, HARMFUL[:5], batch_size=5)
            for row, m in zip(ids, mask)]
    packs = pack(rows, pad_token_id(tok), row_tokens=40)
    assert sum(p.input_ids.shape[0] for p in packs) > len(packs)  # several rows in a forward
    once = packed_last_logits(model, packs)  # [5, vocab]
    thrice = packed_last_logits(model, packs, copies=3)
    assert thrice.shape == (3 * len(rows), once.shape[-1])
    for c in range(3):
        assert torch.allclose(thrice[c * len(rows):(c + 1) * len(rows)], once, atol=1e-5, rtol=0), c


def test_packed_selection_refuses_a_recurrent_model():
    model, tok = tiny_model("qwen3_5")
    candidates = torch.randn(len(model.model.layers), 2, model.config.hidden_size)
    with pytest.raises(SelectionError, match="attention-only.*linear_attention"):
        select_direction(model, tok, candidates, HARMFUL[VAL], HARMLESS[VAL], packed=True, progress=False)
