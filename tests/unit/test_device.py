"""Device, precision and strategy resolution (training/device.py, training/runtime.py), with the
GPU count and capabilities of imagined machines: a CPU box, one GPU, four GPUs, an old GPU."""
from __future__ import annotations

import pytest
import torch

from leantune.errors import RecipeError
from leantune.recipe import TrainSection
from leantune.training import device as device_mod
from leantune.training import runtime as runtime_mod
from leantune.training.device import (
    halve_frozen_weights,
    keep_fp32_master_weights,
    resolve_device,
    resolve_precision,
)


@pytest.fixture
def machine(monkeypatch):
    """``machine(gpus=N, bf16=True, cpu_bf16=False)`` pretends torch sees that hardware."""
    def make(gpus: int = 0, bf16: bool = True, cpu_bf16: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100" if not bf16 else "H200")
        monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: cpu_bf16)
    return make


@pytest.mark.parametrize("gpus, spec, rank, expected", [
    (0, "auto", 0, "cpu"),
    (0, "auto", 3, "cpu"),
    (1, "auto", 0, "cuda:0"),
    (4, "auto", 3, "cuda:3"),
    (4, "cuda", 2, "cuda:2"),
    (4, "cuda:1", 0, "cuda:1"),
    (4, "cpu", 1, "cpu"),
    (2, "auto", 5, "cuda:1"),   # rank on a second machine: LOCAL_RANK wraps over this machine's GPUs
])
def test_device_resolution(machine, gpus, spec, rank, expected):
    machine(gpus=gpus)
    assert resolve_device(spec, rank) == torch.device(expected)


