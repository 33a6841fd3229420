"""One run, end to end: recipe → model → method → data → stage → engine → evaluation → run dir.

The CLI, ``compare`` and the tests all call :func:`train`; nothing here prints
except through the ``say`` callback.
"""
from __future__ import annotations

import json
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_dir, atomic_write_text, check_output
from .data.formats import FORMATS, load_examples
from .data.loading import load_data
from .errors import LeantuneError, RecipeError
from .evaluation.forgetting import forgetting_probe
from .evaluation.generate import generate_answers
from .evaluation.generation_eval import check_ranking_metric, generation_eval, ranking_metric, write_predictions
from .export.run_loading import load_run
from .export.ship import ship_folder
from .guide.estimate import estimate_before_training
from .methods.registry import build_method
from .models.loading import count_parameters, load_config, load_model, load_tokenizer, resolve_model_path
from .models.reference import record_base
from .prompting.documentation import CORPUS_KEY, Documentation, documentation_for, documentation_of_run
from .recipe import Recipe
from .report.run_report import write_report
from .run_dir import FINISHED_MARK, RUN_META, check_run_dir, has_checkpoints, open_run_dir
from .stages.registry import build_stage, half_weights_on_cpu
from .training.compile import check_compiler
from .training.device import autocast_context, keep_fp32_master_weights, move_to_device, recorded_precision_on
from .training.engine import Engine, count_total_steps, seed_everything
from .training.runtime import Runtime, build_runtime, check_method_fits
from .training.trackers import check_trackers, report_metrics


