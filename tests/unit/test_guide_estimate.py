"""The memory estimator's components against hand computation on a tiny config."""
from __future__ import annotations

import json

import pytest
from transformers import BertConfig, LlamaConfig
from typer.testing import CliRunner

from leantune.cli import app
from leantune.guide.estimate import (
    MB, NF4_BYTES, Setting, activation_bytes_per_layer, estimate, parse_count, parse_size, shape_from_config,
    shape_from_numbers, suggestions, verdict,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

H, F, L, A, KV, V = 32, 64, 2, 4, 2, 300


@pytest.fixture(scope="module")
def llama():
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=F, num_hidden_layers=L, num_attention_heads=A,
                      num_key_value_heads=KV, tie_word_embeddings=False)
    return shape_from_config(cfg, "tiny-llama")


def test_shape_and_parameter_count(llama):
    kvh = H * KV // A  # 16
    block_linear = L * (2 * H * H + 2 * H * kvh + 3 * H * F)
    assert (llama.hidden, llama.layers, llama.kv_hidden, llama.intermediate) == (H, L, kvh, F)
    assert llama.gated_mlp and llama.norm == "rms"
    assert llama.linear_params == block_linear
    # embeddings + lm_head + 2 norms per layer + final norm
    assert llama.params == block_linear + 2 * V * H + (2 * L + 1) * H


def test_full_components_by_hand(llama):
    s = Setting(method=[{"name": "full"}], precision="fp32", optimizer="adamw", batch_size=2, seq_len=10,
                label_fraction=0.5, overhead_mb=100)
    e = estimate(llama, s)
    P = llama.params
    assert e.count_source == "meta" and e.trainable_params == P
    c = e.components
    assert c["weights"] == 0
    assert c["trainable"] == 4 * P and c["gradients"] == 4 * P and c["optimizer"] == 8 * P
    t = 2 * 10
    kvh = 16
    per_layer = 4 * t * (4 * H + 2 * kvh) + 2 * A * 10 * 4 + 4 * t * (H + 4 * F) + 2 * t * H * (4 + 4)
    assert activation_bytes_per_layer(llama, t, 10, 4, "sdpa", True) == per_layer
    assert c["activations"] == L * per_layer + 3 * 4 * t * H
    assert c["logits"] == t * 0.5 * V * 4 * 3
    assert c["overhead"] == 100 * MB
    assert e.total == sum(c.values())


def test_korthikanti_half_precision_gelu_mha():
    """Half precision, 4h GELU MLP, MHA, eager attention with dropout: sbh(34 + 5as/h) up to our
    extra SDPA-output copy (+2sbh) and Korthikanti's dropout mask on the MLP/attention outputs."""
    cfg = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                     num_attention_heads=4, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    s = shape_from_config(cfg, "bert")
    b, seq, h, a = 2, 16, 64, 4
    ours = activation_bytes_per_layer(s, b * seq, seq, 2, "eager", True)
    korthikanti = seq * b * h * (34 + 5 * a * seq / h)
    assert ours == korthikanti + 2 * seq * b * h  # the attention output copy before the projection


def test_lora_trainable_and_frozen(llama):
    e = estimate(llama, Setting(method=[{"name": "lora", "r": 4, "targets": "all-linear"}], batch_size=1, seq_len=8))
    kvh = 16
    lora = L * 4 * (2 * (H + H) + 2 * (H + kvh) + 2 * (H + F) + (F + H))
    assert e.trainable_params == lora
    assert e.total_params == llama.params + lora
    assert e.components["weights"] == 4 * llama.params
    assert e.components["optimizer"] == 8 * lora


def test_qlora_nf4_double_quant(llama):
    e = estimate(llama, Setting(method=[{"name": "qlora", "r": 4}], batch_size=1, seq_len=8))
    lin = llama.linear_params
    assert NF4_BYTES[True] == pytest.approx(0.5 + 0.127 / 8, abs=1e-3)  # QLoRA paper: 0.127 bit/param of constants
    assert e.components["weights"] == pytest.approx(lin * NF4_BYTES[True] + (llama.params - lin) * 4)
    assert e.setting["quant"] == "nf4"


def test_optimizers_checkpointing_and_precision(llama):
    base = dict(method=[{"name": "full"}], batch_size=4, seq_len=32)
    P = llama.params
    assert estimate(llama, Setting(**base, optimizer="adamw_8bit")).components["optimizer"] == 2 * P
    assert estimate(llama, Setting(**base, optimizer="sgd")).components["optimizer"] == 4 * P
    bf16 = estimate(llama, Setting(**base, precision="bf16"))
    assert bf16.components["trainable"] == 2 * P and bf16.components["optimizer"] == 4 * P
    plain = estimate(llama, Setting(**base))
    ckpt = estimate(llama, Setting(**base, gradient_checkpointing=True))
    t = 4 * 32
    per_layer = activation_bytes_per_layer(llama, t, 32, 4, "sdpa", True)
    assert ckpt.components["activations"] == L * 4 * t * H + per_layer + 3 * 4 * t * H
    assert ckpt.components["activations"] < plain.components["activations"]


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
    assert tips and tips[0].startswith("train.gradient_checkpointing")


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
