"""Evaluation speed: leantune's classification evaluation against HF ``Trainer.predict``, and a
PET evaluation of 2,189 news posts.

Data: the 20 Newsgroups test posts (``leantune.data.builtin.newsgroups``) of the 8 classes
that ``benchmarks/advise_20ng.py`` draws (seed 0): 2,189 posts, or the first ``--posts``.
Model: all-MiniLM-L6-v2 (``minilm-l6``), one thread; classification posts cut to
``--max-length`` tokens (128, as in the classification rows of ``benchmarks/fewshot.py``),
PET prompts to ``--pet-max-length`` (64, ``benchmarks/advise_20ng.py``'s default, the
issue's 8-class PET run).

- **Classification**: sequence classification (a fresh 8-way head; speed only, the same
  weights on both sides). leantune's ``evaluation.classification.predict`` (length-sorted
  batches, inference mode) against ``transformers.Trainer.predict`` (its default collator
  pads each batch), both on the same tokenized posts (fp32 weights). Each side at its defaults:
  evaluation batch 8 for both (``eval.batch_size``, ``per_device_eval_batch_size``); leantune
  evaluates in the run's precision, ``train.precision: auto`` = bf16 autocast on a CPU with
  native bf16, fp32 elsewhere; ``TrainingArguments`` default to fp32. Then at equal settings:
  fp32 at batch 8 and at an equal larger one, and, on a CPU with native bf16, bf16 autocast at
  batch 8 (``TrainingArguments(bf16=True)``). Tokenization is outside the timing on both sides;
  the share of equal predictions is reported for each pair (1.0 expected at equal precision).
- **PET**: ``stage: pet`` on MiniLM as a masked LM (its MLM head is freshly initialised: a
  speed figure, not an accuracy one), template ``{text} Topic: {mask}.``, one word per label,
  evaluation batch 8. Rows: this code with the evaluation allocator setting (what evaluation
  gets after training now), with glibc's own dynamic threshold (a fresh process: evaluation
  before training), with the training setting (1 MiB mmap
  threshold, what evaluation after training got before), and with ``--old-src`` the code of
  another checkout (e.g. the previous commit, ``git archive HEAD src | tar -x -C /tmp/old``)
  under the training setting: the issue's situation.

Every row runs in its own process (``python benchmarks/eval_speed.py``; pin it:
``OMP_NUM_THREADS=1 taskset -c 1``). Targets (issue #19): >= 2x ``Trainer.predict``
examples/s; PET evaluation of 2,189 posts under 2 minutes on one core. Each classification row
runs ``--repeats`` times, round-robin with the others, and reports its median run.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, format_table, machine_facts, run_worker, write_results  # noqa: E402

MODEL, SEED, N_CLASSES, ALL_POSTS = "minilm-l6", 0, 8, 2189
TEMPLATE = "{text} Topic: {mask}."


def posts(limit: int | None) -> tuple[list[str], list[dict]]:
    """The 8 classes of benchmarks/advise_20ng.py and their test posts (first ``limit``)."""
    from leantune.data.builtin import newsgroups

    train_labels = sorted({r["label"] for r in newsgroups("train")})
    labels = sorted(random.Random(SEED).sample(train_labels, N_CLASSES))
    test = [r for r in newsgroups("test") if r["label"] in labels]
    return labels, test[:limit] if limit else test


def _clock():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_stime, r.ru_minflt


def _since(start) -> dict:
    t, s, f = _clock()
    return {"wall_s": t - start[0], "sys_s": s - start[1], "minor_faults": f - start[2]}


def _allocator(setting: str) -> None:
    if setting == "training":  # the 1 MiB mmap threshold of train.cpu_heap: release
        from leantune.training.allocator import training_setting
        training_setting()
    elif setting == "evaluation":
        from leantune.training.allocator import evaluation_setting
        evaluation_setting()


def worker_cls(side: str, batch: int, limit: int | None, max_length: int, alloc: str, precision: str) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from leantune.data.collate import pad_batch
    from leantune.evaluation.classification import predict
    from leantune.models.loading import resolve_model_path
    from leantune.training.device import autocast_context

    torch.set_num_threads(1)
    labels, rows = posts(limit)
    path = resolve_model_path(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok([r["text"] for r in rows], truncation=True, max_length=max_length)
    index = {lab: i for i, lab in enumerate(labels)}
    feats = [{"input_ids": ids, "attention_mask": m, "labels": index[r["label"]]}
             for ids, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)]
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels)).eval()
    _allocator(alloc)
    if side == "leantune":  # under the run's precision, as the pipeline evaluates (auto: bf16 on AMX CPUs)
        collate = lambda fs: pad_batch(fs, tok.pad_token_id)  # noqa: E731
        with autocast_context(precision, torch.device("cpu"))[0]:
            predict(model, feats[:batch], batch, collate)  # warm-up
            start = _clock()
            preds, _, _ = predict(model, feats, batch, collate)
    else:  # TrainingArguments' defaults are fp32; bf16=True: its mixed precision (autocast), as in training
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_eval_batch_size=batch, report_to=[],
                                 use_cpu=True, disable_tqdm=True, bf16=precision == "bf16")
        trainer = Trainer(model=model, args=args, processing_class=tok)
        trainer.predict(feats[:batch])  # warm-up
        start = _clock()
        preds = trainer.predict(feats).predictions.argmax(-1).tolist()
    out = _since(start)
    padded = sum(max(len(f["input_ids"]) for f in feats[s:s + batch]) for s in range(0, len(feats), batch))
    return {**out, "examples": len(feats), "examples_per_s": len(feats) / out["wall_s"], "preds": preds,
            "tokens": sum(len(f["input_ids"]) for f in feats), "padded_tokens_in_input_order": padded}


def worker_pet(limit: int | None, max_length: int, alloc: str) -> dict:
    import torch

    from leantune.models.loading import load_model, load_tokenizer, resolve_model_path
    from leantune.recipe import load_recipe
    from leantune.stages.registry import build_stage

    torch.set_num_threads(1)
    labels, rows = posts(limit)
    words = {lab: lab.split(".")[-1] for lab in labels}  # e.g. comp.graphics -> graphics
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        recipe = load_recipe(raw={"model": MODEL, "stage": {"name": "pet", "templates": [TEMPLATE], "labels": labels,
                                                            "verbalizer": words, "scoring": "first"},
                                  "data": {"train": str(data), "eval": str(data), "format": "classification"},
                                  "train": {"max_length": max_length, "precision": "fp32"},
                                  "output": {"dir": tmp, "name": "run"}})
        stage = build_stage(recipe.stage)
        stage.head_name = "masked_lm"
        path = resolve_model_path(MODEL)
        tok = load_tokenizer(path)
        prepared = stage.prepare(recipe, tok, rows[:8], rows)
        model = load_model(path, "masked_lm", "float32")
        _allocator(alloc)
        stage.evaluate(model, prepared.eval[:8], 8)  # warm-up
        start = _clock()
        metrics = stage.evaluate(model, prepared.eval, 8)
    out = _since(start)
    return {**out, "examples": len(rows), "examples_per_s": len(rows) / out["wall_s"], "metrics": metrics,
            "words": words, "leantune_path": str(Path(sys.modules["leantune"].__file__).parent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=0, help="classification: first N test posts (0: all 2,189)")
    ap.add_argument("--max-length", type=int, default=128, help="classification: tokens per post")
    ap.add_argument("--pet-posts", type=int, default=0, help="PET: first N test posts (0: all 2,189)")
    ap.add_argument("--pet-max-length", type=int, default=64, help="PET: tokens per prompt (advise_20ng's 64)")
    ap.add_argument("--large-batch", type=int, default=32, help="the equal larger batch size of both sides")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each classification row (the median is kept)")
    ap.add_argument("--old-src", help="src/ of another checkout: its PET evaluation as the 'before' row")
    ap.add_argument("--out", default=str(RESULTS / "eval_speed.json"))
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(a.spec)
        emit(worker_cls(spec["side"], spec["batch"], a.posts or None, a.max_length, spec["alloc"], spec["precision"])
             if a.worker == "cls"
             else worker_pet(a.pet_posts or None, a.pet_max_length, spec["alloc"]))
        return
    common = ["--posts", str(a.posts), "--max-length", str(a.max_length), "--pet-posts", str(a.pet_posts),
              "--pet-max-length", str(a.pet_max_length)]

    def cls_pair(batch: int, precision: str, leantune_precision: str | None = None) -> list:
        return [("cls", "Trainer.predict", {"side": "trainer", "batch": batch, "alloc": "default",
                                            "precision": precision}, None),
                ("cls", "leantune predict", {"side": "leantune", "batch": batch, "alloc": "evaluation",
                                             "precision": leantune_precision or precision}, None)]

    # defaults: Trainer fp32, leantune precision auto (bf16 where the CPU has native bf16); then equal settings
    plan = [*cls_pair(8, "fp32", "auto"), *cls_pair(8, "fp32")[1:], *cls_pair(a.large_batch, "fp32"),
            *(cls_pair(8, "bf16") if machine_facts()["native_bf16"] else []),
            ("pet", "PET evaluate, this code", {"alloc": "evaluation"}, None),
            ("pet", "PET evaluate, this code", {"alloc": "default"}, None),
            ("pet", "PET evaluate, this code", {"alloc": "training"}, None)]
    if a.old_src:
        plan.append(("pet", "PET evaluate, --old-src", {"alloc": "training"}, a.old_src))
    runs: dict[int, list[dict]] = {i: [] for i in range(len(plan))}
    for round_ in range(a.repeats):  # classification rows round-robin (the other vCPU's load drifts); PET once
        for i, (kind, name, spec, src) in enumerate(plan):
            if kind == "pet" and round_:
                continue
            env = {"OMP_NUM_THREADS": "1", **({"PYTHONPATH": src} if src else {})}
            print(f"{name} {spec} (round {round_ + 1}) …", file=sys.stderr, flush=True)
            runs[i].append(run_worker(Path(__file__), ["--worker", kind, "--spec", json.dumps(spec), *common],
                                      a.timeout, env=env))
    rows = []
    for i, (kind, name, spec, src) in enumerate(plan):
        done = sorted((r for r in runs[i] if "error" not in r), key=lambda r: r["examples_per_s"])
        r = done[len(done) // 2] if done else runs[i][0]  # the median run
        rows.append({"kind": kind, "row": name, **spec, **({"old_src": src} if src else {}), **r,
                     "examples_per_s_runs": [x["examples_per_s"] for x in done]})
    cls = [r for r in rows if r["kind"] == "cls" and "error" not in r]
    by = {(r["side"], r["batch"], r["precision"]): r for r in cls}
    checks = {}
    pairs = {"defaults_batch_8": (("leantune", 8, "auto"), ("trainer", 8, "fp32")),
             **{f"equal_{p}_batch_{b}": (("leantune", b, p), ("trainer", b, p))
                for _, b, p in by if p != "auto"}}
    for name, (lt, hf) in pairs.items():
        lt, hf = by.get(lt), by.get(hf)
        if lt and hf:
            checks[f"speedup_{name}"] = lt["examples_per_s"] / hf["examples_per_s"]
            same = sum(x == y for x, y in zip(lt["preds"], hf["preds"]))
            checks[f"prediction_agreement_{name}"] = same / len(hf["preds"])
    pet = [r for r in rows if r["kind"] == "pet" and "error" not in r]
    if pet:  # the first PET row: this code, evaluation setting; fewer posts than 2,189 are scaled up
        checks["pet_2189_posts_s"] = pet[0]["wall_s"] * ALL_POSTS / pet[0]["examples"]
        checks["pet_2189_posts_projected"] = pet[0]["examples"] != ALL_POSTS
        checks["pet_under_2_minutes"] = checks["pet_2189_posts_s"] < 120
        old = [r for r in pet if r.get("old_src")]
        if old:
            checks["pet_speedup_over_old_src"] = pet[0]["examples_per_s"] / old[0]["examples_per_s"]
    table = format_table(
        ["row", "batch", "precision", "allocator", "examples", "wall s", "examples/s", "sys s", "minor faults"],
        [[r["row"], str(r.get("batch", 8)), r.get("precision", "fp32"), r["alloc"], str(r.get("examples", "")),
          f"{r['wall_s']:.1f}" if "wall_s" in r else r.get("error", ""),
          f"{r['examples_per_s']:.1f}" if "examples_per_s" in r else "",
          f"{r['sys_s']:.1f}" if "sys_s" in r else "", f"{r['minor_faults']:,}" if "minor_faults" in r else ""]
         for r in rows])
    print(table)
    print(json.dumps(checks, indent=2))
    for r in rows:
        r.pop("preds", None)
    payload = {"benchmark": "eval_speed", "model": MODEL, "max_length": a.max_length, "posts": a.posts or "all",
               "pet_max_length": a.pet_max_length, "pet_posts": a.pet_posts or "all", "threads": 1,
               "command": " ".join(["python", "benchmarks/eval_speed.py", *sys.argv[1:]]),
               "rows": rows, "checks": checks, "table": table, "machine": machine_facts()}
    print(f"wrote {write_results(Path(a.out), payload)}")


if __name__ == "__main__":
    main()
