"""leantune's own methods (injection-based) × tiny architectures.

Every method is applied to llama/qwen2/gpt2 (causal_lm), bert (seq_cls, masked_lm)
and t5 (seq2seq). References: the untouched base model, hand-written parameter
formulas from config and dimensions, and fresh bases for save/load.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from leantune.errors import MethodError, NotMergeable
from leantune.methods.registry import build_method
from leantune.models.loading import load_model
from leantune.training.modes import evaluating

pytestmark = pytest.mark.usefixtures("torch_single_thread")

D, FF, VOCAB, LABELS = 32, 64, 261, 3
ARCHS = [("llama", "causal_lm"), ("qwen2", "causal_lm"), ("gpt2", "causal_lm"), ("bert", "seq_cls"),
         ("bert", "masked_lm"), ("t5", "seq2seq")]

SPECS = {
    "bitfit": {"name": "bitfit"},
    "embedding": {"name": "embedding"},
    "adapter-houlsby": {"name": "adapter", "kind": "houlsby", "reduction_factor": 4},
    "adapter-pfeiffer": {"name": "adapter", "kind": "pfeiffer", "reduction_factor": 4, "non_linearity": "gelu"},
    "adapter-parallel": {"name": "adapter", "kind": "parallel", "reduction_factor": 4, "scaling": 2.0},
    "compacter": {"name": "compacter", "reduction_factor": 4, "phm_dim": 4},
    "adamix": {"name": "adamix", "num_experts": 3, "reduction_factor": 4},
    "lst": {"name": "lst", "reduction_factor": 8},
    "unipelt": {"name": "unipelt", "lora_r": 2, "prefix_length": 3, "reduction_factor": 4},
    "mam": {"name": "mam", "prefix_length": 3, "reduction_factor": 4},
    "llrd": {"name": "llrd", "decay": 0.8},
}
# Llama and T5 have no biases: BitFit runs there in its documented variant with added zero biases
BITFIT_ADDED = {"llama", "t5"}

UNDEFINED = {
    ("lst", "t5"): "ladder side tuning is defined here for decoder-only and encoder-only models; an "
                   "encoder-decoder needs two ladders (encoder and decoder side networks) and is not implemented",
}
MERGEABLE = {"bitfit", "embedding", "llrd"}
NOT_IDENTITY = {"unipelt", "mam"}  # key/value prefixes change attention from the first step

CASES = [(m, a, h) for m in SPECS for a, h in ARCHS]


def case_params():
    out = []
    for m, a, h in CASES:
        marks = [pytest.mark.skip(reason=UNDEFINED[(m, a)])] if (m, a) in UNDEFINED else []
        out.append(pytest.param(m, a, h, marks=marks, id=f"{m}-{a}-{h}"))
    return out


# --------------------------------------------------------------------------- helpers

def spec(method, arch):
    s = dict(SPECS[method])
    if method == "bitfit" and arch in BITFIT_ADDED:
        s["add_missing_biases"] = True
    return s


def load_base(tiny_model_dir, arch, head, **kw):
    return load_model(tiny_model_dir(arch, head), head, dtype="float32", **kw)


def make_batch(head, seed=0, pad=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[1, -3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if head == "seq_cls":
        batch["labels"] = torch.tensor([0, 2])
    else:
        batch["labels"] = ids.clone()
    return batch


def logits(model, batch):
    kw = {k: v for k, v in batch.items() if k != "labels"}
    if "decoder_input_ids" not in kw and getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        kw["decoder_input_ids"] = batch["labels"][:, :6]
    with evaluating(model):
        return model(**kw).logits.detach().clone()


def train_step(model, batch, lr=1e-2):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model(**batch).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    opt.zero_grad(set_to_none=True)
    return grads


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def kv_dim(arch):
    return 16 if arch in ("llama", "qwen2") else D  # llama/qwen2: 2 KV heads × head_dim 8


def blocks(arch):
    return 4 if arch == "t5" else 2  # T5: 2 encoder + 2 decoder blocks


def bottleneck(d, r):
    return 2 * d * r + r + d


def lora_sites(arch):
    """(in, out) of the layers UniPELT's LoRA targets (query and value)."""
    return {"llama": [(D, D), (D, 16)] * 2, "qwen2": [(D, D), (D, 16)] * 2, "gpt2": [(D, 3 * D)] * 2,
            "bert": [(D, D)] * 4, "t5": [(D, D)] * 8}[arch]


