"""Transfer under scarcity on real 20 Newsgroups: distillation, continual learning, multi-task
learning and domain adaptation, each against its baseline, mean ± std over seeds.

Five sections, each in its own subprocess (one worker per section runs all its seeds and
variants; its peak RSS, wall and CPU time, and those of every run, go into the JSON). Every
run is a ``leantune.pipeline.train`` of a recipe built here; fp32, max length 64 tokens,
linear schedule without warm-up. Test sets are fixed (data seed 0); a seed draws other
training posts and sets the initialisation and the data order. Δ columns are per-seed
differences, then mean ± std (sample std).

1. **Distillation** (``stage: distill``, Hinton et al. 2015). Teacher: MiniLM-L6, fully
   fine-tuned once on 4 newsgroups (comp.graphics, rec.sport.hockey, sci.med,
   talk.politics.guns) × 100 posts. Student: BERT-tiny (4.4M parameters, ~5x smaller) with
   K labelled posts per class drawn from posts the teacher never saw. Hard labels alone
   (``stage: cls``) against distillation (α = 0.7, T = 2) on the same K posts with the same
   epochs, learning rate and seed; K = 8 and 32.
2. **Continual learning** (``stage: continual``, MiniLM-L6 full fine-tuning): three 2-way
   tasks (graphics/med → hockey/guns → space/autos), class-incremental (one 6-way head, the
   task is not given at test time; in the task-incremental setting a pilot forgot too
   little to tell the strategies apart). ``naive``, ``ewc`` (λ = 1e5, not tuned) and
   ``replay``; average accuracy and the forgetting of Chaudhry et al. 2018 side by side.
3. **Multi-task** (``stage: multitask``, MiniLM-L6 + LoRA): comp.* (5 classes), rec.* (4)
   and sci.* (4), 16 posts per class; one shared backbone with a head per task, against
   the same stage trained on each task alone (same heads, epochs per task, learning rate).
4. **Domain adaptation**: the topic (comp / rec / sci / talk), labelled on comp.graphics,
   rec.autos, sci.crypt, talk.politics.guns (source), tested on comp.sys.mac.hardware,
   rec.sport.hockey, sci.med, talk.politics.mideast (target), 400 unlabelled target posts.
   No adaptation is ``stage: dann`` with ``domain_weight: 0``. DANN (Ganin et al. 2016,
   μ = 0.1 and 1) on MiniLM-L6 + LoRA. In-domain pretraining (Gururangan et al. 2020:
   masked LM on the target posts, then the task from that run) on BERT-tiny, which ships
   an MLM head; MiniLM ships none (a fresh head did not learn in 25 MLM steps in a pilot).
5. **Generative, in-domain pretraining** (``stage: pt``, SmolLM2-135M + LoRA r 8): causal-LM
   continued pretraining on sci.med posts; perplexity on held-out sci.med posts (target)
   and, as a control, on rec.autos posts, before and after.

    .venv/bin/python benchmarks/transfer.py                      # full: 3 seeds, ~11-15 min on 2 idle cores
    .venv/bin/python benchmarks/transfer.py --quick --out /tmp/transfer.json   # tiny sizes, 1 seed, ~1 min CPU
    .venv/bin/python benchmarks/transfer.py --sections distill,lm --seeds 0,1

Sizing of the full run: each section was run at full size for one seed, one torch thread
on a core shared with other jobs, and its CPU seconds extrapolated to 3 seeds:
distillation ~225 (the teacher ~50 once, ~58 per seed), continual ~300, multi-task ~210,
domain ~375 (the BERT-tiny MLM pass over 400 posts is ~15 per epoch), LM ~195, process
start-up ~25: ~1,330 CPU seconds. Two idle cores with two torch threads run it ~1.5-2x
faster than that, ~11-15 minutes, inside the 20-minute budget.

Writes ``benchmarks/results/transfer.json`` (or ``--out``) and prints markdown tables that
are pasted into ``docs/transfer.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, format_table, machine_facts, peak_rss_mb, run_worker, write_results  # noqa: E402

CLS_MODEL, STUDENT_MODEL, LM_MODEL = "minilm-l6", "bert-tiny-mlm", "smollm2-135m"
DATA_SEED = 0  # fixed test sets and the one teacher
SECTIONS = ("distill", "continual", "multitask", "domain", "lm")

DISTILL_LABELS = ["comp.graphics", "rec.sport.hockey", "sci.med", "talk.politics.guns"]
CONTINUAL_TASKS = {"graphics-med": ["comp.graphics", "sci.med"],
                   "hockey-guns": ["rec.sport.hockey", "talk.politics.guns"],
                   "space-autos": ["sci.space", "rec.autos"]}
MULTITASK_TASKS = {"comp": ["comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
                            "comp.sys.mac.hardware", "comp.windows.x"],
                   "rec": ["rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey"],
                   "sci": ["sci.crypt", "sci.electronics", "sci.med", "sci.space"]}
DOMAIN_SOURCE = {"comp.graphics": "comp", "rec.autos": "rec", "sci.crypt": "sci", "talk.politics.guns": "talk"}
DOMAIN_TARGET = {"comp.sys.mac.hardware": "comp", "rec.sport.hockey": "rec", "sci.med": "sci",
                 "talk.politics.mideast": "talk"}
LM_TARGET, LM_CONTROL = "sci.med", "rec.autos"

FULL = {
    "seeds": [0, 1, 2],
    "max_length": 64,
    "distill": {"teacher_per_class": 100, "teacher_epochs": 3, "teacher_batch": 16, "teacher_lr": 5e-5,
                "shots": [8, 32], "student_epochs": 10, "student_batch": 8, "student_lr": 5e-4,
                "alpha": 0.7, "temperature": 2.0, "test_per_class": 50},
    "continual": {"train_per_class": 16, "test_per_class": 30, "epochs": 3, "batch": 8, "lr": 2e-4,
                  "task_incremental": False, "ewc_lambda": 1e5, "fisher_samples": 32, "buffer_size": 24,
                  "replay_ratio": 0.25},
    "multitask": {"train_per_class": 16, "test_per_class": 30, "epochs": 3, "batch": 8, "lr": 1e-3, "lora_r": 8},
    "domain": {"source_per_class": 24, "target_text_per_class": 100, "test_per_class": 40,
               "backbones": {CLS_MODEL: {"lora_r": 16, "epochs": 3, "batch": 8, "lr": 1e-3,
                                         "domain_weights": [0.1, 1.0]},
                             STUDENT_MODEL: {"epochs": 10, "batch": 8, "lr": 5e-4,
                                             "dapt_epochs": 2, "dapt_batch": 16, "dapt_lr": 1e-4}}},
    "lm": {"train_posts": 60, "eval_posts": 12, "steps": 20, "batch": 4, "lr": 5e-4, "lora_r": 8},
}
QUICK = {
    "seeds": [0],
    "max_length": 32,
    "distill": {**FULL["distill"], "teacher_per_class": 8, "teacher_epochs": 1, "shots": [4],
                "student_epochs": 2, "test_per_class": 5},
    "continual": {**FULL["continual"], "train_per_class": 4, "test_per_class": 4, "epochs": 1,
                  "fisher_samples": 4, "buffer_size": 4},
    "multitask": {**FULL["multitask"], "train_per_class": 2, "test_per_class": 3, "epochs": 1},
    "domain": {**FULL["domain"], "source_per_class": 4, "target_text_per_class": 4, "test_per_class": 4,
               "backbones": {CLS_MODEL: {**FULL["domain"]["backbones"][CLS_MODEL], "epochs": 1},
                             STUDENT_MODEL: {**FULL["domain"]["backbones"][STUDENT_MODEL], "epochs": 1,
                                             "dapt_epochs": 1}}},
    "lm": {**FULL["lm"], "train_posts": 3, "eval_posts": 2, "steps": 2},
}


# --------------------------------------------------------------------------- data (driver)

def write_data(folder: Path, plan: dict, sections: list[str]) -> dict:
    """Every section's files: fixed test sets (DATA_SEED), training sets per seed."""
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl

    train, test = newsgroups("train"), newsgroups("test")

    def pick(rows, labels, k, seed, rename=None, exclude=frozenset()):
        pool = [r for r in rows if r["label"] in labels and r["text"] not in exclude]
        return [{"text": r["text"], "label": (rename or {}).get(r["label"], r["label"])}
                for r in sample_per_class(pool, k, seed)]

    def put(rows, name):
        return str(write_jsonl(rows, folder / name))

    seeds, files = plan["seeds"], {}
    if "distill" in sections:
        p = plan["distill"]
        teacher = pick(train, DISTILL_LABELS, p["teacher_per_class"], DATA_SEED)
        seen = frozenset(r["text"] for r in teacher)
        files["distill"] = {
            "teacher_train": put(teacher, "distill-teacher.jsonl"),
            "test": put(pick(test, DISTILL_LABELS, p["test_per_class"], DATA_SEED), "distill-test.jsonl"),
            "students": {str(s): {str(k): put(pick(train, DISTILL_LABELS, k, s, exclude=seen),
                                              f"distill-k{k}-s{s}.jsonl") for k in p["shots"]} for s in seeds}}
    if "continual" in sections:
        p = plan["continual"]
        files["continual"] = {name: {
            "test": put(pick(test, labels, p["test_per_class"], DATA_SEED), f"cont-{name}-test.jsonl"),
            "train": {str(s): put(pick(train, labels, p["train_per_class"], s), f"cont-{name}-s{s}.jsonl")
                      for s in seeds}} for name, labels in CONTINUAL_TASKS.items()}
    if "multitask" in sections:
        p = plan["multitask"]
        files["multitask"] = {name: {
            "test": put(pick(test, labels, p["test_per_class"], DATA_SEED), f"mt-{name}-test.jsonl"),
            "train": {str(s): put(pick(train, labels, p["train_per_class"], s), f"mt-{name}-s{s}.jsonl")
                      for s in seeds}} for name, labels in MULTITASK_TASKS.items()}
    if "domain" in sections:
        p = plan["domain"]
        src, tgt = list(DOMAIN_SOURCE), list(DOMAIN_TARGET)
        files["domain"] = {
            "source_test": put(pick(test, src, p["test_per_class"], DATA_SEED, DOMAIN_SOURCE), "dom-src-test.jsonl"),
            "target_test": put(pick(test, tgt, p["test_per_class"], DATA_SEED, DOMAIN_TARGET), "dom-tgt-test.jsonl"),
            "source_train": {str(s): put(pick(train, src, p["source_per_class"], s, DOMAIN_SOURCE),
                                         f"dom-src-s{s}.jsonl") for s in seeds},
            "target_text": {str(s): put([{"text": r["text"]} for r in pick(train, tgt, p["target_text_per_class"], s)],
                                        f"dom-tgt-text-s{s}.jsonl") for s in seeds}}
    if "lm" in sections:
        p = plan["lm"]

        def texts(rows, label, n, seed):
            return [{"text": r["text"]} for r in pick(rows, [label], n, seed)]
        files["lm"] = {
            "target_eval": put(texts(test, LM_TARGET, p["eval_posts"], DATA_SEED), "lm-target-eval.jsonl"),
            "control_eval": put(texts(test, LM_CONTROL, p["eval_posts"], DATA_SEED), "lm-control-eval.jsonl"),
            "train": {str(s): put(texts(train, LM_TARGET, p["train_posts"], s), f"lm-train-s{s}.jsonl")
                      for s in seeds}}
    return files


