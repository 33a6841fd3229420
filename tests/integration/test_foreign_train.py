"""`leantune train` on the real LLaMA-Factory and axolotl example configs (tests/data/foreign/):
translated, overridden on the command line (the packaged SmolLM2-135M, 2 steps, 64 tokens, fp32
on CPU), trained; the run's recipe.yaml and its PEFT adapter_config.json, read back with plain
YAML/JSON, carry the values the source config sets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from leantune.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]

FOREIGN = Path(__file__).parent.parent / "data" / "foreign"
ROWS = [{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"} for i in range(24)]
SMALL = ["model.name=smollm2-135m", "train.max_steps=2", "train.max_length=64", "train.precision=fp32",
         "eval.before=false"]
SMOLLM2_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

runner = CliRunner()


def _train(config: Path, *overrides: str) -> str:
    result = runner.invoke(app, ["train", str(config), *SMALL, *overrides])
    assert result.exit_code == 0, result.output
    return result.output


def test_llamafactory_lora_sft_example_trains(tmp_path, monkeypatch):
    """Its datasets resolve through data/dataset_info.json in the working folder, as in LLaMA-Factory."""
    config = tmp_path / "llama3_lora_sft.yaml"
    shutil.copy(FOREIGN / "llamafactory" / "llama3_lora_sft.yaml", config)
    src = yaml.safe_load(config.read_text())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "identity.json").write_text(json.dumps(ROWS))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    monkeypatch.chdir(tmp_path)

    output = _train(config, "train.grad_accum=2")  # 8 in the example: 16 forward passes for 2 steps
    assert "is written for LLaMA-Factory" in output and "dataset: alpaca_en_demo" in output

    run = tmp_path / src["output_dir"]
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert (recipe["train"]["lr"], recipe["train"]["batch_size"]) == (src["learning_rate"],
                                                                      src["per_device_train_batch_size"])
    assert recipe["train"]["scheduler"] == src["lr_scheduler_type"]
    method = recipe["method"][0]
    assert (method["name"], method["r"], method["alpha"], method["targets"]) == ("lora", src["lora_rank"],
                                                                               2 * src["lora_rank"], "all-linear")
    assert Path(recipe["data"]["train"]) == (tmp_path / "data" / "identity.json").resolve()
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (src["lora_rank"], 2 * src["lora_rank"])
    assert {t.rsplit(".", 1)[-1] for t in adapter["target_modules"]} == SMOLLM2_LINEAR


def test_axolotl_lora_example_trains(tmp_path, monkeypatch):
    """Its hub dataset is replaced by a local alpaca file; its 8-bit optimizer by AdamW (CPU)."""
    config = tmp_path / "lora-1b.yml"
    shutil.copy(FOREIGN / "axolotl" / "lora-1b.yml", config)
    src = yaml.safe_load(config.read_text())
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    monkeypatch.chdir(tmp_path)

    output = _train(config, f"data.train={data}", "train.optimizer=adamw")
    assert "is written for axolotl" in output and "teknium/GPT4-LLM-Cleaned" in output

    run = tmp_path / src["output_dir"]
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert (recipe["train"]["lr"], recipe["train"]["batch_size"]) == (src["learning_rate"], src["micro_batch_size"])
    assert recipe["data"]["eval_split"] == src["val_set_size"]
    method = recipe["method"][0]
    assert (method["r"], method["alpha"], method["targets"]) == (src["lora_r"], src["lora_alpha"],
                                                                 src["lora_target_modules"])
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (src["lora_r"], src["lora_alpha"])
    assert {t.rsplit(".", 1)[-1] for t in adapter["target_modules"]} == set(src["lora_target_modules"])
