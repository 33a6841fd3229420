"""Guidance: estimate memory, advise an approach, compare methods or stages."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Column, Table

from ..errors import LeantuneError
from .app import app, console, detail_table, quiet_libraries, user_errors


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MB" if b < 10 * 2**30 else f"{b / 2**30:,.1f} GB"


def _metric_names(text: str | None, prove: bool) -> list[str] | None:
    """``--metrics rouge_l,bleu`` → the names, checked as the recipe checks eval.metrics."""
    if text is None:
        return None
    if not prove:
        raise LeantuneError("advise --metrics ranks the candidates advise --prove trains: add --prove")
    from pydantic import ValidationError

    from ..recipe import EvalSection
    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        return EvalSection(metrics=names).metrics
    except ValidationError as e:
        raise LeantuneError(f"advise --metrics {text!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


@app.command()
@user_errors
def estimate(
        model: Optional[str] = typer.Argument(None, help=(
            "Packaged name, model folder, config.json, hub id (local HF cache or built-in table: "
            "meta-llama/Llama-3.1-8B, qwen2.5-7b, …) or raw numbers.")),
        method: str = typer.Option("lora", "--method", "-m", help="Method, or a composition a+b."),
        precision: Optional[str] = typer.Option(
            None, "--precision", help="auto (GPU default: frozen weights bf16, fp16 before Ampere; trainable fp32 "
                                      "master weights; autocast), fp32, bf16 or fp16 (pure half), mixed (fp32 "
                                      "weights, half activations). Default: auto on GPUs, fp32 on CPU."),
        quant: str = typer.Option("none", "--quant", help="none or nf4 (qlora implies nf4)."),
        double_quant: bool = typer.Option(True, "--double-quant/--no-double-quant"),
        optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, sgd."),
        batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Micro-batch per GPU."),
        grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="Gradient accumulation steps."),
        seq_len: int = typer.Option(512, "--seq-len", "--max-length", "-s", min=1, help="Tokens per sequence (the recipe's train.max_length)."),
        checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing"),
        cpu_heap: str = typer.Option("reuse", "--cpu-heap", help="CPU: reuse (the default, faster) or release "
                                                                 "(freed activations back to the OS: train.cpu_heap)."),
        label_fraction: float = typer.Option(1.0, "--label-fraction", min=0.0, max=1.0,
                                             help="Share of positions with labels (logits are computed there only)."),
        head: Optional[str] = typer.Option(None, "--head", help="causal_lm, seq_cls, masked_lm, seq2seq."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda with --gpu, --gpus, "
                                                                    "--strategy or --offload, else cpu)."),
        gpus: int = typer.Option(1, "--gpus", min=1, help="Data-parallel processes, one GPU each."),
        strategy: str = typer.Option("ddp", "--strategy", help="ddp, zero1, zero2, zero3 or fsdp (full shard)."),
        offload: str = typer.Option("none", "--offload", help="none, optimizer, or cpu/all (with zero3 and fsdp "
                                                              "also the parameters) to host memory."),
        gpu: Optional[str] = typer.Option(None, "--gpu", help="The budget of a GPU: a100-80g, a100-40g, h100, h200, "
                                                              "l4, l40s, 4090, 3090, t4, v100, a10g."),
        budget: Optional[str] = typer.Option(None, "--budget", help="Memory budget per GPU, e.g. 24GB, 512MB "
                                                                    "(default: the --gpu's, else 24GB)."),
        max_batch: bool = typer.Option(False, "--max-batch", help="Also find the largest micro-batch that fits."),
        params: Optional[str] = typer.Option(None, "--params", help="Raw numbers: parameter count, e.g. 7B."),
        layers: int = typer.Option(0, "--layers"), hidden: int = typer.Option(0, "--hidden"),
        vocab: int = typer.Option(32000, "--vocab"), heads: int = typer.Option(0, "--heads"),
        intermediate: Optional[int] = typer.Option(None, "--intermediate"),
        kv_heads: Optional[int] = typer.Option(None, "--kv-heads"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table.")):
    """Estimate peak training memory per GPU: weights, trainable, gradients, optimizer, activations, logits."""
    quiet_libraries()
    from ..guide.gpus import find_gpu
    from ..guide.model_shape import load_shape, parse_size, shape_from_numbers
    from ..guide.peak_memory import Setting, suggestions, verdict
    from ..guide.peak_memory import estimate as run_estimate
    from ..guide.peak_memory import max_batch as find_max_batch

    if model is None and not (layers and hidden and heads):
        raise LeantuneError("estimate: give a model, or raw numbers --layers --hidden --heads (--params --vocab)")
    if cpu_heap not in ("reuse", "release"):
        raise LeantuneError(f"estimate --cpu-heap {cpu_heap!r}: use reuse or release")
    try:
        card = find_gpu(gpu) if gpu else None
        multi = card is not None or gpus > 1 or strategy != "ddp" or offload != "none"
        device = device or ("cuda" if multi else "cpu")
        precision = precision or ("auto" if device == "cuda" else "fp32")
        shape = load_shape(model, head) if model else shape_from_numbers(
            params, layers, hidden, vocab, heads, intermediate, kv_heads)
        setting = Setting(method=[{"name": n} for n in method.split("+")], precision=precision, quant=quant,
                          double_quant=double_quant, optimizer=optimizer, batch_size=batch_size, seq_len=seq_len,
                          grad_accum=grad_accum, gradient_checkpointing=checkpointing, label_fraction=label_fraction,
                          head=head, device=device, gpus=gpus, strategy=strategy, offload=offload, cpu_heap=cpu_heap,
                          weight_dtype=card.half if card and precision == "auto" else None)
        est = run_estimate(shape, setting)
        limit = parse_size(budget) if budget else card.usable_bytes if card else parse_size("24GB")
        budget_text = budget or (f"{card.name} ({card.memory_gib:g} GiB)" if card else "24GB")
        largest = (find_max_batch(shape, setting, limit), find_max_batch(shape, setting, 0.8 * limit)) \
            if max_batch else None
    except (ValueError, KeyError) as exc:
        raise LeantuneError(f"estimate: {exc}") from None
    if as_json:
        extra = {"budget_bytes": limit, "verdict": verdict(est, limit)}
        if largest:
            extra.update(max_batch=largest[0], max_batch_fits=largest[1])
        console.print_json(json.dumps({**est.as_dict(), **extra}))
        return
    # the setting as a heading that wraps at words (a table title would wrap at the narrow table's width)
    half = est.setting["weight_dtype"]
    prec = f"{half} autocast, fp32 trainable" if half and half != "fp32" else est.setting["precision"]
    where = (f" · {gpus} GPUs {strategy}" if gpus > 1 else f" · 1 GPU{'' if strategy == 'ddp' else ' ' + strategy}") \
        if device == "cuda" else ""
    console.print(f"[bold]{escape(shape.name)}[/] · {est.method} · {prec}"
                  f"{' · nf4' if est.setting['quant'] == 'nf4' else ''} · {optimizer} · batch {batch_size} × {seq_len}"
                  f"{f' × {grad_accum} accumulated' if grad_accum > 1 else ''}"
                  f"{' · checkpointing' if checkpointing else ''}{where}"
                  f"{f' · offload {offload}' if offload != 'none' else ''}", highlight=False)
    columns = ["component", Column("per GPU" if device == "cuda" else "memory", justify="right")]
    if est.host:
        columns.append(Column("host", justify="right"))
    table = Table(*columns)
    for key, value in est.components.items():
        table.add_row(key, _mb(value), *([_mb(est.host[key]) if key in est.host else ""] if est.host else []))
    host_total = sum(est.host.values())
    table.add_row("[bold]total", f"[bold]{_mb(est.total)}", *([f"[bold]{_mb(host_total)}"] if est.host else []))
    console.print(table)
    pct = 100 * est.trainable_params / max(est.total_params, 1)
    console.print(f"trainable parameters: {est.trainable_params:,} of {est.total_params:,} ({pct:.3f}%)\n"
                  f"parameter count: {'exact (meta-device model)' if est.count_source == 'meta' else 'closed-form'}",
                  highlight=False)
    if gpus > 1 or grad_accum > 1:
        console.print(f"effective batch: {batch_size} × {grad_accum} × {gpus} GPU{'s' if gpus > 1 else ''} = "
                      f"{batch_size * grad_accum * gpus} sequences per optimizer step", highlight=False)
    for note in est.notes:
        console.print(f"[dim]{escape(note)}", highlight=False)
    v = verdict(est, limit)
    color = {"fits": "green", "tight": "yellow"}.get(v, "red")
    console.print(f"verdict against {escape(budget_text)}{' per GPU' if device == 'cuda' else ''}: [bold {color}]{v}[/]")
    if largest:
        console.print(f"largest micro-batch within {escape(budget_text)}: {largest[0]} (within 80 %: {largest[1]})"
                      if largest[0] else f"not even batch 1 fits {escape(budget_text)}", highlight=False)
    if v != "fits":
        for line in suggestions(shape, setting, limit):
            console.print(f"  try {escape(line)}", highlight=False)


@app.command()
@user_errors
def advise(
        data_file: Optional[Path] = typer.Argument(None, metavar="[DATA]",
                                                   help="Your data file: read for its format, examples, labels, lengths."),
        task: Optional[str] = typer.Option(None, "--task", help="classification, generation, extraction, summarization, qa "
                                                                 "(default: from DATA, else classification)."),
        labelled: Optional[int] = typer.Option(None, "--labelled", "-n", min=0,
                                               help="Number of labelled examples (without DATA; DATA wins)."),
        unlabelled: bool = typer.Option(False, "--unlabelled/--no-unlabelled", help="Unlabelled in-task text is available."),
        low_resource: bool = typer.Option(False, "--low-resource/--no-low-resource",
                                          help="Low-resource language or specialised domain."),
        tasks: int = typer.Option(1, "--tasks", min=1, help="Number of tasks to serve from one base model."),
        memory: str = typer.Option("24GB", "--budget", "--memory", help="Memory budget, e.g. 24GB."),
        gpu: Optional[str] = typer.Option(None, "--gpu", help="A GPU name instead of --budget: t4, a10, l4, a100-40gb, "
                                                              "a100, h100, 3090, 4090 or anything ending in NNGB."),
        time_h: Optional[float] = typer.Option(None, "--time", help="Time budget in hours."),
        model: Optional[str] = typer.Option(None, "--model", help="Model (default: minilm-l6 / smollm2-135m)."),
        data: Optional[str] = typer.Option(None, "--data", help="Training file written into the recipes (default: DATA)."),
        max_length: int = typer.Option(512, "--max-length", min=16, help="Longest train.max_length a recipe may get."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write one recipe per approach here (with --prove: "
                                                               "OUT/recipes, and the proof in OUT)."),
        prove: bool = typer.Option(False, "--prove", help="Train the top candidates on DATA and keep the measured best."),
        top: int = typer.Option(3, "--top", min=1, help="--prove: how many candidates."),
        budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", min=0,
                                                       help="--prove: start no candidate after this many minutes."),
        isolate: bool = typer.Option(True, "--isolate/--in-process", help="--prove: one process per candidate."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="--prove: generation candidates also answer the "
                                                                      "held-out examples and are ranked by the first of "
                                                                      "these eval.metrics, e.g. rouge_l,exact_match.")):
    """Rank approaches for your data and budget and say why; write recipes (--out); prove the pick (--prove)."""
    from rich.padding import Padding
    from rich.text import Text

    from ..guide.consult import check_request, consult

    check_request(data_file, task, labelled)
    if prove and (data_file is None or out is None):
        raise LeantuneError("advise --prove needs a DATA file and --out DIR")
    metric_names = _metric_names(metrics, prove)
    quiet_libraries()
    if prove:
        from ..workflows.prove import check_prove_dir
        from ..workflows.prove import prove as run_prove
        check_prove_dir(out)
    found = consult(data_file, task=task, labelled=labelled, unlabelled=unlabelled, low_resource=low_resource,
                    tasks=tasks, memory=memory, gpu=gpu, time_h=time_h, model=model, data=data,
                    max_length=max_length, recipes_dir=(out / "recipes") if (prove and out) else out)

    def say(m: str, style: str = "", indent: int = 0) -> None:  # wraps at the terminal width, indented
        console.print(Padding(Text(m, style=style), (0, 0, 0, indent)))
    for line in found.facts_lines:
        say(line)
    say(found.header, "dim")
    for note in found.notes:
        say(f"note: {note}", "yellow")
    rows = []
    for r in found.rows():
        mem = "" if r["memory_mb"] is None else f"~{r['memory_mb']:,.0f} MB" + ("" if r["fits"] else " (over)")
        rows.append(([(f"{r['rank']}. {r['approach']}", "bold"), r["model"] and f"on {r['model']}",
                      f"score {r['score']}", mem],
                     [*r["reasons"], (r["note"], "red"), (r["recipe_line"], "dim"),
                      (r["recipe"] and f"→ {r['recipe']}", "dim")]))
    console.print(detail_table("approach", "why", rows))
    if found.dropped:
        say("left out (cannot run here):", "bold")
        for why in found.dropped:
            say(f"- {why}", indent=3)
    if not prove:
        return
    say("")
    result = run_prove(found.ranking.advice, data_file, out, top=top, budget_minutes=budget_minutes, isolate=isolate,
                       metrics=metric_names, say=lambda m: console.print(m, highlight=False))
    for r in result.compare.rows:
        val = "failed" if r["metric"] is None else f"{result.compare.metric} {r['metric']:.4f}"
        wall = "" if r["wall_time_s"] is None else f", {r['wall_time_s']:.0f} s"
        say(f"{r['variant']}: {val}{wall}", indent=3)
    for name in result.skipped:
        say(f"{name}: not started (time budget)", indent=3)
    if result.winner:
        w = result.winner
        say(f"measured winner: {w['approach']} ({w['metric']} {w['value']:.4f} on "
            f"{result.split.val_size} held-out examples)", "bold green")
        say(f"recipe: {w['recipe']} (trains on all of {data_file})")
    else:
        say("no candidate finished: no winner", "red")
    charts = ", ".join(str(c) for c in result.compare.charts) or "none"
    say(f"table: {out / 'compare.md'}; charts: {charts}", "dim")


@app.command()
@user_errors
def compare(recipe: Path = typer.Argument(..., help="Recipe YAML file: model, data, stage, budget."),
            methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated, e.g. lora,bitfit,adapter,full."),
            stages: Optional[str] = typer.Option(None, "--stages", help="Comma-separated stages, e.g. cls,pet,icl."),
            out: Path = typer.Option(Path("runs/compare"), "--out", help="Output folder (resumable)."),
            overrides: list[str] = typer.Argument(None, help="key.path=value overrides applied to every run."),
            isolate: bool = typer.Option(True, "--isolate/--in-process", help="One process per run (own peak memory).")):
    """Train the same recipe with several methods (or stages); table and charts in --out."""
    quiet_libraries()
    from ..recipe import load_recipe
    from ..workflows.compare import compare as run_compare

    raw = load_recipe(recipe, overrides or []).model_dump(mode="json")
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    result = run_compare(raw, methods=split(methods), stages=split(stages), out_dir=out, base_dir=recipe.parent,
                         isolate=isolate, say=lambda m: console.print(m, highlight=False))
    table = Table("variant", result.metric or "metric", "trainable", "wall s", "peak MB", "estimated MB", "status")
    for r in result.rows:
        table.add_row(r["variant"], "" if r["metric"] is None else f"{r['metric']:.4f}",
                      "" if r["trainable_params"] is None else f"{r['trainable_params']:,}",
                      "" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}",
                      "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
                      "" if r["estimate_mb"] is None else f"{r['estimate_mb']:.0f}", escape(r["status"]))
    console.print(table)
    console.print(f"table: [bold]{out / 'compare.md'}[/]; charts: {', '.join(c.name for c in result.charts) or 'none'}")
