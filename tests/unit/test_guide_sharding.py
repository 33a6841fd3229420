"""Per-GPU memory under DDP, ZeRO-1/2/3 and FSDP (guide/sharding.py through peak_memory.estimate),
the GPU dtype facts (precision auto on a GPU), the GPU table, --max-batch, and the CLI's per-GPU
breakdown, against hand-computed cases."""
from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig
from typer.testing import CliRunner

from leantune.cli import app
from leantune.guide.gpus import GPUS, find_gpu
from leantune.guide.model_shape import GB, shape_from_config
from leantune.guide.peak_memory import Setting, estimate, max_batch
from leantune.guide.sharding import per_gpu, unit_params

H, F, L, A, KV, V = 32, 64, 8, 4, 2, 300
N = 4


@pytest.fixture(scope="module")
def llama():
    return shape_from_config(LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=F, num_hidden_layers=L,
                                         num_attention_heads=A, num_key_value_heads=KV, tie_word_embeddings=False),
                             "tiny-llama")


def run(shape, **kw):
    base = dict(method=[{"name": "full"}], precision="fp32", batch_size=2, seq_len=16, device="cuda",
                overhead_mb=0)
    return estimate(shape, Setting(**{**base, **kw}))


def test_full_fp32_ddp_zero_fsdp_by_hand(llama):
    """Full fine-tuning, AdamW, fp32 parameters: 4 + 4 + 8 = 16 B per parameter, sharded per stage."""
    P = llama.params
    ddp = run(llama, gpus=N)
    c = ddp.components
    assert (c["weights"], c["trainable"], c["gradients"], c["optimizer"]) == (0, 4 * P, 4 * P, 8 * P)
    rest = c["activations"] + c["logits"]
    assert ddp.total == 16 * P + rest
    assert ddp.total == run(llama).total  # DDP: every GPU holds everything
    zero1 = run(llama, gpus=N, strategy="zero1")
    assert zero1.total == pytest.approx(4 * P + 4 * P + 8 * P / N + rest)
    zero2 = run(llama, gpus=N, strategy="zero2")
    assert zero2.total == pytest.approx(4 * P + (4 + 8) * P / N + rest)
    zero3 = run(llama, gpus=N, strategy="zero3")
    # gathered: embeddings + head + final norm, and two of the eight blocks, in fp32, and one block's gradient
    unit = P - llama.linear_params + 2 * llama.linear_params / L
    assert unit_params(P, llama.linear_params, L) == int(unit)
    gathered = 4 * (int(unit) + llama.linear_params / L)
    assert zero3.components["gathered"] == pytest.approx(gathered)
    assert zero3.total == pytest.approx(16 * P / N + gathered + rest)
    fsdp = run(llama, gpus=N, strategy="fsdp")
    assert fsdp.components == zero3.components  # full shard = ZeRO-3
    assert ddp.total > zero1.total > zero2.total > zero3.total
    assert not ddp.host and any("1/4" in n for n in zero2.notes)


def test_gpu_auto_precision_matches_the_pipeline(llama):
    """GPU, precision auto: bf16 frozen weights, fp32 master weights for what trains (keep_fp32_master_weights)."""
    P = llama.params
    full = run(llama, precision="auto")
    c = full.components
    assert (c["weights"], c["trainable"], c["gradients"], c["optimizer"]) == (0, 4 * P, 4 * P, 8 * P)
    assert full.setting["precision"] == "mixed" and full.setting["weight_dtype"] == "bf16"
    assert any("fp32 master weights" in n for n in full.notes)
    lora = run(llama, precision="auto", method=[{"name": "lora", "r": 4}])
    T, frozen = lora.trainable_params, lora.total_params - lora.trainable_params
    c = lora.components
    assert (c["weights"], c["trainable"], c["gradients"], c["optimizer"]) == (2 * frozen, 4 * T, 4 * T, 8 * T)
    assert any("frozen weights in bf16" in n for n in lora.notes)
    # autocast copies only of fp32 weights: the frozen bf16 ones need none
    fp32_frozen = run(llama, precision="mixed", method=[{"name": "lora", "r": 4}])
    assert fp32_frozen.components["weights"] == 4 * frozen
    assert fp32_frozen.components["activations"] - c["activations"] == pytest.approx(2 * (llama.linear_params - T))
    assert run(llama, precision="auto", weight_dtype="fp16").setting["weight_dtype"] == "fp16"
    # frozen bf16 embeddings make the residual stream bf16: checkpointed layer inputs at 2 B, not 4
    lora4 = [{"name": "lora", "r": 4}]
    ck = run(llama, precision="auto", method=lora4, gradient_checkpointing=True).components["activations"]
    ck32 = run(llama, precision="mixed", method=lora4, gradient_checkpointing=True).components["activations"]
    t = 2 * 16
    assert ck32 - ck == pytest.approx(L * 2 * t * H + 2 * (llama.linear_params - T) / L)
    # CPU: auto is fp32, unchanged
    cpu = dict(device="cpu", overhead_mb=None)
    assert run(llama, precision="auto", **cpu).components == run(llama, **cpu).components


