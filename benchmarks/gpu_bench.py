"""One-GPU check: leantune SFT (LoRA, QLoRA, full) against TRL's SFTTrainer, MFU and leantune's estimate.

The Python side of ``benchmarks/gpu_check.sh``. It builds a Llama-3.2-1B-shaped model with
random bf16 weights, a byte-level tokenizer and chat data (``gpu_setup.py``: nothing is
downloaded) and trains each row in its own process at the two equal settings of
``sft_throughput.py``: **equal-A** (no gradient checkpointing, length-grouped batches on
both sides) and **equal-B** (checkpointing, random batches). Within a setting both sides
share model, data, batch, max length, LoRA r=16/alpha 32 on all linear layers, learning
rate, steps, seed, bf16 autocast over fp32 trainable weights.

* leantune rows: ``python -m leantune train RECIPE --nproc N``; tokens/s, peak memory and
  the estimate come from the run's ``summary.json`` (the estimate is ``leantune estimate``'s
  code on the recipe and the tokenized data).
* TRL rows: ``SFTTrainer`` in a worker; the estimate is the same setting with full logits
  (``Setting.loss = "full"``), as an HF-style trainer computes them; TRL's share of padding
  is reported. ``trl-lora-liger``: TRL with Liger's fused Triton kernels
  (``use_liger_kernel``), where ``liger_kernel`` is installed.
* tokens/s: non-pad tokens of all ranks over the training loop's wall time (first step
  included). Peak memory: ``torch.cuda.max_memory_allocated`` of (rank 0's) process on a
  GPU, peak RSS on CPU.
* MFU: tokens/s × model FLOPs per token (``gpu_setup.flops_per_token``, one figure for both
  sides of a pair) over the ``torch.matmul`` peak this run measures on the device at the
  model's shapes (``mfu.matmul_peak``).
* With 2+ GPUs: leantune LoRA over 2 processes (DDP) and full fine-tuning with FSDP2.

    PYTHONPATH=src python3 benchmarks/gpu_bench.py --out $OUT/gpu_check.json        # on the GPU machine
    .venv/bin/python benchmarks/gpu_bench.py --device cpu --tiny --out /tmp/gpu_check.json   # dry run

LoRA rows run first (both settings), then full fine-tuning, QLoRA and the multi-GPU rows, so
a deadline cuts the least wanted. Rows whose packages are missing (trl, bitsandbytes,
liger_kernel) are skipped with the reason; the JSON is rewritten after every row, so a run
cut short still leaves its results.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from gpu_setup import LLAMA_1B, SEED, TINY, build_model, flops_per_token, write_messages  # noqa: E402
from mfu import matmul_peak, model_shapes  # noqa: E402

LORA = {"r": 16, "alpha": 32, "targets": "all-linear", "dropout": 0.0}
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}

# row -> (side, method, processes, distributed strategy or None, the TRL row it is compared with)
ROWS = {
    "lt-lora": ("leantune", "lora", 1, None, "trl-lora"),
    "trl-lora": ("trl", "lora", 1, None, None),
    "trl-lora-liger": ("trl-liger", "lora", 1, None, "trl-lora"),
    "lt-full": ("leantune", "full", 1, None, "trl-full"),
    "trl-full": ("trl", "full", 1, None, None),
    "lt-qlora": ("leantune", "qlora", 1, None, "trl-qlora"),
    "trl-qlora": ("trl", "qlora", 1, None, None),
    "lt-lora-ddp2": ("leantune", "lora", 2, "ddp", "trl-lora"),
    "lt-full-fsdp2": ("leantune", "full", 2, "fsdp", "trl-full"),
}
# the order rows run in, group by group, each group at every setting: a deadline cuts the last groups
GROUPS = (("lt-lora", "trl-lora", "trl-lora-liger"), ("lt-full", "trl-full"), ("lt-qlora", "trl-qlora"),
          ("lt-lora-ddp2", "lt-full-fsdp2"))
# setting -> (gradient checkpointing, length-grouped batches, description): the same on both sides
SETTINGS = {
    "equal-A": (False, True, "no gradient checkpointing, length-grouped batches"),
    "equal-B": (True, False, "gradient checkpointing, random batches"),
}


def plan(rows: list[str], settings: list[str]) -> list[tuple[str, str]]:
    """(setting, row) in running order."""
    return [(s, r) for group in GROUPS for s in settings for r in group if r in rows]


def missing(row: str, device: str, gpus: int) -> str | None:
    """Why a row cannot run here, or None."""
    side, method, nproc, strategy, _ = ROWS[row]
    if side.startswith("trl") and importlib.util.find_spec("trl") is None:
        return "trl is not installed (carry its wheel: gpu_check.sh --fetch-wheels)"
    if side == "trl-liger" and device != "cuda":
        return "Liger's kernels are Triton GPU kernels"
    if side == "trl-liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed (carry its wheel: gpu_check.sh --fetch-wheels)"
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (carry its wheel: gpu_check.sh --fetch-wheels)"
    if nproc > 1 and device == "cuda" and gpus < nproc:
        return f"needs {nproc} GPUs, this machine has {gpus}"
    if strategy == "fsdp" and device != "cuda":
        return "FSDP runs on GPUs only"
    return None


def run_leantune(setting: str, row: str, a, work: Path, timeout: float) -> dict:
    _, method, nproc, strategy, _ = ROWS[row]
    checkpointing, grouped, _ = SETTINGS[setting]
    spec = {"name": method, **(LORA if method in ("lora", "qlora") else {})}
    train = {"max_steps": a.steps, "batch_size": a.batch // nproc, "max_length": a.max_length, "lr": LR[method],
             "seed": SEED, "device": a.device, "precision": a.precision, "logging_steps": 1,
             "gradient_checkpointing": checkpointing, "group_by_length": grouped}
    if strategy:
        train["distributed"] = {"strategy": strategy}
    name = f"{setting}-{row}"
    recipe = {"model": str(work / "model"), "method": [spec], "stage": "sft",
              "data": {"train": str(work / "data.jsonl"), "format": "messages", "eval_split": 0.0},
              "train": train, "eval": {"before": False}, "output": {"dir": str(work / "runs"), "name": name}}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    env = {**os.environ, **QUIET_ENV, "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "leantune", "train", str(path), "--nproc", str(nproc)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    summary_path = work / "runs" / name / "summary.json"
    if done.returncode != 0 or not summary_path.is_file():
        return {"error": f"exit status {done.returncode}", "output_tail": (done.stdout + done.stderr)[-3000:]}
    s = json.loads(summary_path.read_text())
    meta = json.loads((work / "runs" / name / "run.json").read_text())
    losses = [h["loss"] for h in s["history"] if "loss" in h]
    return {"steps": s["steps"], "tokens_per_s": s["tokens_per_s"], "peak_memory_mb": s["peak_memory_mb"],
            "memory_kind": s["memory_kind"], "estimate_mb": s["estimate_mb"],
            "estimate_setting": (s.get("estimate") or {}).get("setting"), "precision": meta["precision"],
            "strategy": meta["strategy"], "processes": meta["processes"], "effective_batch": meta["effective_batch"],
            "trainable_params": s["trainable_params"], "train_wall_s": s["wall_time_s"],
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def trl_options(config_class, checkpointing: bool, grouped: bool, liger: bool) -> dict:
    """The setting in the installed transformers' words (``train_sampling_strategy`` from 5.0,
    ``group_by_length`` before)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    options = {"gradient_checkpointing": checkpointing}
    if "train_sampling_strategy" in names:
        options["train_sampling_strategy"] = "group_by_length" if grouped else "random"
    else:
        options["group_by_length"] = grouped
    if liger:
        options["use_liger_kernel"] = True
    return options


