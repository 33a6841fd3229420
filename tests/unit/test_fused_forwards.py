"""Fused LoRA and RMSNorm forwards compute what PEFT's and the model's own forwards compute:
outputs and gradients compared with an unfused copy of the same model."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from leantune.models.fused_forwards import fuse_forwards
from leantune.models.loading import load_model


def lora_model(path, dtype=torch.float32, **config) -> nn.Module:
    torch.manual_seed(0)
    model = load_model(path, "causal_lm", "float32")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **config))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.2)  # PEFT starts B at zero: the update would not show
        elif not p.requires_grad:
            p.data = p.data.to(dtype)  # frozen weights as model.dtype auto loads them
    return model


def step(model, ids, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach().float(), grads


@pytest.fixture
def ids():
    return torch.randint(0, 100, (3, 11), generator=torch.Generator().manual_seed(1))


def test_fused_lora_and_rms_norm_give_the_same_outputs_and_gradients(tiny_model_dir, ids):
    plain = lora_model(tiny_model_dir("llama"))
    fused = copy.deepcopy(plain)
    counts = fuse_forwards(fused)
    n_lora = sum(type(m).__name__ == "Linear" and hasattr(m, "lora_A") for m in plain.modules())
    n_norm = sum(type(m).__name__ == "LlamaRMSNorm" for m in plain.modules())
    assert counts == {"lora": n_lora, "rms_norm": n_norm} and n_lora > 0 and n_norm > 0
    (want, want_grads), (got, got_grads) = step(plain, ids), step(fused, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and any("lora_B" in k for k in got_grads)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert fused.state_dict().keys() == plain.state_dict().keys()


def test_under_autocast_with_bf16_frozen_weights(tiny_model_dir, ids):
    plain = lora_model(tiny_model_dir("llama"), torch.bfloat16)
    fused = copy.deepcopy(plain)
    fuse_forwards(fused)
    (want, want_grads), (got, got_grads) = step(plain, ids, True), step(fused, ids, True)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # bf16: one rounding more or less
    for name in want_grads:
        cos = nn.functional.cosine_similarity(got_grads[name].flatten(), want_grads[name].flatten(), dim=0)
        assert cos > 0.99, name


def test_other_forwards_are_handed_to_the_original(tiny_model_dir, ids):
    """Adapters disabled or merged, DoRA: the original forward's result, to the bit."""
    base = load_model(tiny_model_dir("llama"), "causal_lm", "float32")
    plain = lora_model(tiny_model_dir("llama"))
    fused = copy.deepcopy(plain)
    fuse_forwards(fused)
    with torch.no_grad():
        with fused.disable_adapter():
            assert torch.equal(fused(input_ids=ids).logits, base(input_ids=ids).logits)
        fused.merge_adapter()
        plain.merge_adapter()
        assert torch.equal(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
    dora = lora_model(tiny_model_dir("llama"), use_dora=True)
    dora_fused = copy.deepcopy(dora)
    fuse_forwards(dora_fused)
    with torch.no_grad():
        assert torch.equal(dora_fused(input_ids=ids).logits, dora(input_ids=ids).logits)


class OffsetRMSNorm(nn.Module):
    """Gemma's formulation: weight stored as an offset from one."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return x * (1 + self.weight)


def test_an_rms_norm_of_another_formulation_is_left_alone():
    model = nn.Sequential(OffsetRMSNorm(8), OffsetRMSNorm(8))
    x = torch.randn(2, 8)
    want = model(x)
    assert fuse_forwards(model) == {"lora": 0, "rms_norm": 0}
    assert "forward" not in vars(model[0])
    assert torch.equal(model(x), want)