def test_deepspeed_half_split_and_fsdp_fp32_shards(llama):
    """DeepSpeed under autocast: bf16 model and gradients, fp32 master weights in the optimizer (2 + 2 + 12);
    FSDP keeps fp32 shards (4 + 4 + 8) and gathers in bf16."""
    P = llama.params
    zero1 = run(llama, precision="auto", gpus=N, strategy="zero1")
    c = zero1.components
    assert (c["trainable"], c["gradients"], c["optimizer"]) == (2 * P, 2 * P, 12 * P / N)
    zero2 = run(llama, precision="auto", gpus=N, strategy="zero2")
    assert zero2.components["gradients"] == 2 * P / N and zero2.components["trainable"] == 2 * P
    fsdp = run(llama, precision="auto", gpus=N, strategy="fsdp")
    c = fsdp.components
    assert (c["trainable"], c["gradients"], c["optimizer"]) == (4 * P / N, 4 * P / N, 8 * P / N)
    assert c["gathered"] == pytest.approx(2 * (unit_params(P, llama.linear_params, L) + llama.linear_params / L))
    lora = run(llama, precision="auto", gpus=N, strategy="fsdp", method=[{"name": "lora", "r": 4}])
    T = lora.trainable_params  # frozen blocks send no gradient
    assert lora.components["gathered"] == pytest.approx(2 * (unit_params(lora.total_params, llama.linear_params, L)
                                                              + T / L))


def test_peft_frozen_weights_replicated_until_zero3(llama):
    lora = [{"name": "lora", "r": 4}]
    ddp = run(llama, method=lora, gpus=N)
    T, frozen = ddp.trainable_params, ddp.total_params - ddp.trainable_params
    assert ddp.components["weights"] == 4 * frozen
    for stage in ("zero1", "zero2"):
        e = run(llama, method=lora, gpus=N, strategy=stage)
        assert e.components["weights"] == 4 * frozen  # replicated
        assert e.components["optimizer"] == 8 * T / N
        assert any("frozen base weights replicated" in n for n in e.notes)
    assert run(llama, method=lora, gpus=N, strategy="zero2").components["gradients"] == 4 * T / N
    for stage in ("zero3", "fsdp"):
        e = run(llama, method=lora, gpus=N, strategy=stage)
        assert e.components["weights"] == 4 * frozen / N and e.components["trainable"] == 4 * T / N
    with pytest.raises(ValueError, match="cannot be sharded"):
        run(llama, method=[{"name": "qlora"}], precision="bf16", gpus=N, strategy="zero3")
    assert run(llama, method=[{"name": "qlora"}], precision="bf16", gpus=N, strategy="zero2").total > 0


def test_offload_moves_states_to_host(llama):
    P = llama.params
    opt = run(llama, gpus=N, strategy="zero2", offload="optimizer")
    assert opt.components["optimizer"] == 0 and opt.host == {"optimizer": 8 * P / N}
    assert opt.total == pytest.approx(run(llama, gpus=N, strategy="zero2").total - 8 * P / N)
    z3 = run(llama, gpus=N, strategy="zero3", offload="cpu")
    assert z3.host == pytest.approx({"weights": 0, "trainable": 4 * P / N, "optimizer": 8 * P / N})
    assert z3.components["gradients"] == 4 * P / N and z3.components["gathered"] > 0
    assert run(llama, gpus=N, strategy="zero1", offload="all").host == {"optimizer": 8 * P / N}  # params replicated
    fsdp = run(llama, gpus=N, strategy="fsdp", offload="optimizer")
    assert fsdp.host == pytest.approx({"weights": 0, "trainable": 4 * P / N, "gradients": 4 * P / N,
                                       "optimizer": 8 * P / N})
    assert fsdp.as_dict()["host_bytes"] == pytest.approx(16 * P / N)
    assert any(f"for {N} processes on one machine" in n for n in fsdp.notes)
    with pytest.raises(ValueError, match="needs ZeRO"):
        run(llama, gpus=N, offload="cpu")
    with pytest.raises(ValueError, match="needs GPUs"):
        run(llama, gpus=N, strategy="zero2", device="cpu")
    with pytest.raises(ValueError, match="strategy"):
        run(llama, strategy="zero4")


