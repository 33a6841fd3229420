"""The memory estimator's components against hand computation on tiny configs, and its
activation formula against the tensors autograd really saves."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from leantune.cli import app
from leantune.guide.activations import (
    HEAP_RETAINED,
    activation_bytes_per_layer,
    saved_tensors_per_layer,
    top_activation_bytes,
    weight_copy_sizes,
)
from leantune.guide.estimate import setting_from_recipe
from leantune.guide.model_shape import MB, parse_count, parse_size, shape_from_config, shape_from_numbers
from leantune.guide.peak_memory import BF16_KERNELS_MB, NF4_BYTES, OVERHEAD_MB, Setting, estimate, suggestions, verdict
from leantune.guide.trainable import count_trainable
from leantune.training.losses import TILE_ELEMENTS, unwrap

pytestmark = pytest.mark.usefixtures("torch_single_thread")

H, F, L, A, KV, V = 32, 64, 2, 4, 2, 300
KVH = H * KV // A  # 16


def llama_config(**kw) -> LlamaConfig:
    base = dict(vocab_size=V, hidden_size=H, intermediate_size=F, num_hidden_layers=L, num_attention_heads=A,
                num_key_value_heads=KV, tie_word_embeddings=False)
    return LlamaConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def llama():
    return shape_from_config(llama_config(), "tiny-llama")


def test_shape_and_parameter_count(llama):
    block_linear = L * (2 * H * H + 2 * H * KVH + 3 * H * F)
    assert (llama.hidden, llama.layers, llama.kv_hidden, llama.intermediate) == (H, L, KVH, F)
    assert llama.gated_mlp and llama.norm == "rms"
    assert llama.linear_params == block_linear
    # embeddings + lm_head + 2 norms per layer + final norm
    assert llama.params == block_linear + 2 * V * H + (2 * L + 1) * H


def test_per_layer_closed_form_by_hand(llama):
    t, e = 20, 4
    lora = activation_bytes_per_layer(llama, t, 10, "fp32", "cpu", "sdpa", False, True)
    # norm outputs feeding QKV/MLP 2h, Q and K after RoPE + V + attention output 2h + 2h_kv,
    # gate/up/act/product 4f, two fp32 norm inputs 2h; SDPA keeps one log-sum-exp per row and head
    assert lora == e * t * (2 * H + 2 * H + 2 * KVH + 4 * F + 2 * H) + 2 * A * 10 * 4
    full = activation_bytes_per_layer(llama, t, 10, "fp32", "cpu", "sdpa", True, False)
    assert full - lora == e * t * 2 * H  # trained RMSNorm weights keep the normalised outputs
    mixed = activation_bytes_per_layer(llama, t, 10, "mixed", "cpu", "sdpa", False, True)
    # autocast: one half-precision input copy per Q, K, V, gate, up (+1 for PEFT's cast of the o_proj input)
    assert mixed == 2 * t * (6 * H) + 2 * t * (2 * H + 2 * KVH) + 2 * t * 4 * F + 4 * t * 2 * H + 2 * A * 10 * 4


def test_korthikanti_half_precision_gelu_mha():
    """CUDA, pure half precision, 4h GELU MLP, MHA, eager attention with dropout: exactly
    Korthikanti et al. 2022's sbh(34 + 5as/h) bytes per layer."""
    cfg = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                     num_attention_heads=4, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    s = shape_from_config(cfg, "bert")
    b, seq, h, a = 2, 16, 64, 4
    ours = activation_bytes_per_layer(s, b * seq, seq, "bf16", "cuda", "eager", True, False)
    assert ours == seq * b * h * (34 + 5 * a * seq / h)
    # SDPA on CUDA runs dropout inside the kernel: no s² scores; on CPU dropout sends SDPA to the
    # math kernel, which keeps softmax, a float mask and the dropped probabilities
    sdpa = activation_bytes_per_layer(s, b * seq, seq, "bf16", "cuda", "sdpa", True, False)
    assert ours - sdpa == b * a * seq * seq * 5 - b * a * seq * 4
    cpu = activation_bytes_per_layer(s, b * seq, seq, "fp32", "cpu", "sdpa", True, False)
    assert cpu == 4 * seq * b * (10 * h + 2 * 256) + b * a * seq * seq * 3 * 4