def expected_trainable(method, arch, head, base):
    b = blocks(arch)
    head_n = D * LABELS + LABELS if head == "seq_cls" else 0
    if method == "llrd":
        return sum(p.numel() for p in base.parameters())
    if method == "embedding":
        return VOCAB * D + head_n
    if method == "bitfit":
        if arch == "llama":  # zero biases on q,k,v,o (32,16,16,32) and gate,up,down (64,64,32) per block
            return 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)
        if arch == "t5":  # q,k,v,o (32 each) per attention (enc: 1, dec: 2 incl. cross), wi (64), wo (32)
            return 2 * (4 * D + FF + D) + 2 * (8 * D + FF + D)
        if arch == "qwen2":  # only q, k, v have biases (32, 16, 16)
            return 2 * (D + 16 + 16)
        if arch == "gpt2":  # ln_1, c_attn, c_proj, ln_2, c_fc, mlp.c_proj; + ln_f
            return 2 * (D + 3 * D + D + D + FF + D) + D
        # bert: embeddings LayerNorm; per block q,k,v, attn out dense + LN, intermediate, output dense + LN;
        # seq_cls adds the classifier (the pooler counts as head and stays frozen)
        return D + 2 * (3 * D + D + D + FF + D + D) + head_n
    if method.startswith("adapter"):
        r = D // 4
        sites = 2 * b if method == "adapter-houlsby" else b
        return sites * bottleneck(D, r) + head_n
    if method == "compacter":
        n, r = 4, D // 4
        return n ** 3 + b * ((2 * r + D) + (2 * D + r)) + head_n
    if method == "adamix":
        return 2 * b * 3 * bottleneck(D, D // 4) + head_n
    if method == "lst":
        L, ds = 2, D // 8
        return (L + 1) * (D * ds + ds) + L + L * (2 * ds + 2 * (ds * ds + ds)) + (ds * D + D) + head_n
    if method == "unipelt":
        lora = sum(2 * (i + o) + (i + 1) for i, o in lora_sites(arch))
        adapter = b * (bottleneck(D, D // 4) + D + 1)
        prefix = b * (2 * 3 * kv_dim(arch) + D + 1)
        return lora + adapter + prefix + head_n
    if method == "mam":
        return b * bottleneck(D, D // 4) + b * 2 * 3 * kv_dim(arch) + head_n
    raise AssertionError(method)


# --------------------------------------------------------------------------- the matrix

@pytest.mark.parametrize("method,arch,head", case_params())
def test_apply_starts_as_the_base_model(tiny_model_dir, method, arch, head):
    batch = make_batch(head, pad=head != "causal_lm")
    reference = logits(load_base(tiny_model_dir, arch, head), batch)
    model = build_method(spec(method, arch)).apply(load_base(tiny_model_dir, arch, head), head)
    out = logits(model, batch)
    if method in NOT_IDENTITY:
        assert out.shape == reference.shape and torch.isfinite(out).all()
        assert not torch.equal(out, reference)
    else:
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,arch,head", case_params())
def test_trainable_parameters_match_the_formula(tiny_model_dir, method, arch, head):
    base = load_base(tiny_model_dir, arch, head)
    expected = expected_trainable(method, arch, head, base)
    m = build_method(spec(method, arch))
    model = m.apply(base, head)
    assert n_trainable(model) == expected
    if method != "llrd":
        assert set(m.param_names) == trainable(model)


@pytest.mark.parametrize("method,arch,head", case_params())
def test_one_step_changes_only_the_methods_parameters(tiny_model_dir, method, arch, head):
    model = build_method(spec(method, arch)).apply(load_base(tiny_model_dir, arch, head), head)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_set = trainable(model)
    grads = train_step(model, make_batch(head))
    assert set(grads) == train_set
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = set(before) - train_set
    assert not changed & frozen, sorted(changed & frozen)[:5]  # every other weight bit-for-bit equal
    moved = {n for n in train_set if grads[n].abs().sum() > 0}
    assert moved and moved <= changed


@pytest.mark.parametrize("method,arch,head", case_params())
def test_save_and_load_into_a_fresh_base(tiny_model_dir, tmp_path, method, arch, head):
    m = build_method(spec(method, arch))
    model = m.apply(load_base(tiny_model_dir, arch, head), head)
    batch = make_batch(head)
    train_step(model, batch)
    expected = logits(model, batch)
    m.save(model, tmp_path / "saved")
    if method != "llrd":
        saved = load_file(tmp_path / "saved" / "delta.safetensors")
        assert set(saved) == set(m.param_names) == trainable(model)  # only the method's own tensors
        meta = json.loads((tmp_path / "saved" / "delta_config.json").read_text())
        assert meta["method"]["name"] == SPECS[method]["name"]
    loaded = build_method(spec(method, arch)).load(load_base(tiny_model_dir, arch, head), tmp_path / "saved", head)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,arch,head", case_params())
def test_merge(tiny_model_dir, method, arch, head):
    m = build_method(spec(method, arch))
    model = m.apply(load_base(tiny_model_dir, arch, head), head)
    batch = make_batch(head)
    train_step(model, batch)
    expected = logits(model, batch)
    if method not in MERGEABLE or (method == "bitfit" and arch == "t5"):  # T5 has no config key for biases
        with pytest.raises(NotMergeable):
            m.merge(model)
        return
    merged = m.merge(model)
    assert isinstance(merged, PreTrainedModel)
    assert not any("leantune" in n for n, _ in merged.named_parameters())
    assert type(merged) is type(load_base(tiny_model_dir, arch, head))
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- method specifics

def test_undefined_combinations_refuse_clearly(tiny_model_dir):
    for (method, arch), _ in UNDEFINED.items():
        head = dict(ARCHS)[arch] if arch != "bert" else "seq_cls"
        with pytest.raises(MethodError, match="defined for"):
            build_method(SPECS[method]).apply(load_base(tiny_model_dir, arch, head), head)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_bitfit_without_biases_explains_the_option(tiny_model_dir, arch):
    head = dict(ARCHS)[arch]
    with pytest.raises(MethodError, match="add_missing_biases"):
        build_method({"name": "bitfit"}).apply(load_base(tiny_model_dir, arch, head), head)


def test_bitfit_trains_the_seq_cls_head(tiny_model_dir):
    model = build_method({"name": "bitfit"}).apply(load_base(tiny_model_dir, "bert", "seq_cls"), "seq_cls")
    names = trainable(model)
    assert {"classifier.weight", "classifier.bias"} <= names
    assert all(n.endswith("bias") for n in names - {"classifier.weight"})


def test_embedding_new_tokens_only(tiny_model_dir):
    first = 256  # the tokenizer's special tokens come after the 256 bytes
    m = build_method({"name": "embedding", "new_tokens_only": True, "first_new_token": first})
    base = load_base(tiny_model_dir, "llama", "causal_lm")
    original = base.get_input_embeddings().weight.detach().clone()
    model = m.apply(base, "causal_lm")
    assert n_trainable(model) == (VOCAB - first) * D
    batch = make_batch("causal_lm")
    batch["input_ids"][:, ::3] = torch.tensor([256, 259, 260, 257])[: batch["input_ids"][:, ::3].shape[1]]
    batch["labels"] = batch["input_ids"].clone()
    for _ in range(2):
        train_step(model, batch)
    expected = logits(model, batch)
    merged = m.merge(model)
    weight = merged.get_input_embeddings().weight
    assert isinstance(merged.get_input_embeddings(), nn.Embedding)
    assert torch.equal(weight[:first], original[:first])  # old rows bit-for-bit
    assert not torch.equal(weight[first:], original[first:])
    torch.testing.assert_close(logits(merged, batch), expected, rtol=0, atol=1e-6)


def test_embedding_config_is_checked():
    from leantune.errors import RecipeError

    with pytest.raises(RecipeError, match="first_new_token"):
        build_method({"name": "embedding", "new_tokens_only": True})
    with pytest.raises(RecipeError):
        build_method({"name": "adapter", "non_linearity": "swish"})
    with pytest.raises(RecipeError):
        build_method({"name": "adamix", "num_experts": 0})


@pytest.mark.parametrize("arch,head,expected", [
    ("llama", "causal_lm", ["self_attn.o_proj", "mlp.down_proj"]),
    ("gpt2", "causal_lm", ["attn.c_proj", "mlp.c_proj"]),
    ("bert", "seq_cls", ["attention.output.dense", "output.dense"]),
    ("t5", "seq2seq", ["SelfAttention.o", "DenseReluDense.wo"]),
])
def test_houlsby_placement(tiny_model_dir, arch, head, expected):
    model = build_method(SPECS["adapter-houlsby"]).apply(load_base(tiny_model_dir, arch, head), head)
    wrapped = [n for n, m in model.named_modules() if "leantune_adapter" in m._modules]
    assert len(wrapped) == 2 * blocks(arch)
    assert {".".join(n.split(".")[-len(e.split(".")):]) for n in wrapped for e in expected
            if n.endswith(e)} == set(expected)


def test_gpt2_conv1d_views_are_out_by_in(tiny_model_dir):
    from transformers.pytorch_utils import Conv1D

    from leantune.methods.injection import in_out, weight_view

    base = load_base(tiny_model_dir, "gpt2", "causal_lm")
    c_attn = base.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, Conv1D) and in_out(c_attn) == (D, 3 * D)
    assert weight_view(c_attn).shape == (3 * D, D)
    x = torch.randn(3, D)
    torch.testing.assert_close(c_attn(x), x @ weight_view(c_attn).t() + c_attn.bias)


def test_adamix_averages_experts_in_eval(tiny_model_dir):
    from leantune.methods.adamix import MixAdapter

    model = build_method(SPECS["adamix"]).apply(load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    mix = next(m for m in model.modules() if isinstance(m, MixAdapter))
    with torch.no_grad():
        for p in mix.parameters():
            p.normal_()
    x = torch.randn(2, 5, D)
    mix.eval()
    avg = nn.functional.linear(mix.act(nn.functional.linear(x, mix.down_weight.mean(0), mix.down_bias.mean(0))),
                               mix.up_weight.mean(0), mix.up_bias.mean(0))
    torch.testing.assert_close(mix(x), avg)
    mix.train()
    torch.manual_seed(0)
    outs = {tuple(mix(x).flatten()[:3].tolist()) for _ in range(12)}
    assert len(outs) > 1  # stochastic routing in training


def test_compacter_shares_a_and_builds_kronecker_weights(tiny_model_dir):
    from leantune.methods.compacter import PHMLinear

    model = build_method(SPECS["compacter"]).apply(load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    shared = [n for n, _ in model.named_parameters() if n.endswith(".phm.A")]
    assert len(shared) == 1
    layers = [m for m in model.modules() if isinstance(m, PHMLinear)]
    assert len(layers) == 4 and len({id(m.shared[0].A) for m in layers}) == 1
    down = layers[0]
    A, B = down.shared[0].A, down.s @ down.t
    manual = sum(torch.kron(A[i], B[i]) for i in range(4))
    assert manual.shape == (D // 4, D)
    torch.testing.assert_close(down.weight(), manual)
    assert all(torch.linalg.matrix_rank(B[i]) <= 1 for i in range(4))


@pytest.mark.parametrize("arch,head", [("llama", "causal_lm"), ("gpt2", "causal_lm"), ("bert", "seq_cls")])
def test_lst_sends_no_gradient_through_the_backbone(tiny_model_dir, arch, head):
    model = build_method(SPECS["lst"]).apply(load_base(tiny_model_dir, arch, head), head)
    prefix = model.base_model_prefix + "."
    side = trainable(model)
    # the frozen backbone: everything inside the wrapped base model except BERT's pooler, which
    # re-runs on the combined state (it sits between the side network and the classifier), and
    # GPT-2's word embeddings, which are also its (tied) output head
    out_emb = model.get_output_embeddings()
    tied = out_emb.weight if out_emb is not None else None
    backbone = [p for n, p in model.named_parameters()
                if n.startswith(prefix) and ".pooler." not in n and "leantune_side" not in n and p is not tied]
    assert backbone and all(n.startswith(prefix + "leantune_side.") for n in side if "classifier" not in n)
    for p in backbone:  # even if the backbone asked for gradients, none may arrive
        p.requires_grad_(True)
    model.train()
    model(**make_batch(head)).loss.backward()
    assert all(p.grad is None for p in backbone)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in side)


@pytest.mark.parametrize("arch,head", [("llama", "causal_lm"), ("bert", "seq_cls"), ("t5", "seq2seq"),
                                       ("gpt2", "causal_lm")])
def test_prefix_attention_is_the_same_on_eager_and_sdpa(tiny_model_dir, arch, head):
    batch = make_batch(head, pad=True)
    outs = []
    for impl in ("eager", "sdpa"):
        base = load_base(tiny_model_dir, arch, head, extra={"attn_implementation": impl})
        assert base.config._attn_implementation == impl
        torch.manual_seed(1)
        model = build_method(SPECS["mam"]).apply(base, head)
        outs.append(logits(model, batch))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_prefix_keys_are_attended(tiny_model_dir):
    """A prefix whose values are huge dominates the attention output; zero-length would be the base."""
    from leantune.methods.kv_prefix import KVPrefix

    batch = make_batch("causal_lm")
    model = build_method(SPECS["mam"]).apply(load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    first = logits(model, batch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, KVPrefix):
                m.value.mul_(100)
    assert not torch.allclose(first, logits(model, batch))


def test_unknown_target_pattern_lists_candidates(tiny_model_dir):
    with pytest.raises(MethodError, match="match no linear layer") as info:
        build_method({"name": "unipelt", "lora_targets": ["qkv_proj"]}).apply(
            load_base(tiny_model_dir, "llama", "causal_lm"), "causal_lm")
    assert "'q_proj'" in str(info.value)


def test_every_own_method_documents_itself():
    from leantune.methods.registry import list_methods

    own = {"bitfit", "embedding", "adapter", "compacter", "adamix", "lst", "unipelt", "mam", "llrd"}
    found = {m.name: m for m in list_methods() if m.name in own}
    assert set(found) == own
    for cls in found.values():
        assert cls.family in ("specification", "addition", "reparameterization", "hybrid")
        assert "arXiv:" in cls.paper and cls.summary
        for field, info in cls.Config.model_fields.items():
            assert info.description, f"{cls.name}.{field} has no description"