def worker_trl(row: str, a) -> dict:
    """TRL's SFTTrainer (+ PEFT) on the same model folder, data and settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from leantune.methods.registry import build_method

    side, method = ROWS[row][:2]
    checkpointing, grouped, _ = SETTINGS[a.setting]
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
        options = trl_options(SFTConfig, checkpointing, grouped, side == "trl-liger")
        args = SFTConfig(output_dir=out, use_cpu=not cuda, bf16=a.precision == "bf16", fp16=False,
                         per_device_train_batch_size=a.batch, max_length=a.max_length, learning_rate=LR[method],
                         max_steps=a.steps, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
                         disable_tqdm=True, **options)
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
            "precision": a.precision, "processes": 1, "effective_batch": a.batch, "trl_options": options,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def trl_estimate(model_dir: Path, lt_setting: dict | None) -> float | None:
    """leantune's estimate for the paired leantune row's setting with full logits (HF-style loss)."""
    if not lt_setting:
        return None
    from leantune.guide.model_shape import load_shape
    from leantune.guide.peak_memory import Setting, estimate

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


def measured_peak(work: Path, a) -> dict:
    """The matmul peak of the device in the run's precision at the model's linear shapes."""
    shapes = model_shapes(work / "model" / "config.json", LORA["r"])
    tokens = [a.batch * a.max_length // 4, a.batch * a.max_length]
    result = matmul_peak(shapes, tokens, seconds=0.2 if a.tiny else 1.0, device=a.device, precisions=(a.precision,))
    if a.device == "cuda":
        import torch

        torch.cuda.empty_cache()
    return result


def table(results: dict) -> str:
    headers = ["setting/row", "processes", "tokens/s", "vs TRL", "MFU", "peak MB", "vs TRL", "estimate MB",
               "est/peak", "loss first→last", "status"]
    lines = []
    for key, r in results.items():
        if "tokens_per_s" not in r:
            lines.append([key, "", "", "", "", "", "", "", "", "", r.get("skipped") or r.get("error", "")])
            continue
        setting, name = key.split("/")
        ref = results.get(f"{setting}/{ROWS[name][4]}", {})
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if "tokens_per_s" in ref else ""
        mem = f"{r['peak_memory_mb'] / ref['peak_memory_mb']:.2f}x" if "peak_memory_mb" in ref else ""
        est = r.get("estimate_mb")
        lines.append([key, str(r["processes"]), f"{r['tokens_per_s']:,.0f}", speed, f"{100 * r['mfu']:.0f}%",
                      f"{r['peak_memory_mb']:,.0f}", mem, "" if est is None else f"{est:,.0f}",
                      "" if est is None else f"{est / r['peak_memory_mb']:.2f}",
                      f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" if r["loss_last"] is not None else "", "ok"])
    return format_table(headers, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model of hidden 64 (dry run of the logic on CPU)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--steps", type=int, help="optimizer steps per row (default 30; --tiny 3)")
    ap.add_argument("--batch", type=int, default=8, help="global batch (default 8)")
    ap.add_argument("--max-length", type=int, default=512, help="train.max_length (default 512)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--deadline", type=float, default=300, help="start no row after this many seconds")
    ap.add_argument("--row-timeout", type=float, default=150, help="seconds per row before it is abandoned")
    ap.add_argument("--out", action="append", help="results JSON path (repeatable; unwritable ones are skipped)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.steps = a.steps or (3 if a.tiny else 30)

    if a.worker:
        emit(worker_trl(a.worker, a))
        return
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    if unknown := [r for r in rows if r not in ROWS] + [s for s in settings if s not in SETTINGS]:
        ap.error(f"unknown rows or settings {unknown}; rows: {', '.join(ROWS)}; settings: {', '.join(SETTINGS)}")
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
        per_token = flops_per_token(work, a.max_length, LORA["r"])
        peak = measured_peak(work, a)
        peak_flops = peak[a.precision]["peak_gflops"] * 1e9
        payload["conditions"] = {
            "model": {"shape": "tiny" if a.tiny else "Llama-3.2-1B", **model, "weights": "random, bf16, tied"},
            "data": f"builtin:demo/shell_help_train.jsonl as messages ({examples} examples), loss on responses",
            "batch": a.batch, "max_length": a.max_length, "steps": a.steps, "precision": a.precision,
            "lora": LORA, "lr": LR, "seed": SEED, "device": a.device,
            "settings": {s: SETTINGS[s][2] for s in settings},
            "tokens_per_s": "non-pad tokens of all ranks / the training loop's wall time, first step included",
            "peak_memory": "torch.cuda.max_memory_allocated of the (rank 0) process on GPU; peak RSS on CPU",
            "estimate": "leantune rows: summary.json estimate_mb (leantune estimate on the recipe and data); "
                        "TRL rows: the same setting with full logits (Setting.loss='full')",
            "mfu": "tokens/s × model FLOPs per real token (mfu.step_flops over the data: LM head at response "
                   "positions, recomputation not counted) / the measured matmul peak",
            "model_flops_per_token": per_token, "matmul_peak": peak,
        }
        print(f"# model built in {model['build_s']} s: {model['params']:,} parameters; matmul peak "
              f"{peak[a.precision]['peak_gflops']:,.0f} GFLOP/s ({a.precision})", flush=True)
        gpus = payload["machine"]["gpus"]
        for setting, row in plan(rows, settings):
            key = f"{setting}/{row}"
            left = a.deadline - (time.perf_counter() - t_all)
            reason = missing(row, a.device, gpus) or (None if left > 20 else "deadline reached")
            if reason:
                payload["results"][key] = {"skipped": reason}
                print(f"## {key}: skipped ({reason})", flush=True)
                save()
                continue
            print(f"## {key}", flush=True)
            t0 = time.perf_counter()
            timeout = min(a.row_timeout, left)
            try:
                if ROWS[row][0] == "leantune":
                    result = run_leantune(setting, row, a, work, timeout)
                else:
                    result = run_worker(Path(__file__), ["--worker", row, "--setting", setting, "--work", str(work),
                                                         "--device", a.device, "--steps", str(a.steps),
                                                         "--batch", str(a.batch), "--max-length", str(a.max_length),
                                                         "--precision", a.precision], timeout)
            except subprocess.TimeoutExpired:
                result = {"error": f"timed out after {timeout:.0f} s"}
            if "tokens_per_s" in result:
                method = "full" if ROWS[row][1] == "full" else "lora"
                result["mfu"] = result["tokens_per_s"] * per_token[method] / peak_flops
            if ROWS[row][0] == "trl" and "error" not in result:
                paired = next((payload["results"].get(f"{setting}/{n}", {}) for n, spec in ROWS.items()
                               if spec[4] == row and spec[0] == "leantune"), {})
                result["estimate_mb"] = trl_estimate(work / "model", paired.get("estimate_setting"))
            result["row_wall_s"] = round(time.perf_counter() - t0, 1)
            payload["results"][key] = result
            print(f"  {result.get('error') or 'ok'} in {result['row_wall_s']} s"
                  + (f"\n{result.get('output_tail') or result.get('stderr_tail')}" if "error" in result else ""),
                  flush=True)
            save()
    save()
    print(f"\n{payload['table']}\n\nwrote {', '.join(map(str, outs))} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
