"""One-GPU check: leantune SFT (LoRA, QLoRA, full) against TRL's SFTTrainer and leantune's estimate.

The Python side of ``benchmarks/gpu_check.sh``. It builds a model from a Llama-3.2-1B-shaped
config (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab 128256,
tied embeddings; random bf16 weights) with a byte-level tokenizer built here (260 tokens,
every id below the vocabulary), turns the built-in shell-help data into chat messages, and
trains each row in its own process at equal settings: same model, data, batch, max length,
LoRA r=16/alpha 32 on all linear layers, learning rate, steps, seed, bf16 autocast over fp32
trainable weights, no gradient checkpointing. Each side keeps its own batching (leantune
groups by length, TRL shuffles); TRL's share of padding is reported.

* leantune rows: ``python -m leantune train RECIPE --nproc N``; tokens/s, peak memory and
  the estimate come from the run's ``summary.json`` (the estimate is ``leantune estimate``'s
  code on the recipe and the tokenized data).
* TRL rows: ``SFTTrainer`` in a worker; the estimate is the same setting with full logits
  (``Setting.loss = "full"``), as an HF-style trainer computes them.
* tokens/s: non-pad tokens of all ranks over the training loop's wall time (first step
  included). Peak memory: ``torch.cuda.max_memory_allocated`` of (rank 0's) process on a
  GPU, peak RSS on CPU.
* With 2+ GPUs: leantune LoRA over 2 processes (DDP) and full fine-tuning with FSDP2.

    PYTHONPATH=src python3 benchmarks/gpu_bench.py --out $OUT/gpu_check.json        # on the GPU machine
    .venv/bin/python benchmarks/gpu_bench.py --device cpu --tiny --out /tmp/gpu_check.json   # dry run

Rows whose packages are missing (trl, bitsandbytes) are skipped with the reason; the JSON is
rewritten after every row, so a run cut short by its deadline still leaves its results.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUIET_ENV, ROOT, emit, format_table, machine_facts, run_worker, write_results  # noqa: E402

LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 8192, "vocab_size": 128256, "head_dim": 64}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 512, "head_dim": 16}
LORA = {"r": 16, "alpha": 32, "targets": "all-linear", "dropout": 0.0}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
SEED = 42
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]

# row -> (side, method, processes, distributed strategy or None, the TRL row it is compared with)
ROWS = {
    "lt-lora": ("leantune", "lora", 1, None, "trl-lora"),
    "trl-lora": ("trl", "lora", 1, None, None),
    "lt-full": ("leantune", "full", 1, None, "trl-full"),
    "trl-full": ("trl", "full", 1, None, None),
    "lt-qlora": ("leantune", "qlora", 1, None, "trl-qlora"),
    "trl-qlora": ("trl", "qlora", 1, None, None),
    "lt-lora-ddp2": ("leantune", "lora", 2, "ddp", "trl-lora"),
    "lt-full-fsdp2": ("leantune", "full", 2, "fsdp", "trl-full"),
}


# --------------------------------------------------------------------------- model, tokenizer, data

def build_tokenizer():
    """Byte-level BPE, 256-byte alphabet, no merges (one token per byte), ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from leantune.data.templates import CHATML

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def build_model(folder: Path, shape: dict, device: str) -> dict:
    """A randomly initialised Llama of ``shape`` in bf16 with the tokenizer, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    assert len(tok) <= shape["vocab_size"]
    config = LlamaConfig(**shape, tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=8192,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"))
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"params": params, "tokenizer_tokens": len(tok), "build_s": round(time.perf_counter() - t0, 1), **shape}


def write_messages(path: Path) -> int:
    """The built-in shell-help training set (alpaca) as chat messages, converted by leantune's reader."""
    from leantune.data.formats import load_examples
    from leantune.data.paths import resolve_data_path

    examples = load_examples(resolve_data_path("builtin:demo/shell_help_train.jsonl", None), "alpaca").examples
    path.write_text("".join(json.dumps({"messages": e["messages"]}) + "\n" for e in examples))
    return len(examples)


# --------------------------------------------------------------------------- rows

def missing(row: str, device: str, gpus: int) -> str | None:
    """Why a row cannot run here, or None."""
    side, method, nproc, strategy, _ = ROWS[row]
    if side == "trl" and importlib.util.find_spec("trl") is None:
        return "trl is not installed (carry its wheel: gpu_check.sh --fetch-wheels)"
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (carry its wheel: gpu_check.sh --fetch-wheels)"
    if nproc > 1 and device == "cuda" and gpus < nproc:
        return f"needs {nproc} GPUs, this machine has {gpus}"
    if strategy == "fsdp" and device != "cuda":
        return "FSDP runs on GPUs only"
    return None


