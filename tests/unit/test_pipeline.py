"""``pipeline.train`` end to end on tiny models: the run directory, reloading, merging,
refusing to clobber a run, and invalid data rows."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from leantune.data.loading import load_data
from leantune.errors import DataValidationError, LeantuneError
from leantune.export.merge import merge_run
from leantune.export.run_loading import load_run
from leantune.pipeline import evaluate_run, train
from leantune.recipe import load_recipe
from leantune.stages.registry import build_stage

QA = [
    ("What is the capital of France?", "Paris."),
    ("List files in a directory.", "ls -la"),
    ("Add two and two.", "4"),
    ("Say hello.", "Hello!"),
    ("Copy a file.", "cp src dst"),
    ("What colour is the sky?", "Blue."),
    ("Name a prime number.", "7"),
    ("Print the working directory.", "pwd"),
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning adapts a pretrained model to a new task.",
    "Low-rank adapters train few parameters.",
    "A checkpoint holds the weights and the optimizer state.",
]
CLS = [("great movie, loved it", "pos"), ("terrible and boring", "neg"), ("it was fine I guess", "neu"),
       ("wonderful acting", "pos"), ("awful plot", "neg"), ("average at best", "neu")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread is faster, and immune to a busy machine's oversubscription."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# --------------------------------------------------------------------------- data files

def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat_rows(fmt: str, pairs) -> list[dict]:
    if fmt == "alpaca":
        return [{"instruction": q, "output": a} for q, a in pairs]
    if fmt == "sharegpt":
        return [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in pairs]
    if fmt == "messages":
        return [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                              {"role": "assistant", "content": a}]} for q, a in pairs]
    raise ValueError(fmt)


def write_data(folder: Path, fmt: str) -> tuple[Path, Path]:
    """(train file, eval file) in ``fmt``."""
    if fmt in ("alpaca", "sharegpt", "messages"):
        return (write_jsonl(folder / "train.jsonl", chat_rows(fmt, QA * 2)),
                write_jsonl(folder / "eval.jsonl", chat_rows(fmt, QA[:3])))
    if fmt == "text":
        return (write_jsonl(folder / "train.jsonl", [{"text": t} for t in TEXTS * 3]),
                write_jsonl(folder / "eval.jsonl", [{"text": t} for t in TEXTS[:2]]))
    if fmt == "classification":
        paths = []
        for name, rows in (("train.csv", CLS * 3), ("eval.csv", CLS)):
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows(rows)
            paths.append(path)
        return paths[0], paths[1]
    raise ValueError(fmt)


def make_recipe(model_dir: Path, folder: Path, *, stage="sft", method="lora", fmt="alpaca",
                train_file: Path | None = None, eval_file: Path | None = None, **extra):
    if train_file is None:
        train_file, eval_file = write_data(folder / "data", fmt)
    raw = {
        "model": str(model_dir),
        "method": method,
        "stage": stage,
        "data": {"train": str(train_file), "format": fmt,
                 **({"eval": str(eval_file)} if eval_file else {"eval_split": 0.0})},
        "train": {"max_steps": 6, "batch_size": 4, "logging_steps": 2, "save_steps": 3, "lr": 1e-3,
                  "precision": "fp32", "max_length": 128},
        "eval": {"batch_size": 4},
        "output": {"dir": str(folder / "runs"), "name": "run"},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return load_recipe(raw=raw)


def tree_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*")) if f.is_file()}


def reevaluate(run) -> dict[str, float]:
    """The finished run's evaluation, recomputed on the reloaded model."""
    stage = build_stage(run.recipe.stage)
    stage.head_name = run.head
    if run.recipe.stage["name"] == "cls":
        stage.config.labels = run.labels
    _, eval_examples = load_data(run.recipe, stage, None, lambda m: None)
    prepared = stage.prepare(run.recipe, run.tokenizer, [], eval_examples)
    return stage.evaluate(run.model, prepared.eval, run.recipe.eval.batch_size)


