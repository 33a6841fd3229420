"""RLHF on SmolLM2-135M in one run: SFT → reward model → PPO and DPO, and PPO/GRPO on a verifiable reward.

Every stage is a leantune run (``leantune.pipeline.train``) in its own subprocess, and
each later stage names the SFT run directory as its ``model:`` (the run's LoRA is merged
in memory; the stage trains a fresh LoRA, whose disabled state is the reference policy).
Data: the ChatterBot English dialog corpus (real, installed offline), turned into
preference pairs by ``leantune.alignment.preference.build_preference_pairs`` (chosen = the
real reply; rejected = a reply from another category, or the real reply shuffled and cut)
and split by prompt, so no held-out prompt is seen by any stage. Template chatml, fp32,
LoRA r16/α32 on all linear layers, constant learning rates (``SETTINGS``).

1. ``sft``: LoRA SFT of SmolLM2-135M-Instruct on the chosen replies: the starting policy π_SFT.
2. ``rm``: Bradley–Terry reward model from the SFT run; pairwise accuracy on held-out pairs.
3. ``ppo-rm``: PPO from π_SFT with the RM as reward. Mean RM reward on held-out prompts
   (``EVAL_SAMPLES`` sampled replies per prompt, and greedy) for π_SFT and for the PPO policy,
   and KL(π‖π_SFT) per response (k1 estimate summed over the reply's tokens) on every
   iteration's rollouts and on the held-out samples. KL bound: ``KL_BOUND`` = 4 nats per
   response, fixed before any run: Ziegler et al. 2019 (arXiv:1909.08593) aimed their
   adaptive KL at 6 nats per 24-token continuation, 0.25 nats a token; 16 tokens → 4 nats.
4. ``dpo``: DPO (TRL) from π_SFT; held-out log π(chosen) − log π(rejected) margin.
5. ``ppo-words`` / ``grpo-words``: PPO and GRPO (TRL) from π_SFT on a verifiable Python
   reward, the built-in ``max_words`` with n = ``WORDS`` (1.0 for a non-empty reply of at
   most n words, n/len beyond, 0 for an empty one); held-out reward before/after.

Replies are at most ``GEN_TOKENS`` new tokens, sampled at temperature 1 without top-k.
The "before" column is π_SFT (each stage evaluates its starting model with the same seed).

    .venv/bin/python benchmarks/rlhf.py                   # full run, one seed: about 15-20 min on 2 idle cores
    .venv/bin/python benchmarks/rlhf.py --seeds 0,1,2     # mean ± std over 3 seeds (3x the time)
    .venv/bin/python benchmarks/rlhf.py --quick --out /tmp/rlhf/rlhf.json   # tiny sizes: the plumbing only
    .venv/bin/python benchmarks/rlhf.py --quick --stages sft,rm --runs-dir /tmp/rlhf/runs --out /tmp/rlhf/rlhf.json
    .venv/bin/python benchmarks/rlhf.py --quick --stages ppo-rm --runs-dir /tmp/rlhf/runs --out /tmp/rlhf/rlhf.json

(with ``--runs-dir``, a run can be split into calls; later calls reuse the earlier stages.)

Sizes (``FULL``): measured in a ``--quick`` run at one thread, in CPU seconds per step (a
busy core's wall time is meaningless; CPU time is what one idle core would take): SFT 2.2,
RM 4.4-6.2, DPO 8.3, PPO 12-13 per iteration of 8 prompts (16-token replies, 4 PPO epochs),
GRPO 9.9 per step of 16 completions; loading and evaluation ≈ 3.5 CPU s per held-out prompt
for the RL stages (greedy + 4 samples + KL, before and after) and 0.2 s per held-out pair.
FULL then costs ≈ 1,800 CPU s (SFT 105, RM 330, PPO-RM 390, DPO 330, PPO-words 335, GRPO
300); two threads run it 1.5-2x faster: 15-20 min, inside the 25-minute budget. One seed
fits; more seeds multiply the time. Writes ``benchmarks/results/rlhf.json`` (or ``--out``)
and the curves next to it: ``rlhf_ppo.png`` (RM reward and KL per PPO iteration),
``rlhf_verifiable.png`` (PPO and GRPO on max_words), ``rlhf_dpo.png`` (margins per step),
``rlhf_rm.png`` (reward-model loss); prints a markdown table and the checks of the issue.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, format_table, machine_facts, peak_rss_mb, run_worker, write_results  # noqa: E402

MODEL, TEMPLATE, MAX_LENGTH, PRECISION = "smollm2-135m", "chatml", 96, "fp32"
GEN_TOKENS, WORDS, EVAL_SAMPLES = 16, 3, 4
KL_BOUND = 4.0          # nats per response (summed over its ≤ GEN_TOKENS tokens), chosen before the runs
MAX_WORDS_PAIR = 24     # pairs whose prompt or replies are longer (in words) are left out
EVAL_FRACTION = 0.15    # share of the prompts held out
LORA = {"name": "lora", "r": 16, "alpha": 32, "targets": "all-linear"}

# Sizes: optimizer steps (PPO: iterations) per stage, examples, eval sets. FULL is the default.
FULL = {"sft_steps": 40, "rm_steps": 60, "dpo_steps": 30, "ppo_steps": 20, "grpo_steps": 20,
        "train_pairs": 640, "eval_pairs": 128, "eval_prompts": 32}
QUICK = {"sft_steps": 4, "rm_steps": 4, "dpo_steps": 3, "ppo_steps": 2, "grpo_steps": 2,
         "train_pairs": 64, "eval_pairs": 16, "eval_prompts": 8}

SETTINGS = {  # learning rates and stage settings (constant schedule, no warm-up)
    "sft": {"lr": 3e-4, "batch_size": 8},
    "rm": {"lr": 2e-4, "batch_size": 8},
    "dpo": {"lr": 1e-4, "batch_size": 8, "stage": {"beta": 0.1, "loss_type": "sigmoid"}},
    "ppo": {"lr": 1e-4, "batch_size": 8,  # prompts per rollout
            "stage": {"kl_coef": 0.1, "ppo_epochs": 4, "mini_batch_size": 8, "temperature": 1.0, "top_k": 0}},
    "grpo": {"lr": 3e-4, "batch_size": 16,  # completions per step: 4 prompts × 4
             "stage": {"num_generations": 4, "beta": 0.0, "temperature": 1.0, "top_k": 0}},
}


# --------------------------------------------------------------------------- data (driver)

def write_data(folder: Path, sizes: dict, seed: int = 0) -> dict:
    """Preference pairs split by prompt; SFT rows (chosen replies) and prompt files for RL."""
    from leantune.alignment.preference import build_preference_pairs
    from leantune.data.builtin import dialog_pairs, write_jsonl

    short = lambda t: len(t.split()) <= MAX_WORDS_PAIR  # noqa: E731
    pairs = [p for p in dialog_pairs("english") if short(p["prompt"]) and short(p["completion"])]
    rows = [r for r in build_preference_pairs(pairs, mode="mixed", seed=seed) if short(r["rejected"])]
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: round(EVAL_FRACTION * len(prompts))])
    train = [r for r in rows if r["prompt"] not in held][: sizes["train_pairs"]]
    evals = [r for r in rows if r["prompt"] in held][: sizes["eval_pairs"]]

    def unique_prompts(rs):
        seen, out = set(), []
        for r in rs:
            if r["prompt"] not in seen:
                seen.add(r["prompt"])
                out.append({"prompt": r["prompt"], "completion": r["chosen"]})
        return out

    files = {
        "pref_train": write_jsonl(train, folder / "pref_train.jsonl"),
        "pref_eval": write_jsonl(evals, folder / "pref_eval.jsonl"),
        "sft_train": write_jsonl([{"prompt": r["prompt"], "completion": r["chosen"]} for r in train],
                                 folder / "sft_train.jsonl"),
        "prompts_train": write_jsonl(unique_prompts(train), folder / "prompts_train.jsonl"),
        "prompts_eval": write_jsonl(unique_prompts(evals)[: sizes["eval_prompts"]], folder / "prompts_eval.jsonl"),
    }
    files["sft_eval"] = files["prompts_eval"]
    counts = {"dialog_pairs": len(pairs), "preference_rows": len(rows), "held_out_prompts": len(held),
              "train_pairs": len(train), "eval_pairs": len(evals),
              "train_prompts": len(unique_prompts(train)), "eval_prompts": min(len(unique_prompts(evals)),
                                                                              sizes["eval_prompts"]),
              "rejected_kinds_train": {k: sum(r["rejected_kind"] == k for r in train) for k in ("mismatch", "corrupt")}}
    return {"files": {k: str(v) for k, v in files.items()}, "counts": counts}


# --------------------------------------------------------------------------- recipes (driver)

def recipes(files: dict, sizes: dict, runs: Path, seed: int) -> dict[str, dict]:
    """The raw recipe of every stage, in the order they run."""
    def raw(name, model, stage, data, kind, steps):
        s = SETTINGS[kind]
        return {"model": model, "method": dict(LORA), "stage": stage,
                "data": {"template": TEMPLATE, **data},
                "train": {"max_steps": steps, "batch_size": s["batch_size"], "lr": s["lr"], "scheduler": "constant",
                          "warmup_ratio": 0.0, "max_length": MAX_LENGTH, "precision": PRECISION, "seed": seed,
                          "logging_steps": 1},
                "eval": {"batch_size": 8, "before": True},
                "output": {"dir": str(runs), "name": name, "overwrite": True}}

    sft, rm = str(runs / "sft"), str(runs / "rm")
    pref = {"train": files["pref_train"], "eval": files["pref_eval"], "format": "preference"}
    prompts = {"train": files["prompts_train"], "eval": files["prompts_eval"], "format": "prompt_completion"}
    gen = {"max_new_tokens": GEN_TOKENS, "eval_samples": EVAL_SAMPLES}
    ppo, grpo = SETTINGS["ppo"]["stage"], SETTINGS["grpo"]["stage"]
    words = {"reward": "max_words", "reward_args": {"n": WORDS}}
    evals = sizes["eval_prompts"]
    return {
        "sft": raw("sft", MODEL, "sft", {"train": files["sft_train"], "eval": files["sft_eval"],
                                         "format": "prompt_completion"}, "sft", sizes["sft_steps"]),
        "rm": raw("rm", sft, "rm", pref, "rm", sizes["rm_steps"]),
        "ppo-rm": raw("ppo-rm", sft, {"name": "ppo", "reward": rm, **gen, **ppo, "eval_max_prompts": evals},
                      prompts, "ppo", sizes["ppo_steps"]),
        "dpo": raw("dpo", sft, {"name": "dpo", **SETTINGS["dpo"]["stage"]}, pref, "dpo", sizes["dpo_steps"]),
        "ppo-words": raw("ppo-words", sft, {"name": "ppo", **words, **gen, **ppo, "eval_max_prompts": evals},
                         prompts, "ppo", sizes["ppo_steps"]),
        "grpo-words": raw("grpo-words", sft, {"name": "grpo", **words, **gen, **grpo}, prompts, "grpo",
                          sizes["grpo_steps"]),
    }


# --------------------------------------------------------------------------- worker

def worker(raw: dict) -> dict:
    """One stage: ``pipeline.train`` on the recipe; also the CPU seconds of the training loop
    alone (``train_cpu_s``) and of the whole process (loading, evaluation before/after)."""
    import torch

    import leantune.pipeline as pipeline
    from leantune.recipe import load_recipe
    from leantune.stages.registry import get_stage_class

    cpu = {}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu["train"] = time.process_time() - t0
        return wrapper

    recipe = load_recipe(raw=raw)
    stage_cls = get_stage_class(recipe.stage["name"])
    if getattr(stage_cls, "custom_loop", False):
        stage_cls.run = timed(stage_cls.run)
    else:
        pipeline.Engine.fit = timed(pipeline.Engine.fit)
    base = {"threads": torch.get_num_threads()}
    try:
        summary = pipeline.train(recipe, progress=False)
    except Exception as exc:  # recorded; the stages that depend on this one are skipped
        return {**base, "status": "error", "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:], "peak_rss_mb": peak_rss_mb()}
    return {**base, "status": "ok", "stage": summary.stage, "steps": summary.steps,
            "train_wall_s": summary.wall_time_s, "train_cpu_s": cpu.get("train"),
            "process_cpu_s": time.process_time(), "trainable_params": summary.trainable_params,
            "train_examples": summary.train_examples, "eval_examples": summary.eval_examples,
            "eval_before": summary.eval_before, "eval_after": summary.eval_after, "history": summary.history,
            "peak_rss_mb": max(summary.peak_memory_mb, peak_rss_mb())}


# --------------------------------------------------------------------------- figures

def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def mean_std(xs: list[float], fmt: str = ".3f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def plot(out: Path, runs: dict[int, dict]) -> list[str]:
    """PNG curves next to the JSON, one line per seed: ``_ppo`` (RM reward and KL per PPO
    iteration), ``_verifiable`` (PPO and GRPO on max_words), ``_dpo`` (margins per step),
    ``_rm`` (Bradley–Terry loss). Crosses: held-out values before (x = 0) and after training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, suffix):
        path = out.with_name(f"{out.stem}_{suffix}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    def finish(ax, **kw):
        ax.set(**kw)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)

    def lines(ax, stage, key, label, per_step=1, held_out=None, held_label="held-out"):
        """``key``: a metric name or a function of one history record; x = step × ``per_step``;
        ``held_out``: the eval metric drawn as crosses at x = 0 (before) and at the last step (after)."""
        for seed, r in runs.items():
            r = r.get(stage) or {}
            pts = [(h["step"] * per_step, key(h) if callable(key) else h.get(key)) for h in r.get("history") or []]
            pts = [(x, y) for x, y in pts if isinstance(y, (int, float))]
            if not pts:
                continue
            name = f"{label} (seed {seed})" if len(runs) > 1 else label
            line, = ax.plot(*zip(*pts), marker=".", label=name)
            marks = [(x, metric(r, when, held_out)) for x, when in ((0, "eval_before"), (pts[-1][0], "eval_after"))
                     if held_out and metric(r, when, held_out) is not None]
            if marks:
                when = "before/after" if len(marks) == 2 else "after"
                seed_note = f" (seed {seed})" if len(runs) > 1 else ""
                ax.plot(*zip(*marks), "x", ms=9, mew=2, color=line.get_color(),
                        label=f"{held_label}, {when}{seed_note}")

    ppo_prompts = SETTINGS["ppo"]["batch_size"]
    grpo_prompts = SETTINGS["grpo"]["batch_size"] // SETTINGS["grpo"]["stage"]["num_generations"]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
    lines(axes[0], "ppo-rm", "reward", "rollouts (train prompts)", held_out="reward_sampled",
          held_label=f"held-out prompts, {EVAL_SAMPLES} samples each")
    finish(axes[0], title="PPO with the reward model: mean RM reward", xlabel="PPO iteration", ylabel="RM reward")
    lines(axes[1], "ppo-rm", "kl", "rollouts, RM reward", held_out="kl", held_label="held-out, RM reward")
    lines(axes[1], "ppo-words", "kl", f"rollouts, ≤ {WORDS} words", held_out="kl",
          held_label=f"held-out, ≤ {WORDS} words")
    axes[1].axhline(KL_BOUND, color="red", ls="--", lw=1, label=f"bound {KL_BOUND:g} nats")
    finish(axes[1], title="PPO: KL(π‖π_SFT) per response", xlabel="PPO iteration", ylabel="nats")
    save(fig, "ppo")

    fig, ax = plt.subplots(figsize=(6.5, 3.9))
    lines(ax, "ppo-words", "reward", "PPO rollouts", per_step=ppo_prompts, held_out="reward_sampled",
          held_label="PPO, held-out")
    lines(ax, "grpo-words", "reward", "GRPO completions", per_step=grpo_prompts, held_out="reward_sampled",
          held_label="GRPO, held-out")
    finish(ax, title=f"Verifiable reward: at most {WORDS} words", xlabel="training prompts seen",
           ylabel="max_words reward")
    save(fig, "verifiable")

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
    lines(axes[0], "dpo", lambda h: h.get("logps/chosen", 0) - h.get("logps/rejected", 0) if "logps/chosen" in h
          else None, "train batches", held_out="logp_margin", held_label="held-out pairs")
    finish(axes[0], title="DPO: log π(chosen) − log π(rejected)", xlabel="step", ylabel="nats")
    lines(axes[1], "dpo", "rewards/margins", "implicit reward margin")
    lines(axes[1], "dpo", "loss", "DPO loss")
    finish(axes[1], title="DPO: β·(Δ chosen − Δ rejected) and loss, train batches", xlabel="step")
    save(fig, "dpo")

    fig, ax = plt.subplots(figsize=(6.5, 3.9))
    lines(ax, "rm", "loss", "Bradley–Terry loss")
    finish(ax, title="Reward model: training loss", xlabel="step")
    save(fig, "rm")
    return written


