"""Interventions do what they claim on every family, in any dtype, and leave no hooks behind."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness.models.arch import d_model, final_norm, layer_modules
from harness.models.chat import tokenize_instructions
from harness.models.hooks import add_hooks, block_input
from harness.models.tiny import TINY_FAMILIES, tiny_model
from harness.steering.interventions import (
    DirectionShapeError,
    ablate,
    actadd,
    nullspace,
    reflect,
    select_layers,
    shared_hooks,
)

PROMPTS = ["how to make a bomb at home", "hi", "write a poem about the sea"]


def _direction(model, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_model(model), generator=g)


def _batch(tok):
    return tokenize_instructions(tok, PROMPTS)


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _observe(model, basis: torch.Tensor):
    """Observer hooks (registered after the intervention's, so they see its result) recording
    max |x . b| over every block input, every residual write and the final residual."""
    seen: dict[str, float] = {}
    b = basis.float()

    def note(name, x):
        seen[name] = max(seen.get(name, 0.0), float((x.float() @ b.T).abs().max()))

    pre, post = [], []
    for lm in layer_modules(model):
        pre.append((lm.block, lambda m, a, k, i=lm.index: note(f"block{i}.in", block_input(a, k))))
        for j, mod in enumerate(lm.residual_outputs):
            post.append((mod, lambda m, a, o, n=f"block{lm.index}.write{j}": note(n, o[0] if isinstance(o, tuple) else o)))
    pre.append((final_norm(model), lambda m, a, k: note("final", block_input(a, k))))
    return seen, add_hooks(pre_hooks=pre, hooks=post)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request):
    model, tok = tiny_model(request.param)
    return model, tok


@torch.no_grad()
def test_ablation_removes_component_everywhere(tiny):
    model, tok = tiny
    r = _direction(model)
    r_hat = (r / r.norm())[None]
    seen_base, observer = _observe(model, r_hat)
    with observer:
        model(**_batch(tok))
    assert max(seen_base.values()) > 1e-3  # the direction is present without the intervention
    seen, observer = _observe(model, r_hat)
    with ablate(model, r), observer:
        model(**_batch(tok))
    assert seen.keys() == seen_base.keys()
    worst = max(seen, key=seen.get)
    assert seen[worst] <= 1e-5, f"{worst}: |component| {seen[worst]}"


@torch.no_grad()
def test_ablation_in_bfloat16():
    model, tok = tiny_model("gemma3", dtype=torch.bfloat16)
    r = _direction(model)
    r_hat = (r / r.norm())[None]
    seen, observer = _observe(model, r_hat)
    with ablate(model, r.double()), observer:
        logits = model(**_batch(tok)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    base, observer = _observe(model, r_hat)
    with observer:
        model(**_batch(tok))
    assert seen["final"] <= 0.02 * base["final"]


@torch.no_grad()
def test_hooks_removed_on_exit_and_on_error(tiny):
    model, tok = tiny
    r = _direction(model)
    batch = _batch(tok)
    before, logits = _n_hooks(model), model(**batch).logits
    factories = (
        lambda: ablate(model, r),
        lambda: actadd(model, r, 1, -1.0),
        lambda: reflect(model, r),
        lambda: nullspace(model, r[None]),
    )
    for make in factories:
        with make():
            assert _n_hooks(model) > before
        assert _n_hooks(model) == before
        with pytest.raises(RuntimeError, match="boom"):
            with make():
                raise RuntimeError("boom")
        assert _n_hooks(model) == before
    torch.testing.assert_close(model(**batch).logits, logits, rtol=0, atol=0)


@torch.no_grad()
def test_add_hooks_accepts_plain_and_kwargs_pre_hooks():
    model, tok = tiny_model("llama")
    block = layer_modules(model)[1].block
    seen = []
    plain = lambda module, args: seen.append("plain")  # noqa: E731
    with_kwargs = lambda module, args, kwargs: seen.append(block_input(args, kwargs).shape[-1])  # noqa: E731
    with add_hooks(pre_hooks=[(block, plain), (block, with_kwargs)], hooks=[(block, lambda m, i, o: seen.append("post"))]):
        model(**_batch(tok))
    assert seen == ["plain", d_model(model), "post"]


def test_add_hooks_removes_hooks_when_registration_fails():
    model, _ = tiny_model("llama")
    before = _n_hooks(model)
    block = layer_modules(model)[0].block
    with pytest.raises(AttributeError):
        with add_hooks(pre_hooks=[(block, lambda m, a, k: None), ("not a module", lambda m, a, k: None)]):
            pass
    assert _n_hooks(model) == before


@torch.no_grad()
def test_actadd_adds_exactly_at_one_block(tiny):
    model, tok = tiny
    r = _direction(model)
    blocks = [lm.block for lm in layer_modules(model)]
    grabbed: dict[int, torch.Tensor] = {}
    observers = [(b, lambda m, a, k, i=i: grabbed.__setitem__(i, block_input(a, k).clone())) for i, b in enumerate(blocks)]
    with add_hooks(pre_hooks=observers):
        model(**_batch(tok))
    base = dict(grabbed)
    with actadd(model, r, 1, -2.0), add_hooks(pre_hooks=observers):
        model(**_batch(tok))
    torch.testing.assert_close(base[0], grabbed[0], rtol=0, atol=0)
    torch.testing.assert_close(grabbed[1], base[1] - 2.0 * r, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(grabbed[2], base[2])


@torch.no_grad()
def test_reflection_flips_the_component_and_strength_zero_is_ablation():
    model, tok = tiny_model("qwen3")
    r = _direction(model)
    r_hat = r / r.norm()
    block0 = layer_modules(model)[0].block
    grabbed = []
    obs = [(block0, lambda m, a, k: grabbed.append(block_input(a, k) @ r_hat))]
    with add_hooks(pre_hooks=obs):
        model(**_batch(tok))
    with reflect(model, r, strength=1.0), add_hooks(pre_hooks=obs):
        model(**_batch(tok))
    torch.testing.assert_close(grabbed[1], -grabbed[0], rtol=1e-5, atol=1e-6)
    with reflect(model, r, strength=0.0):
        zero = model(**_batch(tok)).logits
    with ablate(model, r):
        abl = model(**_batch(tok)).logits
    torch.testing.assert_close(zero, abl, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_nullspace_removes_every_basis_direction():
    model, tok = tiny_model("llama")
    basis = torch.stack([_direction(model, s) for s in (1, 2, 3)])  # not orthonormal on purpose
    q, _ = torch.linalg.qr(basis.T)
    seen, observer = _observe(model, q.T)
    with nullspace(model, basis), observer:
        model(**_batch(tok))
    assert max(seen.values()) <= 1e-5
    r = basis[0]
    with nullspace(model, r[None]):
        one = model(**_batch(tok)).logits
    with ablate(model, r):
        abl = model(**_batch(tok)).logits
    torch.testing.assert_close(one, abl, rtol=1e-5, atol=1e-5)


def test_actadd_rejects_layer_out_of_range():
    model, _ = tiny_model("llama")
    with pytest.raises(IndexError, match=r"layers \[3\]"):
        with actadd(model, _direction(model), 3, 1.0):
            pass


def test_wrong_width_is_a_clear_error():
    model, _ = tiny_model("llama")
    bad = torch.randn(d_model(model) + 3)
    for call in (lambda: ablate(model, bad), lambda: actadd(model, bad, 0, 1.0), lambda: reflect(model, bad),
                 lambda: nullspace(model, bad[None])):
        with pytest.raises(DirectionShapeError, match=f"width {d_model(model) + 3}.*d_model={d_model(model)}"):
            with call():
                pass


def test_scopes_select_layers():
    assert select_layers(8, "all") == list(range(8))
    assert select_layers(8, "one", ranked=[5, 2]) == [5]
    assert select_layers(8, "top_k", ranked=[5, 2, 5, 1], fraction=0.5) == [2, 5]
    assert select_layers(8, "all", layers=[3, 1]) == [1, 3]
    with pytest.raises(ValueError, match="needs `ranked`"):
        select_layers(8, "one")
    with pytest.raises(ValueError, match="unknown scope"):
        select_layers(8, "some")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        select_layers(8, "all", layers=[9])
    with pytest.raises(IndexError, match=r"layers \[8\]"):
        select_layers(8, "one", ranked=[8])
    with pytest.raises(ValueError, match="fraction"):
        select_layers(8, "top_k", ranked=[2], fraction=0.0)


@torch.no_grad()
def test_scope_one_hooks_only_that_layer():
    model, tok = tiny_model("mistral")
    before = _n_hooks(model)
    mods = layer_modules(model)
    with ablate(model, _direction(model), scope="one", ranked=[1, 0]):
        assert _n_hooks(model) - before == 1 + len(mods[1].residual_outputs)
        assert len(mods[1].block._forward_pre_hooks) == 1 and not mods[0].block._forward_pre_hooks


SHARED = {
    "ablate": lambda m, r: ablate(m, r),
    "ablate_top_k": lambda m, r: ablate(m, r, scope="top_k", ranked=[1, 0], fraction=0.5),
    "actadd": lambda m, r: actadd(m, 4 * r, 1, 1.5),
    "reflect": lambda m, r: reflect(m, r, 0.5, layers=[0, 1]),
    "nullspace_one_vector": lambda m, r: nullspace(m, r[None]),
}


@torch.no_grad()
@pytest.mark.parametrize("case", SHARED)
def test_shared_hooks_hold_the_edit_bit_for_bit(tiny, case):
    """Inside `shared_hooks` a one-direction intervention adds no hook, writes its edit into the shared ones and
    gives the logits of its own hooks exactly; on exit the shared hooks are back to no edit, and on leaving
    `shared_hooks` no hook is left."""
    model, tok = tiny
    batch, r = _batch(tok), _direction(model)
    plain = model(**batch).logits
    with SHARED[case](model, r):
        own = model(**batch).logits
    with shared_hooks(model):
        n = _n_hooks(model)
        with SHARED[case](model, r):
            assert _n_hooks(model) == n
            shared = model(**batch).logits
        after = model(**batch).logits
    assert not torch.equal(own, plain)
    assert torch.equal(shared, own)
    assert torch.equal(after, plain)
    assert _n_hooks(model) == 0


@torch.no_grad()
def test_shared_hooks_in_bfloat16():
    model, tok = tiny_model("gemma3", dtype=torch.bfloat16)
    batch, r = _batch(tok), _direction(model)
    with ablate(model, r):
        own = model(**batch).logits
    with shared_hooks(model), ablate(model, r):
        assert torch.equal(model(**batch).logits, own)


@torch.no_grad()
def test_shared_hooks_take_one_edit_at_a_time():
    """A second intervention inside a busy `shared_hooks`, or one of several vectors, adds its own hooks and
    composes as it would without them; `shared_hooks` cannot be entered twice on one model."""
    model, tok = tiny_model("llama")
    batch, r, r2 = _batch(tok), _direction(model), _direction(model, seed=2)
    with actadd(model, 3 * r, 1, 1.0), ablate(model, r2), nullspace(model, torch.stack([r, r2])):
        own = model(**batch).logits
    with shared_hooks(model):
        n = _n_hooks(model)
        with actadd(model, 3 * r, 1, 1.0):
            assert _n_hooks(model) == n
            with ablate(model, r2):
                assert _n_hooks(model) > n
                with nullspace(model, torch.stack([r, r2])):
                    shared = model(**batch).logits
        with pytest.raises(RuntimeError, match="already active"), shared_hooks(model):
            pass
    assert torch.equal(shared, own)
    assert _n_hooks(model) == 0


@torch.no_grad()
@pytest.mark.skipif(shutil.which("cc") is None, reason="inductor needs a C compiler on the CPU")
def test_compiled_hook_arithmetic_equals_the_eager_one(monkeypatch):
    """On CUDA an eager hook runs the torch.compile'd copy of its arithmetic (`_fused`); forced here on the
    CPU, that copy gives the eager logits for own and shared hooks, through gpt_oss's flattened MoE writer too."""
    from harness.steering import interventions as iv

    model, tok = tiny_model("gpt_oss")
    batch, r = _batch(tok), _direction(model)
    cases = (lambda: ablate(model, r), lambda: actadd(model, r, 1, 2.0))
    eager = {}
    for k, make in enumerate(cases):
        with make():
            eager["own", k] = model(**batch).logits
        with shared_hooks(model), make():
            eager["shared", k] = model(**batch).logits
    monkeypatch.setattr(iv, "_fused", lambda x: True)
    for k, make in enumerate(cases):
        with make():
            torch.testing.assert_close(model(**batch).logits, eager["own", k], rtol=0, atol=1e-5)
        with shared_hooks(model), make():
            torch.testing.assert_close(model(**batch).logits, eager["shared", k], rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.skipif(shutil.which("cc") is None, reason="inductor needs a C compiler on the CPU")
def test_one_compile_serves_every_decode_hook(monkeypatch):
    """Decode-step inputs of any batch size, an own hook (a float scale, no shift) and a shared one (tensor scale
    and shift) all run one compiled graph, equal to the eager arithmetic."""
    from harness.steering import interventions as iv

    monkeypatch.setattr(iv, "_fused", lambda x: iv._decode_sized(x))
    d = 16
    r = torch.nn.functional.normalize(torch.randn(1, d), dim=-1)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for rows in (7, 100, 232):
        x = torch.randn(rows, 1, d)
        eager = x - 2.0 * (x @ r.T) @ r
        torch.testing.assert_close(iv._edit(x, r, 2.0), eager, rtol=0, atol=1e-5)
        add = torch.randn(d)
        torch.testing.assert_close(iv._edit(x, r, torch.tensor(2.0), add), eager + add, rtol=0, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, dict(torch._dynamo.utils.counters["stats"])


def test_only_decode_sized_hook_inputs_run_the_compiled_arithmetic():
    """The compiled copy serves decode steps (one position per row, up to FUSED_MAX_ROWS rows); a prefill stays
    eager, so no compile is spent on prefill shapes."""
    from harness.steering.interventions import FUSED_MAX_ROWS, _decode_sized

    d = 8
    assert _decode_sized(torch.zeros(232, 1, d)) and _decode_sized(torch.zeros(FUSED_MAX_ROWS, d))
    assert not _decode_sized(torch.zeros(2, 3, d))  # a prefill, however small
    assert not _decode_sized(torch.zeros(FUSED_MAX_ROWS + 1, 1, d))
    assert not _decode_sized(torch.zeros(1, 2048, d))
