"""Where leantune's LoRA SFT step spends its time beyond the big matmuls (torch.profiler).

The benchmark's setting (SmolLM2-135M, LoRA r16 all-linear, batch 8, ≤128 tokens, the
ChatterBot pairs, length-grouped batches, no checkpointing); a few optimizer steps after
one warm-up step, in fp32 and under bf16 autocast (frozen weights in bf16, as ``model.dtype: auto``
loads them on a bf16 CPU). Operator self time is grouped into:
big matmuls (the model's linear layers and LM head), LoRA's A/B matmuls (one side of
rank r), attention, casts/copies, the optimizer step, and other operators; what the
profiler does not attribute to an operator is Python and framework overhead.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/sft_profile.py --steps 4
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_workers import BATCH, LORA, LR, MAX_LENGTH, MODEL, SEED, leantune_features  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int4pack_mm"}
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")
CASTS = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"}


def category(name: str, shapes: list) -> str:
    if name in MATMULS:
        dims = [d for shape in shapes if shape for d in shape]
        return "LoRA A/B matmuls" if LORA["r"] in dims else "big matmuls"
    if any(a in name for a in ATTENTION):
        return "attention"
    if name in CASTS:
        return "casts and copies"
    if "_foreach_" in name or "adam" in name.lower() or "Optimizer" in name:
        return "optimizer"
    return "other operators"


def profile(precision: str, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity

    from leantune.methods.registry import build_method
    from leantune.models.loading import load_model, load_tokenizer, resolve_model_path
    from leantune.recipe import Recipe
    from leantune.training.device import keep_fp32_master_weights
    from leantune.training.engine import Engine, seed_everything

    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    stage, features = leantune_features(tokenizer)
    recipe = Recipe.model_validate({
        "model": MODEL, "method": [{"name": "lora", **LORA}],
        "train": {"batch_size": BATCH, "max_length": MAX_LENGTH, "lr": LR["lora"], "max_steps": steps + 1,
                  "precision": precision, "seed": SEED, "logging_steps": 1, "group_by_length": True},
    })
    seed_everything(SEED)
    method = build_method(recipe.method[0])
    dtype = "bfloat16" if precision == "bf16" else "float32"  # model.dtype auto on a bf16 CPU (pipeline._model_dtype)
    model = method.apply(load_model(path, "causal_lm", dtype, pad_token_id=tokenizer.pad_token_id), "causal_lm")
    keep_fp32_master_weights(model)
    prof = torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    marks: dict[str, float] = {}

    def after_step(m, step):  # profile steps 2 … steps+1: the first builds the optimizer state
        if step == 1:
            prof.start()
            marks["t0"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(model, features, recipe.train, Path(run_dir), stage.collate, stage.loss,
                        after_optimizer_step=after_step, progress=False)
        engine.fit()
    wall = time.perf_counter() - marks["t0"]
    prof.stop()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        totals[category(event.key, event.input_shapes)] += event.self_cpu_time_total / 1e6
    totals["Python and framework (not in an operator)"] = max(0.0, wall - sum(totals.values()))
    return {"precision": precision, "steps": steps, "wall_s": wall,
            "seconds_per_step": {k: v / steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "top_operators": [(e.key, round(e.self_cpu_time_total / 1e6 / steps, 4), e.count // steps)
                              for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="profiled steps (after one warm-up step)")
    ap.add_argument("--precisions", default="fp32,bf16")
    a = ap.parse_args()
    for precision in a.precisions.split(","):
        r = profile(precision, a.steps)
        print(f"\n## {precision}: {r['wall_s'] / a.steps:.3f} s a step ({a.steps} steps)")
        for name, s in r["seconds_per_step"].items():
            print(f"  {name:45s} {s:7.3f} s  {100 * s * a.steps / r['wall_s']:5.1f}%")
        print("  top operators (self s/step, calls/step):")
        for name, s, calls in r["top_operators"]:
            print(f"    {name:45s} {s:7.4f} {calls:6d}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