def check_run_dir(run_dir: Path, method: str, head: str) -> dict:
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "eval.json", "report.md", "loss.png",
                 "summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["head"] == head
    assert load_recipe(run_dir / "recipe.yaml").model_dump() == load_recipe(raw=meta["recipe"]).model_dump()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and r["lr"] >= 0 for r in losses)
    evals = json.loads((run_dir / "eval.json").read_text())
    assert evals["after"] and set(evals["before"]) == set(evals["after"])
    assert all(math.isfinite(v) for v in evals["after"].values())
    report = (run_dir / "report.md").read_text()
    assert "![loss](loss.png)" in report and "| loss |" in report
    adapter = run_dir / "adapter"
    files = {p.name for p in adapter.iterdir()}
    if method in ("lora", "qlora"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA"
        assert all("lora_" in k or "classifier" in k or "score" in k
                   for k in load_file(adapter / "adapter_model.safetensors"))
    elif method == "freeze":
        assert {"delta_config.json", "delta.safetensors"} <= files
        assert json.loads((adapter / "delta_config.json").read_text())["format"] == "leantune-delta"
        assert load_file(adapter / "delta.safetensors")
    else:
        assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert "tokenizer.json" in files or "tokenizer_config.json" in files
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-3", "step-6"]
    return evals


# --------------------------------------------------------------------------- sft

SFT_CASES = [("llama", "alpaca", "lora"), ("qwen2", "sharegpt", "freeze"), ("gpt2", "messages", "full")]


@pytest.fixture(scope="module")
def sft_runs(tiny_model_dir, tmp_path_factory):
    """One finished SFT run per (architecture, data format, method)."""
    runs = {}
    for arch, fmt, method in SFT_CASES:
        folder = tmp_path_factory.mktemp(f"sft-{arch}-{fmt}-{method}")
        recipe = make_recipe(tiny_model_dir(arch), folder, fmt=fmt, method=method,
                             eval={"prompts": ["Say hello."], "max_new_tokens": 4})
        said = []
        summary = train(recipe, progress=False, say=said.append)
        runs[(arch, fmt, method)] = (recipe, summary, said)
    return runs


@pytest.mark.parametrize("case", SFT_CASES, ids=["-".join(c) for c in SFT_CASES])
def test_sft_run_directory(sft_runs, case):
    recipe, summary, said = sft_runs[case]
    run_dir = Path(summary.run_dir)
    assert run_dir == Path(recipe.output.dir) / "run"
    evals = check_run_dir(run_dir, case[2], "causal_lm")
    assert set(evals["after"]) == {"loss", "perplexity"}
    assert evals["after"] == summary.eval_after
    assert summary.steps == 6 and summary.train_examples == 16 and summary.eval_examples == 3
    assert any(case[2] in m and "trainable" in m for m in said)
    report = (run_dir / "report.md").read_text()
    assert "### Say hello." in report
    if case[2] != "full":
        assert 0 < summary.trainable_params < summary.total_params


@pytest.mark.parametrize("case", SFT_CASES, ids=["-".join(c) for c in SFT_CASES])
def test_load_run_reproduces_eval(sft_runs, case):
    _, summary, _ = sft_runs[case]
    run = load_run(summary.run_dir)
    assert run.head == "causal_lm" and run.method.name == case[2]
    again = reevaluate(run)
    for key, value in summary.eval_after.items():
        assert again[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if case[2] != "full":  # the trained weights, not the base, were loaded
        assert summary.eval_before["loss"] != pytest.approx(again["loss"], abs=1e-6)


@pytest.mark.parametrize("case", SFT_CASES, ids=["-".join(c) for c in SFT_CASES])
def test_evaluate_run_gives_the_runs_own_metrics(sft_runs, case):
    """``pipeline.evaluate_run`` (what ``leantune eval`` calls) on a finished run: the metrics the
    run wrote after training, from the reloaded model and the recipe's eval data."""
    _, summary, _ = sft_runs[case]
    again = evaluate_run(Path(summary.run_dir))
    assert set(again) == set(summary.eval_after)
    for key, value in summary.eval_after.items():
        assert again[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("case", SFT_CASES, ids=["-".join(c) for c in SFT_CASES])
def test_merge_gives_plain_transformers_model(sft_runs, case, tmp_path):
    _, summary, _ = sft_runs[case]
    out, notes = merge_run(summary.run_dir, tmp_path / "merged")
    assert out == tmp_path / "merged" and notes == []
    files = {p.name for p in out.iterdir()}
    assert "config.json" in files and "adapter_config.json" not in files
    assert not [f for f in files if f.startswith(".")]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not hasattr(merged, "peft_config")
    assert all(not any(s in n for s in ("lora_", "base_layer")) for n, _ in merged.named_parameters())
    merged.eval()
    run = load_run(summary.run_dir)  # base + adapter
    run.model.eval()
    ids = run.tokenizer("<|im_start|>user\nSay hello.<|im_end|>\n", return_tensors="pt")
    with torch.no_grad():
        expected = run.model(**ids).logits
        got = merged(**ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    base = AutoModelForCausalLM.from_pretrained(json.loads((Path(summary.run_dir) / "run.json").read_text())
                                                ["model_path"], dtype=torch.float32).eval()
    with torch.no_grad():
        assert (base(**ids).logits - got).abs().max() > 1e-4  # the merged update is not empty


def test_existing_run_dir_is_refused_and_left_untouched(sft_runs):
    recipe, summary, _ = sft_runs[SFT_CASES[0]]
    run_dir = Path(summary.run_dir)
    before = tree_state(run_dir)
    with pytest.raises(LeantuneError, match="already exists.*--resume.*overwrite") as exc:
        train(recipe, progress=False)
    assert str(run_dir) in str(exc.value)
    assert tree_state(run_dir) == before


def test_overwrite_replaces_the_run(tiny_model_dir, tmp_path):
    recipe = make_recipe(tiny_model_dir("llama"), tmp_path, train={"max_steps": 2, "save_steps": None})
    first = train(recipe, progress=False)
    stale = Path(first.run_dir) / "stale.txt"
    stale.write_text("from an older run")
    again = load_recipe(raw={**recipe.model_dump(mode="json"), "output": {**recipe.output.model_dump(),
                                                                           "overwrite": True}})
    train(again, progress=False)
    assert not stale.exists() and (Path(first.run_dir) / "adapter").is_dir()


# --------------------------------------------------------------------------- pt and cls

def test_pt_causal_on_llama(tiny_model_dir, tmp_path):
    recipe = make_recipe(tiny_model_dir("llama"), tmp_path, stage="pt", fmt="text")
    summary = train(recipe, progress=False)
    evals = check_run_dir(Path(summary.run_dir), "lora", "causal_lm")
    assert set(evals["after"]) == {"loss", "perplexity"}
    again = reevaluate(load_run(summary.run_dir))
    assert again["loss"] == pytest.approx(evals["after"]["loss"], rel=1e-5)


def test_pt_masked_on_bert(tiny_model_dir, tmp_path):
    recipe = make_recipe(tiny_model_dir("bert", head="masked_lm"), tmp_path, stage="pt", fmt="text",
                         method="freeze")
    summary = train(recipe, progress=False)
    evals = check_run_dir(Path(summary.run_dir), "freeze", "masked_lm")
    assert set(evals["after"]) == {"loss", "perplexity"}
    run = load_run(summary.run_dir)
    assert type(run.model).__name__ == "BertForMaskedLM"
    again = reevaluate(run)  # masking at evaluation is fixed, so this is reproducible
    assert again["loss"] == pytest.approx(evals["after"]["loss"], rel=1e-5)


def test_cls_on_bert(tiny_model_dir, tmp_path):
    recipe = make_recipe(tiny_model_dir("bert", head="seq_cls"), tmp_path, stage="cls", fmt="classification")
    summary = train(recipe, progress=False)
    evals = check_run_dir(Path(summary.run_dir), "lora", "seq_cls")
    assert set(evals["after"]) == {"loss", "accuracy", "macro_f1"}
    assert 0.0 <= evals["after"]["accuracy"] <= 1.0
    meta = json.loads((Path(summary.run_dir) / "run.json").read_text())
    assert meta["labels"] == ["neg", "neu", "pos"]
    run = load_run(summary.run_dir)
    assert run.labels == ["neg", "neu", "pos"]
    assert run.model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    again = reevaluate(run)
    for key, value in evals["after"].items():
        assert again[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("stage,fmt,arch,head,setting,expected", [
    ("sft", "alpaca", "llama", "causal_lm", None, True),
    ("pt", "text", "llama", "causal_lm", None, True),
    ("cls", "classification", "bert", "seq_cls", None, False),
    ("cls", "classification", "bert", "seq_cls", True, True),
    ("sft", "alpaca", "llama", "causal_lm", False, False),
])
def test_length_grouping_unset_follows_the_stage(tiny_model_dir, tmp_path, monkeypatch, stage, fmt, arch, head,
                                                 setting, expected):
    """Unset ``train.group_by_length``: on where every token is a target (sft, pt), off for one label
    per example; a value in the recipe wins. The engine plans with it and the run records it."""
    import leantune.training.engine as engine_module

    planned = []
    real_plan = engine_module.batch_plan

    def recording_plan(lengths, batch_size, seed, epoch, group_by_length):
        planned.append(group_by_length)
        return real_plan(lengths, batch_size, seed, epoch, group_by_length)

    monkeypatch.setattr(engine_module, "batch_plan", recording_plan)
    train_section = {"max_steps": 2, "save_steps": None}
    if setting is not None:
        train_section["group_by_length"] = setting
    recipe = make_recipe(tiny_model_dir(arch, head=head), tmp_path, stage=stage, fmt=fmt, train=train_section)
    assert recipe.train.group_by_length is expected  # resolved with the recipe: resume and the CLI compare it
    summary = train(recipe, progress=False)
    assert planned and set(planned) == {expected}
    meta = json.loads((Path(summary.run_dir) / "run.json").read_text())
    assert meta["recipe"]["train"]["group_by_length"] is expected


@pytest.mark.parametrize("stage,fmt,arch,head,method", [
    ("sft", "alpaca", "llama", "causal_lm", "lora"),
    ("cls", "classification", "bert", "seq_cls", "lora"),      # fp32 head after bf16 layers
    ("cls", "classification", "bert", "seq_cls", "bitfit"),    # a LayerNorm whose bias trains
    ("cls", "classification", "bert", "seq_cls", "embedding"),  # an fp32 table before a bf16 LayerNorm
    ("sft", "alpaca", "llama", "causal_lm", "full"),           # whole layers train: weights stay fp32
])
def test_bf16_on_cpu_loads_frozen_weights_in_bf16_and_trains_as_fp32_weights_do(tiny_model_dir, tmp_path, stage,
                                                                                 fmt, arch, head, method):
    """``model.dtype: auto`` under bf16 on a CPU: frozen weights bf16, trainable ones fp32; training and
    evaluation (under autocast, as the model mixes types) give the losses of fp32 weights under autocast."""
    losses = {}
    for dtype in ("auto", "float32"):
        recipe = make_recipe(tiny_model_dir(arch, head=head), tmp_path / dtype, stage=stage, fmt=fmt, method=method,
                             train={"precision": "bf16", "max_steps": 3, "save_steps": None})
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"dtype": dtype})})
        summary = train(recipe, progress=False)
        meta = json.loads((Path(summary.run_dir) / "run.json").read_text())
        assert meta["model_dtype"] == ("bfloat16" if dtype == "auto" and method != "full" else "float32")
        losses[dtype] = json.loads((Path(summary.run_dir) / "eval.json").read_text())["after"]["loss"]
    assert math.isfinite(losses["auto"])
    assert losses["auto"] == pytest.approx(losses["float32"], rel=0.02)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_evaluation_computes_in_the_runs_precision(tiny_model_dir, tmp_path, monkeypatch, method):
    """A run training under bf16 evaluates under bf16 autocast too (as HF Trainer does), before and
    after training; ``leantune eval`` (``evaluate_run``) evaluates in the recorded precision with the
    weights in the dtypes that trained (LoRA: bf16 frozen weights, fp32 adapter and head; full
    fine-tuning: fp32) and reproduces the run's metrics exactly; the fp32 reload does not."""
    import leantune.training.device as device_module
    from leantune.stages.cls import Classification

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)  # this CPU's flags aside
    seen = []
    real_evaluate = Classification.evaluate

    def recording_evaluate(self, model, features, batch_size):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return real_evaluate(self, model, features, batch_size)

    monkeypatch.setattr(Classification, "evaluate", recording_evaluate)
    recipe = make_recipe(tiny_model_dir("bert", head="seq_cls"), tmp_path, stage="cls", fmt="classification",
                         method=method, train={"precision": "bf16", "max_steps": 2, "save_steps": None})
    summary = train(recipe, progress=False)
    meta = json.loads((Path(summary.run_dir) / "run.json").read_text())
    assert (meta["precision"], meta["model_dtype"]) == ("bf16", "float32" if method == "full" else "bfloat16")
    assert seen == [torch.bfloat16, torch.bfloat16]  # before and after training
    again = evaluate_run(Path(summary.run_dir))
    assert seen[2:] == [torch.bfloat16]
    assert again["loss"] == pytest.approx(summary.eval_after["loss"], rel=1e-9)
    in_fp32 = reevaluate(load_run(summary.run_dir))
    assert in_fp32["loss"] != pytest.approx(summary.eval_after["loss"], rel=1e-9)
    if method == "lora":
        dtypes = {n: p.dtype for n, p in load_run(summary.run_dir, as_trained=True).model.named_parameters()}
        assert {dtypes[n] for n in dtypes if "lora_" in n or "modules_to_save" in n} == {torch.float32}
        assert {dtypes[n] for n in dtypes if "attention" in n and "lora_" not in n} == {torch.bfloat16}


