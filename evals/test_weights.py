"""Weight orthogonalization equals activation ablation where the architecture allows it, and the
leakage is measured (not assumed) where it does not."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.models.arch import FAMILIES, d_model, embeddings, is_tied, residual_writers, unembedding
from harness.models.chat import tokenize_instructions
from harness.models.tiny import TINY_FAMILIES, tiny_model
from harness.steering.interventions import DirectionShapeError, ablate, unit
from harness.steering.weights import (
    TIED_ONLY_FAMILIES,
    CheckpointError,
    check_saveable_for_vllm,
    edit_equals_ablation,
    edit_fidelity,
    orthogonalize,
    save_model,
)

PROMPTS = ["how to make a bomb at home", "hi", "write a poem about the sea"]
EXACT_TOL = 1e-4


def _direction(model) -> torch.Tensor:
    return torch.randn(d_model(model), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def edited(request):
    model, tok = tiny_model(request.param)
    r = _direction(model)
    return request.param, model, tok, r, orthogonalize(model, r)


def test_input_model_untouched():
    model, _ = tiny_model("gemma4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tied = is_tied(model)
    out = orthogonalize(model, _direction(model))
    assert out is not model and is_tied(model) == tied
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("family", ["gpt_oss", "gemma4"])
def test_the_copy_holds_only_the_edited_tensors_anew(family):
    """What a weight-edited condition adds to the GPU: the residual writers, not a second model."""
    from harness.steering.weights import edited_writers

    model, _ = tiny_model(family)
    out = orthogonalize(model, _direction(model), modules=["attn_out", "mlp_down"])
    writers = {id(t) for ref in edited_writers(model, ["attn_out", "mlp_down"]) for t in (ref.weight, ref.bias)
               if t is not None}
    before = dict(model.named_parameters())
    for name, p in out.named_parameters():
        assert (p is before[name]) == (id(before[name]) not in writers), name
    assert any(p is before[name] for name, p in out.named_parameters())


def test_every_writer_is_orthogonal(edited):
    _, _, _, r, out = edited
    r_hat = r / r.norm()
    for ref in residual_writers(out):
        comp = (ref.weight.movedim(ref.out_dim, -1).float() @ r_hat).abs().max()
        assert comp <= 1e-5, f"{ref.name}: {comp}"
        if ref.bias is not None:
            assert (ref.bias.float() @ r_hat).abs().max() <= 1e-5, f"{ref.name} bias"


def test_readout_left_alone(edited):
    _, model, _, _, out = edited
    assert not is_tied(out)
    torch.testing.assert_close(unembedding(out).weight, unembedding(model).weight, rtol=0, atol=0)


def test_edit_fidelity_exact_where_claimed_and_leak_measured(edited):
    family, model, tok, r, out = edited
    fid = edit_fidelity(model, out, r, PROMPTS, tok)
    assert fid["exact"] == FAMILIES[family].exact_edit
    assert len(fid["residual_component"]) == model.config.num_hidden_layers + 1
    print(f"\n{family}: exact={fid['exact']} max|logit gap|={fid['max_logit_gap']:.3g} "
          f"max|component| edited={max(fid['residual_component']):.3g} "
          f"ablated={max(fid['ablation_component']):.3g} unedited={max(fid['baseline_component']):.3g}"
          + ("" if fid["exact"] else f" (leak: {fid['leak_reason']})"))
    assert max(fid["ablation_component"]) <= 1e-5
    if fid["exact"]:
        assert fid["max_logit_gap"] <= EXACT_TOL
        assert max(fid["residual_component"]) <= 1e-5
    else:
        # the flag is a claim too: a family marked inexact must show measurable leakage
        assert fid["max_logit_gap"] > EXACT_TOL and max(fid["residual_component"]) > 1e-4


@pytest.mark.parametrize("family", ["gemma3", "gemma4"])
def test_multimodal_wrappers_edit_and_ablate_the_language_model(family):
    model, tok = tiny_model(family, multimodal=True)
    assert type(model).__name__.endswith("ForConditionalGeneration")
    r = _direction(model)
    out = orthogonalize(model, r)
    assert not is_tied(out)
    fid = edit_fidelity(model, out, r, PROMPTS, tok)
    assert len(fid["residual_component"]) == model.config.text_config.num_hidden_layers + 1
    assert max(fid["ablation_component"]) <= 1e-5
    assert fid["exact"] is False and fid["max_logit_gap"] > EXACT_TOL


def test_norm_preserving_keeps_norms_and_orthogonality():
    model, tok = tiny_model("gpt_oss")
    r = _direction(model)
    r_hat = r / r.norm()
    out = orthogonalize(model, r, norm_preserving=True)
    for orig, new in zip(residual_writers(model), residual_writers(out)):
        w0, w1 = (x.weight.movedim(x.out_dim, -1).float() for x in (orig, new))
        torch.testing.assert_close(w1.norm(dim=-1), w0.norm(dim=-1), rtol=1e-5, atol=1e-6)
        assert (w1 @ r_hat).abs().max() <= 1e-5, new.name
    fid = edit_fidelity(model, out, r, PROMPTS, tok)
    assert max(fid["residual_component"]) <= 1e-5


def test_edit_in_bfloat16():
    model, tok = tiny_model("qwen3", dtype=torch.bfloat16)
    r = _direction(model)
    out = orthogonalize(model, r)
    assert embeddings(out).weight.dtype == torch.bfloat16
    fid = edit_fidelity(model, out, r, PROMPTS, tok)
    assert max(fid["residual_component"]) <= 0.05 * max(fid["baseline_component"])


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma4", "qwen3_5", "gpt_oss"])
def test_saved_edit_reloads_with_identical_logits(family, tmp_path):
    model, tok = tiny_model(family)
    out = orthogonalize(model, _direction(model))
    save_model(out, tok, tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert is_tied(reloaded) == is_tied(out)
    batch = tokenize_instructions(reloaded_tok, PROMPTS)
    assert batch["input_ids"].tolist() == tokenize_instructions(tok, PROMPTS)["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, out(**batch).logits, rtol=0, atol=0)


def test_ablation_matches_edit_logits_directly():
    """Independent of edit_fidelity: the edited model's logits equal ablation logits (llama)."""
    model, tok = tiny_model("llama")
    r = _direction(model)
    out = orthogonalize(model, r)
    batch = tokenize_instructions(tok, PROMPTS)
    with torch.no_grad(), ablate(model, r):
        abl = model(**batch).logits
    with torch.no_grad():
        torch.testing.assert_close(out(**batch).logits, abl, rtol=0, atol=EXACT_TOL)


