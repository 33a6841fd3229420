"""The recipe: one YAML file that describes one run, validated with pydantic.

Every command reads this schema (or part of it). ``key=value`` overrides from
the command line are applied before validation; unknown keys are errors that
suggest the closest valid key. The method and stage sections are checked against
their settings, which live beside this module (``method_settings/``,
``stage_settings.py``, and ``template.py``, the cloze-template syntax they validate);
all of it without torch.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import RecipeError
from ..validation import format_validation_error
from ..yaml_source import MAX_NODES, Marks, expanded_size, locate, read_yaml
from .foreign import translate_foreign
from .method_settings import validate_method_settings
from .stage_settings import LENGTH_GROUPED_STAGES, validate_stage_settings


class Section(BaseModel):
    """Base for every recipe section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class ModelSection(Section):
    name: str = Field(min_length=1, description="Packaged name, local Hugging Face folder, run directory or hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    revision: str | None = None


class RetrievalSection(Section):
    """``data.retrieval``: documentation passages added to each instruction (Gorilla, arXiv:2305.15334)."""

    corpus: str = Field(min_length=1, description="Folder of .md/.txt/.rst files, one such file, or a .jsonl of "
                        "{text, source} rows (builtin:NAME for a shipped one); read again at inference, so "
                        "changed documentation is used without retraining.")
    k: int = Field(3, ge=1, le=50, description="Passages per instruction (fewer when they do not fit).")
    retriever: Literal["bm25", "embeddings"] = Field("bm25", description="bm25: word overlap (Okapi BM25); "
                                                     "embeddings: cosine of MiniLM sentence embeddings.")
    embedder: str = Field("minilm-l6", min_length=1, description="retriever: embeddings: the sentence encoder.")


class DataSection(Section):
    train: str | None = Field(None, description="Training file (.jsonl, .json, .csv, .parquet) or builtin:NAME.")
    eval: str | None = Field(None, description="Evaluation file; if absent, `eval_split` of train is held out.")
    format: str | None = Field(None, description="alpaca, sharegpt, messages, chatglm, prompt_completion, text, classification.")
    eval_split: float = Field(0.1, ge=0.0, lt=1.0)
    skip_invalid: bool = False
    train_on_prompt: bool = False
    template: str = Field("auto", description="Chat template: auto (the model's own, else chatml), chatml, plain.")
    max_samples: int | None = Field(None, gt=0, le=10**12)
    shots: int | None = Field(None, ge=0, le=10**9, description="Few-shot: K labelled examples per class (K in all for "
                              "unlabelled formats), chosen with train.seed; 0 = zero-shot.")
    unlabeled: str | None = Field(None, description="Unlabelled pool: `keep` (the training examples not taken "
                                  "by `shots`, labels dropped) or a file of rows with `text`.")
    fraction: float | None = Field(None, gt=0, le=1, description="Train on the first ⌈fraction·n⌉ training "
                                   "examples of one train.seed shuffle (nested across fractions; learning curves).")
    retrieval: RetrievalSection | None = Field(None, description="Retriever-aware instructions: {corpus, k, "
                                               "retriever: bm25|embeddings}; the same retriever at evaluation, "
                                               "chat and serve.")


class AdversarialSection(Section):
    """``train.adversarial``: FGM/PGD perturbations of the input embeddings (training/adversarial.py)."""

    kind: Literal["fgm", "pgd"] = Field("fgm", description="fgm: one step (Miyato et al. 2017); pgd: projected "
                                        "gradient ascent (Madry et al. 2018).")
    epsilon: float = Field(1.0, gt=0, description="L2 radius of the perturbation, per example.")
    steps: int = Field(3, ge=1, description="pgd: ascent steps.")
    alpha: float | None = Field(None, gt=0, description="pgd: step size; default min(ε, 1.5·ε/steps).")
    weight: float = Field(1.0, gt=0, description="Weight of the adversarial loss added to the clean loss.")


class DistributedSection(Section):
    """``train.distributed``: how several processes share the work (docs/distributed.md)."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per process; fsdp: parameters, gradients and optimizer state "
        "sharded (FSDP2); deepspeed: ZeRO stage `zero_stage`.")
    zero_stage: Literal[1, 2, 3] = Field(2, description="deepspeed: 1 shards optimizer state, 2 also gradients, "
                                         "3 also parameters.")
    offload: Literal["none", "optimizer", "all"] = Field(
        "none", description="Move optimizer state (and with `all` the parameters) to CPU memory between steps "
                            "(deepspeed: ZeRO-Offload; fsdp: CPU offload of parameters).")
    timeout_s: int = Field(1800, gt=0, le=7 * 86400, description="How long a process waits for the others "
                           "at a collective before the run stops with an error.")


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0, le=1e6)
    max_steps: int | None = Field(None, gt=0, le=10**9, description="Overrides epochs when set.")
    batch_size: int = Field(8, gt=0, le=2**20)
    grad_accum: int = Field(1, gt=0, le=2**20)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_length: int = Field(512, gt=8, le=2**24)
    seed: int = Field(42, ge=0, lt=2**32, description="Seeds Python, NumPy and torch (0 … 2³²−1).")
    device: str = Field("auto", description="auto (the local rank's GPU, else CPU), cpu, cuda, cuda:N or mps.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where native, fp16 with loss scaling on older GPUs, fp32 otherwise.")
    distributed: DistributedSection | None = Field(
        None, description="Several processes (--nproc, torchrun, accelerate launch): {strategy: ddp|fsdp|deepspeed, "
                          "zero_stage, offload}. Default: DDP.")
    deepspeed: str | None = Field(None, description="A DeepSpeed JSON config (as LLaMA-Factory takes it); implies "
                                  "distributed.strategy: deepspeed.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"] = "adamw"
    gradient_checkpointing: bool = False
    cpu_heap: Literal["auto", "reuse", "release"] = Field(
        "auto", description="CPU training on Linux: reuse keeps freed activations in the C heap for the next step "
                            "(fastest; peak RAM about a quarter above the live tensors), release gives blocks of 1 MiB "
                            "and more back to the OS when freed (peak RAM follows the live tensors; steps 5-30% "
                            "slower, most on VMs). auto: reuse, or release when the memory estimate with reuse "
                            "exceeds 75% of the RAM available.")
    compile: bool = Field(False, description="Compile each layer with torch.compile (regional compilation), once for "
                          "all layers: faster steps after a compile of about a minute or two before the first "
                          "(docs/benchmarks.md); on a CPU it needs a C++ compiler.")
    group_by_length: bool | None = Field(
        None, description="Batch examples of similar length together (less padding): sorted within windows of at "
                          "most 4 batches, so batches stay mixed. Unset: on for sft and pt (every token a target, "
                          "lengths vary), off for stages with one label per example (where length can stand for "
                          "the label, grouped batches hold one label).")
    packing: bool = Field(False, description="sft and pt on causal LMs: whole examples packed into rows of up to "
                          "max_length tokens (first-fit decreasing), position ids restarting and attention kept "
                          "within each example; no padding, the same loss as unpacked. batch_size counts rows.")
    logging_steps: int = Field(5, gt=0, le=10**9)
    eval_steps: int | None = Field(None, gt=0, le=10**9, description="Evaluate every N steps (and always at the end).")
    save_steps: int | None = Field(None, gt=0, le=10**9, description="Checkpoint every N steps.")
    save_total_limit: int = Field(2, gt=0, le=10**6)
    adversarial: AdversarialSection | None = Field(None, description="Adversarial training on the input "
                                                   "embeddings: {kind: fgm|pgd, epsilon, steps, alpha}.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list, description="Experiment trackers that also receive every metrics.jsonl record (a "
                                          "name or a list; offline by default, see docs/tracking.md).")


    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda, cuda:N (a GPU's index) or mps")
        return v


TEXT_METRICS = ("rouge_l", "bleu", "exact_match", "contains", "json_valid")  # evaluation/text_metrics.py
_USER_METRIC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class ForgettingSection(Section):
    """``eval.forgetting``: the general text and multiple-choice probe scored before and after training."""

    text: str | None = Field(None, min_length=1, description="General text: .txt (paragraphs) or .jsonl of "
                             "{text}; default: the built-in sample of 20 Newsgroups posts and English dialog.")
    probe: str | None = Field(None, min_length=1, description="Multiple-choice .jsonl of {question, options, "
                              "answer}; default: builtin:probe/general_mc.jsonl (83 questions).")


class EvalSection(Section):
    batch_size: int = Field(8, gt=0, le=2**20)
    max_new_tokens: int = Field(96, gt=0, le=2**20)
    prompts: list[str] = Field(default_factory=list, description="Prompts answered before and after training.")
    before: bool = Field(True, description="Also evaluate the untouched model before training.")
    forgetting: ForgettingSection | None = Field(None, description="Causal LMs: general_perplexity and "
                                                 "probe_accuracy before and after training (true: the built-in "
                                                 "text and probe; {text: FILE, probe: FILE}: yours).")

    @field_validator("forgetting", mode="before")
    @classmethod
    def _forgetting_switch(cls, v: Any) -> Any:
        return {True: {}, False: None}.get(v, v) if isinstance(v, bool) else v
    metrics: list[str] = Field(default_factory=list, description="Task metrics on greedy answers to the held-out "
                               "conversations (generative stages): rouge_l, bleu, exact_match, contains, json_valid, "
                               "or module:function (your own); empty: loss and perplexity only.")
    max_generate: int = Field(200, gt=0, le=10**9, description="eval.metrics: answer the first N held-out examples.")
    metric: str | None = Field(None, description="What compare and advise --prove rank runs by (default: the first "
                               "of eval.metrics, else the stage's own: accuracy, loss…).")

    @field_validator("metrics", mode="before")
    @classmethod
    def _one_metric(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in TEXT_METRICS and not _USER_METRIC.fullmatch(name):
                raise ValueError(f"unknown metric {name!r}; available: {', '.join(TEXT_METRICS)}, or "
                                 f"module:function for your own")
        if len(set(v)) != len(v):
            raise ValueError("names a metric twice")
        return v

    @field_validator("metric")
    @classmethod
    def _metric_computed(cls, v: str | None, info) -> str | None:
        if v in TEXT_METRICS and v not in (info.data.get("metrics") or []):
            raise ValueError(f"{v} is not computed: add it to eval.metrics")
        return v


class OutputSection(Section):
    dir: str = Field("runs", min_length=1)
    name: str | None = Field(None, description="The run's folder name inside `dir`: one path component.")
    overwrite: bool = Field(False, description="Replace an existing run of this name (only a leantune run).")

    @field_validator("name")
    @classmethod
    def _single_component(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0") or v != v.strip():
            raise ValueError("must be a plain folder name (no '/', '\\', '..', '.', surrounding spaces or "
                             "empty); the run goes to output.dir/name")
        return v


class Recipe(Section):
    """A whole run: model, method(s), data, stage, training, evaluation, output."""

    model: ModelSection
    method: list[dict[str, Any]] = Field(default_factory=lambda: [{"name": "lora"}])
    stage: dict[str, Any] = Field(default_factory=lambda: {"name": "sft"})
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("method", mode="before")
    @classmethod
    def _method_shorthand(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        return [{"name": i} if isinstance(i, str) else i for i in items]

    @field_validator("stage", mode="before")
    @classmethod
    def _stage_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _batching_for_the_stage(self) -> "Recipe":
        """``train.group_by_length`` left unset: on for the stages where every token is a target."""
        if self.train.group_by_length is None:
            self.train.group_by_length = self.stage.get("name") in LENGTH_GROUPED_STAGES
        return self

    @property
    def run_name(self) -> str:
        if self.output.name:
            return self.output.name
        methods = "+".join(m["name"] for m in self.method)
        model = Path(self.model.name).name.strip(". ") or "model"
        return f"{self.stage['name']}-{methods}-{model}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading

def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` → (["train", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key.path=value (e.g. train.lr=1e-4)")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except (yaml.YAMLError, RecursionError, ValueError):
        parsed = value
    if expanded_size(parsed) > MAX_NODES:
        raise RecipeError(f"override {key.strip()}: the value expands to more than {MAX_NODES:,} values "
                          f"(YAML aliases that refer to themselves or repeat each other)")
    return path, parsed


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` in the raw recipe dict, expanding shorthands."""
    node: Any = raw
    for i, key in enumerate(path[:-1]):
        child = node.get(key) if isinstance(node, dict) else None
        if child is None and i == 0 and key in ("method", "stage"):  # `method.r=4` on the default method
            child = Recipe.model_fields[key].get_default(call_default_factory=True)
        if isinstance(child, str):  # `method: lora` + `method.r=4` → {name: lora, r: 4}
            child = {"name": child}
        if isinstance(child, list) and len(child) == 1:  # single method given as list
            child = child[0] if isinstance(child[0], dict) else {"name": child[0]}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node[key] = child
        node = child
    node[path[-1]] = value


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                raw: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe file (or a dict), apply overrides, validate every section; no torch."""
    source = str(path) if path else "recipe"
    marks: Marks = {}
    if raw is None:
        if path is None:
            raw = {}
        else:
            raw, marks = read_yaml(Path(path))
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                raise RecipeError(f"{path}: a recipe is a mapping of sections (model, method, data, …), "
                                  f"not {type(raw).__name__}")
            foreign = translate_foreign(raw, marks, Path(path))  # a LLaMA-Factory or axolotl config
            if foreign is not None:
                raw, marks = foreign.recipe, foreign.marks
    raw = dict(raw)
    for text in overrides:
        path_keys, value = parse_override(text)
        apply_override(raw, path_keys, value)
        marks = {k: v for k, v in marks.items() if k[: len(path_keys)] != tuple(path_keys)}
        marks[tuple(path_keys)] = f"override {text}"  # an error in this value names the override
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, Recipe, source, marks)) from None

    recipe.method = validate_method_settings(recipe.method, source, [
        entry_marks(marks, raw.get("method"), i) for i in range(len(recipe.method))])
    recipe.stage = validate_stage_settings(recipe.stage, source, entry_marks(marks, raw.get("stage"), None))
    check_packing(recipe, locate(marks, ("train", "packing")) or source)
    return recipe


PACKED_STAGES = ("sft", "pt")
# Methods that give each row virtual tokens or a key/value prefix (PEFT's past_key_values): in a packed
# row only its first example would see them. UniPELT's prefix gate pools over the whole row.
UNPACKABLE_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2")


def check_packing(recipe: Recipe, where: str) -> None:
    """``train.packing`` only where packed rows give the unpacked loss: causal-LM sft and pt, and
    methods that leave positions and attention alone."""
    if not recipe.train.packing:
        return
    stage = recipe.stage["name"]
    if stage not in PACKED_STAGES:
        raise RecipeError(f"{where}: train.packing: stage {stage} does not pack examples (only "
                          f"{' and '.join(PACKED_STAGES)} do); set train.packing: false")
    for m in recipe.method:
        if m["name"] in UNPACKABLE_METHODS:
            raise RecipeError(f"{where}: train.packing: method {m['name']} prepends virtual tokens or a key/value "
                              f"prefix, which only the first example of a packed row would see as its own; set "
                              f"train.packing: false or use a method such as lora")
        if m["name"] == "unipelt" and m.get("prefix_length"):
            raise RecipeError(f"{where}: train.packing: method unipelt's prefix gate averages over the whole row, "
                              f"so packed examples would share it; set method.prefix_length: 0 or train.packing: "
                              f"false")


def entry_marks(marks: Marks, value: Any, index: int | None) -> Marks:
    """The marks of one method or stage entry, keyed relative to it; ``()`` is the entry itself.
    ``method: lora``, ``method: {name: lora, …}`` and ``method: [a, {name: b, …}]`` all work."""
    key = "method" if index is not None else "stage"
    prefix = (key, index) if isinstance(value, list) else (key,)
    relative = {k[len(prefix):]: v for k, v in marks.items() if k[: len(prefix)] == prefix}
    if () not in relative and (key,) in marks:
        relative[()] = marks[(key,)]
    return relative