# --------------------------------------------------------------------------- table

def metric(r: dict | None, when: str, key: str):
    if not r or r.get("status") != "ok":
        return None
    return (r.get(when) or {}).get(key)


def table(runs: dict[int, dict], counts: dict) -> str:
    rs = list(runs.values())

    def get(stage, when, key):
        return [metric(r.get(stage), when, key) for r in rs]

    def ba(stage, key):  # [before, after]
        return [mean_std(get(stage, "eval_before", key)), mean_std(get(stage, "eval_after", key))]

    def wall(stage):
        return mean_std([(r.get(stage) or {}).get("process_wall_s") for r in rs], ".0f")

    def max_kl(stage):
        return [max(series((r.get(stage) or {}).get("history") or [], "kl")[1], default=None) for r in rs]

    held, pairs = f"{counts['eval_prompts']} held-out prompts", f"{counts['eval_pairs']} held-out pairs"
    rows = [
        ["SFT", "eval loss, held-out replies", *ba("sft", "loss"), wall("sft"), ""],
        ["RM", f"pairwise accuracy, {pairs}", *ba("rm", "accuracy"), wall("rm"),
         f"margin r_c − r_r {' → '.join(ba('rm', 'margin'))} (before: untrained head)"],
        ["PPO (RM reward)", f"mean RM reward, {EVAL_SAMPLES} samples × {held}", *ba("ppo-rm", "reward_sampled"),
         wall("ppo-rm"), f"KL per response: max over iterations {mean_std(max_kl('ppo-rm'))}, held-out "
                         f"{mean_std(get('ppo-rm', 'eval_after', 'kl'))}; bound {KL_BOUND:g}"],
        ["", f"mean RM reward, greedy, {held}", *ba("ppo-rm", "reward"), "", ""],
        ["DPO", f"log π(chosen) − log π(rejected), {pairs}",
         *ba("dpo", "logp_margin"), wall("dpo"), f"pref. accuracy {' → '.join(ba('dpo', 'pref_accuracy'))}"],
        [f"PPO (≤ {WORDS} words)", f"mean max_words reward, {EVAL_SAMPLES} samples × {held}",
         *ba("ppo-words", "reward_sampled"), wall("ppo-words"),
         f"KL per response: max over iterations {mean_std(max_kl('ppo-words'))}, held-out "
         f"{mean_std(get('ppo-words', 'eval_after', 'kl'))}"],
        ["", f"mean max_words reward, greedy, {held}", *ba("ppo-words", "reward"), "",
         f"greedy reply tokens {' → '.join(ba('ppo-words', 'response_len'))}"],
        [f"GRPO (≤ {WORDS} words)", f"mean max_words reward, {EVAL_SAMPLES} samples × {held}",
         *ba("grpo-words", "reward_sampled"), wall("grpo-words"),
         f"KL per response, held-out {mean_std(get('grpo-words', 'eval_after', 'kl'))}"],
        ["", f"mean max_words reward, greedy, {held}", *ba("grpo-words", "reward"), "",
         f"greedy reply tokens {' → '.join(ba('grpo-words', 'response_len'))}"],
    ]
    return format_table(["stage", "metric", "before (SFT policy)", "after", "stage wall (s)", "notes"], rows)


