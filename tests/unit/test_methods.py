"""Methods on tiny models: apply, trainable parameters, one step, save/load, merge.

References: the untouched base model loaded separately, hand-computed parameter
counts, and plain PEFT for the LoRA adapter format.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from leantune.errors import MethodError
from leantune.methods.registry import build_method
from leantune.models.loading import count_parameters, load_model
from leantune.training.modes import evaluating

pytestmark = pytest.mark.usefixtures("torch_single_thread")

R = 4
ALPHA = 8

ARCHS = [("llama", "causal_lm"), ("qwen2", "causal_lm"), ("gpt2", "causal_lm"), ("bert", "seq_cls")]
# Layers LoRA targets by default (`targets: auto`): name suffixes and how many per block.
LORA_TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    # `dense` also names the pooler, which counts as part of the head and is not a target
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"),
}

SPECS = {
    "full": {"name": "full"},
    "freeze": {"name": "freeze", "last_n_layers": 1},
    "lora": {"name": "lora", "r": R, "alpha": ALPHA},
    "dora": {"name": "lora", "r": R, "alpha": ALPHA, "dora": True},
    "rslora": {"name": "lora", "r": R, "alpha": ALPHA, "rslora": True},
}
# (method, arch, head): every method on every architecture; DoRA / rsLoRA on llama.
CASES = [(m, a, h) for m in ("full", "freeze", "lora") for a, h in ARCHS] + [
    ("dora", "llama", "causal_lm"), ("rslora", "llama", "causal_lm")]
LORA_CASES = [c for c in CASES if c[0] in ("lora", "dora", "rslora")]
IDS = [f"{m}-{a}" for m, a, _ in CASES]
LORA_IDS = [f"{m}-{a}" for m, a, _ in LORA_CASES]

QLORA = {"name": "qlora", "r": R, "alpha": ALPHA}


# --------------------------------------------------------------------------- helpers

def load_base(tiny_model_dir, arch, head, method=None):
    extra = method.load_kwargs() if method is not None else None
    return load_model(tiny_model_dir(arch, head), head, dtype="float32", extra=extra)


def make_batch(head, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    labels = torch.tensor([0, 2]) if head == "seq_cls" else ids.clone()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def logits(model, batch):
    with evaluating(model):  # dropout off; 4-bit layers stay in their trainable layout
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach().clone()


def train_step(model, batch, lr=1e-2):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    opt.zero_grad(set_to_none=True)
    return grads


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def trainable_count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def in_out(module):
    if isinstance(module, Conv1D):  # GPT-2 stores weights as (in, out)
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def targeted(base, arch):
    """The base model's (name, module) pairs LoRA should wrap: block layers ending in a target suffix."""
    return [(n, m) for n, m in base.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and "pooler" not in n
            and any(n.endswith("." + s) for s in LORA_TARGETS[arch])]


def blocks(base, arch):
    return {"llama": lambda: base.model.layers, "qwen2": lambda: base.model.layers,
            "gpt2": lambda: base.transformer.h, "bert": lambda: base.bert.encoder.layer}[arch]()


def expected_trainable(method, arch, head, base):
    if method == "full":
        return sum(p.numel() for p in base.parameters())
    if method == "freeze":  # last block + the head (unless tied to the embeddings)
        n = sum(p.numel() for p in blocks(base, arch)[-1].parameters())
        if arch in ("llama", "qwen2"):
            n += base.lm_head.weight.numel()
        elif arch == "gpt2":
            assert base.lm_head.weight is base.transformer.wte.weight  # tied: stays frozen
        elif arch == "bert":  # seq_cls head: classifier, and the pooler that feeds it
            n += sum(p.numel() for p in base.classifier.parameters())
            n += sum(p.numel() for p in base.bert.pooler.parameters())
        return n
    layers = targeted(base, arch)
    n = sum(R * sum(in_out(m)) for _, m in layers)
    if method == "dora":  # + one magnitude per output feature
        n += sum(in_out(m)[1] for _, m in layers)
    if head == "seq_cls":  # PEFT trains a copy of the classifier (modules_to_save)
        n += sum(p.numel() for p in base.classifier.parameters())
    return n


def assert_plain_model(model):
    assert isinstance(model, PreTrainedModel) and not isinstance(model, PeftModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert not any("lora_" in n or "base_layer" in n or "modules_to_save" in n for n, _ in model.named_parameters())


def is_4bit(module):
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)  # not PEFT's wrapper, which has the same class name


