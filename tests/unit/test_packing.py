"""Padding-free packing (``train.packing``) against the unpacked computation it replaces.

References: the same examples run one by one (summed loss and gradients), the logits
of an example alone, every token counted back out of the rows, and a short training run
reloaded from its folder.
"""
from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from leantune.cli import app
from leantune.data.collate import pad_batch, pad_packed
from leantune.data.packing import (
    SEGMENTS,
    check_packed_attention,
    first_fit_decreasing,
    pack_features,
    uses_varlen_attention,
)
from leantune.data.tokenize import IGNORE
from leantune.errors import RecipeError
from leantune.methods.registry import build_method
from leantune.pipeline import evaluate_run
from leantune.recipe import load_recipe
from leantune.stages.registry import build_stage
from leantune.training.losses import causal_lm_loss, label_count
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LENGTHS = (5, 9, 3, 12, 7, 2, 10, 4)


def features(seed: int = 1, lengths=LENGTHS, prompt_share: float = 0.5) -> list[dict]:
    """Random token ids with the first part of each example unlabelled (a prompt)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, 250, (n,), generator=g).tolist()
        prompt = int(n * prompt_share)
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def summed_loss(model, batch) -> torch.Tensor:
    return causal_lm_loss(model, batch) * label_count(batch)


def loss_and_grads(model, batches) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = sum(summed_loss(model, b) for b in batches)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.item(), [p.grad.clone() for p in params]


def tiny_lm(tokenizer, arch="llama", method=None, attn=None):
    """A tiny causal LM in training mode without dropout (GPT-2 has some), so that runs compare exactly."""
    model = build_tiny_model(arch, "causal_lm", tokenizer)
    if attn:
        model.config._attn_implementation = attn
    if method:
        built = build_method(method)
        built.set_total_steps(10)  # AdaLoRA's schedule needs it
        model = built.apply(model, "causal_lm")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


# --------------------------------------------------------------------------- (1) loss and gradients

@pytest.mark.parametrize("arch, method, attn, one_row", [
    ("llama", None, None, False), ("llama", None, None, True), ("llama", None, "eager", False),
    ("qwen2", None, None, False), ("gpt2", None, None, False),
    ("llama", {"name": "lora", "r": 4}, None, False),
    ("llama", {"name": "mam", "prefix_length": 3, "reduction_factor": 4}, None, False),
    ("llama", {"name": "adalora", "init_r": 4, "target_r": 2}, None, False),  # the model's own loss
], ids=["llama", "llama-one-row", "llama-eager", "qwen2", "gpt2", "lora", "mam", "adalora"])
def test_packed_loss_and_gradients_equal_the_unpacked_ones(tiny_tokenizer, arch, method, attn, one_row):
    torch.manual_seed(0)
    model = tiny_lm(tiny_tokenizer, arch, method, attn)
    feats, pad = features(), tiny_tokenizer.pad_token_id
    want_loss, want = loss_and_grads(model, [pad_batch([f], pad) for f in feats])
    rows = pack_features(feats, 16)
    assert 1 < len(rows) < len(feats)  # really packed, over several rows (padding after the shorter ones)
    batch = pad_packed(rows, pad, one_row=one_row)
    assert batch["input_ids"].shape[0] == (1 if one_row else len(rows))
    got_loss, got = loss_and_grads(model, [batch])
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_labelled_tokens_are_counted_as_unpacked(tiny_tokenizer):
    feats = features(prompt_share=0.0)  # pt-like: every token labelled, first ones included
    unpacked = sum(label_count(pad_batch([f], 0)) for f in feats)
    assert label_count(pad_packed(pack_features(feats, 16), 0)) == unpacked == sum(n - 1 for n in LENGTHS)


# --------------------------------------------------------------------------- (2) no attention across examples

def test_changing_one_example_leaves_the_others_logits_alone(tiny_tokenizer):
    model = tiny_lm(tiny_tokenizer).eval()
    feats = features(lengths=(6, 5, 4))
    rows = pack_features(feats, 15)
    assert rows[0][SEGMENTS] == [6, 5, 4]
    changed = [dict(f) for f in feats]
    changed[0] = {**feats[0], "input_ids": [(t + 17) % 250 for t in feats[0]["input_ids"]]}
    with torch.no_grad():
        def logits(fs):
            b = pad_packed(pack_features(fs, 15), 0)
            return model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]
        before, after = logits(feats), logits(changed)
        alone = model(input_ids=torch.tensor([feats[2]["input_ids"]])).logits[0]
    assert not torch.allclose(before[:6], after[:6], atol=1e-3)  # the changed example did change
    torch.testing.assert_close(after[6:], before[6:], atol=1e-6, rtol=0)
    torch.testing.assert_close(before[11:], alone, atol=1e-5, rtol=0)


def test_flash_attention_models_get_one_row(tiny_tokenizer):
    """FlashAttention reads packed segments from the position ids of a single row only."""
    model = build_tiny_model("llama", "causal_lm", tiny_tokenizer)
    assert not uses_varlen_attention(model)
    model.config._attn_implementation = "flash_attention_2"
    assert uses_varlen_attention(build_method({"name": "lora", "r": 2}).apply(model, "causal_lm"))


def test_positions_restart_and_segment_starts_are_not_predicted():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE, 2, 3, IGNORE, 5], SEGMENTS: [3, 2]},
            {"input_ids": [6, 7], "labels": [IGNORE, 7], SEGMENTS: [2]}]
    batch = pad_packed(rows, 0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [IGNORE, 7, IGNORE, IGNORE, IGNORE]
    flat = pad_packed(rows, 0, one_row=True)
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]] and flat["input_ids"].tolist() == [[1, 2, 3, 4,
                                                                                                        5, 6, 7]]
    packed = pack_features([{"input_ids": [9, 8, 7], "labels": [9, 8, 7]}, {"input_ids": [5, 4], "labels": [5, 4]}],
                           8)
    assert packed == [{"input_ids": [9, 8, 7, 5, 4], "labels": [IGNORE, 8, 7, IGNORE, 4], SEGMENTS: [3, 2]}]


# --------------------------------------------------------------------------- (3) bin packing

def test_first_fit_decreasing_keeps_every_token_fits_and_is_deterministic():
    rng = random.Random(3)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    bins = first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert first_fit_decreasing(lengths, 64) == bins
    assert len(bins) <= 11 / 9 * (sum(lengths) / 64) + 1  # FFD's bound against the optimum (≥ total / capacity)
    # the reference: the plain quadratic first fit over the same order
    plain: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        home = next((b for b in plain if sum(lengths[k] for k in b) + lengths[i] <= 64), None)
        home.append(i) if home is not None else plain.append([i])
    assert bins == plain


def test_packed_rows_hold_every_token_of_every_example():
    feats = features(seed=5, lengths=[random.Random(i).randint(2, 30) for i in range(40)])
    rows = pack_features(feats, 32)
    assert all(len(r["input_ids"]) <= 32 and sum(r[SEGMENTS]) == len(r["input_ids"]) for r in rows)
    pieces = sorted(tuple(r["input_ids"][s - n: s]) for r in rows
                    for n, s in zip(r[SEGMENTS], [sum(r[SEGMENTS][: k + 1]) for k in range(len(r[SEGMENTS]))]))
    assert pieces == sorted(tuple(f["input_ids"]) for f in feats)
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([40], 32)


# --------------------------------------------------------------------------- (4) pt documents apart

def test_pt_packs_each_document_as_its_own_segment(tiny_tokenizer, tiny_model_dir, tmp_path):
    texts = ["alpha beta gamma", "one two", "the quick brown fox jumps over the lazy dog " * 3, "zz"]
    recipe = load_recipe(raw={"model": str(tiny_model_dir("llama")), "stage": "pt",
                              "train": {"packing": True, "max_length": 48}})
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm"
    data = stage.prepare(recipe, tiny_tokenizer, [{"text": t} for t in texts], [])
    eos = tiny_tokenizer.eos_token_id
    docs = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    pieces = [d[s: s + 48] for d in docs for s in range(0, len(d), 48)]  # the long text: two pieces
    segments = []
    for row in data.train:
        starts = [sum(row[SEGMENTS][:k]) for k in range(len(row[SEGMENTS]))]
        segments += [row["input_ids"][s: s + n] for s, n in zip(starts, row[SEGMENTS])]
        assert all(row["labels"][s] == IGNORE for s in starts)
        assert all(row["labels"][i] == row["input_ids"][i] for i in range(len(row["labels"])) if i not in starts)
    assert sorted(map(tuple, segments)) == sorted(map(tuple, pieces))
    assert data.info["packing"]["examples"] == len(pieces) and data.info["packing"]["rows"] == len(data.train)


# --------------------------------------------------------------------------- (5) refusals

@pytest.mark.parametrize("raw, words", [
    ({"stage": "cls"}, ["train.packing", "stage cls", "only sft and pt", "train.packing: false"]),
    ({"stage": "dpo"}, ["train.packing", "stage dpo"]),
    ({"method": "prompt_tuning"}, ["train.packing", "method prompt_tuning", "virtual tokens", "lora"]),
    ({"method": "prefix_tuning"}, ["method prefix_tuning"]),
    ({"method": "p_tuning"}, ["method p_tuning"]),
    ({"method": {"name": "unipelt", "prefix_length": 4}}, ["method unipelt", "prefix_length: 0"]),
])
def test_recipes_packing_cannot_serve_are_refused(tmp_path, raw, words):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "m", **raw, "train": {"packing": True}}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:") and all(w in str(err.value) for w in words), str(err.value)
    load_recipe(path, ["train.packing=false"])  # the way out loads


def test_unipelt_without_prefix_packs():
    load_recipe(raw={"model": "m", "method": {"name": "unipelt", "prefix_length": 0}, "train": {"packing": True}})


@pytest.mark.parametrize("arch, head, stage", [("bert", "masked_lm", "pt"), ("t5", "seq2seq", "sft")])
def test_encoder_models_are_refused(tiny_tokenizer, tiny_model_dir, arch, head, stage):
    recipe = load_recipe(raw={"model": str(tiny_model_dir(arch, head)), "stage": stage, "train": {"packing": True}})
    st = build_stage(recipe.stage)
    st.head_name = head
    example = {"text": "some text"} if stage == "pt" else {"messages": [{"role": "user", "content": "hi"},
                                                                          {"role": "assistant", "content": "yo"}]}
    with pytest.raises(RecipeError, match="train.packing: .*set train.packing: false"):
        st.prepare(recipe, tiny_tokenizer, [example], [])


class IgnoresPositions(nn.Module):
    """A causal LM whose forward numbers positions itself, whatever position ids it is given."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, use_cache=None):
        return self.lm(input_ids=input_ids, use_cache=False)