def test_setting_from_recipe_distributed(monkeypatch):
    from leantune.guide.estimate import setting_from_recipe
    from leantune.recipe import load_recipe

    recipe = load_recipe(raw={"model": "smollm2-135m", "method": "full", "train": {
        "distributed": {"strategy": "deepspeed", "zero_stage": 3, "offload": "all"}}})
    monkeypatch.setenv("WORLD_SIZE", "4")
    s = setting_from_recipe(recipe, device="cuda")
    assert (s.gpus, s.strategy, s.offload, s.precision, s.weight_dtype) == (4, "zero3", "all", "mixed", "bf16")
    cpu = setting_from_recipe(recipe, device="cpu")
    assert (cpu.strategy, cpu.offload) == ("ddp", "none")  # CPU processes run DDP
    fsdp = load_recipe(raw={"model": "smollm2-135m", "method": "lora", "train": {"distributed": {"strategy": "fsdp"}}})
    assert setting_from_recipe(fsdp, device="cuda", gpus=2).strategy == "fsdp"


def test_per_gpu_plain_arithmetic():
    comps = {"weights": 100.0, "trainable": 40.0, "gradients": 40.0, "optimizer": 80.0, "activations": 7.0}
    gpu, host, _ = per_gpu(comps, 4, "zero2")
    assert gpu == {**comps, "gradients": 10.0, "optimizer": 20.0} and host == {}
    gpu, host, _ = per_gpu(comps, 4, "zero3", "all", gathered=5.0)
    assert gpu == {"weights": 0.0, "trainable": 0.0, "gradients": 10.0, "optimizer": 0.0, "activations": 7.0,
                   "gathered": 5.0}
    assert host == {"weights": 25.0, "trainable": 10.0, "optimizer": 20.0}


def test_max_batch_is_the_largest_that_fits(llama):
    s = Setting(method=[{"name": "lora", "r": 4}], precision="auto", seq_len=64, device="cuda", overhead_mb=0)
    totals = [estimate(llama, Setting(**{**s.__dict__, "batch_size": b})).total for b in range(1, 40)]
    assert totals == sorted(totals)  # grows with the batch
    budget = totals[22] + 1  # batch 23 fits, 24 does not
    assert max_batch(llama, s, budget) == 23
    assert max_batch(llama, s, totals[0] - 1) == 0
    assert max_batch(llama, s, 1e18, limit=64) == 64


def test_gpu_names_resolve():
    for name in ("a100-80g", "a100-40g", "h100", "h200", "l4", "l40s", "4090", "3090", "t4", "v100", "a10g"):
        assert find_gpu(name) is GPUS[name]
    assert find_gpu("NVIDIA A100-80G").name == "a100-80g" and find_gpu("RTX 4090").name == "4090"
    assert find_gpu("GeForce RTX 3090").name == "3090" and find_gpu("a100").name == "a100-80g"
    assert find_gpu("t4").half == "fp16" and find_gpu("v100").half == "fp16" and find_gpu("h100").half == "bf16"
    assert 23 < find_gpu("4090").usable_bytes / GB < 24 and 139 < find_gpu("h200").memory_gib < 141
    with pytest.raises(ValueError, match="unknown GPU"):
        find_gpu("b200x")


def test_cli_per_gpu_breakdown_in_80_columns(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=F, num_hidden_layers=L,
                                          num_attention_heads=A, num_key_value_heads=KV).to_dict()))
    runner = CliRunner()
    r = runner.invoke(app, ["estimate", str(cfg), "-m", "full", "--gpus", "4", "--strategy", "zero3", "--offload",
                            "cpu", "--gpu", "t4", "-b", "2", "-s", "16", "--grad-accum", "4", "--max-batch"],
                      env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    out = r.output
    assert max(len(line) for line in out.splitlines()) <= 80
    for word in ("per GPU", "host", "gathered", "optimizer", "fp16 autocast", "4 GPUs zero3", "verdict against t4",
                 "largest micro-batch", "2 × 4 × 4 GPUs = 32"):
        assert word in out, word
    r = runner.invoke(app, ["estimate", str(cfg), "-m", "lora", "--gpus", "2", "--strategy", "zero2", "--json",
                            "--budget", "1GB", "--max-batch", "-s", "16"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["setting"]["strategy"] == "zero2" and d["setting"]["device"] == "cuda" and d["max_batch"] >= 1
    assert d["verdict"] == "fits"
    r = runner.invoke(app, ["estimate", str(cfg), "--gpu", "b200x"])
    assert r.exit_code != 0 and "unknown GPU" in r.output
    r = runner.invoke(app, ["estimate", str(cfg), "-m", "qlora", "--strategy", "fsdp", "--gpus", "2"])
    assert r.exit_code != 0 and "cannot be sharded" in r.output