def checks(runs: dict[int, dict]) -> dict[str, list[bool | None]]:
    """The issue's claims, per seed (None where the stage did not run). Rewards are compared on
    sampled replies (the quantity RL maximises); greedy rewards are in the table."""
    def up(r, stage, key):
        b, a = metric(r.get(stage), "eval_before", key), metric(r.get(stage), "eval_after", key)
        return None if a is None or b is None else a > b

    out: dict[str, list] = {k: [] for k in ("rm_accuracy_above_0.6", "ppo_rm_reward_up", "ppo_rm_kl_within_bound",
                                            "dpo_margin_up", "ppo_words_reward_up", "grpo_words_reward_up")}
    for r in runs.values():
        acc = metric(r.get("rm"), "eval_after", "accuracy")
        out["rm_accuracy_above_0.6"].append(None if acc is None else acc > 0.6)
        out["ppo_rm_reward_up"].append(up(r, "ppo-rm", "reward_sampled"))
        out["dpo_margin_up"].append(up(r, "dpo", "logp_margin"))
        out["ppo_words_reward_up"].append(up(r, "ppo-words", "reward_sampled"))
        out["grpo_words_reward_up"].append(up(r, "grpo-words", "reward_sampled"))
        ppo = r.get("ppo-rm") or {}
        kls, held = series(ppo.get("history") or [], "kl")[1], metric(ppo, "eval_after", "kl")
        out["ppo_rm_kl_within_bound"].append(None if not kls or held is None
                                             else max(kls) <= KL_BOUND and held <= KL_BOUND)
    return out


