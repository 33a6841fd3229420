"""Length-grouped batches against random batches: accuracy, padding, tokens/s.

Three batch plans (``leantune.training.engine.batch_plan``):

- random: ``train.group_by_length: false``;
- old grouping: mega-batches of 50 batches sorted by length (the plan before issue #19, as
  HF ``group_by_length``), reproduced here as :func:`old_plan` and put in the engine's place;
- new grouping (the default for sft and pt; for the classification stages measured here,
  whose default is random batches, ``group_by_length: true``): windows of
  ``min(4, n_batches // 4)`` batches sorted by length.

Padding (no training): the fraction of padded positions (batch max length × batch size
against real tokens) over 15 epochs × seeds 0, 1, 2 of each plan, on the real token lengths
of the demo SFT data (``builtin:demo/shell_help_train.jsonl``, SmolLM2 template, ≤ 160
tokens, batch 8) and of the training sets below; for those, also the mean number of distinct
labels per batch and how many pairs of examples batched together in one epoch are batched
together again in the next ("repeated pairs").

Accuracy (training through ``leantune.pipeline.train``, fp32, full fine-tuning of
all-MiniLM-L6-v2 with a new head, batch 8, linear decay, 10% warm-up), seeds 0, 1, 2 (the
seed draws the training posts, initialises the head and orders the batches; every plan sees
the same draw and head per seed):

- classification: 8 newsgroups of 20 Newsgroups (the classes ``benchmarks/advise_20ng.py``
  uses), 8 training posts per class (64), 25 test posts per class (200, fixed), ≤ 128 tokens,
  10 epochs (80 steps), lr 1e-4;
- few-shot: the ``cls-full`` row of ``benchmarks/fewshot.py`` (4 newsgroups, posts cut to 48
  words, 100 test posts) at K = 32 (128 posts, 16 batches per epoch: the new plan sorts
  windows of 4 batches), 80 steps, lr 5e-5. At K = 8 there are 4 batches per epoch, where
  the new plan is random batching.

The runs of one setting share one process, seeds in turn and the three plans in turn per
seed, so that load drift on a shared machine touches the plans alike; each finished run is
also appended to ``--partial``. Sizing (CPU time at 1 thread, from benchmarks/fewshot.py): a
MiniLM full step ~0.5 s at ~55 tokens, so ~1 s at ≤ 128 tokens: 18 runs, 264 steps per seed,
about 15 CPU-minutes. On a 2-core machine at a load average of 11-15 one classification run
took 10-14 minutes of wall time.

    nohup env OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/batching.py > /tmp/batching.log 2>&1 &
    .venv/bin/python benchmarks/batching.py --quick --out /tmp/batching.json   # 1 seed, a few steps

Writes ``benchmarks/results/batching.json`` (or ``--out``) and prints the markdown tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, format_table, machine_facts, peak_rss_mb, run_worker, write_results  # noqa: E402
from fewshot import LABELS as FEW_LABELS  # noqa: E402
from fewshot import raw_recipe as fewshot_recipe  # noqa: E402
from fewshot import write_data as fewshot_data  # noqa: E402

ENCODER, SFT_MODEL, DATA_SEED, BATCH = "minilm-l6", "smollm2-135m", 0, 8
PLANS = {"random": "random batches", "old": "grouped, mega-batches of 50 (old default)",
         "new": "grouped, windows of ≤ 4 batches (new default)"}
FULL = {"seeds": [0, 1, 2], "news_epochs": 6, "news_test_per_class": 25, "few_steps": 40, "shots": 32,
        "few_test_per_class": 25, "pad_epochs": 15}
QUICK = {"seeds": [0], "news_epochs": 1, "news_test_per_class": 2, "few_steps": 4, "shots": 32,
         "few_test_per_class": 2, "pad_epochs": 2}
NEWS_CLASSES, NEWS_SHOTS, NEWS_MAX_LENGTH, NEWS_LR, FEW_LR = 8, 8, 128, 2e-4, 1e-4
SETTINGS = ("classification", "few-shot")


def old_plan(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """``batch_plan`` as it was before issue #19: mega-batches of 50 batches sorted by length."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if group_by_length:
        mega = batch_size * 50
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s: s + mega], key=lambda j: -lengths[j])]
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def plan_for(name: str):
    from leantune.training.engine import batch_plan

    if name == "old":
        return old_plan
    return lambda lengths, size, seed, epoch, _: batch_plan(lengths, size, seed, epoch, name == "new")


