"""The pet and icl stages end to end through ``pipeline.train`` on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from leantune.errors import RecipeError
from leantune.pipeline import train
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# a learnable toy task: the letters of the text give the label
TRAIN = [{"text": c * n, "label": lab} for c, lab in (("a", "x"), ("b", "x"), ("y", "y"), ("z", "y"))
         for n in (3, 4, 5, 6)]
EVAL = [{"text": "aaaaa", "label": "x"}, {"text": "zzzz", "label": "y"}, {"text": "bbbbbb", "label": "x"},
        {"text": "yyy", "label": "y"}]


def _data(tmp_path: Path) -> tuple[Path, Path]:
    tr, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    ev.write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    return tr, ev


def _recipe(tmp_path, model_dir, stage, method="full", **extra):
    tr, ev = _data(tmp_path)
    raw = {"model": str(model_dir), "method": method, "stage": stage,
           "data": {"train": str(tr), "eval": str(ev), **extra.pop("data", {})},
           "train": {"max_steps": 16, "batch_size": 8, "lr": 1e-2, "scheduler": "constant", "logging_steps": 1,
                     "max_length": 64,
                     **extra.pop("train", {})},
           "eval": {"batch_size": 8, "before": True},
           "output": {"dir": str(tmp_path / "runs"), "name": "run"}, **extra}
    return load_recipe(raw=raw)


def _losses(summary) -> list[float]:
    return [h["loss"] for h in summary.history if "loss" in h]


def _falls(losses: list[float]) -> bool:
    return sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4


def test_pet_masked_lm_loss_falls(tmp_path, tiny_model_dir):
    stage = {"name": "pet", "templates": ["{text} It was {mask}."], "verbalizer": {"x": "p", "y": "q"}}
    # 32 steps: in 16, whether full fine-tuning at lr 1e-2 leaves chance level (0.69) depends on the batch order
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, train={"max_steps": 32}), progress=False)
    losses = _losses(s)
    assert len(losses) == 32 and _falls(losses), losses
    assert {"accuracy", "macro_f1", "loss"} <= set(s.eval_after)
    assert s.eval_after["loss"] < s.eval_before["loss"]
    info = json.loads((Path(s.run_dir) / "adapter" / "prompting.json").read_text())
    assert info["verbalizer"]["words"] == {"x": ["p"], "y": ["q"]}


def test_pet_causal_lm_multi_token_words_loss_falls(tmp_path, tiny_model_dir):
    stage = {"name": "pet", "templates": ["{text} It was {mask}."],
             "verbalizer": {"x": ["yes", "ok"], "y": "no"}, "scoring": "mean"}
    s = train(_recipe(tmp_path, tiny_model_dir("llama"), stage), progress=False)
    assert _falls(_losses(s)), _losses(s)
    assert s.stage == "pet" and s.eval_after["accuracy"] >= 0.5


def test_pet_lora_soft_tokens_ensemble_and_distillation(tmp_path, tiny_model_dir):
    stage = {"name": "pet", "templates": ["{soft:2}{text} It was {mask}.", "{text}? {mask}!"],
             "verbalizer": {"x": "p", "y": "q"}, "ensemble": "vote", "calibrate": True}
    recipe = _recipe(tmp_path, tiny_model_dir("llama"), stage, method={"name": "lora", "r": 4},
                     data={"shots": 3, "unlabeled": "keep"}, train={"max_steps": 6, "lr": 1e-2})
    s = train(recipe, progress=False)
    assert s.train_examples == 2 * 3 * 2  # K per class × classes × templates
    assert {"accuracy_template0", "accuracy_template1", "accuracy_uncalibrated"} <= set(s.eval_after)
    run = Path(s.run_dir)
    assert (run / "adapter" / "soft_prompt.safetensors").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(x) for x in (run / "soft_labels.jsonl").read_text().splitlines()]
    assert len(rows) == len(TRAIN) - 6
    assert all(set(r["soft_label"]) == {"x", "y"} and abs(sum(r["soft_label"].values()) - 1) < 1e-3
               and r["label"] == max(r["soft_label"], key=r["soft_label"].get) for r in rows)


def test_pet_soft_prompt_is_trained(tmp_path, tiny_model_dir, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from leantune.stages.pet import PET

    initial: list[torch.Tensor] = []
    attach = PET.attach

    def spy(self, model):  # the soft prompt as it enters training
        out = attach(self, model)
        initial.append(self.soft.weight.detach().clone())
        return out

    monkeypatch.setattr(PET, "attach", spy)
    stage = {"name": "pet", "templates": ["{soft:3}{text} {mask}"], "verbalizer": {"x": "p", "y": "q"}}
    # LoRA, not bitfit: with biases alone the random tiny BERT stays at chance (loss ~ln 2) for 20+ steps
    recipe = _recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, method={"name": "lora", "r": 4},
                     train={"max_steps": 12})
    s = train(recipe, progress=False)
    soft = load_file(str(Path(s.run_dir) / "adapter" / "soft_prompt.safetensors"))["weight"]
    assert len(initial) == 1 and soft.shape == initial[0].shape == (3, 32)
    change = (soft - initial[0]).abs().max().item()
    assert change > 1e-3, change  # Adam at lr 1e-2 moves each trained entry by ~lr per step
    losses = _losses(s)
    assert len(losses) == 12 and _falls(losses), losses


def test_pet_auto_verbalizer_and_autoprompt(tmp_path, tiny_model_dir):
    stage = {"name": "pet", "templates": ["{text} {trigger:2} {mask}."], "verbalizer": "auto",
             "autoprompt_iterations": 2, "autoprompt_candidates": 3}
    s = train(_recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, train={"max_steps": 2}),
              progress=False)
    info = json.loads((Path(s.run_dir) / "adapter" / "prompting.json").read_text())
    assert len(info["trigger_ids"][0]) == 2 and set(info["verbalizer"]["words"]) == {"x", "y"}


def test_pet_refuses_label_templates():
    with pytest.raises(RecipeError, match="use stage icl"):
        load_recipe(raw={"model": "x", "stage": {"name": "pet", "templates": ["{text} {mask} {label}"]}})


@pytest.mark.parametrize("selection, order", [("balanced", "random"), ("similar", "similar_last")])
def test_icl_classification_writes_eval_json(tmp_path, tiny_model_dir, selection, order):
    from leantune.stages import icl

    stage = {"name": "icl", "template": "{text} => {mask}", "verbalizer": {"x": "p", "y": "q"}, "k": 4,
             "selection": selection, "order": order, "calibrate": True,
             "embedder": str(tiny_model_dir("bert", "masked_lm"))}
    s = train(_recipe(tmp_path, tiny_model_dir("llama"), stage, data={"shots": 2}), progress=False)
    out = json.loads((Path(s.run_dir) / "eval.json").read_text())
    assert set(out["metrics"]) >= {"accuracy", "macro_f1", "accuracy_uncalibrated"}
    assert len(out["predictions"]) == len(EVAL) and out["demonstrations_per_prompt"] == 4
    assert out["example_prompt"].count(" => ") == 5
    assert s.steps == 0 and s.method == "none" and s.trainable_params == 0
    assert not (Path(s.run_dir) / "adapter").exists()
    if selection == "balanced":
        for p in out["predictions"]:
            assert sorted(p["demonstrations"]) == sorted(set(p["demonstrations"]))
    assert icl.ICL.trains is False


def test_icl_zero_shot_nli_preset(tmp_path, tiny_model_dir):
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    for model in (tiny_model_dir("llama"), tiny_model_dir("bert", "masked_lm")):
        raw = {"model": str(model), "stage": {"name": "icl", "preset": "nli", "labels": ["x", "y"],
                                              "label_names": {"x": "letters a or b"}},
               "data": {"eval": str(ev), "shots": 0},
               "output": {"dir": str(tmp_path / "runs"), "name": "nli", "overwrite": True}}
        s = train(load_recipe(raw=raw), progress=False)
        out = json.loads((Path(s.run_dir) / "eval.json").read_text())
        assert 0.0 <= out["metrics"]["accuracy"] <= 1.0 and out["demonstrations_per_prompt"] == 0
        assert "letters a or b" in out["example_prompt"]


def test_icl_generation(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"say {w}", "completion": w} for w in ("one", "two", "three", "four")]
    tr = tmp_path / "qa.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"model": str(tiny_model_dir("llama")), "stage": {"name": "icl", "k": 2, "max_new_tokens": 4},
           "data": {"train": str(tr), "eval": str(tr)}, "output": {"dir": str(tmp_path / "runs"), "name": "gen"}}
    s = train(load_recipe(raw=raw), progress=False)
    out = json.loads((Path(s.run_dir) / "eval.json").read_text())
    assert set(out["metrics"]) == {"exact_match", "f1"} and len(out["predictions"]) == 4


def test_leantune_eval_restores_a_pet_run(tmp_path, tiny_model_dir):
    """``leantune eval`` scores with the run's trained soft prompt, searched words and triggers, and
    its label order, even on a file holding one label only."""
    from typer.testing import CliRunner

    from leantune.cli import app

    stage = {"name": "pet", "templates": ["{soft:2}{text} {trigger:2} {mask}."], "verbalizer": "auto",
             "autoprompt_iterations": 2, "autoprompt_candidates": 3}
    recipe = _recipe(tmp_path, tiny_model_dir("bert", "masked_lm"), stage, train={"max_steps": 4, "lr": 5e-2})
    s = train(recipe, progress=False)

    def cli_eval(rows: list[dict]) -> dict:
        path = tmp_path / f"eval-{len(rows)}-{rows[0]['label']}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = CliRunner().invoke(app, ["eval", s.run_dir, "--data", str(path)], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    full = cli_eval(EVAL)
    assert full["accuracy"] == s.eval_after["accuracy"]
    assert full["loss"] == pytest.approx(s.eval_after["loss"], abs=1e-5)
    xs, ys = cli_eval([r for r in EVAL if r["label"] == "x"]), cli_eval([r for r in EVAL if r["label"] == "y"])
    assert (xs["loss"] + ys["loss"]) / 2 == pytest.approx(full["loss"], abs=1e-5)  # 2 posts each
    assert (xs["accuracy"] + ys["accuracy"]) / 2 == pytest.approx(full["accuracy"])


def test_icl_fixed_demonstrations_share_a_cached_prefix(tmp_path, tiny_model_dir, monkeypatch):
    from leantune.stages import icl

    stage = {"name": "icl", "template": "{text} => {mask}", "verbalizer": {"x": "p", "y": "q"}, "k": 3,
             "selection": "random", "fixed": True, "calibrate": True}
    recipe = _recipe(tmp_path, tiny_model_dir("llama"), stage, data={"shots": 2})
    cached = json.loads((Path(train(recipe, progress=False).run_dir) / "eval.json").read_text())
    assert len({tuple(p["demonstrations"]) for p in cached["predictions"]}) == 1
    monkeypatch.setattr(icl, "MIN_CACHED_PREFIX", 10**9)
    recipe.output.overwrite = True
    plain = json.loads((Path(train(recipe, progress=False).run_dir) / "eval.json").read_text())
    for a, b in zip(cached["predictions"], plain["predictions"]):
        assert a["demonstrations"] == b["demonstrations"] and a["probs"] == pytest.approx(b["probs"], abs=1e-4)
    assert cached["metrics"] == plain["metrics"]


def test_icl_fixed_refuses_query_dependent_demonstrations():
    with pytest.raises(RecipeError, match="fixed"):
        load_recipe(raw={"model": "x", "stage": {"name": "icl", "fixed": True, "selection": "similar"}})


def test_full_pet_run_on_a_legacy_checkpoint_reloads_its_trained_weights(tmp_path, tiny_model_dir):
    """Checkpoints that name LayerNorm parameters gamma/beta (as BERT-tiny's does) are renamed on
    load; the run must save the trained weights under the names it reads back."""
    import shutil

    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from leantune.cli import app

    legacy = tmp_path / "legacy-bert"
    shutil.copytree(tiny_model_dir("bert", "masked_lm"), legacy)
    state = load_file(str(legacy / "model.safetensors"))
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, str(legacy / "model.safetensors"), metadata={"format": "pt"})
    stage = {"name": "pet", "templates": ["{text} It was {mask}."], "verbalizer": {"x": "p", "y": "q"}}
    s = train(_recipe(tmp_path, legacy, stage, train={"max_steps": 4}), progress=False)
    ev = tmp_path / "eval.jsonl"
    out = CliRunner().invoke(app, ["eval", s.run_dir, "--data", str(ev)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["loss"] == pytest.approx(s.eval_after["loss"], abs=1e-6)
