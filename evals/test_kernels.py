"""harness.models.kernels: the process-wide kernel choices a CUDA run makes (the GPU side is in test_gpu_paths)."""

from __future__ import annotations

import torch

from harness.models.kernels import configure_cuda_kernels


def test_cuda_runs_leave_cudnn_attention_out():
    """cuDNN's SDPA plans per shape; a configured process never offers it to scaled_dot_product_attention, and the
    backends that do not plan per shape stay on."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        configure_cuda_kernels()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_read_out_gets_a_contiguous_input_once_and_the_same_logits():
    """configure_model_kernels gives the unembedding a contiguous copy of the sliced hidden states `logits_to_keep`
    hands it (cuBLAS's kernel for the strided slice is ~30x off the weight read; the CPU's is slower too), once however
    often it is configured, in copies of the model too; the last positions' logits stay those of the stock model."""
    import copy

    from harness.models.arch import unembedding
    from harness.models.kernels import configure_model_kernels
    from harness.models.tiny import tiny_model

    stock, _ = tiny_model("llama")
    model = copy.deepcopy(stock)
    configure_model_kernels(model)
    configure_model_kernels(model, on_cpu=True)
    seen = []
    unembedding(model).register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, stock.config.vocab_size, (3, 9))
    with torch.no_grad():
        for keep in (1, 2):
            torch.testing.assert_close(model(input_ids=ids, logits_to_keep=keep).logits,
                                       stock(input_ids=ids, logits_to_keep=keep).logits)
        assert len(unembedding(copy.deepcopy(model))._forward_pre_hooks) == 2
    assert seen == [True, True]


def test_the_model_setting_reaches_the_kernel_choices(monkeypatch):
    """`[model] compile_grouped_experts` is what the loaded model is configured with; on the CPU nothing compiles
    unless forced (`on_cpu`), and then the experts run the compiled implementation."""
    import harness.models.rehearsal as rehearsal
    from harness.config import load_experiment
    from harness.models.kernels import COMPILED_GROUPED, configure_model_kernels

    cfg = load_experiment("gpt-oss-20b").model
    assert cfg.compile_grouped_experts
    seen = []
    monkeypatch.setattr(rehearsal, "configure_model_kernels", lambda model, **kw: seen.append((model, kw)))
    for on in (True, False):
        rehearsal.rehearsal_model(cfg.model_copy(update={"compile_grouped_experts": on}), "tiny")
    assert [kw for _, kw in seen] == [{"grouped_experts_compiled": True}, {"grouped_experts_compiled": False}]
    model = seen[0][0]
    configure_model_kernels(model, grouped_experts_compiled=True)
    assert model.get_experts_implementation() == {"": "grouped_mm"}
    configure_model_kernels(model, on_cpu=True, grouped_experts_compiled=True)
    assert model.get_experts_implementation() == {"": COMPILED_GROUPED}