# --------------------------------------------------------------------------- worker

class Runner:
    """Builds and trains recipes inside one worker process; all runs go to a temporary folder."""

    def __init__(self, out_dir: str, max_length: int):
        self.out_dir, self.max_length = out_dir, max_length
        self.runs: list[dict] = []  # wall and CPU seconds of every run, for sizing

    def train(self, name: str, seed: int, *, model: str, stage, method, data: dict, train: dict):
        from leantune.pipeline import train as run
        from leantune.recipe import load_recipe

        raw = {"model": model, "stage": stage, "method": method, "data": data,
               "train": {"max_length": self.max_length, "seed": seed, "precision": "fp32", "logging_steps": 50,
                         "warmup_ratio": 0.0, **train},
               "eval": {"batch_size": 32, "before": False},
               "output": {"dir": self.out_dir, "name": f"{name}-s{seed}", "overwrite": True}}
        t0, c0 = time.perf_counter(), cpu_seconds()
        summary = run(load_recipe(raw=raw), progress=False)
        details = json.loads((Path(summary.run_dir) / "eval.json").read_text())
        self.runs.append({"run": name, "seed": seed, "steps": summary.steps,
                          "train_examples": summary.train_examples, "wall_s": round(time.perf_counter() - t0, 1),
                          "cpu_s": round(cpu_seconds() - c0, 1)})
        print(f"    {self.runs[-1]}", file=sys.stderr, flush=True)
        return summary, details


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cls_metrics(after: dict, prefix: str = "") -> dict:
    return {"accuracy": after[f"{prefix}accuracy"], "macro_f1": after[f"{prefix}macro_f1"]}