# --------------------------------------------------------------------------- full / freeze / lora

@pytest.mark.parametrize("method_name,arch,head", CASES, ids=IDS)
def test_apply_keeps_the_base_output(tiny_model_dir, method_name, arch, head):
    batch = make_batch(head)
    reference = logits(load_base(tiny_model_dir, arch, head), batch)
    model = build_method(SPECS[method_name]).apply(load_base(tiny_model_dir, arch, head), head)
    # LoRA starts with B = 0; DoRA's magnitude/direction split recomputes W, so only to rounding
    atol = 1e-6 if method_name == "dora" else 0.0
    torch.testing.assert_close(logits(model, batch), reference, rtol=0, atol=atol)


@pytest.mark.parametrize("method_name,arch,head", CASES, ids=IDS)
def test_trainable_parameters_match_the_formula(tiny_model_dir, method_name, arch, head):
    base = load_base(tiny_model_dir, arch, head)
    expected = expected_trainable(method_name, arch, head, base)
    if method_name in ("lora", "dora", "rslora"):
        # hand check of the formula for llama: hidden 32, kv 16, intermediate 64, 2 blocks
        if arch == "llama" and method_name == "lora":
            assert expected == 2 * R * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 64))
        assert len(targeted(base, arch)) == 2 * len(LORA_TARGETS[arch])
    model = build_method(SPECS[method_name]).apply(base, head)
    assert trainable_count(model) == expected
    assert count_parameters(model)[0] == expected


@pytest.mark.parametrize("method_name,arch,head", CASES, ids=IDS)
def test_one_step_changes_only_trainable_parameters(tiny_model_dir, method_name, arch, head):
    model = build_method(SPECS[method_name]).apply(load_base(tiny_model_dir, arch, head), head)
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    grads = train_step(model, make_batch(head))
    assert set(grads) == trainable  # gradients reach exactly the trainable tensors
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = set(before) - trainable
    assert not (changed & frozen), sorted(changed & frozen)[:5]
    moved = {n for n in trainable if grads[n].abs().sum() > 0}
    assert moved and moved <= changed
    if method_name in ("lora", "dora", "rslora"):
        assert all("lora_" in n or "modules_to_save" in n for n in trainable)
        assert any(n.endswith("base_layer.weight") for n in frozen)
        assert all(n in changed for n in trainable if "lora_B" in n)  # B left zero


@pytest.mark.parametrize("method_name,arch,head", CASES, ids=IDS)
def test_save_and_load_into_a_fresh_base(tiny_model_dir, tmp_path, method_name, arch, head):
    method = build_method(SPECS[method_name])
    model = method.apply(load_base(tiny_model_dir, arch, head), head)
    batch = make_batch(head)
    train_step(model, batch)
    expected = logits(model, batch)
    assert not torch.equal(expected, logits(load_base(tiny_model_dir, arch, head), batch))  # it learned
    method.save(model, tmp_path / "saved")
    loaded = build_method(SPECS[method_name]).load(load_base(tiny_model_dir, arch, head), tmp_path / "saved", head)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)
    if method_name == "freeze":  # the delta holds just the trained tensors
        from safetensors.torch import load_file

        delta = load_file(tmp_path / "saved" / "delta.safetensors")
        assert sum(t.numel() for t in delta.values()) == trainable_count(model)
        assert json.loads((tmp_path / "saved" / "delta_config.json").read_text())["method"]["last_n_layers"] == 1


@pytest.mark.parametrize("method_name,arch,head", LORA_CASES, ids=LORA_IDS)
def test_lora_adapter_loads_with_plain_peft(tiny_model_dir, tmp_path, method_name, arch, head):
    method = build_method(SPECS[method_name])
    model = method.apply(load_base(tiny_model_dir, arch, head), head)
    batch = make_batch(head)
    train_step(model, batch)
    expected = logits(model, batch)
    method.save(model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "adapter_model.bin"}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == R and config["lora_alpha"] == ALPHA
    assert config["use_dora"] == (method_name == "dora") and config["use_rslora"] == (method_name == "rslora")
    plain = PeftModel.from_pretrained(load_base(tiny_model_dir, arch, head), tmp_path / "adapter")
    torch.testing.assert_close(logits(plain, batch), expected, rtol=0, atol=1e-6)


