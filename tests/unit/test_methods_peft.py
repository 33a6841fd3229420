"""The PEFT-backed methods on every tiny architecture: adalora, ia3, prompt_tuning,
prefix_tuning, p_tuning, p_tuning_v2, ln_tuning, krona.

For each (method, architecture): apply; outputs equal the base model's where the method
starts as the identity; one optimizer step moves only the method's parameters (every base
weight bit-for-bit unchanged); save in PEFT's format and reload into a fresh base with
identical outputs; merge (where mergeable) into a plain model with identical outputs; the
trainable-parameter count equals the method's formula, computed from the settings and the
tiny models' dimensions (tests/conftest.py), not read from the model.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import HEADS, HIDDEN, INTERMEDIATE, LAYERS, SEQ_CLS_LABELS
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel

from leantune.data.collate import pad_batch
from leantune.errors import MethodError, NotMergeable, RecipeError
from leantune.methods.registry import build_method, get_method_class
from leantune.models.loading import count_parameters, load_model
from leantune.recipe import TrainSection
from leantune.training.engine import Engine, count_total_steps
from leantune.training.losses import causal_lm_loss, model_loss
from leantune.training.modes import evaluating

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# --------------------------------------------------------------------------- the matrix

ARCHS = {  # label → (architecture, head)
    "llama": ("llama", "causal_lm"),
    "qwen2": ("qwen2", "causal_lm"),
    "gpt2": ("gpt2", "causal_lm"),
    "bert-cls": ("bert", "seq_cls"),
    "bert-mlm": ("bert", "masked_lm"),
    "t5": ("t5", "seq2seq"),
}
ARCHS_BY_MODEL_TYPE = {"t5": "seq2seq"}
N_VIRTUAL = 4
ENC_HIDDEN = 16
ADA_INIT_R, ADA_TARGET_R = 4, 2
SPECS = {
    "adalora": {"name": "adalora", "init_r": ADA_INIT_R, "target_r": ADA_TARGET_R},
    "ia3": {"name": "ia3"},
    "prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": N_VIRTUAL},
    "prefix_tuning": {"name": "prefix_tuning", "num_virtual_tokens": N_VIRTUAL, "encoder_hidden_size": ENC_HIDDEN},
    "p_tuning": {"name": "p_tuning", "num_virtual_tokens": N_VIRTUAL, "encoder_hidden_size": ENC_HIDDEN},
    "p_tuning_v2": {"name": "p_tuning_v2", "num_virtual_tokens": N_VIRTUAL},
    "ln_tuning": {"name": "ln_tuning"},
    "krona": {"name": "krona"},
}
PROMPT = ("prompt_tuning", "prefix_tuning", "p_tuning", "p_tuning_v2")
IDENTITY_AT_START = ("adalora", "ia3", "ln_tuning", "krona")

# Combinations the methods do not define; each must fail at `apply` with a MethodError
# (checked below) and is skipped in the matrix. The docs list this table.
UNDEFINED: dict[tuple[str, str], str] = {
    **{(m, "bert-mlm"): "prompt learning on a masked-LM head: PEFT has no masked-LM task type, so the virtual "
                        "tokens would either not reach the model or misalign the per-token MLM labels"
       for m in PROMPT},
    ("krona", "gpt2"): "PEFT LoKr (KronA's implementation) supports nn.Linear only; GPT-2's projections are "
                       "transformers Conv1D layers",
}

CASES = [(m, a) for m in SPECS for a in ARCHS]


def case_params(methods=None):
    out = []
    for m, a in CASES:
        if methods is not None and m not in methods:
            continue
        marks = [pytest.mark.skip(reason=UNDEFINED[(m, a)])] if (m, a) in UNDEFINED else []
        out.append(pytest.param(m, a, marks=marks, id=f"{m}-{a}"))
    return out


# --------------------------------------------------------------------------- helpers

def load_base(tiny_model_dir, label):
    arch, head = ARCHS[label]
    return load_model(tiny_model_dir(arch, head), head, dtype="float32")


def build(name, total_steps=10, **overrides):
    method = build_method({**SPECS[name], **overrides})
    method.set_total_steps(total_steps)
    return method


def make_batch(label, seed=0):
    arch, head = ARCHS[label]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if head == "seq_cls":
        batch["labels"] = torch.tensor([0, 2])
        batch["token_type_ids"] = torch.zeros_like(ids)
    elif head == "seq2seq":
        batch["labels"] = torch.randint(0, 256, (2, 6), generator=g)
    else:
        batch["labels"] = ids.clone()
    return batch


def logits(model, batch):
    """Logits without computing a loss (seq2seq: teacher-forced on the shifted labels)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if ARCHS_BY_MODEL_TYPE.get(getattr(model.config, "model_type", "")) == "seq2seq":
        start = torch.full_like(batch["labels"][:, :1], model.config.decoder_start_token_id)
        inputs["decoder_input_ids"] = torch.cat([start, batch["labels"][:, :-1]], dim=1)
    with evaluating(model):
        return model(**inputs).logits.detach().clone()


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