def run_distill(runner: Runner, plan: dict, files: dict) -> dict:
    p, f = plan["distill"], files["distill"]
    teacher, _ = runner.train("teacher", DATA_SEED, model=CLS_MODEL, stage="cls", method="full",
                              data={"train": f["teacher_train"], "eval": f["test"], "format": "classification"},
                              train={"epochs": p["teacher_epochs"], "batch_size": p["teacher_batch"],
                                     "lr": p["teacher_lr"]})
    out = {"teacher": cls_metrics(teacher.eval_after), "seeds": {}}
    student_train = {"epochs": p["student_epochs"], "batch_size": p["student_batch"], "lr": p["student_lr"]}
    for seed in plan["seeds"]:
        per_k = {}
        for k in p["shots"]:
            data = {"train": f["students"][str(seed)][str(k)], "eval": f["test"], "format": "classification"}
            hard, _ = runner.train(f"hard-k{k}", seed, model=STUDENT_MODEL, stage="cls", method="full",
                                   data=data, train=student_train)
            kd, _ = runner.train(f"kd-k{k}", seed, model=STUDENT_MODEL, method="full", data=data,
                                       stage={"name": "distill", "teacher": teacher.run_dir, "alpha": p["alpha"],
                                              "temperature": p["temperature"]}, train=student_train)
            per_k[str(k)] = {"hard": cls_metrics(hard.eval_after), "distill": cls_metrics(kd.eval_after)}
        out["seeds"][str(seed)] = per_k
    return out