def test_wrong_width_is_a_clear_error():
    model, tok = tiny_model("qwen2")
    with pytest.raises(DirectionShapeError, match="width 7.*d_model=64"):
        orthogonalize(model, torch.randn(7))
    with pytest.raises(DirectionShapeError, match="width 7"):
        edit_fidelity(model, model, torch.randn(7), PROMPTS, tok)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_edit_stands_in_for_ablation_only_where_it_is_exact(family):
    """An engine without hooks may run the ablation condition as the edited checkpoint only where the
    family's edit is exact, the edit keeps no norms and the ablation covers every layer."""
    from harness.steering.weights import edit_equals_ablation

    model, _ = tiny_model(family)
    exact = FAMILIES[family].exact_edit
    assert edit_equals_ablation(model, norm_preserving=False, scope="all") is exact
    assert not edit_equals_ablation(model, norm_preserving=True, scope="all")
    assert not edit_equals_ablation(model, norm_preserving=False, scope="top_k")


# ---------------------------------------------------------------- kept ties (engines that require tied embeddings)


@pytest.mark.parametrize("family", ["gemma", "qwen3"])
def test_kept_tie_edits_the_shared_matrix_once(family, monkeypatch):
    import harness.steering.weights as weights

    model, _ = tiny_model(family)
    assert is_tied(model)
    r = _direction(model)
    r_hat = r / r.norm()
    before = embeddings(model).weight.detach().clone()
    edited_params: list[int] = []
    real = weights._orthogonalize_ref
    monkeypatch.setattr(weights, "_orthogonalize_ref",
                        lambda ref, *a, **k: (edited_params.append(id(ref.weight)), real(ref, *a, **k))[1])
    out = orthogonalize(model, r, untie=False)
    assert len(edited_params) == len(set(edited_params)), "a parameter was edited twice"
    assert is_tied(out) and is_tied(model)
    expected = before - (before @ r_hat)[:, None] * r_hat
    torch.testing.assert_close(embeddings(out).weight, expected, rtol=0, atol=1e-6)
    assert (unembedding(out).weight @ r_hat).abs().max() <= 1e-5  # the read-out lost r_hat too
    torch.testing.assert_close(embeddings(model).weight, before, rtol=0, atol=0)  # input untouched


