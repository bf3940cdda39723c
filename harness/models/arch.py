"""The one table of module paths per architecture family.

Everything that needs to find a block, the matrices that write the residual stream, or the norms
goes through `layer_modules` / `residual_writers`, so supporting a new family is one table row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


class UnsupportedArchitecture(ValueError):
    """A model whose `config.model_type` has no row in `FAMILIES`."""


@dataclass(frozen=True)
class FamilySpec:
    """Module paths of one family; each tuple lists alternatives, the first that exists wins.

    `attn_write` / `mlp_write` / `extra_write` name the module whose *output* is added to the
    residual stream (the linear projection itself, or the post-norm that follows it).
    `exact_edit` says whether orthogonalizing the writing matrices removes the direction from the
    residual stream exactly; `leak_reason` says why not where it does not.
    `siblings` lists groups of projections that read one input, the one a block calls first leading
    (`sibling_projections`).
    """

    model_types: tuple[str, ...]
    layers: tuple[str, ...] = ("model.layers", "model.language_model.layers")
    embed: tuple[str, ...] = ("model.embed_tokens", "model.language_model.embed_tokens")
    final_norm: tuple[str, ...] = ("model.norm", "model.language_model.norm")
    unembed: tuple[str, ...] = ("lm_head",)
    attn_out: tuple[str, ...] = ("self_attn.o_proj", "linear_attn.out_proj")
    mlp_down: tuple[str, ...] = ("mlp.down_proj",)
    attn_write: tuple[str, ...] = ("self_attn.o_proj", "linear_attn.out_proj")
    mlp_write: tuple[str, ...] = ("mlp.down_proj",)
    extra: tuple[str, ...] = ()
    extra_write: tuple[str, ...] = ()
    expert_out_dim: int = 1
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    exact_edit: bool = True
    leak_reason: str = ""
    siblings: tuple[tuple[str, ...], ...] = (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("mlp.gate_proj", "mlp.up_proj"),
    )


_POST_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
_POST_NORM_LEAK = (
    "post-attention / post-feedforward RMSNorms rescale the written vector elementwise after the "
    "edited matrix, which reintroduces a component along the direction"
)

# Gemma2/3 write each sublayer's output through a post-norm, so the residual sees the norm, not the projection.
_POST_NORM_WRITES = dict(
    attn_write=("post_attention_layernorm",),
    mlp_write=("post_feedforward_layernorm",),
    norms=_POST_NORMS,
    exact_edit=False,
    leak_reason=_POST_NORM_LEAK,
)

FAMILIES: dict[str, FamilySpec] = {
    "llama": FamilySpec(model_types=("llama",)),
    "mistral": FamilySpec(model_types=("mistral",)),
    "gemma": FamilySpec(model_types=("gemma",)),
    "gemma2": FamilySpec(model_types=("gemma2",), **_POST_NORM_WRITES),
    "gemma3": FamilySpec(model_types=("gemma3_text", "gemma3"), **_POST_NORM_WRITES),
    "gemma4": FamilySpec(
        model_types=("gemma4_text", "gemma4"),
        mlp_down=("mlp.down_proj", "experts.down_proj"),
        attn_write=("post_attention_layernorm",),
        mlp_write=("post_feedforward_layernorm",),
        extra=("per_layer_projection",),
        extra_write=("post_per_layer_input_norm",),
        norms=_POST_NORMS + ("post_per_layer_input_norm",),
        exact_edit=False,
        leak_reason=_POST_NORM_LEAK
        + "; the per-layer-input projection writes through post_per_layer_input_norm; the MoE "
        "router reads the (edited) residual",
    ),
    "qwen2": FamilySpec(model_types=("qwen2",)),
    "qwen3": FamilySpec(model_types=("qwen3",)),
    "qwen3_5": FamilySpec(model_types=("qwen3_5_text", "qwen3_5")),
    "gpt_oss": FamilySpec(
        model_types=("gpt_oss",),
        mlp_down=("mlp.experts.down_proj",),
        mlp_write=("mlp.experts",),
        expert_out_dim=2,
    ),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILIES)

# Kinds of residual writer a weight edit may be limited to (InterventionConfig.edit_modules): the token
# embeddings, each block's attention output (`attn_out`), its dense MLP down projection (`mlp_down`), its
# expert down projections (`experts`) and its extra writers (`extra`, Gemma 4's per-layer-input projection).
EDIT_MODULE_KINDS: tuple[str, ...] = ("embed", "attn_out", "mlp_down", "experts", "extra")


@dataclass
class WeightRef:
    """A parameter that writes the residual stream; `out_dim` is its d_model axis."""

    name: str
    weight: nn.Parameter
    bias: nn.Parameter | None
    out_dim: int
    kind: str = "embed"  # one of EDIT_MODULE_KINDS
    layer: int | None = None  # the block it belongs to (None: the embeddings)
    path: str = ""  # module path inside the block, e.g. "self_attn.o_proj"


@dataclass
class LayerModules:
    """The pieces of one decoder block that read or write the residual stream."""

    index: int
    block: nn.Module
    attn_out: nn.Module
    mlp_down: list[WeightRef]
    extra: list[nn.Module]
    residual_outputs: list[nn.Module]
    norms: dict[str, nn.Module] = field(default_factory=dict)
    layer_type: str = "full_attention"


def _config(model_or_config) -> object:
    return getattr(model_or_config, "config", model_or_config)


def family_of(model_or_config, override: str | None = None) -> str:
    """Family name from `config.model_type`, or from `override` (ModelConfig.family), which
    `harness.models.loading.load_model` records on the config as `harness_family`."""
    override = override or getattr(_config(model_or_config), "harness_family", None)
    if override is not None:
        if override not in FAMILIES:
            raise UnsupportedArchitecture(
                f"family override {override!r} is not supported; supported: {', '.join(SUPPORTED_FAMILIES)}"
            )
        return override
    model_type = getattr(_config(model_or_config), "model_type", None)
    for family, spec in FAMILIES.items():
        if model_type in spec.model_types:
            return family
    raise UnsupportedArchitecture(
        f"architecture model_type={model_type!r} is not supported; supported families: "
        f"{', '.join(SUPPORTED_FAMILIES)}"
    )


def spec_of(model) -> FamilySpec:
    return FAMILIES[family_of(model)]


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first(root: nn.Module, paths: tuple[str, ...], what: str, required: bool = True):
    for path in paths:
        obj = _get(root, path)
        if obj is not None:
            return obj
    if required:
        raise UnsupportedArchitecture(
            f"{type(root).__name__}: none of {list(paths)} found for {what}; the arch table row does not fit this model"
        )
    return None


def _weight_ref(name: str, obj) -> WeightRef:
    """Linear modules write along dim 0; 3D expert tensors are identified by which axis is d_model."""
    if isinstance(obj, nn.Linear):
        return WeightRef(name, obj.weight, obj.bias, out_dim=0)
    raise TypeError(f"{name}: expected nn.Linear, got {type(obj).__name__}")


def _expert_ref(block: nn.Module, path: str, d_model: int, out_dim: int) -> WeightRef:
    """3D expert tensor `[expert, ., .]`; the table says which axis is d_model (gpt_oss: 2, as it
    computes `x @ W`; Gemma4: 1, as it calls `F.linear`)."""
    owner_path, _, attr = path.rpartition(".")
    owner = _get(block, owner_path)
    weight = getattr(owner, attr, None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 3:
        raise UnsupportedArchitecture(
            f"{path}: expected a 3D expert weight on {type(owner).__name__}, found {type(weight).__name__} "
            "(quantized experts, e.g. MXFP4, must be dequantized on load to be edited or inspected)"
        )
    bias = getattr(owner, f"{attr}_bias", None)
    if weight.shape[out_dim] != d_model:
        raise UnsupportedArchitecture(
            f"{path}: shape {tuple(weight.shape)} has no d_model={d_model} output axis at dim {out_dim}"
        )
    return WeightRef(path, weight, bias, out_dim)


def layers(model) -> nn.ModuleList:
    return _first(model, spec_of(model).layers, "decoder layers")


def layer_modules(model) -> list[LayerModules]:
    spec = spec_of(model)
    d = d_model(model)
    result = []
    for i, block in enumerate(layers(model)):
        downs = []
        for path in spec.mlp_down:
            obj = _get(block, path)
            if obj is None and _get(block, path.rpartition(".")[0]) is None:
                continue  # the owner is absent (e.g. no experts in a dense layer)
            if isinstance(obj, nn.Linear):
                downs.append(_weight_ref(path, obj))
            else:
                downs.append(_expert_ref(block, path, d, spec.expert_out_dim))
        if not downs:
            raise UnsupportedArchitecture(f"layer {i}: none of {list(spec.mlp_down)} found for the MLP down projection")
        extra = [m for m in (_get(block, p) for p in spec.extra) if m is not None]
        outputs = [
            _first(block, spec.attn_write, f"layer {i} attention writer"),
            _first(block, spec.mlp_write, f"layer {i} MLP writer"),
        ]
        outputs += [m for m in (_get(block, p) for p in spec.extra_write) if m is not None]
        norms = {p: m for p in spec.norms if (m := _get(block, p)) is not None}
        result.append(
            LayerModules(
                index=i,
                block=block,
                attn_out=_first(block, spec.attn_out, f"layer {i} attention output"),
                mlp_down=downs,
                extra=extra,
                residual_outputs=outputs,
                norms=norms,
                layer_type=getattr(block, "layer_type", None) or getattr(block, "block_type", None) or "full_attention",
            )
        )
    return result


def sibling_projections(model) -> list[tuple[nn.Linear, ...]]:
    """Per block, each table group of plain `nn.Linear` projections that read one input, in the order the block
    calls them; a group with a member missing (a linear-attention layer) or of another type is left out."""
    groups = []
    for block in layers(model):
        for paths in spec_of(model).siblings:
            mods = tuple(_get(block, p) for p in paths)
            if all(type(m) is nn.Linear for m in mods):
                groups.append(mods)
    return groups


def embeddings(model) -> nn.Embedding:
    return _first(model, spec_of(model).embed, "token embeddings")


def input_device(model) -> torch.device:
    """Where a model's inputs go: its input embeddings' device (the first device of a model spread over several)."""
    return model.get_input_embeddings().weight.device


def unembedding(model) -> nn.Linear:
    return _first(model, spec_of(model).unembed, "unembedding (lm_head)")


def final_norm(model) -> nn.Module:
    return _first(model, spec_of(model).final_norm, "final norm")


def is_tied(model) -> bool:
    return unembedding(model).weight is embeddings(model).weight


def n_layers(model) -> int:
    return len(layers(model))


def d_model(model) -> int:
    return int(embeddings(model).weight.shape[1])


class NotAttentionOnly(ValueError):
    """A model with a layer that is neither full nor sliding-window attention (a recurrent, linear-attention layer)."""


def layer_windows(model_or_config) -> list[int | None]:
    """Per decoder layer: its sliding window, or None for full attention. What a hand-built attention mask (the static
    backend's cache slots, packed prompts) must reproduce; `NotAttentionOnly` for any other layer type."""
    config = _config(model_or_config)
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if types is None:
        uses = window is not None and getattr(cfg, "use_sliding_window", True)
        return [window if uses else None] * n
    bad = sorted({t for t in types if t not in ("full_attention", "sliding_attention")})
    if bad:
        raise NotAttentionOnly(f"{cfg.model_type} has {bad} layers besides full and sliding attention")
    return [window if t == "sliding_attention" else None for t in types[:n]]


def masks_by_layer_type(model_or_config, windows: list[int | None], additive: Callable[[int | None], torch.Tensor]
                        ) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention mask(s) a model is called with, from `additive(window)` (None: full attention) and its
    `layer_windows`: one mask where the config names no layer types, else one per type its layers use."""
    config = _config(model_or_config)
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(cfg, "layer_types", None) is None:
        return additive(windows[0])
    masks = {}
    if None in windows:
        masks["full_attention"] = additive(None)
    sliding = next((w for w in windows if w is not None), None)
    if sliding is not None:
        masks["sliding_attention"] = additive(sliding)
    return masks


def _path_in(block: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in block.named_modules() if m is module), type(module).__name__)


def residual_writers(model, kinds: tuple[str, ...] | list[str] | None = None) -> list[WeightRef]:
    """Every parameter whose output is added to the residual stream: embeddings, then per block
    the attention output, MLP/expert down projections and extra writers; `kinds` (EDIT_MODULE_KINDS)
    keeps only those kinds."""
    if kinds is not None and (unknown := sorted(set(kinds) - set(EDIT_MODULE_KINDS))):
        raise ValueError(f"unknown module kinds {unknown}; known: {', '.join(EDIT_MODULE_KINDS)}")
    refs = [WeightRef("embed_tokens", embeddings(model).weight, None, out_dim=1, kind="embed", path="embed_tokens")]
    for lm in layer_modules(model):
        i = lm.index
        attn = _weight_ref(f"layers.{i}.attn_out", lm.attn_out)
        refs.append(WeightRef(attn.name, attn.weight, attn.bias, attn.out_dim, "attn_out", i,
                              _path_in(lm.block, lm.attn_out)))
        refs += [WeightRef(f"layers.{i}.{r.name}", r.weight, r.bias, r.out_dim,
                           "mlp_down" if r.weight.ndim == 2 else "experts", i, r.name) for r in lm.mlp_down]
        for j, m in enumerate(lm.extra):
            ref = _weight_ref(f"layers.{i}.extra{j}", m)
            refs.append(WeightRef(ref.name, ref.weight, ref.bias, ref.out_dim, "extra", i, _path_in(lm.block, m)))
    return refs if kinds is None else [r for r in refs if r.kind in kinds]