def run_continual(runner: Runner, plan: dict, files: dict) -> dict:
    p, f = plan["continual"], files["continual"]
    out = {"tasks": list(CONTINUAL_TASKS), "seeds": {}}
    for seed in plan["seeds"]:
        tasks = [{"name": n, "data": f[n]["train"][str(seed)], "eval": f[n]["test"]} for n in CONTINUAL_TASKS]
        per = {}
        for strategy in ("naive", "ewc", "replay"):
            stage = {"name": "continual", "strategy": strategy, "tasks": tasks, "ewc_lambda": p["ewc_lambda"],
                     "task_incremental": p["task_incremental"],
                     "fisher_samples": p["fisher_samples"], "buffer_size": p["buffer_size"],
                     "replay_ratio": p["replay_ratio"]}
            summary, details = runner.train(f"continual-{strategy}", seed, model=CLS_MODEL, stage=stage,
                                            method="full", data={"format": "classification"},
                                            train={"epochs": p["epochs"], "batch_size": p["batch"], "lr": p["lr"]})
            c = details["continual"]
            per[strategy] = {k: c[k] for k in ("R", "average_accuracy", "forgetting", "per_task_forgetting",
                                               "backward_transfer")}
            # each task's last training loss (EWC's includes its penalty: shows whether the penalty bites)
            per[strategy]["last_train_loss"] = {h["task"]: h["loss"] for h in summary.history if "loss" in h}
        out["seeds"][str(seed)] = per
    return out


def run_multitask(runner: Runner, plan: dict, files: dict) -> dict:
    p, f = plan["multitask"], files["multitask"]
    method = {"name": "lora", "r": p["lora_r"], "alpha": 2 * p["lora_r"]}
    train = {"epochs": p["epochs"], "batch_size": p["batch"], "lr": p["lr"]}
    out = {"tasks": list(MULTITASK_TASKS), "seeds": {}}
    for seed in plan["seeds"]:
        specs = {n: {"name": n, "data": f[n]["train"][str(seed)], "eval": f[n]["test"]} for n in MULTITASK_TASKS}
        multi, _ = runner.train("multitask", seed, model=CLS_MODEL, method=method, data={"format": "classification"},
                                stage={"name": "multitask", "tasks": list(specs.values())}, train=train)
        per = {}
        for n, spec in specs.items():
            single, _ = runner.train(f"single-{n}", seed, model=CLS_MODEL, method=method,
                                     data={"format": "classification"},
                                     stage={"name": "multitask", "tasks": [spec]}, train=train)
            per[n] = {"single": cls_metrics(single.eval_after, f"{n}/"),
                      "multi": cls_metrics(multi.eval_after, f"{n}/"), "single_steps": single.steps,
                      "multi_steps": multi.steps}
        out["seeds"][str(seed)] = per
    return out