def test_auto_device_follows_local_rank(machine, monkeypatch):
    machine(gpus=4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda:2")


@pytest.mark.parametrize("gpus, spec, message", [
    (0, "cuda", "torch sees none"),
    (0, "cuda:0", "torch sees none"),
    (2, "cuda:2", "cuda:0 … cuda:1"),
    (2, "tpu", "not a device"),
])
def test_device_errors_name_the_setting(machine, gpus, spec, message):
    machine(gpus=gpus)
    with pytest.raises(RecipeError, match="train.device") as exc:
        resolve_device(spec, 0)
    assert message in str(exc.value)


@pytest.mark.parametrize("gpus, gpu_bf16, cpu_bf16, requested, device, expected", [
    (0, True, False, "auto", "cpu", "fp32"),      # Xeon without AVX512-BF16: emulated bf16 is slower
    (0, True, True, "auto", "cpu", "bf16"),       # AMX / AVX512-BF16
    (1, True, False, "auto", "cuda:0", "bf16"),   # Ampere and later
    (1, False, False, "auto", "cuda:0", "fp16"),  # V100, T4: fp16 with loss scaling
    (1, False, False, "fp32", "cuda:0", "fp32"),
    (0, True, False, "bf16", "cpu", "bf16"),      # asked for: allowed (emulated)
])
def test_precision_resolution(machine, gpus, gpu_bf16, cpu_bf16, requested, device, expected):
    machine(gpus=gpus, bf16=gpu_bf16, cpu_bf16=cpu_bf16)
    assert resolve_precision(requested, torch.device(device)) == expected


def test_fp16_on_cpu_and_bf16_on_an_old_gpu_are_refused(machine):
    machine(gpus=1, bf16=False)
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(RecipeError, match="bf16 is not supported by Tesla V100"):
        resolve_precision("bf16", torch.device("cuda:0"))


def test_master_weights_are_fp32_and_frozen_weights_keep_their_type():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    assert keep_fp32_master_weights(model) == 2
    assert model[1].weight.dtype == torch.float32 and model[1].bias.dtype == torch.float32
    assert model[0].weight.dtype == torch.bfloat16


def test_a_module_with_a_trainable_parameter_becomes_one_dtype():
    """BitFit on a half model: a LayerNorm whose bias trains keeps its weight beside it in fp32
    (torch's CPU layer norm refuses a bf16 weight with an fp32 bias); half inputs still pass."""
    norm = torch.nn.LayerNorm(8).to(torch.bfloat16)
    norm.weight.requires_grad_(False)
    assert keep_fp32_master_weights(norm) == 1
    assert norm.weight.dtype == norm.bias.dtype == torch.float32
    x = torch.randn(3, 8)
    expected = torch.nn.functional.layer_norm(x, (8,), norm.weight.detach(), norm.bias.detach())
    torch.testing.assert_close(norm(x.to(torch.bfloat16)).float(), expected, atol=0.05, rtol=0.02)


def test_a_trainable_embedding_in_a_half_model_returns_the_half_type():
    """Embedding tuning on a bf16 model: the table trains in fp32, its output joins the bf16 stream."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    model[1].requires_grad_(False)
    assert keep_fp32_master_weights(model) == 1
    assert model[0].weight.dtype == torch.float32 and model[1].weight.dtype == torch.bfloat16
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids)  # a bf16 LayerNorm given fp32 input would raise
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.dtype == torch.float32
    full = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    keep_fp32_master_weights(full)  # everything trains: an fp32 model, no cast back
    assert full(ids).dtype == torch.float32


def test_halving_the_frozen_weights_rebuilds_the_trained_layout():
    """A model loaded in fp32 for evaluation gets the dtypes it trained in: what master-weight
    keeping made of the same model loaded in bf16, with the same values and the same outputs."""
    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))

    trained = build().to(torch.bfloat16)  # as training loaded it: then the embedding and the head train
    trained[1].requires_grad_(False)
    keep_fp32_master_weights(trained)
    reloaded = build()  # the fp32 checkpoint, then the trained weights as a saved adapter brings them
    with torch.no_grad():
        for i in (0, 2):
            for mine, theirs in zip(reloaded[i].parameters(), trained[i].parameters()):
                mine.copy_(theirs)
    halved = halve_frozen_weights(reloaded, {id(p) for p in (*reloaded[0].parameters(), *reloaded[2].parameters())},
                                  torch.bfloat16)
    assert halved == 2  # the LayerNorm's weight and bias
    assert [p.dtype for p in reloaded.parameters()] == [p.dtype for p in trained.parameters()]
    for mine, theirs in zip(reloaded.parameters(), trained.parameters()):
        assert torch.equal(mine, theirs)
    ids = torch.tensor([[1, 2, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(reloaded(ids), trained(ids))


@pytest.mark.parametrize("train, gpus, processes, expected", [
    ({}, 0, 1, "single"),
    ({}, 0, 2, "ddp"),
    ({"distributed": {"strategy": "ddp"}}, 4, 4, "ddp"),
    ({"distributed": {"strategy": "fsdp"}}, 4, 4, "fsdp"),
])
def test_strategy_resolution(machine, train, gpus, processes, expected):
    machine(gpus=gpus)
    cfg = TrainSection(**train)
    device = torch.device("cuda:0" if gpus else "cpu")
    assert runtime_mod.resolve_strategy(cfg, device, processes) == expected


def test_accelerate_launch_config_selects_the_strategy(machine, monkeypatch):
    machine(gpus=2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert runtime_mod.resolve_strategy(TrainSection(), torch.device("cuda:0"), 2) == "fsdp"


@pytest.mark.parametrize("train, gpus, processes, message", [
    ({"distributed": {"strategy": "fsdp"}}, 0, 2, "accelerate enables FSDP only for multi-GPU"),
    ({"distributed": {"strategy": "fsdp"}}, 1, 1, "this run has one"),
    ({"distributed": {"strategy": "deepspeed"}}, 1, 1, "pip install deepspeed"),
    ({"deepspeed": "missing.json"}, 1, 1, "pip install deepspeed"),
])
def test_strategy_errors(machine, train, gpus, processes, message):
    machine(gpus=gpus)
    device = torch.device("cuda:0" if gpus else "cpu")
    with pytest.raises(RecipeError, match="train.distributed") as exc:
        runtime_mod.resolve_strategy(TrainSection(**train), device, processes)
    assert message in str(exc.value)


def test_more_processes_than_gpus_is_refused(machine, monkeypatch):
    machine(gpus=2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(RecipeError, match="4 processes on this machine but 2 GPU"):
        runtime_mod._check_gpu_count(torch.device("cuda:0"), 4)
    from leantune.cli.launch import processes_to_start

    with pytest.raises(RecipeError, match="--nproc 3: this machine has 2 GPU"):
        processes_to_start(3, "auto")
    assert processes_to_start(None, "auto") == 2   # every visible GPU by default
    assert processes_to_start(None, "cpu") == 1


def test_single_process_runtime_on_cpu():
    rt = runtime_mod.build_runtime(TrainSection(device="cpu", precision="fp32"))
    assert (rt.device, rt.precision, rt.strategy, rt.world_size, rt.is_main) == (
        torch.device("cpu"), "fp32", "single", 1, True)
    assert rt.all_sum([1.5, 2.0]) == [1.5, 2.0]


def test_fsdp_refuses_qlora_and_ddp_takes_it():
    fsdp = runtime_mod.Runtime(accelerator=None, device=torch.device("cuda:0"), precision="bf16",
                               strategy="fsdp", rank=0, world_size=2)
    with pytest.raises(RecipeError, match="qlora.*cannot be sharded.*strategy: ddp"):
        runtime_mod.check_method_fits(fsdp, ["qlora"])
    runtime_mod.check_method_fits(fsdp, ["lora"])
    ddp = runtime_mod.Runtime(accelerator=None, device=torch.device("cuda:0"), precision="bf16",
                              strategy="ddp", rank=0, world_size=2)
    runtime_mod.check_method_fits(ddp, ["qlora"])


def test_several_processes_on_one_named_gpu_are_refused(machine, monkeypatch):
    machine(gpus=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match="cuda:1 puts every one of the 2 processes on one GPU"):
        runtime_mod.build_runtime(TrainSection(device="cuda:1"))