def trainable_count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


METHOD_MARKERS = ("lora_", "ia3_l", "ln_tuning_layers", "lokr_", "prompt_encoder", "modules_to_save")


def assert_plain_model(model):
    assert isinstance(model, PreTrainedModel) and not isinstance(model, PeftModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert not any(k in n for n, _ in model.named_parameters() for k in METHOD_MARKERS + ("base_layer",))


# --------------------------------------------------------------------------- expected counts
# Linear layers of one block as (in, out), from the tiny configs: hidden 32, intermediate 64,
# 4 heads (head_dim 8), llama/qwen2 with 2 key-value heads (k/v out = 16).
HEAD_DIM = HIDDEN // HEADS
KV = 2 * HEAD_DIM
H, F = HIDDEN, INTERMEDIATE
DECODER_ONLY = {
    "llama": {"q_proj": (H, H), "k_proj": (H, KV), "v_proj": (H, KV), "o_proj": (H, H),
              "gate_proj": (H, F), "up_proj": (H, F), "down_proj": (F, H)},
    "gpt2": {"c_attn": (H, 3 * H), "attn.c_proj": (H, H), "c_fc": (H, F), "mlp.c_proj": (F, H)},
    "bert": {"query": (H, H), "key": (H, H), "value": (H, H), "attention.output.dense": (H, H),
             "intermediate.dense": (H, F), "output.dense": (F, H)},
}
DECODER_ONLY["qwen2"] = DECODER_ONLY["llama"]
T5_ATTN = {"q": (H, H), "k": (H, H), "v": (H, H), "o": (H, H)}
T5_FF = {"wi": (H, F), "wo": (F, H)}


def block_layers(arch):
    """Every targeted-by-default linear layer of the model as (role, in, out)."""
    if arch == "t5":  # encoder blocks: self-attention + FF; decoder blocks: self, cross, FF
        enc = [*T5_ATTN.items(), *T5_FF.items()]
        dec = [*T5_ATTN.items(), *T5_ATTN.items(), *T5_FF.items()]
        return [(r, i, o) for r, (i, o) in enc * LAYERS + dec * LAYERS]
    return [(r, i, o) for r, (i, o) in DECODER_ONLY[arch].items()] * LAYERS


IA3_ROLES = {  # role → True if feed-forward (scales the input), False (scales the output)
    "llama": {"k_proj": False, "v_proj": False, "down_proj": True},
    "gpt2": {"c_attn": False, "mlp.c_proj": True},
    "bert": {"key": False, "value": False, "output.dense": True},
    "t5": {"k": False, "v": False, "wo": True},
}
IA3_ROLES["qwen2"] = IA3_ROLES["llama"]


def near_square(d):
    """LoKr's factorization(d, -1): the divisor pair closest to √d, smaller first."""
    m = max(k for k in range(1, math.isqrt(d) + 1) if d % k == 0)
    return m, d // m


def norm_params(arch):
    """LayerNorm/RMSNorm parameters outside the head."""
    if arch in ("llama", "qwen2"):  # RMSNorm gains: 2 per block + final
        return H * (2 * LAYERS + 1)
    if arch == "gpt2":  # LayerNorm gain + bias: ln_1, ln_2 per block + ln_f
        return 2 * H * (2 * LAYERS + 1)
    if arch == "bert":  # embeddings + 2 per block (the MLM head's transform LayerNorm is head)
        return 2 * H * (1 + 2 * LAYERS)
    if arch == "t5":  # T5LayerNorm gains: encoder 2/block + final, decoder 3/block + final
        return H * (2 * LAYERS + 1 + 3 * LAYERS + 1)
    raise AssertionError(arch)


def expected_trainable(name, label):
    arch, head = ARCHS[label]
    cfg = build_method(SPECS[name]).config
    n_virtual = cfg.num_virtual_tokens if name in PROMPT else 0
    submodules = 2 if head == "seq2seq" else 1  # PEFT prompts the encoder and the decoder of T5
    # prefix methods put keys/values in the cache: with grouped-query attention these are KV wide
    kv_dim = KV if arch in ("llama", "qwen2") else H
    if name == "adalora":  # P (out×r), Q (r×in), E (r) per targeted matrix
        n = sum(cfg.init_r * (i + o + 1) for _, i, o in block_layers(arch))
    elif name == "ia3":
        roles = IA3_ROLES[arch]
        n = 0
        for role, i, o in block_layers(arch):
            if role in roles and not (arch == "bert" and role == "attention.output.dense"):
                n += i if roles[role] else o
        if arch == "t5":  # the roles above cover self- and cross-attention k/v and wo
            assert n == LAYERS * (2 * H + F) + LAYERS * (4 * H + F)
    elif name == "ln_tuning":
        n = norm_params(arch)
    elif name == "krona":  # A (a1×a2) + B (b1×b2), a·b = near-square split of out and in
        n = 0
        for _, i, o in block_layers(arch):
            (a1, b1), (a2, b2) = near_square(o), near_square(i)
            n += a1 * a2 + b1 * b2
    elif name == "prompt_tuning":
        n = n_virtual * submodules * H
    elif name == "p_tuning":  # embedding + MLP d→h→h→d
        h = cfg.encoder_hidden_size
        n = n_virtual * submodules * H + (H * h + h) + (h * h + h) + (h * H + H)
    elif name == "prefix_tuning":  # embedding (n×d) + MLP d→h→2·L·d
        h, d = cfg.encoder_hidden_size, kv_dim
        n = n_virtual * d + (d * h + h) + (h * 2 * LAYERS * d + 2 * LAYERS * d)
    elif name == "p_tuning_v2":  # one n × 2·L·d table
        n = n_virtual * 2 * LAYERS * kv_dim
    else:
        raise AssertionError(name)
    if head == "seq_cls":  # PEFT trains a copy of the classifier (modules_to_save)
        n += H * SEQ_CLS_LABELS + SEQ_CLS_LABELS
    return n


def test_formula_hand_checks():
    # llama, 2 blocks: q,o 32→32, k,v 32→16, gate,up 32→64, down 64→32
    assert expected_trainable("adalora", "llama") == 2 * ADA_INIT_R * (
        2 * 65 + 2 * 49 + 2 * 97 + 97)
    assert expected_trainable("ia3", "llama") == 2 * (16 + 16 + 64)
    assert expected_trainable("ia3", "gpt2") == 2 * (96 + 64)
    # krona: 32→32 is (4⊗4)… A 4×4 + B 8×8; 32→16: A 4×4 + B 4×8; 32→64: A 8×4 + B 8×8; 64→32: A 4×8 + B 8×8
    assert expected_trainable("krona", "llama") == 2 * (2 * (16 + 64) + 2 * (16 + 32) + 2 * (32 + 64) + (32 + 64))
    assert expected_trainable("p_tuning_v2", "llama") == 4 * 2 * 2 * 16
    assert expected_trainable("prompt_tuning", "t5") == 4 * 2 * 32
    assert expected_trainable("ln_tuning", "bert-cls") == 2 * 32 * 5 + 32 * 3 + 3


# --------------------------------------------------------------------------- the matrix tests

@pytest.mark.parametrize("name,label", case_params())
def test_apply_starts_as_the_base_model(tiny_model_dir, name, label):
    batch = make_batch(label)
    reference = logits(load_base(tiny_model_dir, label), batch)
    model = build(name).apply(load_base(tiny_model_dir, label), ARCHS[label][1])
    assert isinstance(model, PeftModel)
    out = logits(model, batch)
    if name in IDENTITY_AT_START:
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
    elif name in ("prompt_tuning", "p_tuning") and ARCHS[label][1] == "causal_lm":
        assert out.shape[1] == reference.shape[1] + N_VIRTUAL  # logits for the virtual positions too
    else:  # prompts start random: they change the output from the first step
        assert out.shape == reference.shape and not torch.equal(out, reference)


@pytest.mark.parametrize("name,label", case_params())
def test_trainable_parameters_match_the_formula(tiny_model_dir, name, label):
    model = build(name).apply(load_base(tiny_model_dir, label), ARCHS[label][1])
    expected = expected_trainable(name, label)
    assert trainable_count(model) == expected
    assert count_parameters(model)[0] == expected


@pytest.mark.parametrize("name,label", case_params())
def test_one_step_changes_only_the_methods_parameters(tiny_model_dir, name, label):
    base = load_base(tiny_model_dir, label)
    originals = dict(base.named_parameters())  # the base tensors themselves (PEFT wraps in place)
    before = {n: p.detach().clone() for n, p in originals.items()}
    model = build(name).apply(base, ARCHS[label][1])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(k in n for k in METHOD_MARKERS) for n in trainable), sorted(trainable)[:5]
    snap = {n: p.detach().clone() for n, p in trainable.items()}
    grads = train_step(model, make_batch(label))
    assert set(grads) == set(trainable)  # gradients reach exactly the method's tensors
    for n, p in originals.items():  # every base weight bit-for-bit unchanged
        assert not p.requires_grad and torch.equal(p, before[n]), n
    moved = {n for n in trainable if grads[n].abs().sum() > 0}
    changed = {n for n, p in trainable.items() if not torch.equal(p, snap[n])}
    assert moved and moved <= changed