def test_recorded_precision_is_used_only_where_the_device_has_it(monkeypatch):
    import leantune.training.device as device_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert device_module.recorded_precision_on("bf16", cpu) == "fp32"  # not emulated
    assert device_module.recorded_precision_on("fp16", cpu) == "fp32"  # a GPU run evaluated on a CPU
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert device_module.recorded_precision_on("bf16", cpu) == "bf16"
    assert device_module.recorded_precision_on("fp32", cpu) == "fp32"


# --------------------------------------------------------------------------- invalid rows

def bad_alpaca(folder: Path) -> Path:
    rows = chat_rows("alpaca", QA * 2)
    rows.insert(3, {"instruction": "no answer here"})            # line 4: output missing
    rows.insert(7, "{not json")                                    # line 8: not JSON
    rows.insert(10, {"instruction": "", "output": "empty prompt"})  # line 11: empty instruction
    return write_jsonl(folder / "bad.jsonl", rows)


def test_skip_invalid_true_trains_on_the_valid_rows(tiny_model_dir, tmp_path):
    path = bad_alpaca(tmp_path)
    recipe = make_recipe(tiny_model_dir("llama"), tmp_path, train_file=path,
                         data={"skip_invalid": True}, train={"max_steps": 2, "save_steps": None})
    said = []
    summary = train(recipe, progress=False, say=said.append)
    assert summary.train_examples == 16
    assert any("skipped 3 invalid row(s)" in m for m in said)
    assert (Path(summary.run_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_skip_invalid_false_raises_and_creates_no_run_dir(tiny_model_dir, tmp_path):
    path = bad_alpaca(tmp_path)
    recipe = make_recipe(tiny_model_dir("llama"), tmp_path, train_file=path)
    assert recipe.data.skip_invalid is False
    with pytest.raises(DataValidationError) as exc:
        train(recipe, progress=False)
    message = str(exc.value)
    assert f"{path}:4: output: missing" in message
    assert f"{path}:8: <json>: invalid JSON" in message
    assert f"{path}:11: instruction:" in message
    assert "skip_invalid" in message
    assert [p.line for p in exc.value.problems] == [4, 8, 11]
    assert not (tmp_path / "runs").exists()


def test_cls_unknown_eval_label_creates_no_run_dir(tiny_model_dir, tmp_path):
    train_file, _ = write_data(tmp_path / "data", "classification")
    eval_file = tmp_path / "data" / "eval2.csv"
    eval_file.write_text("text,label\nfine,pos\nstrange,surprised\n")
    recipe = make_recipe(tiny_model_dir("bert", head="seq_cls"), tmp_path, stage="cls", fmt="classification",
                         train_file=train_file, eval_file=eval_file)
    with pytest.raises(DataValidationError, match=r"eval2\.csv:3: label: label 'surprised'"):
        train(recipe, progress=False)
    assert not (tmp_path / "runs").exists()


def test_cls_unknown_train_label_names_the_train_file(tiny_model_dir, tmp_path):
    train_file, eval_file = write_data(tmp_path / "data", "classification")
    recipe = make_recipe(tiny_model_dir("bert", head="seq_cls"), tmp_path,
                         stage={"name": "cls", "labels": ["neg", "pos"]},
                         fmt="classification", train_file=train_file, eval_file=eval_file)
    with pytest.raises(DataValidationError) as exc:
        train(recipe, progress=False)
    problems = {(p.file, p.line) for p in exc.value.problems}
    # 'neu' is every third row: lines 4, 7, … of each file (line 1 is the header)
    expected = {(str(train_file), line) for line in range(4, 20, 3)} | {(str(eval_file), 4), (str(eval_file), 7)}
    assert problems == expected
    assert not (tmp_path / "runs").exists()
