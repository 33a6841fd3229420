"""Scarce data, measured: retrieval-aware SFT, curation, self-instruct and a learning curve.

Four parts, each resumable (results kept in --work), run one at a time on one thread:

- ``retrieval`` (Gorilla, arXiv:2305.15334): LoRA SFT of SmolLM2-135M on the demo's shell-help data
  without and with ``data.retrieval`` (BM25, top 1, the shell_docs corpus written for it), each model
  and the base answering the 48 held-out questions with no documentation, with the documentation,
  and with the *changed* documentation (options and programs renamed in a fictional release); scored
  by command accuracy against the original or the changed references. The changed rows alone say
  whether a model follows the new documentation or repeats what it learned.
- ``curation``: 20 Newsgroups (8 classes) with planted duplicates and degenerate rows; MiniLM
  fine-tuned on a ``leantune data curate --max N`` subset vs a random subset of the same size of the
  same pool, 3 seeds, accuracy on the classes' test posts.
- ``synth``: self-instruct with the packaged SmolLM2-135M as the teacher from 10 shell-help seed
  tasks (12 teacher calls): kept and dropped counts, reasons and examples.
- ``curve``: ``leantune curve`` on the demo recipe, fractions 0.1–1, 2 seeds, eval loss.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/scarce_data.py --part retrieval
    .venv/bin/python benchmarks/scarce_data.py --report      # merge the parts into the JSON
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, format_table, machine_facts, write_results  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "src" / "leantune" / "resources" / "demo"
PARTS = ("retrieval", "curation", "synth", "curve")
RETRIEVAL = {"corpus": "builtin:demo/shell_docs", "k": 1, "retriever": "bm25"}
MAX_LENGTH = 320  # the longest example is 112 tokens: about 200 are left for the passage


# --------------------------------------------------------------------------- retrieval

def _demo_recipe(name: str, work: Path, retrieval: dict | None):
    from leantune.recipe import Recipe
    from leantune.workflows.demo import load_demo_recipe

    recipe, _ = load_demo_recipe([])
    raw = recipe.model_dump(mode="json")
    raw["train"]["max_length"] = MAX_LENGTH
    raw["data"]["retrieval"] = retrieval
    raw["output"] = {"dir": str(work / "runs"), "name": name, "overwrite": True}
    return Recipe.model_validate(raw)


def _questions(path: Path) -> list[dict]:
    from leantune.evaluation.command_match import extract_command

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"question": r["instruction"], "reference": extract_command(r["output"]), "changed": r.get("changed")}
            for r in rows]


def _score(model, tokenizer, template: str, questions: list[dict], docs) -> dict:
    from leantune.evaluation.command_match import accuracy, extract_command, match_command
    from leantune.evaluation.generate import generate_batched

    prompts = [docs.for_prompt([{"role": "user", "content": q["question"]}], tokenizer, template, MAX_LENGTH,
                               64)[0]["content"] if docs else q["question"] for q in questions]
    t0 = time.perf_counter()
    answers = generate_batched(model, tokenizer, prompts, template, max_new_tokens=64, batch_size=16)
    matches = [match_command(extract_command(a), q["reference"]) for a, q in zip(answers, questions)]
    changed = [m for m, q in zip(matches, questions) if q["changed"]]
    return {"all": accuracy(matches), "changed_rows": accuracy(changed) if changed else None,
            "n": len(questions), "n_changed": len(changed), "seconds": round(time.perf_counter() - t0, 1),
            "answers": [{"question": q["question"], "reference": q["reference"], "answer": a, "match": m}
                        for q, a, m in zip(questions, answers, matches)]}


def part_retrieval(work: Path) -> dict:
    from leantune.data.retrieval import Bm25Retriever, load_corpus
    from leantune.export.run_loading import load_run
    from leantune.models.loading import load_model, load_tokenizer, resolve_model_path
    from leantune.pipeline import train
    from leantune.prompting.documentation import Documentation
    from leantune.recipe import RetrievalSection

    original = _questions(DEMO / "shell_help_eval.jsonl")
    changed = _questions(DEMO / "shell_help_eval_changed.jsonl")
    for o, c in zip(original, changed):
        o["changed"] = c["changed"]
    section = RetrievalSection(**RETRIEVAL)
    docs = {"none": None, "docs": Documentation(section),
            "changed docs": Documentation(section, corpus="builtin:demo/shell_docs_changed")}
    sets = {"none": original, "docs": original, "changed docs": changed}
    retriever = Bm25Retriever(load_corpus(DEMO / "shell_docs"))
    hits = sum(retriever.search(q["question"], 1)[0].source.removesuffix(".md") == q["reference"].split()[0]
               for q in original if q["reference"])

    results: dict = {"bm25_top1_program_hit": hits / len(original), "max_length": MAX_LENGTH, **RETRIEVAL}
    models: dict = {}
    base_path = resolve_model_path("smollm2-135m")
    tokenizer = load_tokenizer(base_path)
    models["base"] = lambda: load_model(base_path, "causal_lm", "auto", False, {}, pad_token_id=tokenizer.pad_token_id)
    for name, retrieval in (("sft", None), ("sft+retrieval", RETRIEVAL)):
        run_dir = work / "runs" / name
        if not (run_dir / "summary.json").exists():
            t0 = time.perf_counter()
            summary = train(_demo_recipe(name, work, retrieval), progress=False, say=print)
            results[f"{name} training_s"] = round(time.perf_counter() - t0, 1)
            results[f"{name} eval"] = summary.eval_after
        models[name] = lambda d=run_dir: (lambda r: r.method.merge(r.model))(load_run(d))
    template = "auto"
    for name, make in models.items():
        model = make()
        for condition, corpus in docs.items():
            key = f"{name} | {condition}"
            done = work / f"retrieval-{name}-{condition.replace(' ', '_')}.json"
            if not done.exists():
                done.write_text(json.dumps(_score(model, tokenizer, template, sets[condition], corpus)))
            results[key] = json.loads(done.read_text())
            print(key, results[key]["all"], results[key]["changed_rows"], flush=True)
        del model
        gc.collect()
    return results


# --------------------------------------------------------------------------- curation

def _plant(pool: list[dict], rng: random.Random) -> list[dict]:
    """Near duplicates (30 %: a copy with a few words dropped) and degenerate rows (10 %: one word
    repeated, or a two-character post) with random labels."""
    labels = sorted({r["label"] for r in pool})
    noisy = list(pool)
    for r in rng.sample(pool, int(0.3 * len(pool))):
        words = r["text"].split()
        for _ in range(max(1, len(words) // 50)):
            if words:
                words.pop(rng.randrange(len(words)))
        noisy.append({"text": " ".join(words), "label": r["label"], "planted": "duplicate"})
    for i in range(int(0.1 * len(pool))):
        text = ("buy " * 40).strip() if i % 2 else "ok"
        noisy.append({"text": text, "label": rng.choice(labels), "planted": "degenerate"})
    rng.shuffle(noisy)
    return noisy


def part_curation(work: Path, per_class: int = 60, keep_per_class: int = 20, seeds=(0, 1, 2)) -> dict:
    from leantune.data.builtin import newsgroups, sample_per_class, write_jsonl
    from leantune.data.curate import CurateOptions, curate
    from leantune.pipeline import train
    from leantune.prompting.demonstrations import get_embedder
    from leantune.recipe import Recipe

    rng = random.Random(0)
    train_all, test_all = newsgroups("train"), newsgroups("test")
    labels = sorted(rng.sample(sorted({r["label"] for r in train_all}), 8))
    pool = sample_per_class([r for r in train_all if r["label"] in labels], per_class, 0)
    noisy = _plant(pool, rng)
    test = sample_per_class([r for r in test_all if r["label"] in labels], 100, 0)
    write_jsonl([{"text": r["text"], "label": r["label"]} for r in noisy], work / "noisy.jsonl")
    write_jsonl(test, work / "test.jsonl")
    n = keep_per_class * len(labels)
    t0 = time.perf_counter()
    result = curate(work / "noisy.jsonl", "classification", CurateOptions(max_examples=n),
                    get_embedder("minilm-l6"))
    curate_s = time.perf_counter() - t0
    planted_kept = {kind: sum(1 for r in result.kept if noisy[r["line"] - 1].get("planted") == kind)
                    for kind in ("duplicate", "degenerate")}  # rows of the pool by line (1-based)
    write_jsonl([{"text": r["text"], "label": r["label"]} for r in result.kept], work / "curated.jsonl")
    out: dict = {"pool": len(noisy), "clean_pool": len(pool), "kept": len(result.kept), "curate_s": round(curate_s, 1),
                 "dropped": dict(result.counts()), "planted_in_curated": planted_kept, "test": len(test),
                 "labels": labels, "runs": []}
    for seed in seeds:
        subset = random.Random(seed).sample(noisy, len(result.kept))
        write_jsonl([{"text": r["text"], "label": r["label"]} for r in subset], work / f"random-{seed}.jsonl")
        out.setdefault("planted_in_random", []).append(
            {kind: sum(1 for r in subset if r.get("planted") == kind) for kind in ("duplicate", "degenerate")})
        for arm, data in (("curated", work / "curated.jsonl"), ("random", work / f"random-{seed}.jsonl")):
            done = work / f"curation-{arm}-{seed}.json"
            if not done.exists():
                recipe = Recipe.model_validate({
                    "model": "minilm-l6", "method": "full", "stage": "cls",
                    "data": {"train": str(data), "eval": str(work / "test.jsonl")},
                    "train": {"epochs": 8, "batch_size": 16, "lr": 5e-5, "max_length": 128, "seed": seed,
                              "precision": "fp32"},
                    "eval": {"batch_size": 32, "before": False},
                    "output": {"dir": str(work / "runs"), "name": f"{arm}-{seed}", "overwrite": True}})
                summary = train(recipe, progress=False, say=print)
                done.write_text(json.dumps({"arm": arm, "seed": seed, **summary.eval_after,
                                            "wall_time_s": summary.wall_time_s}))
            out["runs"].append(json.loads(done.read_text()))
            print(out["runs"][-1], flush=True)
    for arm in ("curated", "random"):
        accs = [r["accuracy"] for r in out["runs"] if r["arm"] == arm]
        out[arm] = {"accuracy_mean": statistics.fmean(accs), "accuracy_sd": statistics.stdev(accs),
                    "macro_f1_mean": statistics.fmean(r["macro_f1"] for r in out["runs"] if r["arm"] == arm)}
    return out


# --------------------------------------------------------------------------- synth and curve

def part_synth(work: Path, n: int = 20, prompts: int = 12) -> dict:
    """At most ``prompts`` teacher calls of 256 new tokens (a 135M teacher keeps few of its tasks);
    the paper's keyword filter without "file(s)" (shell tasks are about files)."""
    from leantune.data.builtin import write_jsonl
    from leantune.data.selfinstruct import KEYWORDS
    from leantune.workflows.synth import synthesize
    from leantune.workflows.teachers import make_teacher

    rows = [json.loads(line) for line in (DEMO / "shell_help_train.jsonl").read_text().splitlines()]
    write_jsonl(random.Random(0).sample(rows, 10), work / "seeds.jsonl")
    report = synthesize(work / "seeds.jsonl", make_teacher("smollm2-135m"), n, work / "synth.jsonl",
                        max_new_tokens=256, max_prompts=prompts, progress=False,
                        keywords=tuple(k for k in KEYWORDS if k not in ("file", "files")))
    return json.loads(report.to_json())