def _backbone_saved(model, params, ids, autocast=False, below: float | None = None) -> int:
    """Bytes of the tensors autograd saves in a forward pass (``below``: only those smaller than that)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model(input_ids=ids)
    return sum(n for n in seen.values() if below is None or n < below)


@pytest.mark.parametrize("method,precision", [("full", "fp32"), ("lora", "fp32"), ("full", "mixed"),
                                              ("lora", "mixed")])
def test_activation_formula_matches_autograd_llama(method, precision):
    """The closed form against what autograd keeps in a real Llama backbone on CPU (SDPA, no mask)."""
    from leantune.methods.registry import build_method

    h, f, layers, b, seq = 256, 512, 4, 2, 24
    cfg = llama_config(hidden_size=h, intermediate_size=f, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if method == "lora":
        built = build_method([{"name": "lora", "r": 4, "targets": "all-linear"}])
        built.set_total_steps(10)
        model = built.apply(model, "causal_lm")
    model.train()
    ids = torch.randint(0, V, (b, seq))
    backbone = unwrap(model).model  # the loss runs on the backbone's output (training/losses.py)
    measured = _backbone_saved(backbone, list(model.parameters()), ids, autocast=precision == "mixed")
    shape = shape_from_config(cfg)
    trains = method == "full"
    predicted = layers * activation_bytes_per_layer(shape, b * seq, seq, precision, "cpu", "sdpa", trains,
                                                    method == "lora") \
        + top_activation_bytes(shape, b * seq, precision, "cpu", trains)
    if precision == "mixed":
        predicted += shape.linear_params * 2  # autocast's half-precision weight copies
    # not in the closed form: RMSNorm's 1/rms per token and LoRA's r-wide inputs to B (+1-2 % here);
    # with frozen embeddings the first layer's input needs no gradient, so its norm input and
    # (autocast) its frozen Q/K/V weight copies are not kept (-1/layers of those terms)
    assert measured == pytest.approx(predicted, rel=0.05)


def test_heap_term_counts_small_saved_tensors_under_autocast(monkeypatch):
    """CPU bf16 autocast: the heap term is HEAP_RETAINED × the bytes of the saved tensors smaller than
    the engine's mmap threshold; those bytes, per tensor from the formula's shapes, against what autograd
    keeps in a real Llama backbone (LoRA, bf16 autocast) with the threshold set between the sizes."""
    import leantune.training.engine as engine
    from leantune.methods.registry import build_method

    h, f, layers, b, seq = 256, 512, 4, 2, 24
    cfg = llama_config(hidden_size=h, intermediate_size=f, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2)
    torch.manual_seed(0)
    built = build_method([{"name": "lora", "r": 4, "targets": "all-linear"}])
    built.set_total_steps(10)
    model = built.apply(LlamaForCausalLM(cfg), "causal_lm")
    model.train()
    ids = torch.randint(0, V, (b, seq))
    shape = shape_from_config(cfg)
    # bf16 activations (12-49 KB) and the K/V weight copies (64 KB) below, the Q/O and MLP copies (128-256 KB) above
    threshold = 100_000
    measured = _backbone_saved(unwrap(model).model, list(model.parameters()), ids, autocast=True, below=threshold)
    tensors = saved_tensors_per_layer(shape, b * seq, seq, "mixed", "cpu", "sdpa", False, True)
    assert max(size for size, _ in tensors) < threshold
    small_copies = sum(size * n for size, n in weight_copy_sizes(shape) if size < threshold)
    assert small_copies == 2 * (2 * h * shape.kv_hidden)
    predicted = layers * (sum(size * n for size, n in tensors) + small_copies)
    # left out as in the activation test: RMSNorm's 1/rms, LoRA's r-wide inputs; the first layer's frozen
    # K/V copies and norm input are not kept (its input needs no gradient)
    assert measured == pytest.approx(predicted, rel=0.06)
    monkeypatch.setattr(engine, "MMAP_THRESHOLD_BYTES", threshold)
    setting = dict(method=[{"name": "lora", "r": 4, "targets": "all-linear"}], batch_size=b, seq_len=seq,
                   device="cpu", cpu_heap="release")
    mixed = estimate(shape, Setting(**setting, precision="mixed"))
    assert mixed.components["heap"] == pytest.approx(HEAP_RETAINED * predicted)
    # the term scales with the tokens while the tensors stay under the threshold; none above it
    double = estimate(shape, Setting(**{**setting, "batch_size": 2 * b}, precision="mixed"))
    assert double.components["heap"] - mixed.components["heap"] == pytest.approx(
        HEAP_RETAINED * layers * sum(size * n for size, n in tensors))
    monkeypatch.setattr(engine, "MMAP_THRESHOLD_BYTES", 1)
    assert estimate(shape, Setting(**setting, precision="mixed")).components["heap"] == 0
    # oneDNN's bf16 kernels: a constant under CPU autocast only; CUDA has no heap term
    fp32 = estimate(shape, Setting(**setting, precision="fp32"))
    assert mixed.components["overhead"] - fp32.components["overhead"] == BF16_KERNELS_MB * MB
    assert fp32.components["overhead"] == OVERHEAD_MB["cpu"] * MB
    assert "heap" not in estimate(shape, Setting(**{**setting, "device": "cuda"}, precision="mixed")).components


def test_qlora_cpu_autocast_keeps_fp32_mlp(llama):
    """NF4 layers compute in fp32 on CPU (QLoRA's default compute dtype there), so under autocast the
    MLP's element-wise tensors stay fp32: 4 gated tensors × t·f × 2 B more than with bf16 compute."""
    base = dict(batch_size=2, seq_len=8, device="cpu", precision="mixed")
    auto = estimate(llama, Setting(method=[{"name": "qlora", "r": 4}], **base))
    bf16 = estimate(llama, Setting(method=[{"name": "qlora", "r": 4, "compute_dtype": "bfloat16"}], **base))
    assert auto.components["activations"] - bf16.components["activations"] == L * 4 * 16 * F * 2
    assert activation_bytes_per_layer(llama, 16, 8, "mixed", "cpu", "sdpa", False, True, mlp_element=4) \
        - activation_bytes_per_layer(llama, 16, 8, "mixed", "cpu", "sdpa", False, True) == 4 * 16 * F * 2


def test_recipe_precision_on_cpu_is_autocast():
    """``train.precision: bf16`` on CPU is autocast with fp32 master weights, not pure bf16; the frozen
    weights are bf16 for engine stages (``pipeline._model_dtype``), fp32 for stages with their own loop."""
    from leantune.recipe import load_recipe

    recipe = load_recipe(raw={"model": "smollm2-135m", "method": "lora", "train": {"precision": "bf16"}})
    cpu = setting_from_recipe(recipe, device="cpu")
    assert (cpu.precision, cpu.weight_dtype) == ("mixed", "bf16")
    dpo = setting_from_recipe(load_recipe(raw={"model": "smollm2-135m", "method": "lora", "stage": "dpo",
                                               "train": {"precision": "bf16"}}), device="cpu")
    assert (dpo.precision, dpo.weight_dtype) == ("mixed", None)
    full = setting_from_recipe(load_recipe(raw={"model": "smollm2-135m", "method": "full",
                                                "train": {"precision": "bf16"}}), device="cpu")
    assert (full.precision, full.weight_dtype) == ("mixed", None)  # whole layers train: fp32 weights on CPU
    # GPU: model.dtype auto loads frozen weights in bf16, trainable ones are fp32 master weights under
    # autocast (pipeline._model_dtype, keep_fp32_master_weights); was pure bf16 (bf16 trainable + moments)
    gpu = setting_from_recipe(recipe, device="cuda")
    assert (gpu.precision, gpu.weight_dtype) == ("mixed", "bf16")
    half = load_recipe(raw={"model": {"name": "smollm2-135m", "dtype": "bfloat16"}, "method": "lora",
                            "train": {"precision": "bf16"}})
    assert setting_from_recipe(half, device="cpu").weight_dtype == "bf16"
    fp32 = load_recipe(raw={"model": {"name": "smollm2-135m", "dtype": "float32"}, "method": "lora",
                            "train": {"precision": "bf16"}})
    assert setting_from_recipe(fp32, device="cpu").weight_dtype is None


def test_activation_formula_matches_autograd_bert_dropout():
    """BERT with dropout on CPU: float dropout masks and SDPA's math kernel (s² scores kept three times)."""
    h, f, layers, b, seq, heads = 128, 512, 2, 2, 32, 4
    cfg = BertConfig(vocab_size=V, hidden_size=h, intermediate_size=f, num_hidden_layers=layers,
                     num_attention_heads=heads, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    model = BertModel(cfg)  # the pooler's first-token view keeps the last hidden state
    model.train()
    ids = torch.randint(0, V, (b, seq))
    measured = _backbone_saved(model, list(model.parameters()), ids)
    shape = shape_from_config(cfg)
    predicted = layers * activation_bytes_per_layer(shape, b * seq, seq, "fp32", "cpu", "sdpa", True, False) \
        + top_activation_bytes(shape, b * seq, "fp32", "cpu", True)
    assert measured == pytest.approx(predicted, rel=0.04)


def test_full_components_by_hand_cpu(llama):
    """CPU, end of the forward pass: the head's gradient exists (the tiled loss computes it), the
    other gradients do not (released after every optimizer step)."""
    s = Setting(method=[{"name": "full"}], precision="fp32", optimizer="adamw", batch_size=2, seq_len=10,
                label_fraction=0.5, overhead_mb=100, device="cpu")
    e = estimate(llama, s)
    P = llama.params
    assert e.count_source == "meta" and e.trainable_params == P
    c = e.components
    t, n = 20, 10
    assert c["weights"] == 0
    assert c["trainable"] == 4 * P and c["optimizer"] == 8 * P
    assert c["gradients"] == V * H * 4  # lm_head's fp32 weight gradient
    per_layer = activation_bytes_per_layer(llama, t, 10, "fp32", "cpu", "sdpa", True, False)
    assert c["activations"] == L * per_layer + top_activation_bytes(llama, t, "fp32", "cpu", True)
    assert c["logits"] == n * V * 4 * 2 + 2 * n * H * 4 + V * H * 4  # one tile: logits + log-softmax; head product
    assert c["overhead"] == 100 * MB
    assert e.total == sum(c.values())
    assert c["gradients"] + c["activations"] + c["logits"] >= 4 * P  # the forward end is the larger moment


def test_cpu_peak_after_backward_and_cuda_sum(llama):
    tiny = dict(method=[{"name": "full"}], batch_size=1, seq_len=2, overhead_mb=0, cpu_heap="release")
    cpu = estimate(llama, Setting(**tiny, device="cpu"))
    P = llama.params
    assert cpu.components["gradients"] == 4 * P
    assert cpu.components["activations"] == cpu.components["logits"] == 0
    assert any("end of the backward" in n for n in cpu.notes)
    cuda = estimate(llama, Setting(**tiny, device="cuda"))  # the standard sum of every component
    assert cuda.components["gradients"] == 4 * P and cuda.components["activations"] > 0
    assert cuda.total > cpu.total
    accum = estimate(llama, Setting(**{**tiny, "batch_size": 8, "seq_len": 64}, grad_accum=4, device="cpu"))
    assert accum.components["gradients"] == 4 * P  # gradients persist into the next micro-batch


def test_loss_tiles_and_full_logits(llama):
    base = dict(method=[{"name": "lora"}], batch_size=64, seq_len=1024, label_fraction=0.5)
    rows = TILE_ELEMENTS // V
    tiled = estimate(llama, Setting(**base))
    n = 64 * 1024 // 2
    assert n > rows
    assert tiled.components["logits"] == rows * V * 4 * 3 + 2 * n * H * 4  # frozen head: no weight product
    full = estimate(llama, Setting(**base, loss="full"))
    assert full.components["logits"] == 64 * 1024 * V * 4 * 3
    prompt = count_trainable(llama, [{"name": "prompt_tuning", "num_virtual_tokens": 4}], "causal_lm")
    assert not prompt.tiled_loss  # PEFT prompt learning: the model computes its own (full) loss
    lora = count_trainable(llama, [{"name": "lora"}], "causal_lm")
    assert lora.tiled_loss and not lora.head_trains
    assert count_trainable(llama, [{"name": "full"}], "causal_lm").head_trains


def test_lora_trainable_and_frozen(llama):
    e = estimate(llama, Setting(method=[{"name": "lora", "r": 4, "targets": "all-linear"}], batch_size=1, seq_len=8))
    lora = L * 4 * (2 * (H + H) + 2 * (H + KVH) + 2 * (H + F) + (F + H))
    assert e.trainable_params == lora
    assert e.total_params == llama.params + lora
    assert e.components["weights"] == 4 * llama.params
    assert e.components["optimizer"] == 8 * lora


def test_qlora_nf4_double_quant(llama):
    lin = llama.linear_params
    assert NF4_BYTES[True] == pytest.approx(0.5 + 0.127 / 8, abs=1e-3)  # QLoRA paper: 0.127 bit/param of constants
    dequantized = H * F * 2  # one layer de-quantized for its matmul (bf16 compute)
    cuda = estimate(llama, Setting(method=[{"name": "qlora", "r": 4}], batch_size=1, seq_len=8, device="cuda",
                                   precision="bf16"))
    assert cuda.components["weights"] == pytest.approx(lin * NF4_BYTES[True] + (llama.params - lin) * 2 + dequantized)
    assert cuda.setting["quant"] == "nf4"
    # CPU: the memory-mapped checkpoint stays resident beside the NF4 copy
    cpu = estimate(llama, Setting(method=[{"name": "qlora", "r": 4}], batch_size=1, seq_len=8, device="cpu"))
    assert cpu.components["weights"] == pytest.approx(lin * NF4_BYTES[True] + llama.params * 4 + H * F * 4)
    assert any("checkpoint stays resident" in n for n in cpu.notes)


def test_optimizers_checkpointing_and_precision(llama):
    base = dict(method=[{"name": "full"}], batch_size=4, seq_len=32, device="cuda")
    P = llama.params
    assert estimate(llama, Setting(**base, optimizer="adamw_8bit")).components["optimizer"] == 2 * P
    assert estimate(llama, Setting(**base, optimizer="sgd")).components["optimizer"] == 4 * P
    bf16 = estimate(llama, Setting(**base, precision="bf16"))
    assert bf16.components["trainable"] == 2 * P and bf16.components["optimizer"] == 4 * P
    plain = estimate(llama, Setting(**base))
    ckpt = estimate(llama, Setting(**base, gradient_checkpointing=True))
    t = 4 * 32
    per_layer = activation_bytes_per_layer(llama, t, 32, "fp32", "cuda", "sdpa", True, False)
    top = top_activation_bytes(llama, t, "fp32", "cuda", True)
    assert ckpt.components["activations"] == L * 4 * t * H + per_layer + top
    assert ckpt.components["activations"] < plain.components["activations"]
    mixed = estimate(llama, Setting(**base, precision="mixed"))
    assert mixed.components["activations"] == L * activation_bytes_per_layer(
        llama, t, 32, "mixed", "cuda", "sdpa", True, False) + top_activation_bytes(
        llama, t, "mixed", "cuda", True) + llama.linear_params * 2


def test_prompt_methods_and_formula_fallback(llama):
    pt = estimate(llama, Setting(method=[{"name": "prompt_tuning", "num_virtual_tokens": 5}], batch_size=1, seq_len=8))
    assert pt.trainable_params == 5 * H
    raw = shape_from_numbers("7B", layers=32, hidden=4096, vocab=32000, heads=32, intermediate=11008)
    assert raw.config is None and raw.params == 7_000_000_000
    e = estimate(raw, Setting(method=[{"name": "lora", "r": 8}], batch_size=1, seq_len=512))
    assert e.count_source == "formula"
    assert e.trainable_params == 32 * 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008))  # 19,988,480 (PEFT's figure)