# --------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the plumbing in a few minutes")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (the data split is fixed)")
    ap.add_argument("--stages", help="comma-separated subset of sft,rm,ppo-rm,dpo,ppo-words,grpo-words "
                                     "(the stages they need must be in it too)")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per stage before it is abandoned")
    ap.add_argument("--out", default=str(RESULTS / "rlhf.json"), help="JSON file to write (PNGs next to it)")
    ap.add_argument("--runs-dir", help="keep the run directories and per-stage results here (default: a "
                                       "temporary folder); with --stages, the other stages' results already "
                                       "there are reused (a long run can be split into several calls)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        emit(worker(json.loads(a.worker)))
        return

    sizes = QUICK if a.quick else FULL
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    facts = machine_facts()
    print(f"# RLHF benchmark on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch threads "
          f"{facts.get('torch_threads')}), load average {facts['load_average_at_start']}", flush=True)
    needs = {"rm": ["sft"], "ppo-rm": ["sft", "rm"], "dpo": ["sft"], "ppo-words": ["sft"], "grpo-words": ["sft"]}
    results: dict[int, dict] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlhf_bench_") as tmp:
        folder = Path(a.runs_dir or tmp)
        data = write_data(folder / "data", sizes)
        print(f"data: {json.dumps(data['counts'])}", flush=True)
        for seed in seeds:
            runs = folder / f"runs-seed{seed}"
            stage_recipes = recipes(data["files"], sizes, runs, seed)
            wanted = [s.strip() for s in a.stages.split(",")] if a.stages else list(stage_recipes)
            results[seed] = {}
            for name, raw in stage_recipes.items():
                saved = runs / f"{name}.result.json"
                if name not in wanted:  # a stage run by an earlier call with the same --runs-dir
                    if saved.is_file():
                        results[seed][name] = {**json.loads(saved.read_text()), "reused": True}
                    continue
                missing = [n for n in needs.get(name, []) if (results[seed].get(n) or {}).get("status") != "ok"]
                if missing:
                    results[seed][name] = {"status": "skipped", "message": f"needs {', '.join(missing)}"}
                    print(f"  seed {seed} {name:>10}: skipped (needs {', '.join(missing)})", flush=True)
                    continue
                t0 = time.perf_counter()
                try:
                    r = run_worker(Path(__file__), ["--worker", json.dumps(raw)], timeout=a.timeout)
                except Exception as exc:  # subprocess.TimeoutExpired
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                if "error" in r and "status" not in r:
                    r = {"status": "error", "message": r["error"], "stderr_tail": r.get("stderr_tail", "")}
                r["process_wall_s"] = round(time.perf_counter() - t0, 1)
                r["recipe"] = raw
                results[seed][name] = r
                if a.runs_dir:
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    saved.write_text(json.dumps(r, default=str))
                if r["status"] == "ok":
                    steps = max(1, r["steps"])
                    print(f"  seed {seed} {name:>10}: {r['steps']} steps, {r['train_wall_s'] / steps:.2f} s/step "
                          f"({r['train_cpu_s'] / steps:.2f} CPU s), process {r['process_wall_s']:.0f} s "
                          f"({r['process_cpu_s']:.0f} CPU s), peak RSS {r['peak_rss_mb']:.0f} MB; "
                          f"before {r['eval_before']} → after {r['eval_after']}", flush=True)
                else:
                    print(f"  seed {seed} {name:>10}: {r['status']}: {r.get('message')}", flush=True)
                    print("\n".join("    " + ln for ln in (r.get("traceback") or r.get("stderr_tail") or
                                                           "").splitlines()[-10:]), flush=True)

    total = round(time.perf_counter() - t_all, 1)
    command = " ".join([".venv/bin/python benchmarks/rlhf.py", *sys.argv[1:]])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = plot(out, results)
    stage_wall = sum(r.get("process_wall_s") or 0 for rs in results.values() for r in rs.values())
    split = any(r.get("reused") for rs in results.values() for r in rs.values())
    markdown = (f"Measured with `{command}` on {facts['cpu_model']} ({facts['usable_cpus']} CPUs, torch "
                f"{facts['versions'].get('torch')}, {facts['date_utc'][:10]}), seeds {seeds}, total wall time "
                f"{total / 60:.1f} min" + (f" in this call; the stages, partly run by earlier calls, took "
                                           f"{stage_wall / 60:.1f} min in all" if split else "")
                + ".\n\n" + table(results, data["counts"]))
    verdicts = checks(results)
    print("\n" + markdown + "\n")
    print("checks: " + ", ".join(f"{k} {v}" for k, v in verdicts.items()))
    payload = {
        "benchmark": "rlhf",
        "command": command,
        "conditions": {
            "model": MODEL, "method": LORA, "template": TEMPLATE, "precision": PRECISION, "max_length": MAX_LENGTH,
            "data": "ChatterBot English dialog corpus (chatterbot-corpus); pairs with prompt and replies of at most "
                    f"{MAX_WORDS_PAIR} words; preference pairs mode=mixed, split by prompt ({EVAL_FRACTION:.0%} of "
                    "prompts held out)",
            "data_counts": data["counts"], "sizes": sizes, "settings": SETTINGS, "scheduler": "constant, no warm-up",
            "generation": {"max_new_tokens": GEN_TOKENS, "temperature": 1.0, "top_k": 0,
                           "eval": f"greedy, and {EVAL_SAMPLES} sampled replies per held-out prompt"},
            "verifiable_reward": f"max_words n={WORDS}: 1.0 for a non-empty reply of at most {WORDS} words, "
                                 f"{WORDS}/len beyond, 0.0 when empty",
            "kl_bound": {"nats_per_response": KL_BOUND,
                         "what": "KL(π‖π_SFT) summed over a response's tokens (k1 estimator, temperature 1), "
                                 f"averaged over the rollout batch at every PPO iteration and over {EVAL_SAMPLES} "
                                 "sampled replies per held-out prompt after training; must stay ≤ the bound"},
            "seeds": seeds,
        },
        "machine": facts,
        "total_wall_s": total,
        "stages_wall_s": round(stage_wall, 1),
        "markdown": markdown,
        "checks": verdicts,
        "figures": pngs,
        "runs": {str(k): v for k, v in results.items()},
    }
    write_results(out, payload)
    print(f"wrote {out} and {', '.join(Path(p).name for p in pngs)} in {total:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