# --------------------------------------------------------------------------- data (driver)

def write_news(folder: Path, test_per_class: int) -> dict:
    """The 8-class pool (every training post of the classes) and the fixed test set."""
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl

    train = newsgroups("train")
    labels = sorted(random.Random(DATA_SEED).sample(sorted({r["label"] for r in train}), NEWS_CLASSES))
    pool = [r for r in train if r["label"] in labels]
    test = sample_per_class([r for r in newsgroups("test") if r["label"] in labels], test_per_class, DATA_SEED)
    return {"labels": labels, "train": str(write_jsonl(pool, folder / "news_train.jsonl")),
            "test": str(write_jsonl(test, folder / "news_test.jsonl")), "test_posts": len(test)}


def news_recipe(data: dict, seed: int, epochs: int, out_dir: str, plan: str) -> dict:
    return {"model": ENCODER, "method": "full", "stage": {"name": "cls", "labels": data["labels"]},
            "data": {"train": data["train"], "eval": data["test"], "format": "classification", "shots": NEWS_SHOTS},
            "train": {"epochs": epochs, "batch_size": BATCH, "lr": NEWS_LR, "scheduler": "linear",
                      "warmup_ratio": 0.1, "max_length": NEWS_MAX_LENGTH, "seed": seed, "precision": "fp32",
                      "logging_steps": 10, "group_by_length": plan != "random"},
            "eval": {"batch_size": 32, "before": False},
            "output": {"dir": out_dir, "name": f"news-{plan}-s{seed}", "overwrite": True}}


def few_recipe(data: dict, seed: int, size: dict, out_dir: str, plan: str) -> dict:
    raw = fewshot_recipe("cls-full", size["shots"], seed, {"cls": size["few_steps"]}, data, out_dir)
    raw["train"].update(group_by_length=plan != "random", lr=FEW_LR)
    raw["output"]["name"] = f"few-{plan}-s{seed}"
    return raw


def recipe_for(setting: str, data: dict, seed: int, size: dict, out_dir: str, plan: str) -> dict:
    if setting == "classification":
        return news_recipe(data, seed, size["news_epochs"], out_dir, plan)
    return few_recipe(data, seed, size, out_dir, plan)


# --------------------------------------------------------------------------- padding (no training)

def train_features(raw: dict) -> list[dict]:
    """The training features ``pipeline.train`` would build for this recipe."""
    from leantune.data.loading import load_data
    from leantune.models.loading import load_tokenizer, resolve_model_path
    from leantune.recipe import load_recipe
    from leantune.stages.registry import build_stage

    recipe = load_recipe(raw=raw)
    stage = build_stage(recipe.stage)
    stage.head_name = "causal_lm" if raw["stage"] == "sft" else "cls"
    train, evals = load_data(recipe, stage, None, lambda _: None)
    return stage.prepare(recipe, load_tokenizer(resolve_model_path(raw["model"])), train, evals).train


def plan_stats(lengths: list[int], labels: list | None, seeds: list[int], epochs: int) -> dict:
    """Per plan: padding fraction, and with labels, distinct labels per batch and repeated pairs."""
    out = {}
    for name in PLANS:
        plan = plan_for(name)
        real = padded = 0
        distinct, repeated = [], []
        for seed in seeds:
            before = None
            for epoch in range(epochs):
                batches = plan(lengths, BATCH, seed, epoch, True)
                real += sum(lengths[i] for b in batches for i in b)
                padded += sum(max(lengths[i] for i in b) * len(b) for b in batches)
                distinct += [len({labels[i] for i in b}) for b in batches] if labels else []
                pairs = {frozenset(p) for b in batches for p in combinations(b, 2)}
                if before is not None:
                    repeated.append(len(pairs & before) / len(pairs))
                before = pairs
        out[name] = {"padding": 1 - real / padded, "padded_per_real_token": padded / real,
                     "repeated_pairs": float(np.mean(repeated)) if repeated else None}
        if labels:
            out[name]["distinct_labels_per_batch"] = float(np.mean(distinct))
    return out