def test_units_and_verdict(llama):
    assert parse_size("24GB") == 24 * 2**30 and parse_size("512MB") == 512 * 2**20 and parse_size(2) == 2 * 2**30
    assert parse_count("7B") == 7_000_000_000 and parse_count("135M") == 135_000_000
    e = estimate(llama, Setting(method=[{"name": "full"}], batch_size=1, seq_len=8))
    assert verdict(e, e.total * 2) == "fits" and verdict(e, e.total * 1.1) == "tight"
    assert verdict(e, e.total / 2) == "does not fit"
    tips = suggestions(llama, Setting(method=[{"name": "full"}], batch_size=8, seq_len=64), 1)
    # on a CPU first what keeps the training the same, then gradient checkpointing; each lowers the estimate
    assert [t.split(":")[0] for t in tips[:2]] == ["train.cpu_heap=release", "train.gradient_checkpointing=true"]
    released = Setting(method=[{"name": "full"}], batch_size=8, seq_len=64, cpu_heap="release")
    assert estimate(llama, released).total < estimate(llama, Setting(method=[{"name": "full"}], batch_size=8,
                                                                     seq_len=64)).total
    assert suggestions(llama, released, 1)[0].startswith("train.gradient_checkpointing")


def test_cli_estimate(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=F, num_hidden_layers=L,
                                          num_attention_heads=A, num_key_value_heads=KV).to_dict()))
    r = CliRunner().invoke(app, ["estimate", str(cfg), "-m", "full", "--budget", "1MB", "-b", "2", "-s", "16"])
    assert r.exit_code == 0, r.output
    assert "activations" in r.output and "does not fit" in r.output
    r = CliRunner().invoke(app, ["estimate", "--layers", "32", "--hidden", "4096", "--heads", "32",
                                 "--params", "7B", "-m", "qlora", "--json", "--budget", "24GB", "--precision", "bf16",
                                 "-b", "1", "--gradient-checkpointing", "--device", "cuda"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["verdict"] in ("fits", "tight") and out["setting"]["quant"] == "nf4"