@pytest.mark.parametrize("name,label", case_params())
def test_save_and_load_into_a_fresh_base(tiny_model_dir, tmp_path, name, label):
    head = ARCHS[label][1]
    method = build(name)
    model = method.apply(load_base(tiny_model_dir, label), head)
    batch = make_batch(label)
    train_step(model, batch)
    expected = logits(model, batch)
    method.save(model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "adapter_model.bin"}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    peft_type = {"adalora": "ADALORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING",
                 "prefix_tuning": "PREFIX_TUNING", "p_tuning": "P_TUNING", "p_tuning_v2": "PREFIX_TUNING",
                 "ln_tuning": "LN_TUNING", "krona": "LOKR"}[name]
    assert config["peft_type"] == peft_type
    if name in ("prefix_tuning", "p_tuning_v2"):
        assert config["prefix_projection"] is (name == "prefix_tuning")
    loaded = build_method(SPECS[name]).load(load_base(tiny_model_dir, label), tmp_path / "adapter", head)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)
    with evaluating(loaded):  # a loaded adapter also computes its loss (evaluation)
        assert torch.isfinite(loaded(**batch).loss)
    assert trainable_count(loaded) == 0
    # and plain PEFT reads it too
    plain = PeftModel.from_pretrained(load_base(tiny_model_dir, label), tmp_path / "adapter")
    torch.testing.assert_close(logits(plain, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,label", case_params())
def test_merge(tiny_model_dir, name, label):
    method = build(name)
    assert type(method).mergeable is (name not in PROMPT)
    model = method.apply(load_base(tiny_model_dir, label), ARCHS[label][1])
    batch = make_batch(label)
    train_step(model, batch)
    if not method.mergeable:
        with pytest.raises(NotMergeable):
            method.merge(model)
        return
    expected = logits(model, batch)
    merged = method.merge(model)
    assert_plain_model(merged)
    assert type(merged).__name__ == type(load_base(tiny_model_dir, label)).__name__
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- failures before training

@pytest.mark.parametrize("name,label", [pytest.param(m, a, id=f"{m}-{a}") for m, a in UNDEFINED])
def test_undefined_combinations_fail_at_apply(tiny_model_dir, name, label):
    with pytest.raises(MethodError) as info:
        build(name).apply(load_base(tiny_model_dir, label), ARCHS[label][1])
    msg = str(info.value)
    assert f"'{name}'" in msg
    assert ("masked_lm" in msg) if label == "bert-mlm" else ("Conv1D" in msg and "c_attn" in msg)


@pytest.mark.parametrize("name", ["adalora", "ia3", "krona"])
@pytest.mark.parametrize("label", ["llama", "bert-cls", "t5"])
def test_target_pattern_matching_nothing_lists_the_candidates(tiny_model_dir, name, label):
    with pytest.raises(MethodError) as info:
        build(name, targets=["qkv_proj"]).apply(load_base(tiny_model_dir, label), ARCHS[label][1])
    msg = str(info.value)
    assert "qkv_proj" in msg and "match no linear layer" in msg
    suffix = {"llama": "'down_proj'", "bert-cls": "'query'", "t5": "'wo'"}[label]
    assert suffix in msg


def test_ln_tuning_pattern_matching_nothing_lists_the_norm_layers(tiny_model_dir):
    with pytest.raises(MethodError) as info:
        build("ln_tuning", targets=["layer_norm"]).apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    msg = str(info.value)
    assert "match no normalisation layer" in msg
    assert "'input_layernorm'" in msg and "'post_attention_layernorm'" in msg and "'norm'" in msg


def test_ln_tuning_patterns_select_norms(tiny_model_dir):
    model = build("ln_tuning", targets=["ln_f"]).apply(load_base(tiny_model_dir, "gpt2"), "causal_lm")
    assert trainable_count(model) == 2 * H


@pytest.mark.parametrize("spec,field", [
    ({"name": "adalora", "init_r": 4, "target_r": 8}, "target_r"),
    ({"name": "adalora", "beta1": 1.0}, "beta1"),
    ({"name": "adalora", "deltaT": 0}, "deltaT"),
    ({"name": "adalora", "orth_reg_weight": -1}, "orth_reg_weight"),
    ({"name": "prompt_tuning", "num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"name": "prompt_tuning", "init": "text"}, "init_text"),
    ({"name": "prompt_tuning", "init_text": "classify"}, "init_text"),
    ({"name": "prefix_tuning", "encoder_hidden_size": 0}, "encoder_hidden_size"),
    ({"name": "p_tuning", "encoder": "gru"}, "encoder"),
    ({"name": "p_tuning", "encoder_dropout": 0.1}, "lstm"),
    ({"name": "p_tuning_v2", "prefix_projection": True}, "unknown key 'prefix_projection'"),
    ({"name": "krona", "factor": 1}, "factor"),
    ({"name": "krona", "scale": 0}, "scale"),
    ({"name": "ia3", "r": 4}, "unknown key 'r'"),
    ({"name": "ln_tuning", "targets": 3}, "targets"),
])
def test_settings_out_of_range_are_refused(spec, field):
    with pytest.raises(RecipeError) as info:
        build_method(spec)
    assert field in str(info.value)


def test_adalora_schedule_without_room_fails_before_training(tiny_model_dir):
    method = build_method({**SPECS["adalora"], "tinit": 5, "tfinal": 5})
    method.set_total_steps(10)
    with pytest.raises(MethodError, match=r"tinit \(5\) \+ tfinal \(5\).*10 optimizer steps"):
        method.apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    with pytest.raises(MethodError, match="total optimizer steps"):
        build_method(SPECS["adalora"]).apply(load_base(tiny_model_dir, "llama"), "causal_lm")


def test_prefix_methods_need_a_model_that_takes_a_cache(tiny_model_dir):
    base = load_base(tiny_model_dir, "llama")

    class NoCache(torch.nn.Module):  # a model whose forward has no past_key_values
        def __init__(self):
            super().__init__()
            self.config, self.inner = base.config, base

        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    for name in ("prefix_tuning", "p_tuning_v2"):
        with pytest.raises(MethodError, match="accepts no past_key_values"):
            build(name).apply(NoCache(), "causal_lm")


def test_krona_factor_must_divide_the_targets(tiny_model_dir):
    with pytest.raises(MethodError, match="factor 3 does not divide"):
        build("krona", factor=3).apply(load_base(tiny_model_dir, "llama"), "causal_lm")


def test_ia3_feedforward_must_be_targets(tiny_model_dir):
    with pytest.raises(MethodError, match="not among the targets"):
        build("ia3", targets=["k_proj", "v_proj"], feedforward=["down_proj"]).apply(
            load_base(tiny_model_dir, "llama"), "causal_lm")


def test_every_method_documents_itself():
    for name in SPECS:
        cls = get_method_class(name)
        assert cls.family in ("addition", "specification", "reparameterization")
        assert "arXiv:" in cls.paper and any(str(y) in cls.paper for y in (2021, 2022, 2023))
        assert cls.summary.endswith(".") and ". " not in cls.summary  # one sentence
        for field, info in cls.Config.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


# --------------------------------------------------------------------------- method specifics

def test_krona_update_is_one_full_kronecker_product(tiny_model_dir):
    method = build("krona", scale=2.0)
    model = method.apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    train_step(model, make_batch("llama"))
    layer = model.base_model.model.model.layers[0].self_attn.k_proj  # 32 → 16
    A, B = layer.lokr_w1["default"], layer.lokr_w2["default"]
    assert A.shape == (4, 4) and B.shape == (4, 8)  # out 16 = 4·4, in 32 = 4·8
    assert not hasattr(layer, "lokr_w1_a") or "default" not in layer.lokr_w1_a
    delta = layer.get_delta_weight("default")
    torch.testing.assert_close(delta, 2.0 * torch.kron(A, B), rtol=0, atol=1e-7)
    assert torch.linalg.matrix_rank(delta) > 4  # full-rank update, unlike a rank-4 LoRA


def test_krona_factor_sets_the_shape_of_a(tiny_model_dir):
    model = build("krona", factor=2).apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    layer = model.base_model.model.model.layers[0].mlp.down_proj  # 64 → 32
    assert layer.lokr_w1["default"].shape == (2, 2) and layer.lokr_w2["default"].shape == (16, 32)


def test_ia3_rescales_keys_values_and_the_ffn_input(tiny_model_dir):
    model = build("ia3").apply(load_base(tiny_model_dir, "bert-cls"), "seq_cls")
    scaled = {n.split("bert.encoder.layer.0.")[1]: tuple(p.shape) for n, p in model.named_parameters()
              if "ia3_l" in n and "layer.0." in n}
    assert scaled == {"attention.self.key.ia3_l.default": (32, 1), "attention.self.value.ia3_l.default": (32, 1),
                      "output.dense.ia3_l.default": (1, 64)}


@pytest.mark.parametrize("name", PROMPT)
@pytest.mark.parametrize("label", ["llama", "qwen2", "gpt2", "t5"])
def test_prompt_methods_generate_with_their_prompts(tiny_model_dir, name, label):
    head = ARCHS[label][1]
    model = build(name).apply(load_base(tiny_model_dir, label), head)
    train_step(model, make_batch(label))
    ids = make_batch(label, seed=1)["input_ids"][:1, :8]
    with evaluating(model):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                             do_sample=False, pad_token_id=0)
        # greedy decoding by hand, one full forward per token, must agree with generate's cached path
        if head == "causal_lm":
            seq = ids
            for _ in range(3):
                nxt = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1].argmax(-1)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
            assert torch.equal(out, seq)
        else:
            start = torch.full((1, 1), model.config.decoder_start_token_id)
            dec = start
            for _ in range(3):
                step = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec)
                dec = torch.cat([dec, step.logits[:, -1].argmax(-1)[:, None]], dim=1)
            assert torch.equal(out[:, : dec.shape[1]], dec)
    base = load_base(tiny_model_dir, label)
    with evaluating(base):
        plain = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                              do_sample=False, pad_token_id=0)
    assert out.shape == plain.shape


