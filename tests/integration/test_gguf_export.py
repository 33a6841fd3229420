"""`leantune export gguf`: a LoRA run as one GGUF file, read back by transformers' GGUF loader
(an independent reader of the format): logits equal to the merged model's within the type's
tolerance, the same token ids, the run's chat template; the tokenizer keys and tensor layout equal
to those llama.cpp's own converter wrote into the packaged SmolLM2 file; the Ollama Modelfile's
Go template renders what the Jinja template renders.

llama.cpp itself is not run (no llama-cpp-python wheel for this machine).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_test_threads")]

runner = CliRunner()
SAMPLE = "How do I count the lines of a file?<|im_end|> Use `wc -l file.txt` — 3 lines, naïve café 🚀."
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count lines?"}]
# relative L2 error of the logits over the sample, per tensor type
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 5e-2}


# --------------------------------------------------------------------------- helpers

def build_bpe_tokenizer():
    """Byte-level BPE trained offline on a few sentences, so that it has merges (llama.cpp needs them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from leantune.data.templates import CHATML

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    backend.train_from_iterator(["How do I count the lines of a file? Use wc -l file.txt",
                                 "hello world, how are you? Fine, thanks."] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def tiny_model(arch: str, tok):
    if arch != "mistral":
        return build_tiny_model(arch, "causal_lm", tok)
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, sliding_window=None, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))


def train_run(model_dir: Path, data: Path, out: Path, method, steps: int = 2, template: str = "auto",
              max_length: int = 64, batch_size: int = 4, lr: float = 1e-2) -> Path:
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    raw = {"model": str(model_dir), "method": method, "stage": "sft",
           "data": {"train": str(data), "format": "alpaca", "eval_split": 0.0, "template": template},
           "train": {"max_steps": steps, "batch_size": batch_size, "lr": lr, "precision": "fp32",
                     "max_length": max_length, "seed": 0},
           "output": {"dir": str(out), "name": "run"}}
    return Path(train(load_recipe(raw=raw), progress=False).run_dir)


def write_alpaca(path: Path, n: int = 8) -> Path:
    rows = [{"instruction": f"How do I count the lines of file {i}?", "output": f"wc -l file{i}.txt"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_back(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def merged_model(run_dir: Path):
    from leantune.export.run_loading import load_run

    run = load_run(run_dir, quantized=False)
    return run.method.merge(run.model).eval(), run.tokenizer


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference - other).norm() / reference.norm()).item()


@torch.no_grad()
def check_round_trip(run_dir: Path, out: Path, gguf_type: str, template: str) -> float:
    """Export, read back, compare; returns the logits' relative error."""
    from leantune.export.gguf import export_gguf

    export_gguf(run_dir, out, gguf_type)
    merged, tokenizer = merged_model(run_dir)
    gguf_model, gguf_tokenizer = read_back(out)
    ids = tokenizer(SAMPLE, return_tensors="pt")["input_ids"]
    assert gguf_tokenizer(SAMPLE)["input_ids"] == ids[0].tolist()
    assert gguf_tokenizer.chat_template == template
    error = relative_error(merged(ids).logits, gguf_model(ids).logits)
    assert error < TOLERANCE[gguf_type], (gguf_type, error)
    return error


# --------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """arch → (model folder, LoRA run folder), trained on a BPE tokenizer with merges."""
    root = tmp_path_factory.mktemp("gguf-tiny")
    tok = build_bpe_tokenizer()
    data = write_alpaca(root / "train.jsonl")
    runs = {}
    for arch in ("llama", "qwen2", "mistral", "gpt2"):
        model_dir = root / f"model-{arch}"
        tiny_model(arch, tok).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        runs[arch] = (model_dir, train_run(model_dir, data, root / f"runs-{arch}", {"name": "lora", "r": 4}))
    return runs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_tiny_run_reads_back(tiny_runs, tmp_path, arch, gguf_type):
    from transformers import AutoModelForCausalLM

    from leantune.data.templates import CHATML

    model_dir, run_dir = tiny_runs[arch]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    merged, _ = merged_model(run_dir)
    assert relative_error(base.model.layers[0].self_attn.q_proj.weight,
                          merged.model.layers[0].self_attn.q_proj.weight) > 1e-4  # the adapter is in the file
    check_round_trip(run_dir, tmp_path / "model.gguf", gguf_type, CHATML)


def test_cli_refusals(tiny_runs, tmp_path):
    from leantune.cli import app

    def refused(args: list[str], *fragments: str) -> None:
        result = runner.invoke(app, ["export", "gguf", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        text = " ".join(result.output.split())
        for fragment in fragments:
            assert fragment in text, text

    llama_dir, llama_run = tiny_runs["llama"]
    refused([str(tiny_runs["gpt2"][1]), str(tmp_path / "a.gguf")], "'gpt2'", "llama, mistral, qwen2")
    prompt_run = train_run(llama_dir, write_alpaca(tmp_path / "d.jsonl"), tmp_path / "pt",
                           {"name": "prompt_tuning", "num_virtual_tokens": 4}, steps=1)
    refused([str(prompt_run), str(tmp_path / "b.gguf")], "'prompt_tuning' cannot be merged")
    refused([str(llama_run), str(llama_run / "inside.gguf")], "its own input")
    refused([str(llama_run), str(tmp_path / "c.gguf"), "--type", "q4_k"], "--type q4_k", "f32, f16, q8_0")
    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"keep me")
    refused([str(llama_run), str(taken)], "already exists", "--force")
    assert taken.read_bytes() == b"keep me" and not (tmp_path / "Modelfile").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file left behind
    result = runner.invoke(app, ["export", "gguf", str(llama_run), str(taken), "--force", "--type", "q8_0",
                                 "--base", str(llama_dir)])
    assert result.exit_code == 0, result.output
    assert taken.read_bytes()[:4] == b"GGUF" and (tmp_path / "Modelfile").read_text().startswith("FROM ./taken.gguf")


# --------------------------------------------------------------------------- the Modelfile

GO_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


def render_go(template: str, messages: list[dict]) -> str:
    """The Go-template subset Ollama's chat templates use here: range .Messages, if/else if/else
    with ``eq .Role "x"``, .Role and .Content, and the ``{{-``/``-}}`` trim markers."""
    parts, pos, trim_next = [], 0, False
    for m in GO_ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip() if trim_next else text
        parts += [("text", text.rstrip() if m.group(1) else text), ("action", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail))

    def parse(i: int):
        nodes = []
        while i < len(parts):
            kind, value = parts[i]
            i += 1
            if kind == "text" or value in (".Role", ".Content"):
                nodes.append((kind, value))
            elif value.startswith("range "):
                body, i, _ = parse(i)
                nodes.append(("range", body))
            elif value.startswith("if "):
                branches, condition = [], value[3:]
                while True:
                    body, i, end = parse(i)
                    branches.append((condition, body))
                    if end == "end":
                        break
                    condition = end[len("else if "):] if end.startswith("else if ") else None
                nodes.append(("if", branches))
            else:  # end, else, else if
                return nodes, i, value
        return nodes, i, None

    def run(nodes, message: dict | None, out: list[str]) -> None:
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "action":
                out.append(message[node[1][1:].lower()])
            elif node[0] == "range":
                for each in messages:
                    run(node[1], each, out)
            else:
                for condition, body in node[1]:
                    eq = condition and re.fullmatch(r'eq \.Role "(\w+)"', condition)
                    if condition is None or message["role"] == eq.group(1):
                        run(body, message, out)
                        break

    out: list[str] = []
    run(parse(0)[0], None, out)
    return "".join(out)


@pytest.mark.parametrize("name", ["chatml", "plain"])
def test_modelfile_template_renders_like_jinja(name):
    from leantune.data.templates import NAMED, render
    from leantune.export.modelfile import modelfile_text

    tok = build_bpe_tokenizer()
    text, notes = modelfile_text("m.gguf", tok, NAMED[name], 96)
    go = re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE).group(1)
    for messages in (CONVERSATION, CONVERSATION[1:2]):
        assert render_go(go, messages) == render(tok, messages, NAMED[name], add_generation_prompt=True)
    assert not notes
    assert text.startswith("FROM ./m.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    for line in ("PARAMETER temperature 0", "PARAMETER repeat_penalty 1.1", "PARAMETER num_ctx 96"):
        assert line in text.splitlines()


def test_modelfile_leaves_other_jinja_to_ollama():
    """A template without a known Go equivalent (here a ChatML variant with a default system
    prompt, as SmolLM2's own) is not written as ChatML: TEMPLATE is left out, with a note."""
    from leantune.data.templates import CHATML
    from leantune.export.modelfile import modelfile_text

    own = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}"
           "{% endif %}" + CHATML)
    text, notes = modelfile_text("m.gguf", build_bpe_tokenizer(), own, 96)
    assert not any(line.startswith("TEMPLATE") for line in text.splitlines())
    assert notes and "no Go-template equivalent" in notes[0]
    assert 'PARAMETER stop "<|im_end|>"' in text


