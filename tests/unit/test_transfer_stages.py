"""The transfer stages end to end on tiny models: distill (classification and causal LM),
continual (naive, ewc, replay, adapters), multitask (heads and instruction mixing), dann,
and the pt → cls domain-adaptation chain."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leantune.errors import RecipeError
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CLS = [("great movie, loved it", "pos"), ("terrible and boring", "neg"), ("it was fine I guess", "neu"),
       ("wonderful acting", "pos"), ("awful plot", "neg"), ("average at best", "neu")]
TOPIC = [("the team won the match", "sport"), ("stocks fell on monday", "money"),
         ("a late goal decided it", "sport"), ("the bank raised rates", "money")]
QA = [("What is the capital of France?", "Paris."), ("Add two and two.", "4"), ("Say hello.", "Hello!"),
      ("Name a prime number.", "7")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cls_file(path: Path, pairs, repeat: int = 1) -> str:
    return str(write_jsonl(path, [{"text": t, "label": lab} for t, lab in pairs * repeat]))


def chat_file(path: Path, pairs=QA, repeat: int = 1) -> str:
    return str(write_jsonl(path, [{"prompt": q, "completion": a} for q, a in pairs * repeat]))


def recipe(model_dir: Path, folder: Path, stage: dict, *, train_file: str | None = None, eval_file: str | None = None,
           method="lora", name="run", **extra):
    data = {}
    if train_file:
        data["train"] = train_file
        data.update({"eval": eval_file} if eval_file else {"eval_split": 0.0})
    raw = {
        "model": str(model_dir), "method": method, "stage": stage, "data": data,
        "train": {"max_steps": 4, "batch_size": 4, "logging_steps": 2, "lr": 1e-3, "precision": "fp32",
                  "max_length": 64},
        "eval": {"batch_size": 4},
        "output": {"dir": str(folder / "runs"), "name": name},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return load_recipe(raw=raw)


def read_eval(summary) -> dict:
    return json.loads((Path(summary.run_dir) / "eval.json").read_text())


# --------------------------------------------------------------------------- distill

def _teacher_gap(teacher_dir, student, texts, tokenizer) -> tuple[float, float]:
    """KL(p_teacher ‖ p_student) (mean over ``texts``) and the share of texts where the argmaxes agree."""
    from leantune.export.run_loading import load_run

    batch = tokenizer(texts, return_tensors="pt", padding=True)
    teacher = load_run(teacher_dir).model.eval()
    with torch.no_grad():
        lt = teacher(**batch).logits.float().log_softmax(-1)
        ls = student.eval()(**batch).logits.float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(ls, lt, log_target=True, reduction="batchmean").item()
    return kl, (ls.argmax(-1) == lt.argmax(-1)).float().mean().item()


def test_distill_classification(tiny_model_dir, tmp_path):
    from leantune.export.run_loading import load_run
    from leantune.models.loading import load_model

    bert = tiny_model_dir("bert", "seq_cls")
    tr, ev = cls_file(tmp_path / "train.jsonl", CLS, 2), cls_file(tmp_path / "eval.jsonl", CLS)
    # a trained teacher: cls on the toy data, from the same random start as the student
    teacher = train(recipe(bert, tmp_path, "cls", train_file=tr, eval_file=ev, method="full", name="teacher",
                           train={"max_steps": 30, "lr": 5e-3}), progress=False)
    student_steps = {"max_steps": 12, "lr": 1e-2}
    r = recipe(bert, tmp_path, {"name": "distill", "teacher": teacher.run_dir, "temperature": 2.0, "alpha": 0.7},
               train_file=tr, eval_file=ev, method="full", train=student_steps, eval={"before": True})
    s = train(r, progress=False)
    out = read_eval(s)
    assert out["teacher"]["teacher_accuracy"] > 0.5, out["teacher"]  # premise: the teacher learned (chance 1/3)
    # the student beats its untrained self on the eval rows
    assert s.eval_after["loss"] < s.eval_before["loss"] - 0.05, (s.eval_before, s.eval_after)
    assert s.eval_after["accuracy"] > s.eval_before["accuracy"], (s.eval_before, s.eval_after)
    # and moves toward the teacher: KL to the teacher's predictions drops, argmax agreement rises
    texts = [t for t, _ in CLS]
    tok = load_run(teacher.run_dir).tokenizer
    untrained = load_model(bert, "seq_cls", labels=run_labels(s), pad_token_id=tok.pad_token_id)
    kl_before, agree_before = _teacher_gap(teacher.run_dir, untrained, texts, tok)
    kl_after, agree_after = _teacher_gap(teacher.run_dir, load_run(s.run_dir).model, texts, tok)
    assert kl_after < 0.8 * kl_before and agree_after > agree_before, (kl_before, kl_after, agree_before, agree_after)
    caches = list((tmp_path / "runs" / ".teacher-cache").glob("cls-*.safetensors"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    # α = 1: soft labels only, no gold labels; the student still moves toward the teacher
    r2 = recipe(bert, tmp_path, {"name": "distill", "teacher": teacher.run_dir, "temperature": 2.0, "alpha": 1.0},
                train_file=tr, eval_file=ev, method="full", name="again", train=student_steps)
    s2 = train(r2, progress=False)
    assert "reused" in read_eval_path(tmp_path / "runs" / "again")["teacher"]["cache"]
    assert caches[0].stat().st_mtime_ns == stamp  # the teacher did not run again on the training data
    kl_soft, _ = _teacher_gap(teacher.run_dir, load_run(s2.run_dir).model, texts, tok)
    assert kl_soft < 0.8 * kl_before, (kl_before, kl_soft)


def run_labels(summary) -> list[str]:
    return json.loads((Path(summary.run_dir) / "run.json").read_text())["labels"]


def read_eval_path(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_distill_causal_lm(tiny_model_dir, tmp_path, direction):
    teacher, student = tiny_model_dir("llama"), tiny_model_dir("qwen2")
    tr, ev = chat_file(tmp_path / "train.jsonl", repeat=2), chat_file(tmp_path / "eval.jsonl")
    r = recipe(student, tmp_path, {"name": "distill", "teacher": str(teacher), "direction": direction,
                                   "top_k": 8, "temperature": 1.0}, train_file=tr, eval_file=ev)
    s = train(r, progress=False)
    assert s.eval_after["perplexity"] > 0 and s.steps == 4
    out = read_eval(s)
    assert "teacher_perplexity" in out["teacher"]


def test_distill_refuses_other_vocabulary(tiny_model_dir, tmp_path, tiny_tokenizer):
    teacher = tiny_model_dir("llama")
    other = tmp_path / "other-teacher"
    import shutil

    shutil.copytree(teacher, other)
    tok = type(tiny_tokenizer).from_pretrained(other)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(other)
    r = recipe(tiny_model_dir("qwen2"), tmp_path, {"name": "distill", "teacher": str(other)},
               train_file=chat_file(tmp_path / "t.jsonl"))
    with pytest.raises(RecipeError, match="different tokenizer vocabularies"):
        train(r, progress=False)


# --------------------------------------------------------------------------- continual

def continual_recipe(model_dir, folder, strategy, method="lora", second=TOPIC, **stage):
    tasks = [{"name": "sentiment", "data": cls_file(folder / "a.jsonl", CLS, 2), "eval": cls_file(folder / "ae.jsonl", CLS)},
             {"name": "topic", "data": cls_file(folder / "b.jsonl", second, 3), "eval": cls_file(folder / "be.jsonl", second)}]
    return recipe(model_dir, folder, {"name": "continual", "tasks": tasks, "strategy": strategy, **stage},
                  method=method, name=f"continual-{strategy}", train={"max_steps": 3})


@pytest.mark.parametrize("strategy,extra", [("naive", {}), ("ewc", {"ewc_lambda": 10.0, "fisher_samples": 4}),
                                            ("replay", {"buffer_size": 4, "replay_ratio": 0.5}),
                                            ("adapters", {})])
def test_continual_writes_accuracy_matrix(tiny_model_dir, tmp_path, strategy, extra):
    s = train(continual_recipe(tiny_model_dir("bert", "masked_lm"), tmp_path, strategy, **extra), progress=False)
    out = read_eval(s)["continual"]
    R = out["R"]
    assert len(R) == 2 and all(len(row) == 2 for row in R)
    assert all(0 <= a <= 1 for row in R for a in row)
    assert out["average_accuracy"] == pytest.approx(sum(R[1]) / 2)
    assert out["forgetting"] == pytest.approx(R[0][0] - R[1][0])
    assert s.steps == 6
    assert set(s.eval_after) >= {"accuracy", "sentiment/accuracy", "topic/accuracy"}
    assert (Path(s.run_dir) / "task-0-sentiment" / "metrics.jsonl").is_file()


def test_continual_adapters_do_not_forget_and_switch_by_name(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from leantune.models.loading import load_model
    from leantune.transfer.adapters import load_task_adapters, set_task

    # the seq_cls checkpoint has its pooler saved (a masked_lm one would draw a random pooler per load);
    # its 3 labels: the second task reuses two of the first task's labels
    news = [(t, "pos" if lab == "sport" else "neg") for t, lab in TOPIC]
    s = train(continual_recipe(tiny_model_dir("bert", "seq_cls"), tmp_path, "adapters", second=news), progress=False)
    out = read_eval(s)["continual"]
    assert out["R"][1][0] == out["R"][0][0] and out["forgetting"] == 0  # task 0's adapter is untouched
    model, mapping, run = load_task_adapters(s.run_dir)
    assert mapping == {"sentiment": "default", "topic": "topic"}
    model.eval()
    batch = run.tokenizer(["the team won", "awful plot"], return_tensors="pt", padding=True)
    outputs = {}
    for task, adapter in mapping.items():
        set_task(model, mapping, task)
        assert model.active_adapter == adapter
        with torch.no_grad():
            outputs[task] = model(**batch).logits
        base = load_model(Path(json.loads((Path(s.run_dir) / "run.json").read_text())["model_path"]), "seq_cls",
                          labels=run.labels, pad_token_id=run.tokenizer.pad_token_id)
        folder = Path(s.run_dir) / "adapter" / ("" if adapter == "default" else adapter)
        alone = PeftModel.from_pretrained(base, folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(alone(**batch).logits, outputs[task])
    assert not torch.allclose(outputs["sentiment"], outputs["topic"])
    with pytest.raises(Exception, match="unknown task"):
        set_task(model, mapping, "nope")


def test_continual_adapters_need_peft(tiny_model_dir, tmp_path):
    with pytest.raises(RecipeError, match="PEFT-based"):
        train(continual_recipe(tiny_model_dir("bert", "masked_lm"), tmp_path, "adapters", method="bitfit"),
              progress=False)


# --------------------------------------------------------------------------- multitask

def test_multitask_classification_heads(tiny_model_dir, tmp_path):
    tasks = [{"name": "sentiment", "data": cls_file(tmp_path / "a.jsonl", CLS, 4), "eval": cls_file(tmp_path / "ae.jsonl", CLS)},
             {"name": "topic", "data": cls_file(tmp_path / "b.jsonl", TOPIC), "eval": cls_file(tmp_path / "be.jsonl", TOPIC),
              "weight": 2.0}]
    r = recipe(tiny_model_dir("bert", "masked_lm"), tmp_path, {"name": "multitask", "tasks": tasks, "temperature": 100.0},
               method="lora")
    s = train(r, progress=False)
    assert set(s.eval_after) >= {"accuracy", "sentiment/accuracy", "topic/accuracy", "topic/macro_f1"}
    info = read_eval(s)["multitask"]
    assert info["sizes"] == [24, 4]
    assert info["sampling_probabilities"][0] == pytest.approx(24 ** 0.01 / (24 ** 0.01 + 4 ** 0.01))
    assert info["mixture_counts"] == [14, 14]  # T → ∞: uniform over tasks; the small task is up-sampled
    from safetensors.torch import load_file

    heads = load_file(str(Path(s.run_dir) / "adapter" / "task_heads.safetensors"))
    assert heads["sentiment.1.weight"].shape[0] == 3 and heads["topic.1.weight"].shape[0] == 2


def test_multitask_instruction_mixing(tiny_model_dir, tmp_path):
    tasks = [{"name": "qa", "data": chat_file(tmp_path / "a.jsonl", QA, 2), "eval": chat_file(tmp_path / "ae.jsonl")},
             {"name": "echo", "data": chat_file(tmp_path / "b.jsonl", [("say a", "a"), ("say b", "b")]),
              "eval": chat_file(tmp_path / "be.jsonl", [("say a", "a")])}]
    s = train(recipe(tiny_model_dir("llama"), tmp_path, {"name": "multitask", "tasks": tasks}), progress=False)
    assert set(s.eval_after) >= {"loss", "qa/loss", "echo/perplexity"}
    assert read_eval(s)["multitask"]["mixture_counts"] == [8, 2]


def test_multitask_refuses_mixed_kinds(tiny_model_dir, tmp_path):
    tasks = [{"data": cls_file(tmp_path / "a.jsonl", CLS)}, {"data": chat_file(tmp_path / "b.jsonl")}]
    with pytest.raises(RecipeError, match="must all be classification"):
        train(recipe(tiny_model_dir("llama"), tmp_path, {"name": "multitask", "tasks": tasks}), progress=False)


# --------------------------------------------------------------------------- domain adaptation

def test_dann(tiny_model_dir, tmp_path, monkeypatch):
    """Gradient reversal makes the features fool the domain classifier: its loss rises during training,
    while the same run with the reversal switched off (lambda_max 0: the classifier still trains, the
    features get no gradient from it) ends with a lower domain loss."""
    from safetensors.torch import load_file

    import leantune.stages.dann as dann
    from leantune.export.run_loading import load_run
    from leantune.transfer.features import pooled_features
    from leantune.transfer.grl import DomainClassifier

    domain_losses: list[float] = []
    loss = dann.DANN.loss

    def spy(self, model, batch):  # the domain BCE of each training batch, as the stage computes it
        out = loss(self, model, batch)
        domain_losses.append(float(self.last_domain_loss.detach()))
        return out

    monkeypatch.setattr(dann.DANN, "loss", spy)
    target = write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t, _ in TOPIC * 2])
    steps, window = 24, 6

    def run(name: str, **stage):
        domain_losses.clear()
        r = recipe(tiny_model_dir("bert", "seq_cls"), tmp_path,
                   {"name": "dann", "hidden": 16, "target_eval": cls_file(tmp_path / "te.jsonl", CLS[:3]), **stage},
                   train_file=cls_file(tmp_path / "tr.jsonl", CLS, 2), eval_file=cls_file(tmp_path / "ev.jsonl", CLS),
                   data={"unlabeled": str(target)}, method="full", name=name,
                   # the batch order the thresholds below were set with (random batches, dann's default,
                   # show the effect on 4 of 5 seeds, not on seed 42: one first batch's loss is a noisy start)
                   train={"max_steps": steps, "lr": 5e-3, "group_by_length": True})
        s = train(r, progress=False)
        assert len(domain_losses) == steps
        # afterwards: the saved domain classifier on the saved model's features, all source and target texts
        loaded = load_run(s.run_dir)
        clf = DomainClassifier(32, 16)
        clf.load_state_dict(load_file(str(Path(s.run_dir) / "adapter" / "domain_classifier.safetensors")))
        texts = [t for t, _ in CLS] + [t for t, _ in TOPIC]
        is_target = torch.tensor([0.0] * len(CLS) + [1.0] * len(TOPIC))
        with torch.no_grad():
            feats = pooled_features(loaded.model.eval(), dict(loaded.tokenizer(texts, return_tensors="pt", padding=True)))
            final = torch.nn.functional.binary_cross_entropy_with_logits(clf.eval()(feats), is_target).item()
        return s, list(domain_losses), final

    s, reversed_, reversed_final = run("dann")
    _, plain, plain_final = run("no-reversal", lambda_max=0.0)
    assert {"accuracy", "target_accuracy"} <= set(s.eval_after)
    assert reversed_[0] == pytest.approx(plain[0])  # same start: same seed, same first batch
    end, plain_end = sum(reversed_[-window:]) / window, sum(plain[-window:]) / window
    # with reversal the domain loss rises from its start; without, it does not
    assert end > reversed_[0] + 0.1 and end > plain_end + 0.1, (reversed_, plain)
    assert reversed_final > plain_final + 0.1, (reversed_final, plain_final)


def test_dann_without_domain_weight_is_the_plain_baseline(tiny_model_dir, tmp_path, monkeypatch):
    """domain_weight: 0 (no adaptation) never encodes the target texts and leaves the domain classifier
    at its initial weights, so it costs what plain source training costs."""
    from safetensors.torch import load_file

    import leantune.stages.dann as dann
    from leantune.transfer.grl import DomainClassifier

    def encode_target(*args, **kwargs):
        raise AssertionError("target texts encoded with domain_weight 0")

    monkeypatch.setattr(dann, "pooled_features", encode_target)
    target = write_jsonl(tmp_path / "target.jsonl", [{"text": t} for t, _ in TOPIC * 2])
    r = recipe(tiny_model_dir("bert", "seq_cls"), tmp_path,
               {"name": "dann", "hidden": 16, "domain_weight": 0.0,
                "target_eval": cls_file(tmp_path / "te.jsonl", CLS[:3])},
               train_file=cls_file(tmp_path / "tr.jsonl", CLS, 2), eval_file=cls_file(tmp_path / "ev.jsonl", CLS),
               data={"unlabeled": str(target)})
    s = train(r, progress=False)
    assert "target_accuracy" in s.eval_after
    torch.manual_seed(r.train.seed)
    initial = DomainClassifier(32, 16).state_dict()
    saved = load_file(str(Path(s.run_dir) / "adapter" / "domain_classifier.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in initial.items())


def test_dann_needs_target_text(tiny_model_dir, tmp_path):
    r = recipe(tiny_model_dir("bert", "seq_cls"), tmp_path, {"name": "dann"},
               train_file=cls_file(tmp_path / "tr.jsonl", CLS))
    with pytest.raises(RecipeError, match="data.unlabeled"):
        train(r, progress=False)


def test_pt_then_task_finetuning_chain(tiny_model_dir, tmp_path):
    """Domain-adaptive pretraining: pt on in-domain text, then cls with model: <pt run>."""
    text = write_jsonl(tmp_path / "domain.jsonl", [{"text": t} for t, _ in CLS + TOPIC])
    pt = train(recipe(tiny_model_dir("bert", "masked_lm"), tmp_path, "pt", train_file=str(text), name="pt-domain"),
               progress=False)
    s = train(recipe(Path(pt.run_dir), tmp_path, "cls", train_file=cls_file(tmp_path / "tr.jsonl", CLS, 2),
                     eval_file=cls_file(tmp_path / "ev.jsonl", CLS), name="cls-after-pt"), progress=False)
    assert "accuracy" in s.eval_after


def test_distill_classification_teacher_with_own_tokenizer(tiny_model_dir, tmp_path, tiny_tokenizer):
    """Classification teachers read the text with their own tokenizer; only LM distillation needs one vocab."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir("bert", "seq_cls"), teacher)
    tok = type(tiny_tokenizer).from_pretrained(teacher)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(teacher)
    r = recipe(tiny_model_dir("bert", "masked_lm"), tmp_path, {"name": "distill", "teacher": str(teacher)},
               train_file=cls_file(tmp_path / "tr.jsonl", CLS), eval_file=cls_file(tmp_path / "ev.jsonl", CLS),
               method="full")
    s = train(r, progress=False)
    assert "teacher_accuracy" in read_eval(s)["teacher"]


def test_domain_adapter_must_be_mergeable_to_stack(tiny_model_dir, tmp_path):
    """A domain adapter from `stage: pt` is used by a task run through `model: <pt run>`, which merges it
    into the base; a non-mergeable method (bottleneck adapter) cannot be carried over that way."""
    from leantune.errors import LeantuneError

    text = write_jsonl(tmp_path / "domain.jsonl", [{"text": t} for t, _ in CLS + TOPIC])
    pt = train(recipe(tiny_model_dir("bert", "masked_lm"), tmp_path, "pt", train_file=str(text), name="pt-adapter",
                      method="adapter"), progress=False)
    with pytest.raises(LeantuneError, match="cannot be merged"):
        train(recipe(Path(pt.run_dir), tmp_path, "cls", train_file=cls_file(tmp_path / "tr.jsonl", CLS, 2),
                     name="cls-after-adapter"), progress=False)