@dataclass
class RunSummary:
    name: str
    run_dir: str
    model: str
    method: str
    stage: str
    trainable_params: int
    total_params: int
    train_examples: int
    eval_examples: int
    steps: int = 0
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    precision: str = "fp32"
    peak_memory_mb: float = 0.0
    memory_kind: str = "peak RSS"
    device: str = "cpu"
    processes: int = 1
    effective_batch: int = 0             # examples per optimizer step: per device × processes × grad_accum
    eval_before: dict | None = None
    eval_after: dict | None = None
    samples: list[tuple[str, str, str]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    estimate_mb: float | None = None     # peak memory estimated before training (guide/estimate.py)
    estimate: dict | None = None         # its components and inputs
    metric: str | None = None            # what compare and advise --prove rank by (eval.metric)
    generation: dict | None = None       # eval.metrics: the metrics and the examples answered

    def as_dict(self) -> dict:
        return asdict(self)


def peak_memory_mb(device: torch.device | None = None) -> tuple[float, str]:
    """This process's peak: CUDA memory allocated on a GPU run, resident memory on a CPU run."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak CUDA allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"


def _model_dtype(recipe: Recipe, runtime: Runtime, stage) -> str:
    """``model.dtype: auto``: the run's half type where it trains in one: on a GPU, and on a CPU
    training in bf16 where ``half_weights_on_cpu`` says so. Frozen weights take half the memory
    and autocast no longer re-casts them at every forward (LoRA SFT of SmolLM2-135M on one Xeon
    core: 26 → 35 response tokens/s, 2.75 → 2.23 GB); trainable ones are kept in fp32
    (``keep_fp32_master_weights``). Else fp32."""
    if recipe.model.dtype != "auto":
        return recipe.model.dtype
    if runtime.device.type == "cuda":
        return {"bf16": "bfloat16", "fp16": "float16"}.get(runtime.precision, "float32")
    if runtime.precision == "bf16" and half_weights_on_cpu(stage, recipe.method):
        return "bfloat16"
    return "float32"


def _in_run_precision(runtime: Runtime):
    """An autocast context (fresh per use) for evaluation in the run's precision, as training did
    and as HF ``Trainer`` evaluates under its mixed precision. On a CPU with AMX this is the
    difference between fp32 and bf16 matrix units (classification evaluation of MiniLM-L6 on one
    Xeon core: ``benchmarks/eval_speed.py``)."""
    return autocast_context(runtime.precision, runtime.device)[0]


def _load_kwargs(method, runtime: Runtime) -> dict:
    """The method's loading arguments; a quantized (QLoRA) model goes straight to this process's GPU."""
    kwargs = dict(method.load_kwargs())
    if "quantization_config" in kwargs and runtime.device.type == "cuda":
        kwargs["device_map"] = {"": runtime.device.index or 0}
    return kwargs


def train(recipe: Recipe, *, resume: bool = False, base_dir: Path | None = None, progress: bool = True,
          say: Callable[[str], None] = lambda s: None) -> RunSummary:
    runtime = build_runtime(recipe.train)
    if not runtime.is_main:
        say, progress = (lambda s: None), False
    run_dir = check_run_dir(recipe, resume)
    check_trackers(recipe.train.report_to)
    if recipe.train.compile:
        check_compiler(runtime.device)
    runtime.barrier()  # every process checked the run directory before rank 0 creates it
    seed_everything(recipe.train.seed)
    stage = build_stage(recipe.stage)
    if runtime.distributed and not stage.multi_process:
        raise RecipeError(f"stage {stage.name} runs its own loop in one process; start it without --nproc "
                          f"(and outside torchrun / accelerate launch)")
    stage.device = runtime.device
    if recipe.train.adversarial is not None and stage.custom_loop and not getattr(stage, "adversarial_ok", False):
        raise RecipeError(f"train.adversarial: stage {stage.name} runs its own training loop, which does not "
                          f"apply adversarial training; use a stage trained by the shared engine")
    method = build_method(recipe.method)  # several entries: a Composite
    check_method_fits(runtime, [m["name"] for m in recipe.method])
    train_examples, eval_examples = load_data(recipe, stage, base_dir, say)

    model_path = resolve_model_path(recipe.model.name)
    tokenizer = load_tokenizer(model_path, recipe.model.trust_remote_code)
    config = load_config(model_path, recipe.model.trust_remote_code)
    stage.head_name = stage.head(config.model_type, config.is_encoder_decoder)
    docs = documentation_for(recipe, base_dir)
    if docs is not None:
        train_examples, eval_examples = _with_documentation(docs, recipe, stage, tokenizer, train_examples,
                                                            eval_examples, say)
    data = stage.prepare(recipe, tokenizer, train_examples, eval_examples)
    gen = generation_eval(recipe, stage, eval_examples, base_dir)  # eval.metrics, checked before training
    stage.place(runtime.device)
    tok = data.info.get("tokenize", {})
    if tok.get("truncated"):
        say(f"[yellow]{tok['truncated']} training example(s) longer than train.max_length={recipe.train.max_length} were truncated")
    if tok.get("dropped_empty"):
        say(f"[yellow]{tok['dropped_empty']} example(s) had no response tokens left after truncation and were dropped")

    estimate, trained = estimate_before_training(
        recipe, config, data.train, stage.head_name, len(data.labels) if data.labels else None, runtime.device.type,
        runtime.local_processes, say) if stage.trains else (None, recipe)
    forgetting = (forgetting_probe(recipe.eval.forgetting, tokenizer, base_dir, stage.head_name)
                  if stage.trains else None)  # eval.forgetting: files read before the model loads
    model_dtype = _model_dtype(recipe, runtime, stage)
    model = load_model(model_path, stage.head_name, model_dtype, recipe.model.trust_remote_code,
                       _load_kwargs(method, runtime), labels=data.labels, pad_token_id=tokenizer.pad_token_id)
    model = move_to_device(model, runtime.device)
    if not stage.trains:
        return evaluate_only(recipe, stage, model, tokenizer, data, run_dir, model_path, say, runtime)
    eval_bs = recipe.eval.batch_size
    prompts = recipe.eval.prompts if stage.head_name == "causal_lm" else []
    before, answers_before = None, []
    evaluates = runtime.is_main or runtime.sharded  # a sharded model needs every process in its forward
    if recipe.eval.before and data.eval and evaluates:
        say("evaluating the base model …")
        with _in_run_precision(runtime):
            before = stage.evaluate(model, data.eval, eval_bs)
    rows_before: list[dict] = []
    if gen and recipe.eval.before and evaluates:
        say(f"answering {len(gen.items)} held-out examples for eval.metrics …")
        with _in_run_precision(runtime):
            scores, rows_before = gen.run(model, tokenizer)
        before = {**(before or {}), **scores}
    if forgetting is not None and recipe.eval.before and evaluates:
        say("forgetting probe on the base model …")
        with _in_run_precision(runtime):
            before = {**(before or {}), **forgetting.measure(model, eval_bs)}
    check_ranking_metric(recipe, before or {})
    ask = _asking(docs, recipe, tokenizer)
    if prompts and evaluates:
        answers_before = generate_answers(model, tokenizer, prompts, recipe.data.template, recipe.eval.max_new_tokens,
                                          prepare=ask)

    method.set_total_steps(count_total_steps(len(data.train), recipe.train, runtime.world_size))
    model = method.apply(model, stage.head_name)
    model = move_to_device(stage.attach(model), runtime.device)
    keep_fp32_master_weights(model)
    effective = recipe.train.batch_size * runtime.world_size * recipe.train.grad_accum
    with open_run_dir(run_dir, resume, say) if runtime.is_main else nullcontext(), \
            report_metrics(recipe, run_dir, resume, say) if runtime.is_main else nullcontext():
        if runtime.is_main:
            meta = {"recipe": recipe.model_dump(mode="json"), "model_path": str(model_path),
                    "base_model": record_base(recipe.model.name, model_path, run_dir),
                    "head": stage.head_name, "labels": data.labels, "device": str(runtime.device),
                    "precision": runtime.precision, "model_dtype": model_dtype, "strategy": runtime.strategy,
                    "processes": runtime.world_size,
                    "effective_batch": effective}
            if docs is not None:
                meta[CORPUS_KEY] = str(docs.path.resolve())
            atomic_write_text(run_dir / RUN_META, json.dumps(meta, indent=2))
            atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        runtime.barrier()  # rank 0 has created the run directory
        say(f"{runtime.world_size} process(es) ({runtime.strategy}) on {runtime.device}, {runtime.precision}; "
            f"effective batch {effective} = {recipe.train.batch_size} per device × {runtime.world_size} × "
            f"grad_accum {recipe.train.grad_accum}")
        if resume and not has_checkpoints(run_dir):
            say(f"[yellow]--resume: {run_dir} has no checkpoint yet (it stopped before train.save_steps); "
                f"training starts from step 0")
        trainable, total = count_parameters(model)
        say(f"method {method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")
        if recipe.train.compile:
            say("train.compile: the layers are compiled where leantune's engine trains (not in TRL's trainers "
                "or the PPO and meta-learning loops); the first steps include the compile time")
        if stage.custom_loop:  # stages with their own loop (PPO) or a TRL trainer (DPO, GRPO, RLOO)
            model, result = stage.run(model, recipe=recipe, run_dir=run_dir, data=data, method=method,
                                      tokenizer=tokenizer, progress=progress, resume=resume, say=say,
                                      runtime=runtime)
            precision = stage.precision
        else:
            def evaluate_in_run_precision(m):
                with _in_run_precision(runtime):
                    return {**stage.evaluate(m, data.eval, eval_bs), **(gen.run(m, tokenizer)[0] if gen else {})}

            engine = Engine(model, data.train, trained.train, run_dir, stage.collate, stage.loss,
                            evaluate=evaluate_in_run_precision if data.eval else None,
                            after_optimizer_step=method.after_optimizer_step, progress=progress,
                            param_groups=method.param_groups, loss_weight=stage.loss_weight, runtime=runtime)
            result = engine.fit(resume=resume)
            precision = engine.precision
        with runtime.gathered(model):  # ZeRO-3 / FSDP: whole weights, or the adapter saved is empty
            if runtime.is_main:
                with atomic_dir(run_dir / "adapter", force=True) as tmp:
                    method.save(model, tmp)
                    stage.save_extra(model, tmp)
                    tokenizer.save_pretrained(tmp)
                    ship_folder(tmp, tokenizer, recipe, stage.head_name, merged=False, run_dir=run_dir)
        with _in_run_precision(runtime):
            after = stage.evaluate(model, data.eval, eval_bs) if data.eval and evaluates else {}
            rows_after: list[dict] = []
            if gen and evaluates:
                scores, rows_after = gen.run(model, tokenizer)
                after = {**after, **scores}
            if forgetting is not None and evaluates:
                after = {**after, **forgetting.measure(model, eval_bs)}
        answers_after = generate_answers(model, tokenizer, prompts, recipe.data.template, recipe.eval.max_new_tokens,
                                         prepare=ask) if prompts and evaluates else []
        if not runtime.is_main:  # the files are rank 0's
            return RunSummary(name=recipe.run_name, run_dir=str(run_dir), model=recipe.model.name,
                              method="+".join(m["name"] for m in recipe.method), stage=stage.name,
                              trainable_params=trainable, total_params=total, train_examples=len(data.train),
                              eval_examples=len(data.eval), steps=result.steps)
        peak, kind = peak_memory_mb(runtime.device)
        summary = RunSummary(
            name=recipe.run_name, run_dir=str(run_dir), model=recipe.model.name,
            method="+".join(m["name"] for m in recipe.method), stage=stage.name,
            trainable_params=trainable, total_params=total, train_examples=len(data.train),
            eval_examples=len(data.eval), steps=result.steps, wall_time_s=result.wall_time_s,
            tokens_per_s=result.tokens_per_s, precision=precision, peak_memory_mb=peak, memory_kind=kind,
            device=str(runtime.device), processes=runtime.world_size, effective_batch=effective,
            eval_before=before, eval_after=after, samples=list(zip(prompts, answers_before or [""] * len(prompts),
                                                                  answers_after)),
            history=result.history,
            estimate_mb=estimate["total_mb"] if estimate else None, estimate=estimate,
            metric=ranking_metric(recipe, after, gen), generation=gen.describe() if gen else None,
        )
        if gen:
            write_predictions(run_dir / "predictions.jsonl", rows_after)
            if rows_before:
                write_predictions(run_dir / "predictions_before.jsonl", rows_before)
        write_report(run_dir, summary.as_dict())
        if details := getattr(stage, "eval_details", None):  # e.g. continual's accuracy matrix
            written = json.loads((run_dir / "eval.json").read_text())
            atomic_write_text(run_dir / "eval.json", json.dumps({**written, **details}, indent=2, default=str))
        atomic_write_text(run_dir / FINISHED_MARK, json.dumps(summary.as_dict(), indent=2))
        return summary


def _with_documentation(docs: Documentation, recipe: Recipe, stage, tokenizer, train_examples, eval_examples,
                        say: Callable[[str], None]):
    """data.retrieval: the passages for each instruction added to the training and evaluation examples."""
    if "chat" not in stage.data_kinds:
        raise RecipeError(f"data.retrieval: stage {stage.name} does not read instructions; documentation is added "
                          f"to chat data (stage sft)")
    args = (tokenizer, recipe.data.template, recipe.train.max_length)
    train_examples, eval_examples = docs.for_training(train_examples, *args), docs.for_training(eval_examples, *args)
    section = recipe.data.retrieval
    say(f"data.retrieval: top {section.k} of {len(docs.passages)} passages ({section.retriever}) from {docs.path} "
        f"added to each instruction")
    return train_examples, eval_examples


def _asking(docs: Documentation | None, recipe: Recipe, tokenizer) -> Callable[[list[dict]], list[dict]] | None:
    """How a conversation is put to the model: with its documentation passages when the recipe retrieves."""
    if docs is None:
        return None
    return lambda messages: docs.for_prompt(messages, tokenizer, recipe.data.template, recipe.train.max_length,
                                            recipe.eval.max_new_tokens)


def evaluate_only(recipe: Recipe, stage, model, tokenizer, data, run_dir: Path, model_path: Path,
                  say: Callable[[str], None], runtime: Runtime) -> RunSummary:
    """Stages that do not train (``trains = False``, e.g. in-context learning): evaluate the
    base model once, write ``eval.json`` (metrics and the stage's ``eval_details``), no method."""
    if runtime.distributed:
        raise RecipeError(f"stage {stage.name} does not train: run it in one process (without --nproc)")
    with open_run_dir(run_dir, False, say):
        meta = {"recipe": recipe.model_dump(mode="json"), "model_path": str(model_path), "head": stage.head_name,
                "labels": data.labels, "base_model": record_base(recipe.model.name, model_path, run_dir),
                "precision": runtime.precision}
        atomic_write_text(run_dir / RUN_META, json.dumps(meta, indent=2))
        atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
        say(f"stage {stage.name} does not train: the method ({'+'.join(m['name'] for m in recipe.method)}) is not applied")
        t0 = time.perf_counter()
        with _in_run_precision(runtime):
            metrics = stage.evaluate(model, data.eval, recipe.eval.batch_size) if data.eval else {}
        wall = time.perf_counter() - t0
        details = getattr(stage, "eval_details", None) or {}
        _, total = count_parameters(model)
        peak, kind = peak_memory_mb(runtime.device)
        summary = RunSummary(
            name=recipe.run_name, run_dir=str(run_dir), model=recipe.model.name, method="none", stage=stage.name,
            trainable_params=0, total_params=total, train_examples=len(data.train), eval_examples=len(data.eval),
            wall_time_s=wall, precision=runtime.precision, peak_memory_mb=peak, memory_kind=kind, eval_after=metrics,
            notes=[f"{stage.name}: no training; evaluation of the base model"],
        )
        write_report(run_dir, summary.as_dict())  # writes eval.json {before, after}; extended below
        atomic_write_text(run_dir / "eval.json", json.dumps(
            {"before": None, "after": metrics, "metrics": metrics, "wall_time_s": wall, **details}, indent=2, default=str))
        atomic_write_text(run_dir / FINISHED_MARK, json.dumps(summary.as_dict(), indent=2))
        return summary


def evaluate_run(run_dir: Path, data: Path | None = None, say: Callable[[str], None] = lambda s: None,
                 base: str | Path | None = None, corpus: str | Path | None = None, metrics: list[str] | None = None,
                 out: Path | None = None, force: bool = False) -> dict:
    """The metrics of a finished run on its recipe's evaluation data, or on ``data`` (a file in
    a format the run's stage reads): the stage that trained it evaluates, with the run's head,
    label order and what it trained beside the method (``Stage.restore``, ``Stage.load_extra``).
    With ``metrics`` (else the recipe's eval.metrics) also the generation metrics, the answers written
    to ``out`` (default: the run's predictions.jsonl, replaced only with ``force``)."""
    run = load_run(run_dir, base=base, as_trained=True)
    recipe = run.recipe
    stage = build_stage(recipe.stage)
    stage.restore(run.head, run.labels)
    docs = documentation_of_run(run_dir, recipe, corpus)  # data.retrieval: the documentation as it now reads
    if data is not None:  # only this file: the recorded train path may be relative to the recipe's folder
        loaded = load_examples(data, recipe.data.format, skip_invalid=recipe.data.skip_invalid)
        if FORMATS[loaded.format].kind not in stage.data_kinds:
            raise LeantuneError(f"{data}: '{loaded.format}' data does not fit the run's stage '{stage.name}'")
        eval_examples = loaded.examples
    else:
        _, eval_examples = load_data(recipe, stage, None, say)
    if docs is not None:
        eval_examples = docs.for_training(eval_examples, run.tokenizer, recipe.data.template, recipe.train.max_length)
    gen = generation_eval(recipe, stage, eval_examples, Path.cwd(), metrics)  # user metrics: from this folder
    target = Path(out) if out is not None else run.run_dir / "predictions.jsonl"
    if gen is not None:
        check_output(target, force=force, what="predictions file")
    prepared = stage.prepare(recipe, run.tokenizer, [], eval_examples)
    if not prepared.eval:
        raise LeantuneError(f"{run_dir}: no evaluation data (pass --data FILE)")
    stage.load_extra(run.model, run.run_dir / "adapter")
    device = next(run.model.parameters()).device
    with autocast_context(recorded_precision_on(run.precision, device), device)[0]:  # as the run evaluated
        result = stage.evaluate(run.model, prepared.eval, recipe.eval.batch_size)
        if gen is not None:
            scores, rows = gen.run(run.model, run.tokenizer)
    if gen is not None:
        say(f"answers to {len(rows)} of {gen.total} examples: {write_predictions(target, rows)}")
        result = {**result, **scores}
    return result