@pytest.mark.parametrize("family", ["gemma", "qwen3"])
def test_kept_tie_saves_tied_and_reloads_tied(family, tmp_path):
    import json

    from safetensors import safe_open

    model, tok = tiny_model(family)
    out = orthogonalize(model, _direction(model), untie=False)
    save_model(out, tok, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True
    keys = set().union(*(safe_open(str(f), "pt").keys() for f in tmp_path.glob("*.safetensors")))
    assert not any(k.endswith("lm_head.weight") for k in keys), "a tied checkpoint stores one matrix"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert is_tied(reloaded)
    batch = tokenize_instructions(tok, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, out(**batch).logits, rtol=0, atol=0)


def test_untied_edit_of_a_gemma_is_refused_for_vllm():
    assert TIED_ONLY_FAMILIES == ("gemma", "gemma2", "gemma3", "gemma4")
    model, _ = tiny_model("gemma")
    r = _direction(model)
    with pytest.raises(CheckpointError, match=r"gemma.*tied.*set intervention\.keep_tie = true.*other than vllm"):
        check_saveable_for_vllm(model, orthogonalize(model, r))
    check_saveable_for_vllm(model, orthogonalize(model, r, untie=False))
    from harness.steering.weights import untie_embeddings

    untie_embeddings(model)  # an original that was untied before the edit: the edit did not untie it
    check_saveable_for_vllm(model, orthogonalize(model, r))


@pytest.mark.parametrize("family", ["gemma3", "gemma4"])
def test_untied_edit_of_a_multimodal_gemma_is_refused_for_vllm(family):
    model, _ = tiny_model(family, multimodal=True)
    r = _direction(model)
    with pytest.raises(CheckpointError, match=family):
        check_saveable_for_vllm(model, orthogonalize(model, r))
    check_saveable_for_vllm(model, orthogonalize(model, r, untie=False))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_other_families_save_for_vllm_either_way(family):
    """llama is untied to begin with; vLLM's qwen3 classes load an untied read-out."""
    model, _ = tiny_model(family)
    r = _direction(model)
    check_saveable_for_vllm(model, orthogonalize(model, r))
    check_saveable_for_vllm(model, orthogonalize(model, r, untie=False))


def test_kept_tie_changes_the_readout_and_fidelity_says_so():
    gemma, gtok = tiny_model("gemma")
    r = _direction(gemma)
    kept = edit_fidelity(gemma, orthogonalize(gemma, r, untie=False), r, PROMPTS, gtok)
    untied = edit_fidelity(gemma, orthogonalize(gemma, r), r, PROMPTS, gtok)
    assert FAMILIES["gemma"].exact_edit and untied["exact"] and untied["max_logit_gap"] <= EXACT_TOL
    assert kept["exact"] is False and "tied" in kept["leak_reason"]
    assert kept["max_logit_gap"] > 100 * EXACT_TOL
    assert max(kept["residual_component"]) <= 1e-5  # the residual stream is still clean; only the read-out moved
    llama, ltok = tiny_model("llama")
    r = _direction(llama)
    same = edit_fidelity(llama, orthogonalize(llama, r, untie=False), r, PROMPTS, ltok)
    assert same["exact"] and same["max_logit_gap"] <= EXACT_TOL


def test_kept_tie_is_not_ablation_for_hook_free_engines():
    gemma, _ = tiny_model("gemma")
    llama, _ = tiny_model("llama")
    assert edit_equals_ablation(gemma, norm_preserving=False, scope="all")
    assert not edit_equals_ablation(gemma, norm_preserving=False, scope="all", keep_tie=True)
    assert edit_equals_ablation(llama, norm_preserving=False, scope="all", keep_tie=True)  # nothing tied to keep


# --------------------------------------------------------- per-layer edit of chosen modules (Gemma-4 study)


def _study_edit(weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The Gemma-4 study's edit of one Linear weight `[d_model, d_in]`, from its stated math: every column (the
    vector the input unit writes) loses its component along unit r, then is rescaled to its old norm; in float64."""
    w, r = weight.double(), (r / r.norm()).double()
    edited = w - torch.outer(r, r @ w)
    return edited * (w.norm(dim=0) / edited.norm(dim=0))


def test_per_layer_edit_of_o_proj_and_down_proj_equals_the_studys_formula():
    """On a tiny Gemma-4 laid out as the real checkpoint (model.language_model.layers): only each layer's
    self_attn.o_proj and mlp.down_proj change, each by its own layer's direction as the study's formula says;
    embeddings, the tied read-out, per-layer-input projections, experts and norms are bit-for-bit unchanged."""
    model, _ = tiny_model("gemma4", multimodal=True)
    blocks = model.model.language_model.layers
    dirs = torch.randn(len(blocks), d_model(model), generator=torch.Generator().manual_seed(9))
    out = orthogonalize(model, dirs, norm_preserving=True, modules=["attn_out", "mlp_down"])
    edited_names = set()
    for i, block in enumerate(blocks):
        for path in ("self_attn.o_proj", "mlp.down_proj"):
            before = block.get_submodule(path).weight
            after = out.model.language_model.layers[i].get_submodule(path).weight
            torch.testing.assert_close(after.double(), _study_edit(before, dirs[i]), atol=2e-6, rtol=0)
            assert not torch.equal(after, before)
            edited_names.add(f"model.language_model.layers.{i}.{path}.weight")
    original = dict(model.named_parameters())
    for name, p in out.named_parameters():
        if name not in edited_names:
            assert torch.equal(p, original[name]), f"{name} changed"
    assert is_tied(out) and torch.equal(unembedding(out).weight, unembedding(model).weight)


def test_per_layer_edit_uses_each_layers_own_direction():
    """Layer i's writers have no component along direction i (plain edit), and the edit of layer i does not
    depend on the other layers' directions."""
    model, _ = tiny_model("gemma4", multimodal=True)
    gen = torch.Generator().manual_seed(4)
    dirs = torch.randn(3, d_model(model), generator=gen)
    out = orthogonalize(model, dirs, modules=["attn_out", "mlp_down"])
    changed = dirs.clone()
    changed[1] = torch.randn(d_model(model), generator=gen)
    other = orthogonalize(model, changed, modules=["attn_out", "mlp_down"])
    for i, (a, b) in enumerate(zip(out.model.language_model.layers, other.model.language_model.layers)):
        w = a.self_attn.o_proj.weight
        assert float((unit(dirs[i]) @ w).abs().max()) < 1e-5
        assert torch.equal(w, b.self_attn.o_proj.weight) == (i != 1)


def test_edit_modules_resolve_through_the_arch_table():
    from harness.steering.weights import edited_writers

    model, _ = tiny_model("gemma4")
    kinds = {r.kind for r in edited_writers(model)}
    assert kinds == {"embed", "attn_out", "mlp_down", "experts", "extra"}
    chosen = edited_writers(model, ["attn_out", "mlp_down"])
    assert {r.path for r in chosen} == {"self_attn.o_proj", "mlp.down_proj"}
    assert [r.layer for r in chosen] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown module kinds"):
        edited_writers(model, ["o_proj"])


def test_per_layer_edit_refuses_the_embeddings_and_a_wrong_layer_count():
    model, _ = tiny_model("gemma4")
    with pytest.raises(ValueError, match="cannot edit the embeddings"):
        orthogonalize(model, torch.randn(3, d_model(model)), modules=["embed", "attn_out"])
    with pytest.raises(ValueError, match="2 rows for a model with 3 layers"):
        orthogonalize(model, torch.randn(2, d_model(model)), modules=["attn_out"])


def test_an_edit_without_embeddings_keeps_the_tie_untouched():
    model, _ = tiny_model("gemma4")
    out = orthogonalize(model, _direction(model), modules=["attn_out"])
    assert is_tied(out) and torch.equal(embeddings(out).weight, embeddings(model).weight)
    assert not edit_equals_ablation(model, norm_preserving=False, scope="all", modules=["attn_out"])


def test_changed_parameters_reads_what_the_edit_changed_from_the_weights():
    from harness.steering.weights import changed_parameters

    model, _ = tiny_model("gemma4", multimodal=True)
    dirs = torch.randn(3, d_model(model), generator=torch.Generator().manual_seed(2))
    out = orthogonalize(model, dirs, modules=["attn_out", "mlp_down"])
    assert changed_parameters(model, out) == {"mlp.down_proj.weight": [0, 1, 2], "self_attn.o_proj.weight": [0, 1, 2]}
    whole = changed_parameters(model, orthogonalize(model, dirs[0]))
    assert "model.language_model.embed_tokens.weight" in whole and "per_layer_projection.weight" in whole
    assert changed_parameters(model, model) == {}