def padding_part(news: dict, few: dict, size: dict, folder: Path) -> dict:
    sets = {"demo SFT (380 pairs, SmolLM2, ≤ 160 tokens)": (
        {"model": SFT_MODEL, "method": "full", "stage": "sft", "train": {"max_length": 160},
         "data": {"train": "builtin:demo/shell_help_train.jsonl", "eval": "builtin:demo/shell_help_eval.jsonl",
                  "format": "alpaca"}}, None)}
    for seed in size["seeds"]:
        sets[f"classification, seed {seed} (64 posts, ≤ 128 tokens)"] = (news_recipe(
            news, seed, 1, str(folder), "new"), "labels")
        sets[f"classification, seed {seed}, ≤ 512 tokens"] = (
            {**news_recipe(news, seed, 1, str(folder), "new"),
             "train": {"max_length": 512, "seed": seed}}, "labels")
        sets[f"few-shot K={size['shots']}, seed {seed} (≤ 128 tokens)"] = (few_recipe(
            few, seed, size, str(folder), "new"), "labels")
    out = {}
    for name, (raw, label_key) in sets.items():
        feats = train_features(raw)
        lengths = [len(f["input_ids"]) for f in feats]
        labels = [int(f[label_key]) for f in feats] if label_key else None
        out[name] = {"examples": len(lengths), "batches_per_epoch": math.ceil(len(lengths) / BATCH),
                     "plans": plan_stats(lengths, labels, size["seeds"], size["pad_epochs"])}
        print(f"  padding {name}: " + ", ".join(f"{p} {s['padding']:.3f}" for p, s in out[name]["plans"].items()),
              flush=True)
    return out


# --------------------------------------------------------------------------- training (worker)