def test_rslora_scales_by_alpha_over_sqrt_r(tiny_model_dir):
    lora = build_method(SPECS["lora"]).apply(load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    rs = build_method(SPECS["rslora"]).apply(load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    q = lora.base_model.model.model.layers[0].self_attn.q_proj
    q_rs = rs.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(ALPHA / R)
    assert q_rs.scaling["default"] == pytest.approx(ALPHA / math.sqrt(R))


@pytest.mark.parametrize("method_name,arch,head",
                         [c for c in CASES if c[0] in ("full", "freeze", "lora", "dora")],
                         ids=[i for i, c in zip(IDS, CASES) if c[0] in ("full", "freeze", "lora", "dora")])
def test_merge_gives_a_plain_model_with_the_same_output(tiny_model_dir, method_name, arch, head):
    method = build_method(SPECS[method_name])
    model = method.apply(load_base(tiny_model_dir, arch, head), head)
    batch = make_batch(head)
    train_step(model, batch)
    expected = logits(model, batch)
    merged = method.merge(model)
    assert_plain_model(merged)
    assert type(merged).__name__ == type(load_base(tiny_model_dir, arch, head)).__name__
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-5)


def test_gpt2_conv1d_targets(tiny_model_dir, tmp_path):
    method = build_method({"name": "lora", "r": R, "alpha": ALPHA, "targets": ["c_attn"]})
    base = load_base(tiny_model_dir, "gpt2", "causal_lm")
    c_attn = base.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, Conv1D) and c_attn.weight.shape == (32, 96)  # (in, out)
    model = method.apply(base, "causal_lm")
    wrapped = [m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert len(wrapped) == 2 and all(isinstance(m.base_layer, Conv1D) for m in wrapped)
    assert all(m.fan_in_fan_out for m in wrapped)
    assert trainable_count(model) == 2 * R * (32 + 96)
    batch = make_batch("causal_lm")
    train_step(model, batch)
    expected = logits(model, batch)
    # merge must transpose the update for Conv1D's (in, out) layout
    merged = method.merge(model)
    assert_plain_model(merged)
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-5)


def test_lora_regex_targets(tiny_model_dir):
    method = build_method({"name": "lora", "r": R, "targets": [r".*layers\.1\.self_attn\.(q|v)_proj"]})
    model = method.apply(load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer))
    assert [n.split("model.layers.")[1] for n in wrapped] == ["1.self_attn.q_proj", "1.self_attn.v_proj"]


@pytest.mark.parametrize("arch,head", ARCHS, ids=[a for a, _ in ARCHS])
def test_target_pattern_matching_nothing_lists_the_linear_layers(tiny_model_dir, arch, head):
    base = load_base(tiny_model_dir, arch, head)
    with pytest.raises(MethodError) as info:
        build_method({"name": "lora", "targets": ["qkv_proj"]}).apply(base, head)
    msg = str(info.value)
    assert "qkv_proj" in msg and "match no linear layer" in msg
    for suffix in {s.rsplit(".", 1)[-1] for s in LORA_TARGETS[arch]}:
        assert repr(suffix) in msg
    assert info.value.exit_code == 2


def test_freeze_pattern_matching_nothing_errors(tiny_model_dir):
    base = load_base(tiny_model_dir, "llama", "causal_lm")
    with pytest.raises(MethodError, match="matches no parameter"):
        build_method({"name": "freeze", "last_n_layers": 0, "patterns": ["nothing_here"]}).apply(base, "causal_lm")


def test_freeze_with_nothing_to_train_errors(tiny_model_dir):
    base = load_base(tiny_model_dir, "gpt2", "causal_lm")  # tied head: train_head adds nothing
    with pytest.raises(MethodError, match="no trainable parameters"):
        build_method({"name": "freeze", "last_n_layers": 0}).apply(base, "causal_lm")


def test_freeze_patterns_train_matching_parameters(tiny_model_dir):
    base = load_base(tiny_model_dir, "llama", "causal_lm")
    model = build_method({"name": "freeze", "last_n_layers": 0, "patterns": [r"\.norm\.weight$"],
                          "train_head": False}).apply(base, "causal_lm")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.norm.weight"]


# --------------------------------------------------------------------------- qlora

def qlora_model(tiny_model_dir):
    method = build_method(QLORA)
    base = load_base(tiny_model_dir, "llama", "causal_lm", method)
    assert sum(is_4bit(m) for m in base.modules()) == 14  # every block projection is 4-bit
    return method, base


