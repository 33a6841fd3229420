"""Composing methods: one PEFT method + our own, hybrids (MAM, UniPELT), layer-wise lr decay."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from test_methods_own import D, logits, make_batch, n_trainable, train_step, trainable

from leantune.errors import NotMergeable, RecipeError
from leantune.methods.composite import Composite
from leantune.methods.registry import build_method
from leantune.models.loading import load_model
from leantune.recipe.method_settings import validate_method_settings

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LORA = {"name": "lora", "r": 2, "alpha": 4}
PARALLEL = {"name": "adapter", "kind": "parallel", "reduction_factor": 4, "scaling": 2.0}


def load_base(tiny_model_dir, arch="llama", head="causal_lm"):
    return load_model(tiny_model_dir(arch, head), head, dtype="float32")


def lora_count_llama(r=2):  # q (32→32), k, v (32→16), o (32→32), gate/up (32→64), down (64→32), 2 blocks
    return 2 * r * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 64))


def test_lora_plus_parallel_adapter(tiny_model_dir, tmp_path):
    method = build_method([LORA, PARALLEL])
    assert isinstance(method, Composite) and method.name == "lora+adapter" and not method.mergeable
    batch = make_batch("causal_lm")
    reference = logits(load_base(tiny_model_dir), batch)
    model = method.apply(load_base(tiny_model_dir), "causal_lm")
    assert isinstance(model, PeftModel)
    torch.testing.assert_close(logits(model, batch), reference, rtol=0, atol=1e-6)  # both start at zero
    names = trainable(model)
    adapters = {n for n in names if "leantune_adapter" in n}
    assert n_trainable(model) == lora_count_llama() + 2 * (2 * D * 8 + 8 + D)
    assert adapters and all("lora_" in n for n in names - adapters)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = train_step(model, batch)
    assert set(grads) == names
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= names and any("lora_B" in n for n in changed) and any(".up." in n for n in changed)
    expected = logits(model, batch)

    method.save(model, tmp_path / "adapter")
    folders = sorted(p.name for p in (tmp_path / "adapter").iterdir() if p.is_dir())
    assert folders == ["0-lora", "1-adapter"]
    assert (tmp_path / "adapter" / "0-lora" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "1-adapter" / "delta.safetensors").is_file()
    manifest = json.loads((tmp_path / "adapter" / "composite.json").read_text())
    assert [m["name"] for m in manifest["methods"]] == ["lora", "adapter"]

    loaded = build_method([LORA, PARALLEL]).load(load_base(tiny_model_dir), tmp_path / "adapter", "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)
    with pytest.raises(NotMergeable, match="adapter"):
        method.merge(model)


def test_peft_method_is_applied_first_whatever_its_place(tiny_model_dir, tmp_path):
    method = build_method([PARALLEL, LORA])
    model = method.apply(load_base(tiny_model_dir), "causal_lm")
    assert n_trainable(model) == lora_count_llama() + 2 * (2 * D * 8 + 8 + D)
    batch = make_batch("causal_lm")
    train_step(model, batch)
    expected = logits(model, batch)
    method.save(model, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == ["0-adapter", "1-lora"]
    loaded = build_method([PARALLEL, LORA]).load(load_base(tiny_model_dir), tmp_path / "a", "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


def test_seq_cls_head_is_trained_once(tiny_model_dir):
    model = build_method([LORA, PARALLEL]).apply(load_base(tiny_model_dir, "bert", "seq_cls"), "seq_cls")
    heads = {n for n in trainable(model) if "classifier" in n}
    assert heads and all("modules_to_save" in n for n in heads)  # PEFT's copy only
    ours = build_method([PARALLEL, {"name": "bitfit"}]).apply(load_base(tiny_model_dir, "bert", "seq_cls"), "seq_cls")
    assert {"classifier.weight", "classifier.bias"} <= trainable(ours)
    method = build_method([PARALLEL, {"name": "bitfit"}])
    method.apply(load_base(tiny_model_dir, "bert", "seq_cls"), "seq_cls")
    adapter, bitfit = method.members
    assert "classifier.weight" in adapter.param_names and "classifier.weight" not in bitfit.param_names
    assert not set(adapter.param_names) & set(bitfit.param_names)  # each saves only its own


def test_prefix_tuning_plus_parallel_adapter(tiny_model_dir, tmp_path):
    spec = [{"name": "prefix_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16}, PARALLEL]
    method = build_method(spec)
    model = method.apply(load_base(tiny_model_dir), "causal_lm")
    names = trainable(model)
    assert any("leantune_adapter" in n for n in names) and any("prompt_encoder" in n for n in names)
    batch = make_batch("causal_lm")
    grads = train_step(model, batch)
    assert set(grads) == names
    expected = logits(model, batch)
    method.save(model, tmp_path / "a")
    loaded = build_method(spec).load(load_base(tiny_model_dir), tmp_path / "a", "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-5)


def test_two_peft_methods_are_refused():
    with pytest.raises(RecipeError, match="PEFT-based") as info:
        validate_method_settings([{"name": "lora"}, {"name": "ia3"}], "recipe.yaml")
    assert "lora" in str(info.value) and "ia3" in str(info.value)
    with pytest.raises(RecipeError, match="listed twice"):
        build_method([PARALLEL, PARALLEL])


def test_validate_fills_defaults_of_every_member():
    out = validate_method_settings([{"name": "lora"}, {"name": "adapter", "kind": "parallel"}], "r")
    assert [m["name"] for m in out] == ["lora", "adapter"]
    assert out[1]["reduction_factor"] == 16 and out[0]["r"] == 8


def test_mam_is_prefix_plus_scaled_parallel_adapter(tiny_model_dir, tmp_path):
    from leantune.methods.adapter import Bottleneck
    from leantune.methods.kv_prefix import KVPrefix

    spec = {"name": "mam", "prefix_length": 3, "reduction_factor": 4, "scaling": 4.0}
    m = build_method(spec)
    model = m.apply(load_base(tiny_model_dir), "causal_lm")
    parallel = [x for n, x in model.named_modules() if isinstance(x, Bottleneck) and n.endswith("mlp.leantune_adapter")]
    prefixes = [x for x in model.modules() if isinstance(x, KVPrefix)]
    assert len(parallel) == 2 and len(prefixes) == 2
    assert all(p.scaling == 4.0 for p in parallel)
    assert model.config._attn_implementation.startswith("leantune_prefix_")
    batch = make_batch("causal_lm")
    train_step(model, batch)
    expected = logits(model, batch)
    m.save(model, tmp_path / "mam")
    loaded = build_method(spec).load(load_base(tiny_model_dir), tmp_path / "mam", "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)
    # generation runs through the prefix-aware attention with a growing cache
    out = loaded.generate(batch["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_unipelt_gates(tiny_model_dir):
    from leantune.methods.kv_prefix import KVPrefix
    from leantune.methods.unipelt import GatedAdapter, GatedLoRA

    batch = make_batch("causal_lm")
    reference = logits(load_base(tiny_model_dir), batch)
    model = build_method({"name": "unipelt", "lora_r": 2, "prefix_length": 0}).apply(
        load_base(tiny_model_dir), "causal_lm")
    loras = [m for m in model.modules() if isinstance(m, GatedLoRA)]
    adapters = [m for m in model.modules() if isinstance(m, GatedAdapter)]
    assert len(loras) == 4 and len(adapters) == 2  # q and v per block; one adapter per block
    with torch.no_grad():
        for m in loras:
            m.lora_B.normal_()
        for m in adapters:
            m.adapter.up.weight.normal_()
    opened = logits(model, batch)
    assert not torch.allclose(opened, reference)
    x = torch.randn(3, 5, D)
    g = torch.sigmoid(loras[0].gate(x))
    assert ((g > 0) & (g < 1)).all() and g.std() > 0  # per-token gates in (0, 1)
    with torch.no_grad():  # close every gate: the model is the base again
        for m in loras + adapters:
            m.gate.bias.fill_(-1e4)
    torch.testing.assert_close(logits(model, batch), reference, rtol=0, atol=1e-5)

    gated = build_method({"name": "unipelt", "lora_r": 2, "prefix_length": 3}).apply(
        load_base(tiny_model_dir), "causal_lm")
    prefixes = [m for m in gated.modules() if isinstance(m, KVPrefix)]
    assert len(prefixes) == 2 and all(p.gate is not None for p in prefixes)
    logits(gated, batch)
    gates = prefixes[0].gate_value()
    assert gates.shape == (2, 1) and ((gates > 0) & (gates < 1)).all()
    grads = train_step(gated, batch)
    assert all(grads[n].abs().sum() > 0 for n in grads if "leantune_prefix.gate" in n)


def test_composite_of_our_own_methods_round_trip(tiny_model_dir, tmp_path):
    spec = [{"name": "bitfit"}, {"name": "compacter", "reduction_factor": 4}, {"name": "lst"}]
    method = build_method(spec)
    model = method.apply(load_base(tiny_model_dir, "gpt2"), "causal_lm")
    batch = make_batch("causal_lm")
    train_step(model, batch)
    expected = logits(model, batch)
    method.save(model, tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == ["0-bitfit", "1-compacter", "2-lst"]
    sizes = [sum(t.numel() for t in __import__("safetensors.torch").torch.load_file(
        tmp_path / "c" / f / "delta.safetensors").values()) for f in ("0-bitfit", "1-compacter", "2-lst")]
    assert sum(sizes) == n_trainable(model)  # disjoint parts, together everything trained
    loaded = build_method(spec).load(load_base(tiny_model_dir, "gpt2"), tmp_path / "c", "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


def test_llrd_groups_follow_depth(tiny_model_dir):
    model = load_base(tiny_model_dir)
    method = build_method([{"name": "full"}, {"name": "llrd", "decay": 0.5}])
    model = method.apply(model, "causal_lm")
    assert n_trainable(model) == sum(p.numel() for p in model.parameters())
    groups = method.param_groups(model, 1.0, 0.1)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["model.embed_tokens.weight"])] == (0.25, 0.1)  # depth 0: lr·0.5²
    assert lr_of[id(named["model.layers.0.self_attn.q_proj.weight"])] == (0.5, 0.1)
    assert lr_of[id(named["model.layers.1.mlp.down_proj.weight"])] == (1.0, 0.1)
    assert lr_of[id(named["model.layers.0.input_layernorm.weight"])] == (0.5, 0.0)  # norms: no decay
    assert lr_of[id(named["lm_head.weight"])] == (1.0, 0.1)
    assert len(lr_of) == len(named)


def test_engine_uses_the_methods_param_groups(tiny_model_dir, tmp_path, monkeypatch):
    from leantune.recipe import TrainSection
    from leantune.training import engine as engine_mod

    method = build_method({"name": "llrd", "decay": 0.5})
    model = method.apply(load_base(tiny_model_dir), "causal_lm")
    seen = {}
    real = engine_mod.build_optimizer

    def spy(name, groups, lr):
        seen["lrs"] = sorted({g["lr"] for g in groups})
        return real(name, groups, lr)

    monkeypatch.setattr(engine_mod, "build_optimizer", spy)
    ids = list(range(10))
    features = [{"input_ids": ids, "labels": ids}] * 2

    def collate(rows, gen):
        t = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": t, "attention_mask": torch.ones_like(t), "labels": t}

    cfg = TrainSection(max_steps=1, batch_size=2, lr=0.01, precision="fp32")
    eng = engine_mod.Engine(model, features, cfg, tmp_path, collate, lambda m, b: m(**b).loss, progress=False,
                            param_groups=method.param_groups)
    eng.fit()
    assert seen["lrs"] == pytest.approx([0.0025, 0.005, 0.01])


def test_pipeline_trains_and_reloads_a_composition(tiny_model_dir, tmp_path):
    from test_pipeline import make_recipe, reevaluate

    from leantune.export.run_loading import load_run
    from leantune.pipeline import train

    method = [{"name": "lora", "r": 2}, PARALLEL, {"name": "llrd", "decay": 0.8}]
    recipe = make_recipe(tiny_model_dir("llama", "causal_lm"), tmp_path, method=method)
    assert [m["name"] for m in recipe.method] == ["lora", "adapter", "llrd"]
    summary = train(recipe, progress=False)
    assert summary.method == "lora+adapter+llrd" and summary.steps == 6
    adapter = Path(summary.run_dir) / "adapter"
    assert {p.name for p in adapter.iterdir() if p.is_dir()} == {"0-lora", "1-adapter", "2-llrd"}
    run = load_run(summary.run_dir)
    again = reevaluate(run)
    assert again == pytest.approx(summary.eval_after, rel=1e-5)