def part_curve(work: Path) -> dict:
    from leantune.workflows.demo import load_demo_recipe
    from leantune.workflows.learning_curve import fraction_curve

    recipe, _ = load_demo_recipe([])
    raw = recipe.model_dump(mode="json")
    raw["output"] = {"name": "demo"}
    result, _ = fraction_curve(raw, [0.1, 0.25, 0.5, 1.0], [0, 1], out_dir=work / "curve", isolate=True, say=print)
    return result


# --------------------------------------------------------------------------- report

def report(work: Path) -> None:
    parts = {p: json.loads((work / f"{p}.json").read_text()) for p in PARTS if (work / f"{p}.json").exists()}
    if "retrieval" in parts:
        r = parts["retrieval"]
        rows = []
        for model in ("base", "sft", "sft+retrieval"):
            for cond in ("none", "docs", "changed docs"):
                s = r.get(f"{model} | {cond}")
                if s:
                    ch = s["changed_rows"]
                    rows.append([model, cond, f"{s['all']['exact']:.3f}", f"{s['all']['equivalent']:.3f}",
                                 f"{s['all']['program']:.3f}", f"{ch['equivalent']:.3f}" if ch else "-"])
        print(format_table(["model", "documentation", "exact", "equivalent", "right program",
                            "changed rows (equiv.)"], rows))
    if "curation" in parts:
        c = parts["curation"]
        print(format_table(["subset", "accuracy", "sd", "macro-F1"],
                           [[arm, f"{c[arm]['accuracy_mean']:.3f}", f"{c[arm]['accuracy_sd']:.3f}",
                             f"{c[arm]['macro_f1_mean']:.3f}"] for arm in ("curated", "random") if arm in c]))
    if "synth" in parts:
        y = parts["synth"]
        print(f"synth: {json.dumps({k: v for k, v in y.items() if k not in ('examples', 'kept_examples')})[:600]}")
    if "curve" in parts:
        c = parts["curve"]
        print(format_table(["fraction", "examples", f"{c['metric']} mean", "sd", "seeds"],
                           [[str(p["fraction"]), str(p["examples"]), f"{p['mean']:.4f}",
                             f"{p['std']:.4f}" if p["std"] is not None else "-", str(p["n"])]
                            for p in c["points"] if p["n"]]))
        print(c["sentence"])
    write_results(RESULTS / "scarce_data.json", {"machine": machine_facts(), **parts})
    print(f"wrote {RESULTS / 'scarce_data.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/leantune-scarce-data"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.part:
        work = args.work / args.part
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = globals()[f"part_{args.part}"](work)
        result["part_seconds"] = round(time.perf_counter() - t0, 1)
        (args.work / f"{args.part}.json").write_text(json.dumps(result, indent=2, default=str))
    if args.report:
        report(args.work)


if __name__ == "__main__":
    main()