def test_qlora_apply_keeps_the_quantized_output(tiny_model_dir):
    method, base = qlora_model(tiny_model_dir)
    batch = make_batch("causal_lm")
    before = logits(base, batch)
    model = method.apply(base, "causal_lm")
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=0)
    # the 4-bit model is not the full-precision one: quantization really happened
    full = logits(load_base(tiny_model_dir, "llama", "causal_lm"), batch)
    assert not torch.equal(before, full)
    reference = load_base(tiny_model_dir, "llama", "causal_lm")
    assert trainable_count(model) == expected_trainable("lora", "llama", "causal_lm", reference)
    assert all(is_4bit(m.base_layer) for m in model.modules() if isinstance(m, BaseTunerLayer))


def test_qlora_step_changes_only_lora_weights(tiny_model_dir):
    method, base = qlora_model(tiny_model_dir)
    model = method.apply(base, "causal_lm")
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    grads = train_step(model, make_batch("causal_lm"))
    assert set(grads) == trainable
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert {n for n in trainable if "lora_B" in n} <= changed
    packed = [n for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"]
    assert len(packed) == 14 and not set(packed) & changed  # packed NF4 weights bit-for-bit equal


def test_qlora_save_and_load(tiny_model_dir, tmp_path):
    method, base = qlora_model(tiny_model_dir)
    model = method.apply(base, "causal_lm")
    batch = make_batch("causal_lm")
    train_step(model, batch)
    expected = logits(model, batch)
    method.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = load_base(tiny_model_dir, "llama", "causal_lm", method)
    loaded = build_method(QLORA).load(fresh, tmp_path / "adapter", "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


def test_qlora_merge_dequantizes(tiny_model_dir):
    method, base = qlora_model(tiny_model_dir)
    model = method.apply(base, "causal_lm")
    batch = make_batch("causal_lm")
    train_step(model, batch)
    expected = logits(model, batch)
    with pytest.warns(UserWarning, match="de-quantized"):
        merged = method.merge(model)
    assert_plain_model(merged)
    assert not any(is_4bit(m) for m in merged.modules())
    assert not any(type(p).__name__ == "Params4bit" for p in merged.parameters())
    assert not hasattr(merged.config, "quantization_config")
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    # the merged weights are W_dequant + (alpha/r)·B·A; the 4-bit model computes with the
    # same de-quantized W in float32, so only float rounding separates them
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-4)


def test_evaluating_keeps_4bit_layers_trainable(tiny_model_dir, monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules

    method, base = qlora_model(tiny_model_dir)
    model = method.apply(base, "causal_lm")
    batch = make_batch("causal_lm")
    train_step(model, batch)  # B ≠ 0, so gradients flow through every layer's update

    def lora_grad_norm():
        model.train()
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        norms = [p.grad.norm() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
        assert len(norms) == 2 * 14
        return torch.stack(norms).norm().item(), min(n.item() for n in norms)

    g0, _ = lora_grad_norm()
    assert g0 > 0
    with evaluating(model) as m:
        assert not m.training and not torch.is_grad_enabled()
        layers = [x for x in m.modules() if is_4bit(x)]
        assert len(layers) == 14 and all(x.training for x in layers)
        assert not any(x.training for x in m.modules() if isinstance(x, nn.Dropout))
        m(input_ids=batch["input_ids"])
    assert model.training and torch.is_grad_enabled()
    g1, smallest = lora_grad_norm()
    assert g1 / g0 > 0.5 and smallest > 0

    # bitsandbytes repacks a layer's weights for inference only on CPUs with AVX512-BF16, so
    # pretend every CPU has it and watch for the repack: `evaluating` must never trigger it,
    # while a plain eval() + no_grad forward does (the trap this guards against).
    repacks = []

    def spy(weight, quant_state, *args, **kwargs):
        repacks.append(quant_state)
        return weight, quant_state  # record only: keep the trainable layout

    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", spy)
    for layer in layers:
        monkeypatch.setattr(layer, "support_avx512bf16_for_cpu", True)
    with evaluating(model):
        model(input_ids=batch["input_ids"])
    assert repacks == []
    model.eval()
    with torch.no_grad():
        model(input_ids=batch["input_ids"])
    assert len(repacks) == 14