def run_domain(runner: Runner, plan: dict, files: dict) -> dict:
    """No adaptation, DANN and (where the model has an MLM head) in-domain pretraining, per backbone."""
    p, f = plan["domain"], files["domain"]
    out = {"seeds": {}}
    for seed in plan["seeds"]:
        data = {"train": f["source_train"][str(seed)], "eval": f["source_test"],
                "unlabeled": f["target_text"][str(seed)], "format": "classification"}
        per = {}
        for backbone, b in p["backbones"].items():
            method = {"name": "lora", "r": b["lora_r"], "alpha": 2 * b["lora_r"]} if b.get("lora_r") else "full"
            train = {"epochs": b["epochs"], "batch_size": b["batch"], "lr": b["lr"]}

            def dann(name, weight, model=backbone):
                s, _ = runner.train(f"{backbone}-{name}", seed, model=model, method=method, data=data, train=train,
                                    stage={"name": "dann", "domain_weight": weight, "target_eval": f["target_test"]})
                return {"source": cls_metrics(s.eval_after), "target": cls_metrics(s.eval_after, "target_")}

            per[backbone] = {"none": dann("no-adaptation", 0.0)}
            if b.get("dapt_epochs"):
                pt, _ = runner.train(f"{backbone}-mlm", seed, model=backbone, method="full",
                                     stage={"name": "pt", "objective": "mlm"},
                                     data={"train": f["target_text"][str(seed)], "format": "text", "eval_split": 0.0},
                                     train={"epochs": b["dapt_epochs"], "batch_size": b["dapt_batch"],
                                            "lr": b["dapt_lr"], "logging_steps": 5})
                per[backbone]["dapt"] = {**dann("mlm-then-task", 0.0, model=pt.run_dir),
                                         "mlm_train_loss": [h["loss"] for h in pt.history if "loss" in h]}
            for weight in b.get("domain_weights", []):
                per[backbone][f"dann-{weight:g}"] = dann(f"dann-{weight:g}", weight)
        out["seeds"][str(seed)] = per
    return out


def lm_perplexity(model, tokenizer, path: str, max_length: int) -> float:
    """Perplexity of ``model`` on the text file, cut into blocks and scored exactly as ``stage: pt`` does."""
    from leantune.data.collate import pad_batch
    from leantune.data.formats import load_examples
    from leantune.data.tokenize import tokenize_text_blocks
    from leantune.evaluation.lm import lm_loss_and_perplexity
    from leantune.training.losses import causal_lm_token_losses

    feats, _ = tokenize_text_blocks(load_examples(Path(path), "text").examples, tokenizer, max_length)
    collate = lambda batch: pad_batch(batch, tokenizer.pad_token_id)  # noqa: E731
    return lm_loss_and_perplexity(model, feats, 32, collate, causal_lm_token_losses)["perplexity"]


def run_lm(runner: Runner, plan: dict, files: dict) -> dict:
    from leantune.export.run_loading import load_run
    from leantune.models.loading import load_model, load_tokenizer, resolve_model_path

    p, f = plan["lm"], files["lm"]
    path = resolve_model_path(LM_MODEL)
    tok = load_tokenizer(path)
    base = load_model(path, "causal_lm", "float32", pad_token_id=tok.pad_token_id)
    out = {"base": {"target_perplexity": lm_perplexity(base, tok, f["target_eval"], runner.max_length),
                    "control_perplexity": lm_perplexity(base, tok, f["control_eval"], runner.max_length)},
           "seeds": {}}
    del base
    for seed in plan["seeds"]:
        s, _ = runner.train("dapt-lm", seed, model=LM_MODEL, stage="pt",
                            method={"name": "lora", "r": p["lora_r"], "alpha": 2 * p["lora_r"]},
                            data={"train": f["train"][str(seed)], "eval": f["target_eval"], "format": "text"},
                            train={"max_steps": p["steps"], "batch_size": p["batch"], "lr": p["lr"]})
        run = load_run(s.run_dir)
        out["seeds"][str(seed)] = {"target_perplexity": s.eval_after["perplexity"],
                                   "control_perplexity": lm_perplexity(run.model, run.tokenizer, f["control_eval"],
                                                                       runner.max_length),
                                   "train_blocks": s.train_examples}
        del run
    return out