def run_leantune(row: str, a, work: Path, timeout: float) -> dict:
    _, method, nproc, strategy, _ = ROWS[row]
    spec = {"name": method, **(LORA if method in ("lora", "qlora") else {})}
    train = {"max_steps": a.steps, "batch_size": a.batch // nproc, "max_length": a.max_length, "lr": LR[method],
             "seed": SEED, "device": a.device, "precision": a.precision, "logging_steps": 1,
             "gradient_checkpointing": False}
    if strategy:
        train["distributed"] = {"strategy": strategy}
    recipe = {"model": str(work / "model"), "method": [spec], "stage": "sft",
              "data": {"train": str(work / "data.jsonl"), "format": "messages", "eval_split": 0.0},
              "train": train, "eval": {"before": False}, "output": {"dir": str(work / "runs"), "name": row}}
    path = work / f"{row}.yaml"
    path.write_text(json.dumps(recipe))
    env = {**os.environ, **QUIET_ENV, "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "leantune", "train", str(path), "--nproc", str(nproc)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    summary_path = work / "runs" / row / "summary.json"
    if done.returncode != 0 or not summary_path.is_file():
        return {"error": f"exit status {done.returncode}", "output_tail": (done.stdout + done.stderr)[-3000:]}
    s = json.loads(summary_path.read_text())
    meta = json.loads((work / "runs" / row / "run.json").read_text())
    losses = [h["loss"] for h in s["history"] if "loss" in h]
    return {"steps": s["steps"], "tokens_per_s": s["tokens_per_s"], "peak_memory_mb": s["peak_memory_mb"],
            "memory_kind": s["memory_kind"], "estimate_mb": s["estimate_mb"],
            "estimate_setting": (s.get("estimate") or {}).get("setting"), "precision": meta["precision"],
            "strategy": meta["strategy"], "processes": meta["processes"], "effective_batch": meta["effective_batch"],
            "trainable_params": s["trainable_params"], "train_wall_s": s["wall_time_s"],
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def worker_trl(method: str, a) -> dict:
    """TRL's SFTTrainer (+ PEFT) on the same model folder, data and settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from leantune.methods.registry import build_method

    work, cuda = Path(a.work), a.device == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    rows = [json.loads(line)["messages"] for line in (work / "data.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])
    half = torch.bfloat16 if a.precision == "bf16" else torch.float32
    kwargs = {"dtype": torch.float32 if method == "full" else half}  # full: fp32 master weights, as leantune
    if method == "qlora":  # leantune's own BitsAndBytesConfig
        kwargs.update(build_method({"name": "qlora", **LORA}).load_kwargs())
        if cuda:
            kwargs["device_map"] = {"": 0}
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(work / "model", **kwargs)
    peft_config = None if method == "full" else LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    batches: list[tuple[int, int]] = []  # (non-pad, all) tokens of each batch collated
    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times["begin"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, use_cpu=not cuda, bf16=a.precision == "bf16", fp16=False,
                         per_device_train_batch_size=a.batch, max_length=a.max_length, learning_rate=LR[method],
                         max_steps=a.steps, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
                         disable_tqdm=True, gradient_checkpointing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[Clock()])
        collate = trainer.data_collator

        def counting_collator(examples):
            batch = collate(examples)
            mask = batch.get("attention_mask")
            batches.append((int(mask.sum()) if mask is not None else batch["input_ids"].numel(),
                            batch["input_ids"].numel()))
            return batch

        trainer.data_collator = counting_collator
        trainer.train()
    wall = times["end"] - times["begin"]
    trained = batches[:trainer.state.global_step]  # accelerate's loader collates one batch ahead
    tokens, padded = sum(t for t, _ in trained), sum(n for _, n in trained)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "peak CUDA allocated"
    else:
        import resource

        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
    return {"steps": trainer.state.global_step, "tokens_per_s": tokens / wall, "peak_memory_mb": peak,
            "memory_kind": kind, "train_wall_s": wall, "padding_fraction": 1 - tokens / padded,
            "precision": a.precision, "processes": 1, "effective_batch": a.batch,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def trl_estimate(model_dir: Path, lt_setting: dict | None) -> float | None:
    """leantune's estimate for the paired leantune row's setting with full logits (HF-style loss)."""
    if not lt_setting:
        return None
    from leantune.guide.peak_memory import Setting, estimate
    from leantune.guide.model_shape import load_shape

    return estimate(load_shape(str(model_dir)), Setting(**{**lt_setting, "loss": "full"})).total_mb


# --------------------------------------------------------------------------- driver

def gpu_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    if facts["gpus"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     bf16=torch.cuda.is_bf16_supported())
    return facts


def table(results: dict) -> str:
    headers = ["row", "processes", "tokens/s", "vs TRL", "peak MB", "vs TRL", "estimate MB", "est/peak",
               "loss first→last", "status"]
    lines = []
    for name, r in results.items():
        if "tokens_per_s" not in r:
            lines.append([name, "", "", "", "", "", "", "", "", r.get("skipped") or r.get("error", "")])
            continue
        ref = results.get(ROWS[name][4] or "", {})
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if "tokens_per_s" in ref else ""
        mem = f"{r['peak_memory_mb'] / ref['peak_memory_mb']:.2f}x" if "peak_memory_mb" in ref else ""
        est = r.get("estimate_mb")
        lines.append([name, str(r["processes"]), f"{r['tokens_per_s']:,.0f}", speed, f"{r['peak_memory_mb']:,.0f}",
                      mem, "" if est is None else f"{est:,.0f}",
                      "" if est is None else f"{est / r['peak_memory_mb']:.2f}",
                      f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" if r["loss_last"] is not None else "", "ok"])
    return format_table(headers, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model of hidden 64 (dry run of the logic on CPU)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--steps", type=int, help="optimizer steps per row (default 30; --tiny 3)")
    ap.add_argument("--batch", type=int, default=8, help="global batch (default 8)")
    ap.add_argument("--max-length", type=int, default=512, help="train.max_length (default 512)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--deadline", type=float, default=300, help="start no row after this many seconds")
    ap.add_argument("--row-timeout", type=float, default=150, help="seconds per row before it is abandoned")
    ap.add_argument("--out", action="append", help="results JSON path (repeatable; unwritable ones are skipped)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.steps = a.steps or (3 if a.tiny else 30)

    if a.worker:
        emit(worker_trl(ROWS[a.worker][1], a))
        return
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    if unknown := [r for r in rows if r not in ROWS]:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if a.device == "cuda" and not gpu_facts()["gpus"]:
        ap.error("--device cuda: torch sees no GPU here; use --device cpu --tiny for a dry run")
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"  # machine_facts' `git status`: never lock the index
    t_all = time.perf_counter()
    outs = [Path(p) for p in (a.out or [str(ROOT / "benchmarks" / "results" / "gpu_check.json")])]
    payload = {"benchmark": "gpu_check", "command": " ".join(["benchmarks/gpu_bench.py", *sys.argv[1:]]),
               "machine": {**machine_facts(), **gpu_facts()}, "results": {}}

    def save() -> None:
        payload["total_wall_s"] = round(time.perf_counter() - t_all, 1)
        payload["table"] = table(payload["results"])
        for path in outs:
            try:
                write_results(path, payload)
            except OSError as exc:
                print(f"  (not written: {path}: {exc})", flush=True)

    with tempfile.TemporaryDirectory(prefix="leantune-gpu-check-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model", TINY if a.tiny else LLAMA_1B, a.device)
        examples = write_messages(work / "data.jsonl")
        payload["conditions"] = {
            "model": {"shape": "tiny" if a.tiny else "Llama-3.2-1B", **model, "weights": "random, bf16, tied"},
            "data": f"builtin:demo/shell_help_train.jsonl as messages ({examples} examples), loss on responses",
            "batch": a.batch, "max_length": a.max_length, "steps": a.steps, "precision": a.precision,
            "lora": LORA, "lr": LR, "seed": SEED, "gradient_checkpointing": False, "device": a.device,
            "tokens_per_s": "non-pad tokens of all ranks / the training loop's wall time, first step included",
            "peak_memory": "torch.cuda.max_memory_allocated of the (rank 0) process on GPU; peak RSS on CPU",
            "estimate": "leantune rows: summary.json estimate_mb (leantune estimate on the recipe and data); "
                        "TRL rows: the same setting with full logits (Setting.loss='full')",
        }
        print(f"# model built in {model['build_s']} s: {model['params']:,} parameters", flush=True)
        gpus = payload["machine"]["gpus"]
        for row in rows:
            left = a.deadline - (time.perf_counter() - t_all)
            reason = missing(row, a.device, gpus) or (None if left > 20 else "deadline reached")
            if reason:
                payload["results"][row] = {"skipped": reason}
                print(f"## {row}: skipped ({reason})", flush=True)
                save()
                continue
            print(f"## {row}", flush=True)
            t0 = time.perf_counter()
            timeout = min(a.row_timeout, left)
            try:
                if ROWS[row][0] == "leantune":
                    result = run_leantune(row, a, work, timeout)
                else:
                    result = run_worker(Path(__file__), ["--worker", row, "--work", str(work), "--device", a.device,
                                                         "--steps", str(a.steps), "--batch", str(a.batch),
                                                         "--max-length", str(a.max_length),
                                                         "--precision", a.precision], timeout)
            except subprocess.TimeoutExpired:
                result = {"error": f"timed out after {timeout:.0f} s"}
            if ROWS[row][0] == "trl" and "error" not in result:
                paired = next((payload["results"].get(n, {}) for n, spec in ROWS.items() if spec[4] == row), {})
                result["estimate_mb"] = trl_estimate(work / "model", paired.get("estimate_setting"))
            result["row_wall_s"] = round(time.perf_counter() - t0, 1)
            payload["results"][row] = result
            print(f"  {result.get('error') or 'ok'} in {result['row_wall_s']} s"
                  + (f"\n{result.get('output_tail') or result.get('stderr_tail')}" if "error" in result else ""),
                  flush=True)
            save()
    save()
    print(f"\n{payload['table']}\n\nwrote {', '.join(map(str, outs))} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
