"""The built-in table of architectures (guide/architectures.py) and how ``load_shape`` resolves a name:
packaged model or folder, then a config.json in the local Hugging Face cache, then the table, then one
line saying what to do."""
from __future__ import annotations

import json

import pytest
from torch import nn
from typer.testing import CliRunner

from leantune.cli import app
from leantune.errors import ModelSourceError
from leantune.guide.architectures import (
    ARCHITECTURES,
    BY_NAME,
    closest_names,
    find_architecture,
    lookup_keys,
)
from leantune.guide.model_shape import (
    config_from_numbers,
    formula_block_linear,
    load_shape,
    meta_model,
    parse_count,
    shape_from_config,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """No test sees the machine's own Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def published_tolerance(published: str) -> float:
    """1%, or the rounding of a figure stated to fewer digits ("1.7B": ±0.05B), whichever is larger."""
    digits = published[:-1]
    return max(0.01, 0.5 * 10 ** -len(digits.partition(".")[2]) / float(digits))


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
def test_parameter_count_matches_the_published_size(arch):
    config = config_from_numbers(arch.config)
    model = meta_model(config, "causal_lm")  # raises where the numbers do not build
    params = sum(p.numel() for p in model.parameters())
    published = parse_count(arch.published)
    assert abs(params / published - 1) <= published_tolerance(arch.published), f"{params:,} vs {arch.published}"
    shape = shape_from_config(config, arch.name)
    assert shape.params == params  # the shape counted on the meta model, not the closed form
    block_linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear)
                       and n != "lm_head")
    assert formula_block_linear(shape) == block_linear == shape.linear_params  # head_dim ≠ hidden / heads too


def test_published_tolerance_reads_the_stated_digits():
    assert published_tolerance("8.03B") == 0.01
    assert published_tolerance("1.7B") == pytest.approx(0.05 / 1.7)


def test_every_name_names_one_model():
    owners: dict[str, list[str]] = {}
    for arch in ARCHITECTURES:
        for key in lookup_keys(arch):
            owners.setdefault(key, []).append(arch.name)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}
    assert all(alias == alias.lower() for arch in ARCHITECTURES for alias in arch.aliases)
    assert len(BY_NAME) == len(owners)


@pytest.mark.parametrize("name, hub_id", [
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
    ("LLAMA-3.1-8B", "meta-llama/Llama-3.1-8B"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
    ("llama-3.3-70b", "meta-llama/Llama-3.1-70B"),
    ("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B"),
    ("unsloth/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B"),  # a mirror under the same model name
    ("qwen3-0.6b", "Qwen/Qwen3-0.6B"),
    ("mistral-nemo", "mistralai/Mistral-Nemo-Base-2407"),
    ("google/gemma-3-4b-it", "google/gemma-3-4b-pt"),
    ("phi-4", "microsoft/phi-4"),
    ("THUDM/chatglm3-6b", "THUDM/chatglm3-6b"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
])
def test_hub_ids_and_aliases_resolve(name, hub_id):
    assert find_architecture(name).hub_ids[0] == hub_id


def test_load_shape_takes_the_table_offline():
    shape = load_shape("meta-llama/Llama-3.2-1B")
    assert shape.source == "built-in table: meta-llama/Llama-3.2-1B"
    assert (shape.name, shape.arch, shape.layers, shape.kv_hidden) == ("meta-llama/Llama-3.2-1B", "llama", 16, 512)
    assert shape.params == 1_235_814_400


def test_packaged_models_resolve_as_before():
    assert load_shape("smollm2-135m").source == "packaged"


def write_cached_config(hub_cache, repo_id: str, config: dict) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_cached_config_wins_over_the_table(empty_hub_cache):
    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
    write_cached_config(empty_hub_cache, "meta-llama/Llama-3.1-8B", tiny)
    shape = load_shape("meta-llama/Llama-3.1-8B")
    assert shape.source == "Hugging Face cache"
    assert (shape.layers, shape.hidden, shape.vocab) == (2, 64, 1000)
    assert load_shape("llama-3.1-8b").layers == 32  # an alias is not a hub id: the table


def test_a_cached_multimodal_config_gives_its_text_model(empty_hub_cache):
    text = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000}
    write_cached_config(empty_hub_cache, "google/gemma-3-4b-it", {"model_type": "gemma3", "text_config": text})
    shape = load_shape("google/gemma-3-4b-it")
    assert (shape.source, shape.arch, shape.layers, shape.q_hidden) == ("Hugging Face cache", "gemma3_text", 2, 128)


def test_a_cached_remote_code_config_falls_back_to_the_table(empty_hub_cache):
    write_cached_config(empty_hub_cache, "THUDM/chatglm3-6b", {"model_type": "chatglm", "num_layers": 28})
    assert load_shape("THUDM/chatglm3-6b").source == "built-in table: THUDM/chatglm3-6b"


def test_an_unknown_name_says_what_to_do_in_one_line():
    with pytest.raises(ModelSourceError) as caught:
        load_shape("qwen2.5-8b")
    message = str(caught.value)
    assert "\n" not in message
    assert "did you mean qwen2.5-7b" in message and "--params 7B" in message and "model folder" in message
    with pytest.raises(ModelSourceError, match="known names include llama-3.1-8b"):
        load_shape("no-such-model-at-all")


def test_suggestions_name_each_model_once():
    suggested = [find_architecture(n).name for n in closest_names("llama-9b")]
    assert "llama-3.1-8b" in suggested and len(suggested) == len(set(suggested))


def test_estimate_command_takes_a_hub_id_offline():
    result = CliRunner().invoke(app, ["estimate", "Qwen/Qwen2.5-0.5B-Instruct", "--method", "qlora", "--json"])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output)
    assert estimate["total_params"] - estimate["trainable_params"] == 494_032_768  # base + LoRA