@pytest.mark.parametrize("name", PROMPT)
def test_causal_lm_loss_falls_back_to_the_models_loss(tiny_model_dir, name):
    model = build(name).apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    batch = make_batch("llama")
    batch["labels"][:, :5] = -100  # prompt part unlabelled
    loss = causal_lm_loss(model, batch)
    own = model(**batch).loss
    torch.testing.assert_close(loss, own)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if "prompt_encoder" in n)


@pytest.mark.parametrize("name", PROMPT)
def test_classification_loss_with_prompts(tiny_model_dir, name):
    model = build(name).apply(load_base(tiny_model_dir, "bert-cls"), "seq_cls")
    batch = make_batch("bert-cls")
    loss = model_loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("prompt_encoder" in n for n in grads) and any("classifier" in n for n in grads)


def test_adalora_loss_keeps_the_orthogonality_penalty(tiny_model_dir):
    model = build("adalora").apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    batch = make_batch("llama")
    model.train()
    with_reg = causal_lm_loss(model, batch)
    torch.testing.assert_close(with_reg, model(**batch).loss)
    model.eval()  # evaluation: plain cross-entropy (the fast path)
    plain = causal_lm_loss(model, batch)
    assert with_reg.item() > plain.item()


# --------------------------------------------------------------------------- AdaLoRA in the engine