RUNNERS = {"distill": run_distill, "continual": run_continual, "multitask": run_multitask,
           "domain": run_domain, "lm": run_lm}


def worker(section: str, plan: dict, files: dict) -> dict:
    import torch

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"transfer_{section}_") as out_dir:
        runner = Runner(out_dir, plan["max_length"])
        try:
            result = RUNNERS[section](runner, plan, files)
            result["status"] = "ok"
        except Exception as exc:  # recorded; the other sections go on
            result = {"status": "error", "message": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
    return {**result, "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(cpu_seconds(), 1), "peak_rss_mb": round(peak_rss_mb()), "runs": runner.runs}


# --------------------------------------------------------------------------- tables

def stat(xs: list[float], fmt: str = ".3f") -> str:
    """``mean ± std`` (sample std over seeds; one seed: the value alone)."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def per_seed(section: dict, fn) -> list[float]:
    return [fn(v) for _, v in sorted(section["seeds"].items())]


def distill_table(r: dict, plan: dict) -> str:
    p = plan["distill"]
    body = []
    for k in p["shots"]:
        k = str(k)
        hard = per_seed(r, lambda s: s[k]["hard"]["accuracy"])
        kd = per_seed(r, lambda s: s[k]["distill"]["accuracy"])
        body.append([k, f"{r['teacher']['accuracy']:.3f}", stat(hard), stat(kd),
                     stat([b - a for a, b in zip(hard, kd)], "+.3f"),
                     stat(per_seed(r, lambda s: s[k]["hard"]["macro_f1"])),
                     stat(per_seed(r, lambda s: s[k]["distill"]["macro_f1"]))])
    return format_table(["K per class", "teacher acc.", "student, hard labels", "student, distilled",
                         "Δ acc. (distilled − hard)", "macro-F1 hard", "macro-F1 distilled"], body)


def continual_table(r: dict) -> str:
    body = []
    naive_f = per_seed(r, lambda s: s["naive"]["forgetting"])
    for strategy in ("naive", "ewc", "replay"):
        forget = per_seed(r, lambda s: s[strategy]["forgetting"])
        per_task = [stat(per_seed(r, lambda s: s[strategy]["per_task_forgetting"][j]))
                    for j in range(len(r["tasks"]) - 1)]
        body.append([f"`{strategy}`", stat(per_seed(r, lambda s: s[strategy]["average_accuracy"])), stat(forget),
                     *per_task, stat(per_seed(r, lambda s: s[strategy]["backward_transfer"]), "+.3f"),
                     "-" if strategy == "naive" else stat([b - a for a, b in zip(naive_f, forget)], "+.3f")])
    return format_table(["strategy", "average accuracy", "forgetting",
                         *[f"forgetting {t}" for t in r["tasks"][:-1]], "backward transfer",
                         "Δ forgetting vs naive"], body)


def multitask_table(r: dict) -> str:
    body, singles, multis = [], [], []
    for t in r["tasks"]:
        single = per_seed(r, lambda s: s[t]["single"]["accuracy"])
        multi = per_seed(r, lambda s: s[t]["multi"]["accuracy"])
        singles.append(single)
        multis.append(multi)
        steps = next(iter(r["seeds"].values()))[t]
        body.append([t, str(len(MULTITASK_TASKS[t])), f"{steps['single_steps']} / {steps['multi_steps']}",
                     stat(single), stat(multi), stat([b - a for a, b in zip(single, multi)], "+.3f")])
    mean_s = [statistics.mean(x) for x in zip(*singles)]
    mean_m = [statistics.mean(x) for x in zip(*multis)]
    body.append(["**mean**", "", "", stat(mean_s), stat(mean_m), stat([b - a for a, b in zip(mean_s, mean_m)], "+.3f")])
    return format_table(["task", "classes", "optimizer steps single / multi", "single-task acc.", "multi-task acc.",
                         "Δ (multi − single)"], body)


def domain_table(r: dict) -> str:
    first = next(iter(r["seeds"].values()))
    body = []
    for backbone, variants in first.items():
        none_t = per_seed(r, lambda s: s[backbone]["none"]["target"]["accuracy"])
        for v in variants:
            name = ("no adaptation" if v == "none" else "in-domain MLM pretraining, then task" if v == "dapt"
                    else f"DANN, μ = {v.removeprefix('dann-')}")
            tgt = per_seed(r, lambda s: s[backbone][v]["target"]["accuracy"])
            body.append([f"`{backbone}`", name, stat(per_seed(r, lambda s: s[backbone][v]["source"]["accuracy"])),
                         stat(tgt), stat(per_seed(r, lambda s: s[backbone][v]["target"]["macro_f1"])),
                         "-" if v == "none" else stat([b - a for a, b in zip(none_t, tgt)], "+.3f")])
    return format_table(["model", "variant", "source acc.", "target acc.", "target macro-F1",
                         "Δ target acc. vs no adaptation"], body)


def lm_table(r: dict) -> str:
    base = r["base"]
    tgt = per_seed(r, lambda s: s["target_perplexity"])
    ctl = per_seed(r, lambda s: s["control_perplexity"])
    body = [["base (no adaptation)", f"{base['target_perplexity']:.2f}", f"{base['control_perplexity']:.2f}"],
            ["in-domain pretraining (LoRA)", stat(tgt, ".2f"), stat(ctl, ".2f")],
            ["Δ", stat([t - base["target_perplexity"] for t in tgt], "+.2f"),
             stat([c - base["control_perplexity"] for c in ctl], "+.2f")],
            ["after / before", stat([t / base["target_perplexity"] for t in tgt]),
             stat([c / base["control_perplexity"] for c in ctl])]]
    return format_table(["model", f"perplexity, target ({LM_TARGET})", f"perplexity, control ({LM_CONTROL})"], body)


def describe(section: str, plan: dict) -> str:
    p, L = plan[section], plan["max_length"]
    if section == "distill":
        return (f"**Distillation**: teacher `{CLS_MODEL}` (full, {p['teacher_per_class']} posts/class × 4 classes, "
                f"{p['teacher_epochs']} epoch(s), one teacher for all seeds); student `{STUDENT_MODEL}` (full) on K "
                f"posts/class the teacher never saw, {p['student_epochs']} epochs, batch {p['student_batch']}, "
                f"lr {p['student_lr']}; distillation α = {p['alpha']}, T = {p['temperature']}; "
                f"{p['test_per_class']} test posts/class; max length {L}.")
    if section == "continual":
        return (f"**Continual learning**: `{CLS_MODEL}` (full), tasks {' → '.join(CONTINUAL_TASKS)} (2 classes each, "
                f"{p['train_per_class']} train / {p['test_per_class']} test posts per class), "
                f"{'task' if p['task_incremental'] else 'class'}-incremental, "
                f"{p['epochs']} epoch(s) per task, lr {p['lr']}; EWC λ = {p['ewc_lambda']:g} (empirical Fisher on "
                f"{p['fisher_samples']} posts); replay buffer {p['buffer_size']} posts, replay ratio "
                f"{p['replay_ratio']}. Forgetting: Chaudhry et al. 2018 (lower is better).")
    if section == "multitask":
        return (f"**Multi-task**: `{CLS_MODEL}` + LoRA r {p['lora_r']}, {p['train_per_class']} train / "
                f"{p['test_per_class']} test posts per class, {p['epochs']} epoch(s), lr {p['lr']}; single-task = the "
                f"same stage with one task (its own head), multi-task = one shared backbone, a head per task.")
    if section == "domain":
        m, t = p["backbones"][CLS_MODEL], p["backbones"][STUDENT_MODEL]
        return (f"**Domain adaptation**: 4 topics (comp/rec/sci/talk); source {', '.join(DOMAIN_SOURCE)} "
                f"({p['source_per_class']} labelled posts each), target {', '.join(DOMAIN_TARGET)} "
                f"({p['target_text_per_class']} unlabelled posts each for adaptation, {p['test_per_class']} test posts "
                f"each). `{CLS_MODEL}` + LoRA r {m['lora_r']}, {m['epochs']} epoch(s), lr {m['lr']}; "
                f"`{STUDENT_MODEL}` (full), {t['epochs']} epoch(s), lr {t['lr']}. DANN (on `{CLS_MODEL}`) with μ ∈ "
                f"{m['domain_weights']} (λ schedule of Ganin et al., γ = 10). "
                f"In-domain pretraining only on `{STUDENT_MODEL}`, the model that ships an MLM head: masked LM "
                f"(full) on the unlabelled target posts, {t['dapt_epochs']} epoch(s), lr {t['dapt_lr']}, then the "
                f"task from that run. Δ: against no adaptation on the same model.")
    return (f"**In-domain pretraining, generative**: `{LM_MODEL}` + LoRA r {p['lora_r']}, causal LM on "
            f"{p['train_posts']} {LM_TARGET} posts, {p['steps']} steps of {p['batch']} × {L}-token blocks, "
            f"lr {p['lr']}; perplexity on {p['eval_posts']} held-out posts per domain.")


TABLES = {"distill": lambda r, plan: distill_table(r, plan), "continual": lambda r, plan: continual_table(r),
          "multitask": lambda r, plan: multitask_table(r), "domain": lambda r, plan: domain_table(r),
          "lm": lambda r, plan: lm_table(r)}


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one seed (a smoke run, minutes)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2; --quick: 0)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per section before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "transfer.json"), help="JSON file to write")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        emit(worker(a.worker, json.loads(a.plan), json.loads(a.files)))
        return

    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    if bad := [s for s in sections if s not in SECTIONS]:
        ap.error(f"unknown sections {bad}; choose from {', '.join(SECTIONS)}")
    plan = json.loads(json.dumps(QUICK if a.quick else FULL))
    if a.seeds:
        plan["seeds"] = [int(s) for s in a.seeds.split(",")]

    facts = machine_facts()
    print(f"# transfer benchmark on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch threads "
          f"{facts.get('torch_threads')}), load average {facts['load_average_at_start']}, seeds {plan['seeds']}",
          flush=True)
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transfer_data_") as folder:
        files = write_data(Path(folder), plan, sections)
        for section in sections:
            print(f"  {section} …", flush=True)
            try:
                r = run_worker(Path(__file__), ["--worker", section, "--plan", json.dumps(plan),
                                                "--files", json.dumps(files)], timeout=a.timeout)
            except subprocess.TimeoutExpired:
                r = {"status": "error", "message": f"timed out after {a.timeout:.0f} s"}
            if "error" in r and "status" not in r:
                r = {"status": "error", "message": r["error"], "stderr_tail": r.get("stderr_tail", "")}
            results[section] = r
            if r["status"] == "ok":
                print(f"  {section}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB\n\n{TABLES[section](r, plan)}\n", flush=True)
            else:
                print(f"  {section}: {r['status']}: {r['message']}\n"
                      + "\n".join("    " + ln for ln in (r.get("traceback") or r.get("stderr_tail") or
                                                         "").splitlines()[-10:]), flush=True)

    command = " ".join([".venv/bin/python benchmarks/transfer.py", *sys.argv[1:]])
    parts = [f"Measured with `{command}` on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch "
             f"{facts['versions'].get('torch')}, {facts['date_utc'][:10]}); mean ± std over seeds "
             f"{', '.join(map(str, plan['seeds']))} (each seed: other training examples, initialisation and order; "
             f"Δ columns are per-seed differences); real 20 Newsgroups; each section in its own process."]
    for section in sections:
        r = results[section]
        body = TABLES[section](r, plan) if r["status"] == "ok" else f"{r['status']}: {r['message']}"
        parts.append(describe(section, plan) + "\n\n" + body)
    markdown = "\n\n".join(parts)
    print("\n" + markdown + "\n")
    payload = {"benchmark": "transfer", "command": command, "quick": a.quick, "plan": plan,
               "conditions": {"precision": "fp32", "data_seed": DATA_SEED, "scheduler": "linear, no warm-up",
                              "distill_labels": DISTILL_LABELS, "continual_tasks": CONTINUAL_TASKS,
                              "multitask_tasks": MULTITASK_TASKS, "domain_source": DOMAIN_SOURCE,
                              "domain_target": DOMAIN_TARGET, "lm_target": LM_TARGET, "lm_control": LM_CONTROL,
                              "std": "sample standard deviation over seeds"},
               "machine": facts, "total_wall_s": round(time.perf_counter() - t_all, 1),
               "markdown": markdown, "sections": results}
    out = write_results(Path(a.out), payload)
    print(f"wrote {out} in {payload['total_wall_s']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
