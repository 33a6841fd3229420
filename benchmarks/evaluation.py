"""Did it get better? Loss, task metric and judge verdict side by side, and the forgetting probe.

Two tasks, each trained twice from SmolLM2-135M-Instruct (LoRA r16 all-linear, and full fine-tuning)
with ``eval.metrics`` and ``eval.forgetting`` switched on, so one run reports before and after:

- ``demo``: the demo's shell-help task (380 training questions, 48 held-out ones on other commands).
  Task metrics: command accuracy (``evaluation/command_match.py``: the answer's command equals the
  reference, exactly or after normalising option order and spelling; the execution-equivalent
  measure, since nothing is run), and whole-answer exact match, ROUGE-L and BLEU.
- ``dialog``: English ChatterBot dialog pairs (the packaged corpus; tech_support left out, it is half
  the corpus), 320 for training, 48 held out with prompts not seen in training. Task metrics:
  ROUGE-L, BLEU, exact match against the corpus reply.

Then the packaged SmolLM2-135M-Instruct judges LoRA against full fine-tuning on the held-out prompts
(``leantune judge``: MT-Bench's pairwise prompt with the reference answer, both orders;
``--forced-choice`` takes the likeliest verdict where a reply has none) and judges the LoRA run
against itself (identical answers: a sound judge says tie every time). A 135M judge is a weak
judge; the table says how often it gave a verdict and how position-biased it was.

``forgetting`` (the demo runs only: the dialog task trains on the corpus the probe's general text
samples): perplexity on the built-in general text and accuracy on the 83-question probe.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/evaluation.py     # ~1 h on one core
    .venv/bin/python benchmarks/evaluation.py --report                          # table + JSON only
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, format_table, machine_facts, write_results  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "src" / "leantune" / "resources" / "demo"
TASKS = ("demo", "dialog")
METHODS = {"lora": ({"name": "lora", "r": 16, "alpha": 32, "targets": "all-linear"}, 5e-4),
           "full": ({"name": "full"}, 5e-5)}
JUDGE = "smollm2-135m"
JUDGED = {("demo", "full"): 24, ("demo", "lora"): 12, ("dialog", "full"): 16, ("dialog", "lora"): 12}
# held-out prompts judged per comparison (task, run B; A is LoRA): ~36 s a prompt on one core
DIALOG_TRAIN, DIALOG_EVAL = 320, 48


def dialog_data(work: Path) -> tuple[Path, Path]:
    """ChatterBot pairs without tech_support and one-letter rows; held-out prompts never occur in training."""
    from leantune.data.builtin import dialog_pairs, write_jsonl

    pairs = [p for p in dialog_pairs() if p["category"] != "tech_support"
             and len(p["prompt"].split()) >= 2 and len(p["completion"]) >= 3]  # no "p" → "h" rows
    random.Random(0).shuffle(pairs)
    held, seen = [], set()
    for p in pairs:
        if len(held) < DIALOG_EVAL and p["prompt"].lower() not in seen:
            held.append(p)
            seen.add(p["prompt"].lower())
    train = [p for p in pairs if p["prompt"].lower() not in seen][:DIALOG_TRAIN]
    out = work / "dialog_train.jsonl", work / "dialog_eval.jsonl"
    write_jsonl([{"instruction": p["prompt"], "output": p["completion"]} for p in train], out[0])
    write_jsonl([{"instruction": p["prompt"], "output": p["completion"]} for p in held], out[1])
    return out


def recipe_for(task: str, method: str, work: Path):
    from leantune.recipe import Recipe
    from leantune.workflows.demo import load_demo_recipe

    raw = load_demo_recipe([])[0].model_dump(mode="json")
    spec, lr = METHODS[method]
    raw["method"] = [spec]
    raw["train"].update({"lr": lr, "save_steps": 10_000})
    raw["eval"].update({"metrics": ["exact_match", "rouge_l", "bleu"], "max_generate": 48, "batch_size": 16})
    if task == "demo":
        raw["eval"]["forgetting"] = {}
    else:
        train, held = dialog_data(work)
        raw["data"].update({"train": str(train), "eval": str(held)})
        raw["eval"]["metric"] = "rouge_l"
    raw["output"] = {"dir": str(work / "runs"), "name": f"{task}-{method}", "overwrite": True}
    return Recipe.model_validate(raw)


def command_accuracy(predictions: Path) -> dict:
    from leantune.evaluation.command_match import accuracy, extract_command, match_command

    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    return accuracy([match_command(extract_command(r["prediction"]), extract_command(r["reference"]) or "")
                     for r in rows])


def train_task(task: str, method: str, work: Path) -> dict:
    from leantune.pipeline import train

    run_dir = work / "runs" / f"{task}-{method}"
    if not (run_dir / "summary.json").is_file():
        train(recipe_for(task, method, work), progress=False, say=print)
    s = json.loads((run_dir / "summary.json").read_text())
    out = {k: s[k] for k in ("eval_before", "eval_after", "wall_time_s", "trainable_params", "steps", "precision")}
    if task == "demo":
        out["command_before"] = command_accuracy(run_dir / "predictions_before.jsonl")
        out["command_after"] = command_accuracy(run_dir / "predictions.jsonl")
    return out


def judged(task: str, a: str, b: str, work: Path) -> dict:
    from leantune.workflows.judge import judge_runs

    data = DEMO / "shell_help_eval.jsonl" if task == "demo" else work / "dialog_eval.jsonl"
    out = work / "judge" / f"{task}-{a}-vs-{b}"
    t0 = time.perf_counter()
    result = judge_runs(work / "runs" / f"{task}-{a}", work / "runs" / f"{task}-{b}", data, JUDGE, out,
                        limit=JUDGED[task, b],
                        reference=True, max_new_tokens=64, judge_max_tokens=96, forced_choice=True,
                        progress=False, say=print)
    keep = ("questions", "wins_a", "wins_b", "ties", "unparseable", "win_rate_a", "interval_95", "first_shown_share",
            "position_bias_p", "consistent_questions", "forced_verdicts", "calls")
    return {**{k: result.summary[k] for k in keep}, "seconds": round(time.perf_counter() - t0, 1)}


def run(work: Path) -> dict:
    results: dict = {}
    for task in TASKS:
        for method in METHODS:
            results[f"{task} {method}"] = train_task(task, method, work)
            print(task, method, results[f"{task} {method}"]["eval_after"], flush=True)
        results[f"{task} judge lora-vs-full"] = judged(task, "lora", "full", work)
        results[f"{task} judge lora-vs-itself"] = judged(task, "lora", "lora", work)
    return results


def _f(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: dict) -> None:
    rows = []
    for task in TASKS:
        metric = "command accuracy, equivalent / right program" if task == "demo" else "ROUGE-L"
        for method in METHODS:
            r = results.get(f"{task} {method}")
            if not r:
                continue
            b, a = r["eval_before"], r["eval_after"]
            if task == "demo":  # exact or equivalent command / right program
                cb, ca = r["command_before"], r["command_after"]
                shown = (f"{_f(cb['equivalent'], '.2f')}/{_f(cb['program'], '.2f')} → "
                         f"{_f(ca['equivalent'], '.2f')}/{_f(ca['program'], '.2f')}")
            else:
                shown = f"{_f(b.get('rouge_l'))} → {_f(a.get('rouge_l'))}"
            rows.append([task, method, f"{_f(b['loss'])} → {_f(a['loss'])}", shown,
                         f"{_f(b.get('bleu'))} → {_f(a.get('bleu'))}",
                         f"{_f(b.get('general_perplexity'), '.2f')} → {_f(a.get('general_perplexity'), '.2f')}",
                         f"{_f(b.get('probe_accuracy'))} → {_f(a.get('probe_accuracy'))}", f"{r['wall_time_s']:.0f}"])
        print(f"task metric for {task}: {metric}")
    print(format_table(["task", "method", "eval loss", "task metric", "BLEU", "general ppl", "probe acc", "train s"],
                       rows))
    jrows = []
    for key, j in results.items():
        if " judge " in key:
            jrows.append([key, str(j["questions"]), f"{j['wins_a']}/{j['wins_b']}/{j['ties']}",
                          _f(j["win_rate_a"], ".2f") + (f" [{j['interval_95'][0]:.2f}, {j['interval_95'][1]:.2f}]"
                                                        if j["interval_95"] else ""),
                          f"{j['forced_verdicts']}/{j['calls']}", _f(j["first_shown_share"], ".2f")])
    print(format_table(["comparison", "questions", "A/B/ties", "win rate A", "forced verdicts", "first shown wins"],
                       jrows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/leantune-evaluation"))
    ap.add_argument("--report", action="store_true", help="only print the table and write the JSON")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.work / "results.json"
    if not args.report:
        t0 = time.perf_counter()
        results = run(args.work)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        saved.write_text(json.dumps(results, indent=2, default=str))
    results = json.loads(saved.read_text())
    report(results)
    path = write_results(RESULTS / "evaluation.json", {
        "machine": machine_facts(), "judge": JUDGE,
        "judged_prompts": {f"{task} lora-vs-{b}": n for (task, b), n in JUDGED.items()}, **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