def lm_features(n=8, length=10):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(0, 256, (length,), generator=g).tolist()), "labels": list(ids)}
            for _ in range(n)]


def test_adalora_reallocates_ranks_during_an_engine_run(tiny_model_dir, tmp_path):
    cfg = TrainSection(max_steps=6, batch_size=2, lr=1e-2, precision="fp32", seed=0, group_by_length=False,
                       logging_steps=1, max_grad_norm=None)
    features = lm_features()
    method = build_method({**SPECS["adalora"], "tinit": 1, "tfinal": 2})
    method.set_total_steps(count_total_steps(len(features), cfg))
    assert method.total_steps == 6
    model = method.apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    tuner = model.base_model
    calls = []
    real = tuner.update_and_allocate

    def spy(step):
        # called after optimizer.step() and before zero_grad: this step's gradients are present
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_E" in n)
        calls.append(step)
        return real(step)

    tuner.update_and_allocate = spy
    engine = Engine(model, features, cfg, tmp_path, lambda f, g: pad_batch(f, 0), causal_lm_loss,
                    after_optimizer_step=method.after_optimizer_step, progress=False)
    assert engine.total_steps == 6
    engine.fit()
    assert calls == [1, 2, 3, 4, 5, 6]
    pattern = tuner.peft_config["default"].rank_pattern
    assert pattern is not None  # the budget was allocated at step total - tfinal = 4
    n_matrices = 2 * 7
    assert len(pattern) == n_matrices
    kept = sum(sum(v) for v in pattern.values())
    assert kept == ADA_TARGET_R * n_matrices < ADA_INIT_R * n_matrices  # the final budget
    # masked singular values are zero, and ranks now differ between matrices
    E = {n: p for n, p in model.named_parameters() if "lora_E" in n}
    assert sum(int((p != 0).sum()) for p in E.values()) == kept
    # the saved adapter carries the allocated ranks and reloads to the same outputs
    batch = make_batch("llama")
    expected = logits(model, batch)
    method.save(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["total_step"] == 6 and saved["rank_pattern"]
    loaded = build_method(SPECS["adalora"]).load(load_base(tiny_model_dir, "llama"), tmp_path / "adapter",
                                                 "causal_lm")
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


def test_adalora_after_a_resume_rebuilds_its_allocation(tiny_model_dir):
    """Checkpoints hold weights only: resumed past the allocation, the zeroed singular values
    are the rank pattern; resumed exactly at it, importance is scored from this step's gradients."""
    batch = make_batch("llama")
    method = build_method({**SPECS["adalora"], "tfinal": 2})
    method.set_total_steps(6)
    model = method.apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    E = [p for n, p in model.named_parameters() if "lora_E" in n]
    with torch.no_grad():
        for p in E:
            p.fill_(1.0)
            p[0] = 0.0  # as the checkpoint left them: rank 0 of every matrix pruned
    model(**batch).loss.backward()
    method.after_optimizer_step(model, 5)  # past total - tfinal = 4, fresh allocator
    pattern = model.peft_config["default"].rank_pattern
    assert len(pattern) == len(E) and all(v == [False] + [True] * (ADA_INIT_R - 1) for v in pattern.values())
    assert all(p[0].item() == 0 and (p[1:] != 0).all() for p in E)

    fresh = build_method({**SPECS["adalora"], "tfinal": 2})
    fresh.set_total_steps(6)
    model = fresh.apply(load_base(tiny_model_dir, "llama"), "causal_lm")
    model(**batch).loss.backward()
    fresh.after_optimizer_step(model, 4)  # exactly at the allocation, no scores yet
    kept = sum(sum(v) for v in model.peft_config["default"].rank_pattern.values())
    assert kept == ADA_TARGET_R * len(E)


# --------------------------------------------------------------------------- prompt tuning from text

def test_prompt_tuning_text_init_copies_the_token_embeddings(tiny_model_dir, tiny_tokenizer):
    method = build("prompt_tuning", init="text", init_text="Classify")
    base = load_base(tiny_model_dir, "llama")
    words = base.get_input_embeddings().weight.detach().clone()
    model = method.apply(base, "causal_lm")
    ids = tiny_tokenizer("Classify", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8 != N_VIRTUAL  # byte tokenizer: cut to the first 4
    prompt = model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(prompt.detach(), words[ids[:N_VIRTUAL]], rtol=0, atol=0)


def test_prompt_tuning_text_init_without_a_tokenizer_fails_before_training(tmp_path, tiny_model_dir):
    import shutil

    src = tiny_model_dir("llama")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in src.iterdir():
        if "token" not in f.name and f.name != "chat_template.jinja":
            shutil.copy(f, bare / f.name)
    base = load_model(bare, "causal_lm", dtype="float32")
    with pytest.raises(MethodError, match="init: text needs the model's tokenizer"):
        build("prompt_tuning", init="text", init_text="Classify").apply(base, "causal_lm")


def test_p_tuning_v2_text_init_acts_as_that_text_before_the_input(tiny_model_dir, tiny_tokenizer):
    """Deep prompts started at the frozen model's keys/values of a text: the model then
    predicts exactly as the base model does with that text in front of the input."""
    method = build("p_tuning_v2", init="text", init_text="Classify")
    base = load_base(tiny_model_dir, "llama")
    prefix = tiny_tokenizer("Classify", add_special_tokens=False)["input_ids"][:N_VIRTUAL]
    ids = torch.tensor([tiny_tokenizer("hi there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want = base(input_ids=torch.cat([torch.tensor([prefix]), ids], 1)).logits[:, len(prefix):]
    model = method.apply(base, "causal_lm")
    model.eval()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_p_tuning_v2_text_init_on_a_classifier_fails_before_training(tiny_model_dir):
    base = load_base(tiny_model_dir, "bert-cls")
    with pytest.raises(MethodError, match="init: text is defined for causal LMs"):
        build("p_tuning_v2", init="text", init_text="Classify").apply(base, "seq_cls")


# --------------------------------------------------------------------------- through the pipeline

QA = [("What is the capital of France?", "Paris."), ("Say hello.", "Hello!"), ("Add two and two.", "4"),
      ("Name a prime number.", "7")]


def sft_recipe(model_dir, folder, method, **eval_section):
    from leantune.recipe import load_recipe

    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in QA * 2))
    return load_recipe(raw={
        "model": str(model_dir), "method": method, "stage": "sft",
        "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0},
        "train": {"max_steps": 5, "batch_size": 4, "logging_steps": 1, "lr": 1e-2, "precision": "fp32",
                  "max_length": 64},
        "eval": {"batch_size": 4, "before": False, **eval_section},
        "output": {"dir": str(folder / "runs"), "name": "run"},
    })


def test_pipeline_tells_adalora_the_total_steps(tiny_model_dir, tmp_path):
    from leantune.export.run_loading import load_run
    from leantune.pipeline import train

    recipe = sft_recipe(tiny_model_dir("llama"), tmp_path, {**SPECS["adalora"], "tfinal": 1})
    summary = train(recipe, progress=False)
    assert summary.steps == 5
    saved = json.loads((tmp_path / "runs" / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["total_step"] == 5 and saved["rank_pattern"]  # allocated at step 5 - tfinal = 4
    run = load_run(summary.run_dir)
    assert isinstance(run.model, PeftModel) and trainable_count(run.model) == 0


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning"])
def test_pipeline_trains_and_generates_with_prompts(tiny_model_dir, tmp_path, name):
    from leantune.pipeline import train

    recipe = sft_recipe(tiny_model_dir("qwen2"), tmp_path, SPECS[name], prompts=["Say hello."], max_new_tokens=4)
    summary = train(recipe, progress=False)
    assert summary.steps == 5 and math.isfinite(summary.history[-1]["loss"])
    assert len(summary.samples) == 1
    assert {p.name for p in (tmp_path / "runs" / "run" / "adapter").iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors"}