# --------------------------------------------------------------------------- SmolLM2-135M

@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory) -> Path:
    """A short LoRA run on the packaged SmolLM2-135M, trained with the ChatML template."""
    root = tmp_path_factory.mktemp("gguf-smollm2")
    data = write_alpaca(root / "train.jsonl")
    return train_run("smollm2-135m", data, root / "runs", {"name": "lora", "r": 8, "alpha": 16}, steps=2,
                     template="chatml", max_length=48, batch_size=2, lr=1e-3)


def _fields(path: Path, prefixes: tuple[str, ...]) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefixes)}


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_smollm2_run_reads_back(smollm2_run, tmp_path, gguf_type):
    from leantune.data.templates import CHATML

    error = check_round_trip(smollm2_run, tmp_path / "smol.gguf", gguf_type, CHATML)
    print(f"{gguf_type}: logits relative error {error:.2e}, {(tmp_path / 'smol.gguf').stat().st_size} bytes")


def test_smollm2_layout_matches_llama_cpp(smollm2_run, tmp_path):
    """Tokenizer keys, hyper-parameters and tensor names as llama.cpp's converter wrote them into the
    packaged file; its Q4_1 attention weights agree with ours only in llama.cpp's rope layout."""
    from gguf import GGUFReader, dequantize

    from leantune.export.gguf import export_gguf
    from leantune.models.catalog import PACKAGED

    packaged = PACKAGED["smollm2-135m"].source_path()
    ours = tmp_path / "smol.gguf"
    export_gguf(smollm2_run, ours, "f16")
    keys = ("tokenizer.ggml.", "llama.")
    assert _fields(ours, keys) == _fields(packaged, keys)
    tensors = {p: {t.name: t for t in GGUFReader(p).tensors} for p in (ours, packaged)}
    assert set(tensors[ours]) == set(tensors[packaged])
    for name in ("blk.0.attn_q.weight", "blk.3.attn_k.weight"):
        mine, theirs = (dequantize(tensors[p][name].data, tensors[p][name].tensor_type) for p in (ours, packaged))
        mine, theirs = torch.from_numpy(mine.copy()), torch.from_numpy(theirs.copy())
        heads = 9 if "attn_q" in name else 3
        unpermuted = mine.reshape(heads, mine.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(mine.shape)
        assert relative_error(theirs, mine) < 0.2 < relative_error(theirs, unpermuted), name