def test_a_model_that_mixes_packed_examples_is_refused(tiny_tokenizer):
    lm = tiny_lm(tiny_tokenizer)
    check_packed_attention(lm)  # the plain model passes
    assert lm.training  # and is left in training mode
    with pytest.raises(RecipeError, match=r"train.packing: IgnoresPositions lets an example attend to the one "
                                          r"before it .*set train.packing: false"):
        check_packed_attention(IgnoresPositions(lm))


# --------------------------------------------------------------------------- a short run

def test_a_packed_sft_run_trains_and_reloads(tiny_model_dir, tmp_path):
    """``leantune train`` with packing: the loss falls, and the run reloaded from its folder scores
    what it scored at the end of training, below the base model (on unpacked evaluation batches)."""
    pairs = [(f"What is {a} plus {b}?", f"{a + b}.") for a in range(6) for b in range(4)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in pairs))
    recipe = {"model": str(tiny_model_dir("llama")), "method": "full", "stage": "sft",
              "data": {"train": str(data), "eval": str(data), "format": "alpaca"},
              "train": {"packing": True, "max_steps": 12, "batch_size": 2, "max_length": 128, "lr": 3e-3,
                        "precision": "fp32", "logging_steps": 1, "seed": 0},
              "eval": {"batch_size": 8}, "output": {"dir": str(tmp_path / "runs"), "name": "packed"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "packed"
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3
    assert all(h["tokens_per_s"] > 0 for h in history if "tokens_per_s" in h)
    evals = json.loads((run_dir / "eval.json").read_text())
    assert evals["after"]["loss"] < evals["before"]["loss"]
    again = evaluate_run(run_dir)
    assert again["loss"] == pytest.approx(evals["after"]["loss"], rel=1e-5)