def worker(size: dict, data: dict, partial: str) -> dict:
    """Every run, seed by seed, each seed's settings and plans in turn; each run also appended to ``partial``."""
    import torch

    import leantune.training.engine as engine
    from leantune.pipeline import train
    from leantune.recipe import load_recipe

    current = engine.batch_plan
    runs = []
    with tempfile.TemporaryDirectory(prefix="batching_") as out_dir:
        for seed, setting, plan in ((s, t, p) for s in size["seeds"] for t in SETTINGS for p in PLANS):
            engine.batch_plan = old_plan if plan == "old" else current
            raw = recipe_for(setting, data[setting], seed, size, out_dir, plan)
            t0 = time.perf_counter()
            try:
                s = train(load_recipe(raw=raw), progress=False)
            except Exception as exc:  # recorded; the other runs go on
                runs.append({"setting": setting, "plan": plan, "seed": seed, "status": "error",
                             "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]})
                continue
            after = s.eval_after or {}
            runs.append({"setting": setting, "plan": plan, "seed": seed, "status": "ok",
                         "accuracy": after.get("accuracy"), "macro_f1": after.get("macro_f1"),
                         "tokens_per_s": s.tokens_per_s,
                         "train_wall_s": s.wall_time_s, "wall_s": time.perf_counter() - t0, "steps": s.steps,
                         "train_examples": s.train_examples, "eval_examples": s.eval_examples})
            print(f"    {setting} {plan} seed={seed}: accuracy {runs[-1]['accuracy']:.3f}, "
                  f"{s.tokens_per_s:.0f} tok/s, {runs[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
            with open(partial, "a") as fh:
                fh.write(json.dumps(runs[-1]) + "\n")
    engine.batch_plan = current
    return {"threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(), "runs": runs}


# --------------------------------------------------------------------------- tables

def summarize(runs: list[dict]) -> dict:
    from leantune.workflows.learning_curve import summarize as mean_std

    ok = [r for r in runs if r.get("status") == "ok"]
    out = {}
    for plan in PLANS:
        runs = [r for r in ok if r["plan"] == plan]
        out[plan] = {m: mean_std([r[m] for r in runs]) for m in ("accuracy", "macro_f1", "tokens_per_s")}
        base = {r["seed"]: r for r in ok if r["plan"] == "random"}
        out[plan]["accuracy_minus_random"] = mean_std([r["accuracy"] - base[r["seed"]]["accuracy"]
                                                       for r in runs if r["seed"] in base])
    return out


def _pm(s: dict, fmt: str) -> str:
    return "-" if not s["n"] else format(s["mean"], fmt) + ("" if s["n"] == 1 else " ± " + format(s["std"], fmt))


def tables(training: dict, padding: dict) -> str:
    rows = []
    for setting, summary in training.items():
        for plan, label in PLANS.items():
            s = summary[plan]
            rows.append([setting, label, _pm(s["accuracy"], ".3f"), _pm(s["accuracy_minus_random"], "+.3f"),
                         _pm(s["macro_f1"], ".3f"), _pm(s["tokens_per_s"], ".0f")])
    acc = format_table(["setting", "plan", "accuracy", "Δ vs random (paired)", "macro-F1", "train tokens/s"], rows)
    prow = []
    for name, p in padding.items():
        cells = [name]
        for plan in PLANS:
            st = p["plans"][plan]
            extra = ("" if st.get("distinct_labels_per_batch") is None else
                     f", {st['distinct_labels_per_batch']:.2f} labels, {st['repeated_pairs']:.0%} rep.")
            cells.append(f"{st['padding']:.1%}{extra}")
        prow.append(cells)
    pad = format_table(["training set", *PLANS.values()], prow)
    return acc + "\n\n" + pad


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, a few steps, a few test posts")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds of training before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "batching.json"), help="JSON file to write")
    ap.add_argument("--partial", default="/tmp/batching_runs.jsonl", help="each finished run, one JSON line")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(a.spec)
        emit(worker(spec["size"], spec["data"], spec["partial"]))
        return

    size = QUICK if a.quick else FULL
    facts = machine_facts()
    print(f"# batching benchmark on {facts['cpu_model']} ({facts['usable_cpus']} CPUs), load average "
          f"{facts['load_average_at_start']}", flush=True)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="batching_data_") as tmp:
        folder = Path(tmp)
        news = write_news(folder, size["news_test_per_class"])
        few = fewshot_data(folder / "few", size["few_test_per_class"])
        padding = padding_part(news, few, size, folder / "runs")
        t0 = time.perf_counter()
        spec = json.dumps({"size": size, "data": {"classification": news, "few-shot": few}, "partial": a.partial})
        Path(a.partial).unlink(missing_ok=True)
        try:
            result = run_worker(Path(__file__), ["--worker", "--spec", spec], timeout=a.timeout)
        except Exception as exc:  # subprocess.TimeoutExpired
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["process_wall_s"] = round(time.perf_counter() - t0, 1)
        if "error" in result:
            print(f"  training: {result['error']}\n{result.get('stderr_tail', '')}", flush=True)
        for x in result.get("runs", []):
            if x.get("status") != "ok":
                print(f"    {x['setting']} {x['plan']} seed={x['seed']}: {x['message']}\n{x['traceback']}", flush=True)
        training = {t: summarize([r for r in result.get("runs", []) if r["setting"] == t]) for t in SETTINGS}
        print(f"  training done in {result['process_wall_s']:.0f} s", flush=True)

    command = "OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/batching.py" + "".join(
        " " + x for x in sys.argv[1:])
    markdown = (f"Measured with `{command}` on {facts['cpu_model']} (1 thread, torch "
                f"{facts['versions'].get('torch')}, {facts['date_utc'][:10]}, a shared machine); mean ± std over "
                f"seeds {size['seeds']}; Δ paired seed by seed.\n\n" + tables(training, padding)
                + "\n\nPadding: padded positions / all positions over "
                f"{size['pad_epochs']} epochs × seeds; labels: distinct labels per batch of {BATCH}; rep.: pairs "
                "batched together again in the next epoch.")
    print("\n" + markdown + "\n", flush=True)
    payload = {
        "benchmark": "batching", "command": command,
        "conditions": {
            "plans": PLANS, "batch_size": BATCH, "seeds": size["seeds"],
            "classification": {"model": ENCODER, "method": "full", "classes": news["labels"],
                               "train_posts_per_class": NEWS_SHOTS, "test_posts": news["test_posts"],
                               "max_length": NEWS_MAX_LENGTH, "epochs": size["news_epochs"], "lr": NEWS_LR,
                               "scheduler": "linear, 10% warm-up", "precision": "fp32"},
            "few_shot": {"row": "benchmarks/fewshot.py cls-full", "classes": FEW_LABELS, "shots": size["shots"],
                         "steps": size["few_steps"], "lr": FEW_LR, "test_posts": few["test_posts"]},
            "padding": f"{size['pad_epochs']} epochs per seed, no training",
        },
        "machine": facts, "total_wall_s": round(time.perf_counter() - t_all, 1),
        "markdown": markdown, "padding": padding, "summary": training, "training": result,
    }
    out = write_results(Path(a.out), payload)
    print(f"wrote {out} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
