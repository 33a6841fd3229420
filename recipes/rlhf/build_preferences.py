"""Build preference pairs from the ChatterBot dialog corpus (real data, installed offline).

    .venv/bin/python recipes/rlhf/build_preferences.py [OUT_DIR] [LIMIT]

Writes OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl (default OUT_DIR: data/rlhf) in the
``preference`` format, plus OUT_DIR/sft.jsonl (prompt/completion) and
OUT_DIR/prompts.jsonl (prompts for PPO). The real reply is *chosen*; the *rejected* reply is
either a real reply from another category of the corpus (off-topic but fluent) or the
real reply with its words shuffled and cut (see ``leantune.alignment.preference``).
Train and eval are split by prompt (10% of the prompts held out), so no eval prompt is
seen in training.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from leantune.alignment.preference import build_preference_pairs
from leantune.data.builtin import dialog_pairs, write_jsonl


def main(out_dir: str = "data/rlhf", limit: int | None = None, seed: int = 0, eval_fraction: float = 0.1) -> None:
    out = Path(out_dir)
    pairs = dialog_pairs("english")
    rows = build_preference_pairs(pairs, mode="mixed", seed=seed, limit=limit)
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: max(1, round(eval_fraction * len(prompts)))])
    train = [r for r in rows if r["prompt"] not in held]
    evals = [r for r in rows if r["prompt"] in held]
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(evals, out / "eval.jsonl")
    write_jsonl([{"prompt": r["prompt"], "completion": r["chosen"]} for r in train], out / "sft.jsonl")
    write_jsonl([{"prompt": r["prompt"], "completion": r["chosen"]} for r in evals], out / "sft_eval.jsonl")
    print(f"{len(train)} train / {len(evals)} eval preference pairs from {len(pairs)} dialog pairs → {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/rlhf", int(sys.argv[2]) if len(sys.argv) > 2 else None)
