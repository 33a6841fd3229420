"""The few-labels stages end to end through ``pipeline.train`` on tiny BERT, and the
adversarial-training hook of the shared engine."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from leantune.errors import RecipeError
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# a learnable toy task: the letters of the text give the label
TRAIN = [{"text": c * n, "label": lab} for c, lab in (("a", "x"), ("b", "x"), ("y", "y"), ("z", "y"))
         for n in (3, 4, 5, 6)]
EVAL = [{"text": "aaaaa", "label": "x"}, {"text": "zzzz", "label": "y"}, {"text": "bbbbbb", "label": "x"},
        {"text": "yyy", "label": "y"}]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(tmp_path, model_dir, stage, method="full", train_rows=TRAIN, eval_rows=EVAL, **extra):
    tr, ev = _write(tmp_path / "train.jsonl", train_rows), _write(tmp_path / "eval.jsonl", eval_rows)
    raw = {"model": str(model_dir), "method": method, "stage": stage,
           "data": {"train": str(tr), "eval": str(ev), **extra.pop("data", {})},
           "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-2, "scheduler": "constant", "logging_steps": 1,
                     "max_length": 32, **extra.pop("train", {})},
           "eval": {"batch_size": 8, "before": True},
           "output": {"dir": str(tmp_path / "runs"), "name": "run", "overwrite": True}, **extra}
    return load_recipe(raw=raw)


def _eval_json(summary) -> dict:
    return json.loads((Path(summary.run_dir) / "eval.json").read_text())


# ----------------------------------------------------------------------------- adversarial

@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_adversarial_option_on_cls_stage(tmp_path, tiny_model_dir, kind, monkeypatch):
    from leantune.training import adversarial

    calls = []
    original = adversarial.Adversary.attack

    def spy(self, model, compute_loss, scale):
        weight = model.get_input_embeddings().weight.detach().clone()
        out = original(self, model, compute_loss, scale)
        assert torch.equal(weight, model.get_input_embeddings().weight)  # restored: weights untouched
        norms = self.last_deltas[0].flatten(1).norm(dim=1)
        calls.append((out, norms))
        return out

    monkeypatch.setattr(adversarial.Adversary, "attack", spy)
    recipe = _recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), "cls", method={"name": "lora", "r": 2},
                     train={"adversarial": {"kind": kind, "epsilon": 0.5, "steps": 2}})
    s = train(recipe, progress=False)
    assert len(calls) == 3 and all(out is not None for out, _ in calls)
    for _, norms in calls:
        if kind == "fgm":
            assert torch.allclose(norms, torch.full_like(norms, 0.5), atol=1e-4)
        else:
            assert (norms <= 0.5 + 1e-4).all()
    assert s.eval_after and "accuracy" in s.eval_after


def test_adversarial_fgm_adds_gradient(tiny_model_dir, tiny_tokenizer):
    from leantune.data.collate import pad_batch
    from leantune.models.loading import load_model
    from leantune.recipe import AdversarialSection
    from leantune.training.adversarial import Adversary

    model = load_model(tiny_model_dir("bert", "masked_lm"), "seq_cls", "float32")
    model.train()
    batch = pad_batch([{"input_ids": tiny_tokenizer(t)["input_ids"], "labels": y} for t, y in (("aaa", 0), ("zz", 1))],
                      tiny_tokenizer.pad_token_id)
    adv = Adversary(AdversarialSection(kind="fgm", epsilon=1.0))
    torch.manual_seed(0)
    with adv.watch(model):
        loss = model(**batch).loss
    loss.backward()
    clean = model.classifier.weight.grad.clone()
    adv_loss = adv.attack(model, lambda: model(**batch).loss, 1.0)
    assert adv_loss is not None and not torch.equal(clean, model.classifier.weight.grad)


def test_adversarial_rejected_on_meta(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), {"name": "meta"},
                     train={"adversarial": {"kind": "fgm"}})
    with pytest.raises(RecipeError, match="adversarial"):
        train(recipe, progress=False)


# ----------------------------------------------------------------------------- contrastive

def test_contrastive_supcon_knn_and_export(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), {"name": "contrastive", "temperature": 0.1}),
              progress=False)
    assert {"knn_accuracy", "uniformity"} <= set(s.eval_after) and s.steps == 3
    out = _eval_json(s)
    assert out["objective"] == "supcon" and "knn_accuracy" in out["after"]
    emb = load_file(str(Path(s.run_dir) / "adapter" / "embeddings.safetensors"))["embeddings"]
    assert emb.shape == (len(EVAL), 32)
    rows = (Path(s.run_dir) / "adapter" / "embeddings.jsonl").read_text().splitlines()
    assert json.loads(rows[0]) == {"text": "aaaaa", "label": "x"}


def test_contrastive_pairs_recall_at_1(tmp_path, tiny_model_dir):
    pairs = [{"prompt": w, "completion": w.upper()} for w in ("hello", "good night", "thanks", "where", "cat", "dog")]
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), "contrastive", method={"name": "lora", "r": 2},
                      train_rows=pairs, eval_rows=pairs[:4]), progress=False)
    assert 0.0 <= s.eval_after["recall_at_1"] <= 1.0 and "recall_at_1_reverse" in s.eval_after
    assert load_file_shape(Path(s.run_dir) / "adapter" / "embeddings.safetensors") == {(4, 32)}


def test_contrastive_run_is_the_encoder_of_a_classifier(tmp_path, tiny_model_dir):
    """Contrastive pre-training, then `stage: cls` from the run: the classifier starts from the
    run's merged encoder weights (the bare encoder's keys carry no ``bert.`` prefix)."""
    from leantune.models.loading import load_model

    texts = [{"text": t["text"]} for t in TRAIN]
    pre = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), "contrastive", method={"name": "lora", "r": 2},
                        train_rows=texts, eval_rows=texts[:4]), progress=False)
    encoder = load_model(Path(pre.run_dir), "encoder", "float32")
    base = load_model(tiny_model_dir("bert", "masked_lm"), "encoder", "float32")
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(encoder.state_dict()[name], base.state_dict()[name])  # LoRA merged in
    cls = load_model(Path(pre.run_dir), "seq_cls", "float32", labels=["x", "y"])
    assert torch.equal(cls.state_dict()[f"bert.{name}"], encoder.state_dict()[name])
    (tmp_path / "cls").mkdir()
    s = train(_recipe(tmp_path / "cls", Path(pre.run_dir), "cls"), progress=False)
    assert s.steps == 3 and "accuracy" in s.eval_after


def load_file_shape(path):
    from safetensors.torch import load_file

    return {tuple(t.shape) for t in load_file(str(path)).values()}


def test_contrastive_simcse_on_text(tmp_path, tiny_model_dir):
    texts = [{"text": t["text"]} for t in TRAIN]
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), "contrastive", train_rows=texts,
                      eval_rows=texts[:5]), progress=False)
    assert _eval_json(s)["objective"] == "simcse" and "uniformity" in s.eval_after
    losses = [h["loss"] for h in s.history if "loss" in h]
    assert len(losses) == 3 and all(l > 0 for l in losses)


# ----------------------------------------------------------------------------- self_train, co_train

def test_self_train_rounds_and_precision(tmp_path, tiny_model_dir):
    stage = {"name": "self_train", "rounds": 2, "threshold": 0.0, "per_class": 2}
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, data={"shots": 2, "unlabeled": "keep"}),
              progress=False)
    rounds = _eval_json(s)["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all("accuracy" in r for r in rounds)
    assert rounds[0]["pseudo_labelled"] == 0 and rounds[1]["pseudo_labelled"] == 4  # 2 per class
    assert all(0.0 <= r["pseudo_label_precision"] <= 1.0 for r in rounds[:2])
    assert s.steps == 9  # 3 trainings of 3 steps
    assert (Path(s.run_dir) / "adapter" / "model.safetensors").is_file() or any((Path(s.run_dir) / "adapter").iterdir())


def test_self_train_needs_a_pool(tmp_path, tiny_model_dir):
    with pytest.raises(RecipeError, match="unlabelled pool"):
        train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), "self_train"), progress=False)


def test_co_train_two_views(tmp_path, tiny_model_dir):
    stage = {"name": "co_train", "rounds": 1, "threshold": 0.0, "per_class": 1}
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, method={"name": "lora", "r": 2},
                      data={"shots": 2, "unlabeled": "keep"}), progress=False)
    rounds = _eval_json(s)["rounds"]
    assert len(rounds) == 2 and {"accuracy", "accuracy_head", "accuracy_tail"} <= set(rounds[-1])
    assert rounds[0]["labelled_by_head"] == 2 and rounds[1]["added_tail"] == 2 and rounds[1]["added_head"] == 2
    assert (Path(s.run_dir) / "adapter" / "view_b" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- active

@pytest.mark.parametrize("strategy", ["entropy", "margin", "least_confidence", "random"])
def test_active_learning_curve(tmp_path, tiny_model_dir, strategy):
    stage = {"name": "active", "strategy": strategy, "initial": 1, "batch": 3, "rounds": 2}
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, train={"max_steps": 2}), progress=False)
    curve = _eval_json(s)["curve"]
    assert [c["labels_used"] for c in curve] == [2, 5, 8]
    assert all("accuracy" in c for c in curve) and curve[0]["queried"] == 3


def test_active_csv_oracle_resumes(tmp_path, tiny_model_dir):
    pool = _write(tmp_path / "pool.jsonl", [{"text": t["text"]} for t in TRAIN[4:]])
    label_file = tmp_path / "labels.csv"
    stage = {"name": "active", "oracle": "csv", "batch": 2, "label_file": str(label_file)}

    def run():
        return train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, train_rows=TRAIN[:2] + TRAIN[8:10],
                             data={"unlabeled": str(pool)}, train={"max_steps": 2}), progress=False)

    s = run()
    asked = list(csv.DictReader(open(Path(s.run_dir) / "to_label.csv")))
    assert len(asked) == 2 and all(r["label"] == "" for r in asked)
    assert _eval_json(s)["curve"][-1]["labels_used"] == 4
    s = run()  # nothing filled in: no new query
    assert len(list(csv.DictReader(open(label_file)))) == 2
    truth = {t["text"]: t["label"] for t in TRAIN}
    rows = list(csv.DictReader(open(label_file)))
    for r in rows:
        r["label"] = truth[r["text"]]
    with open(label_file, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    s = run()
    curve = _eval_json(s)["curve"]
    assert [c["labels_used"] for c in curve] == [4, 6]
    all_rows = list(csv.DictReader(open(label_file)))
    assert len(all_rows) == 4 and len({r["text"] for r in all_rows}) == 4


# ----------------------------------------------------------------------------- meta

@pytest.mark.parametrize("algorithm", ["protonet", "reptile"])
def test_meta_on_unseen_classes(tmp_path, tiny_model_dir, algorithm):
    """A separable task with a nuisance: the class is the repeated letter, but most of each text is a run of
    one of six punctuation marks drawn at random. Mean-pooled embeddings of the untrained model are swamped
    by the punctuation; meta-training on 18 classes learns to look past it, which carries over to the 6
    unseen classes. Baseline: the same model before meta-training, same evaluation episodes
    (``eval.before``: prototypes, after the same support adaptation for reptile)."""
    import random

    rng = random.Random(0)
    rows = [{"text": c * 3 + rng.choice(".,;:!?") * rng.randint(6, 10), "label": c}
            for c in "abcdefghijklmnopqrstuvwx" for _ in range(8)]
    stage = {"name": "meta", "algorithm": algorithm, "n_way": 3, "k_shot": 2, "n_query": 2, "episodes": 40,
             "eval_episodes": 40, "unseen_classes": 6, "inner_steps": 4, "inner_lr": 1e-2, "meta_lr": 1.0}
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, train_rows=rows, eval_rows=rows[:6],
                      train={"max_steps": 40, "lr": 3e-3}), progress=False)
    out = _eval_json(s)
    assert len(out["unseen_classes"]) == 6 and not out["class_overlap"]
    assert not set(out["unseen_classes"]) & set(out["train_classes"])
    assert s.steps == 40 and len(s.history) == 40
    before, after = s.eval_before, s.eval_after
    assert before["episodes"] == after["episodes"] == 40
    # better on unseen classes than before meta-training, beyond both 95% intervals
    assert after["accuracy"] - after["accuracy_ci95"] > before["accuracy"] + before["accuracy_ci95"], (before, after)
    assert after["accuracy"] > before["accuracy"] + 0.2, (before, after)


# ----------------------------------------------------------------------------- recipes, data

def test_label_recipes_load():
    recipes = sorted((Path(__file__).parents[2] / "recipes" / "labels").glob("*.yaml"))
    assert len(recipes) >= 7
    stages = {load_recipe(p).stage["name"] for p in recipes}
    assert {"contrastive", "self_train", "co_train", "active", "meta", "cls"} <= stages


def test_bilingual_dialog_rows_pair_topics_across_languages():
    from leantune.semisup.contrastive import DIALOG_CATEGORY_MAP, bilingual_category_rows

    rows = bilingual_category_rows()
    by_lang: dict[str, set] = {}
    for r in rows:
        by_lang.setdefault(r["language"], set()).add(r["label"])
    assert by_lang["english"] == by_lang["spanish"] == set(DIALOG_CATEGORY_MAP)


def test_adversarial_runs_inside_self_train_rounds(tmp_path, tiny_model_dir, monkeypatch):
    from leantune.training import adversarial

    calls = []
    original = adversarial.Adversary.attack
    monkeypatch.setattr(adversarial.Adversary, "attack",
                        lambda self, *a: calls.append(1) or original(self, *a))
    stage = {"name": "self_train", "rounds": 1, "threshold": 0.0, "per_class": 1}
    train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, data={"shots": 2, "unlabeled": "keep"},
                  train={"max_steps": 1, "adversarial": {"kind": "pgd", "epsilon": 0.1, "steps": 2}}), progress=False)
    assert len(calls) == 2  # one step in each of the two trainings


def test_adversarial_refused_by_stages_with_their_own_loop(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), {"name": "active", "oracle": "labels"},
                     train={"adversarial": {"kind": "fgm"}})
    assert recipe.train.adversarial.kind == "fgm"  # active trains in the shared engine: accepted
    from leantune.stages.registry import get_stage_class

    assert get_stage_class("active").adversarial_ok and not getattr(get_stage_class("meta"), "adversarial_ok", False)
