"""Every stage's settings, without torch: a recipe is checked here before any model
library is imported.

``STAGE_SETTINGS`` maps each stage name to its settings class, the ``Config`` of the
stage class; ``tests/unit/test_settings_torch_free.py`` keeps the two in step.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..registry import lookup
from .method_settings import entry_place, split_name, validated
from .template import Template

# train.group_by_length when a recipe leaves it unset: on where every token is a target and lengths
# vary; off where one label stands for an example (grouped batches could hold one label)
LENGTH_GROUPED_STAGES = frozenset({"sft", "pt"})
# methods that train whole layers: on a CPU, model.dtype auto keeps their weights fp32
# (stages.registry.half_weights_on_cpu)
WHOLE_LAYER_METHODS = frozenset({"full", "llrd", "freeze"})


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class TaskSpec(StageConfig):
    name: str | None = Field(None, description="Task name (letters, digits, _ and -); default task<i>.")
    data: str = Field(description="Training file (.jsonl/.json/.csv/.parquet) or builtin:NAME.")
    eval: str | None = Field(None, description="Evaluation file; default: eval_split of data held out.")
    format: str | None = None
    eval_split: float = Field(0.2, ge=0, lt=1)
    max_samples: int | None = Field(None, gt=0)
    weight: float = Field(1.0, gt=0, description="multitask: weight of this task's loss.")

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", v):
            raise ValueError("task names start with a letter and hold letters, digits, _ and -")
        return v


# --------------------------------------------------------------------------- language modelling, classification

class PretrainSettings(StageConfig):
    objective: Literal["auto", "clm", "mlm"] = "auto"
    mlm_probability: float = Field(0.15, gt=0, lt=1)


class ClassificationSettings(StageConfig):
    labels: list[str] | None = Field(None, description="Label order; default: sorted labels of the training data.")


class ContrastiveSettings(StageConfig):
    objective: Literal["auto", "simcse", "supcon", "pairs"] = Field(
        "auto", description="auto: simcse for text, pairs for chat or text_pair rows, supcon for labels.")
    temperature: float = Field(0.05, gt=0, description="τ of the softmax over cosine similarities.")
    knn_k: int = Field(1, ge=1, description="Neighbours of the kNN evaluation (supcon).")
    export: bool = Field(True, description="Write mean-pooled embeddings (safetensors) to the run.")


# --------------------------------------------------------------------------- prompts (pet, icl)

class PromptSettings(StageConfig):
    """Settings shared by the prompt-based stages (pet, icl)."""

    verbalizer: dict[str, list[str] | str] | Literal["auto"] | None = Field(
        None, description="Label → label word(s); `auto` searches them (pet); default: the label names.")
    scoring: Literal["mean", "first"] = Field("mean", description="Multi-token label words: mean or first token.")
    labels: list[str] | None = Field(None, description="Label order; default: sorted labels of the data.")
    calibrate: bool = Field(False, description="Contextual calibration with content-free inputs (Zhao et al. 2021).")
    content_free: list[str] = Field(default_factory=lambda: ["N/A"], description="Content-free inputs, averaged.")
    objective: Literal["auto", "mlm", "clm"] = Field("auto", description="auto: masked LM for encoders, else causal.")


class PETSettings(PromptSettings):
    templates: list[str] = Field(default_factory=lambda: ["{text} It was {mask}."],
                                 description="Cloze templates (see docs/few-shot.md); several form an ensemble.")
    ensemble: Literal["average", "vote"] = Field("average", description="How templates are combined.")
    auto_words: int = Field(1, ge=1, le=20, description="verbalizer: auto — label words per label.")
    autoprompt_iterations: int = Field(10, ge=0, description="AutoPrompt steps for {trigger} slots.")
    autoprompt_candidates: int = Field(10, ge=1, description="Candidate tokens tried per AutoPrompt step.")
    distill_temperature: float = Field(2.0, gt=0, description="Temperature of the soft labels (PET: 2).")

    @field_validator("templates", mode="before")
    @classmethod
    def _one_template(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("templates")
    @classmethod
    def _parse(cls, v):
        if not v:
            raise ValueError("at least one template")
        for t in v:
            if Template(t).has_label:
                raise ValueError(f"{t!r}: {{label}} templates score one prompt per label; use stage icl")
        return v


class ICLSettings(PromptSettings):
    task: Literal["auto", "classification", "generation"] = "auto"
    preset: Literal["nli"] | None = Field(None, description="nli: zero-shot template + yes/no verbalizer.")
    template: str | None = Field(None, description="Default: '{text}\\nAnswer: {mask}' (classification).")
    label_names: dict[str, str] | None = Field(None, description="Text for {label}; default: label names.")
    k: int | None = Field(None, ge=0, description="Demonstrations per prompt; default: the whole pool.")
    selection: Literal["random", "balanced", "similar"] = "random"
    order: Literal["random", "similar_last"] = "random"
    fixed: bool = Field(False, description="One draw of demonstrations for every query (not per query); "
                                           "its shared prompt prefix is computed once.")
    embedder: str = Field("minilm-l6", description="Sentence-embedding model for similar / similar_last.")
    separator: str = "\n\n"
    max_demo_tokens: int | None = Field(128, gt=0, description="Each demonstration's text cut to this.")
    max_new_tokens: int = Field(32, gt=0)
    seed: int | None = Field(None, description="Selection/order seed; default train.seed.")

    @model_validator(mode="after")
    def _fixed_needs_no_query(self):
        if self.fixed and (self.selection == "similar" or self.order == "similar_last"):
            raise ValueError("fixed: true draws one set of demonstrations for all queries; selection "
                             "'similar' and order 'similar_last' depend on the query")
        return self


# --------------------------------------------------------------------------- unlabelled data, few labels

class RoundSettings(StageConfig):
    labels: list[str] | None = Field(None, description="Label order; default: sorted labels of the training data.")
    rounds: int = Field(3, ge=1, description="Pseudo-labelling rounds after the first training.")
    threshold: float = Field(0.9, ge=0, le=1, description="Minimum confidence of a pseudo-label.")
    per_class: int | None = Field(None, ge=1, description="Instead: the N most confident per class (≥ threshold).")
    reset: bool = Field(True, description="Retrain each round from the weights before the first round.")


class CoTrainSettings(RoundSettings):
    per_class: int | None = Field(2, ge=1, description="Per round, each view labels its N most confident per class.")


class ActiveSettings(StageConfig):
    labels: list[str] | None = Field(None, description="Label order; default: sorted labels of the training data.")
    strategy: Literal["entropy", "margin", "least_confidence", "random"] = "entropy"
    initial: int = Field(2, ge=1, description="oracle labels: initial labelled examples per class.")
    batch: int = Field(8, ge=1, description="Examples queried per round.")
    rounds: int = Field(3, ge=1, description="oracle labels: query rounds.")
    oracle: Literal["labels", "csv"] = Field("labels", description="labels: simulate with the held-out "
                                             "labels; csv: ask a person through label_file.")
    label_file: str | None = Field(None, description="oracle csv: the CSV to fill in; default "
                                   "<output.dir>/<run name>-to_label.csv (outside the run, kept across runs).")
    reset: bool = Field(True, description="Retrain each round from the initial weights.")


class MetaSettings(StageConfig):
    algorithm: Literal["protonet", "reptile"] = "protonet"
    n_way: int = Field(5, ge=2)
    k_shot: int = Field(5, ge=1)
    n_query: int = Field(5, ge=1, description="Query examples per class and episode.")
    episodes: int = Field(200, ge=1, description="Training episodes (train.max_steps overrides).")
    eval_episodes: int = Field(50, ge=1)
    unseen_classes: int | None = Field(None, ge=2, description="Hold out N classes for evaluation.")
    inner_steps: int = Field(5, ge=1, description="reptile: SGD steps per episode (and at evaluation).")
    inner_lr: float = Field(1e-3, gt=0, description="reptile: inner SGD learning rate.")
    meta_lr: float = Field(0.5, gt=0, le=1, description="reptile: interpolation step β.")


# --------------------------------------------------------------------------- transfer

class DistillSettings(StageConfig):
    teacher: str = Field(description="Teacher: packaged name, model folder or leantune run directory.")
    temperature: float = Field(2.0, gt=0, description="T of the softened distributions (Hinton et al.).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term; 1 − α on the gold-label CE.")
    direction: Literal["forward", "reverse"] = Field("forward", description="LM: KL(p_T‖p_S) or KL(p_S‖p_T).")
    top_k: int = Field(32, ge=1, le=4096, description="LM: teacher logits kept per response token.")
    labels: list[str] | None = Field(None, description="Classification label order; default: sorted labels.")
    cache_dir: str | None = Field(None, description="Teacher-logit cache; default <output.dir>/.teacher-cache.")
    teacher_batch_size: int = Field(16, gt=0)


class ContinualSettings(StageConfig):
    tasks: list[TaskSpec] = Field(description="The tasks in training order: [{data, eval, name}, …].")
    strategy: Literal["naive", "ewc", "replay", "adapters"] = "naive"
    ewc_lambda: float = Field(1000.0, ge=0, description="λ of the EWC penalty.")
    fisher: Literal["empirical", "sampled"] = Field(
        "empirical", description="Gradient of the gold label's log-prob, or of a label sampled from the model.")
    fisher_samples: int = Field(256, gt=0, description="Examples of a task used for its Fisher estimate.")
    buffer_size: int = Field(200, ge=1, description="replay: examples kept (reservoir sampling).")
    replay_ratio: float = Field(0.2, ge=0, lt=1, description="replay: share of replayed examples in a task's mix.")
    task_incremental: bool = Field(True, description="Restrict each example's logits to its task's labels.")


class MultiTaskSettings(StageConfig):
    tasks: list[TaskSpec] = Field(description="The tasks: [{name, data, eval, weight}, …], all of one kind.")
    temperature: float = Field(1.0, gt=0, description="Task sampling p_i ∝ n_i^(1/T).")
    mixture_size: int | None = Field(None, gt=0, description="Examples in the training mixture; default: all.")
    head_dropout: float = Field(0.1, ge=0, lt=1)


class DANNSettings(StageConfig):
    domain_weight: float = Field(1.0, ge=0, description="μ: weight of the domain-classification loss; "
                                 "0 = no adaptation (target texts not encoded).")
    gamma: float = Field(10.0, gt=0, description="γ of the λ schedule 2/(1+exp(−γp))−1.")
    lambda_max: float = Field(1.0, ge=0, description="Scale of the schedule (λ_p · lambda_max).")
    schedule: bool = Field(True, description="False: constant λ = lambda_max.")
    hidden: int = Field(256, gt=0, description="Width of the domain classifier's hidden layer.")
    target_eval: str | None = Field(None, description="Labelled target-domain file for target_accuracy.")
    labels: list[str] | None = None


# --------------------------------------------------------------------------- alignment

DPO_LOSSES = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                     "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DPOSettings(StageConfig):
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL to the reference (τ for ipo).")
    loss_type: DPO_LOSSES | list[DPO_LOSSES] = Field("sigmoid", description="TRL DPO loss(es).")
    loss_weights: list[float] | None = Field(None, description="Weights when several loss types are combined.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Robust/conservative DPO label noise.")


class GenerationConfig(StageConfig):
    max_new_tokens: int = Field(32, gt=0, description="Longest sampled response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0: all.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    eval_samples: int = Field(1, ge=0, description="Sampled replies per eval prompt for the sampled reward "
                                                  "and the KL to the reference (0: greedy replies only).")


class RewardConfig(StageConfig):
    reward: str = Field(description="Reward: a stage-rm run directory, module:function, or a built-in "
                                    "(max_words, mentions_keyword, char_fraction).")
    reward_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of a reward function.")


class PPOStageSettings(GenerationConfig, RewardConfig):
    kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty to the reference.")
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    clip_range: float = Field(0.2, gt=0, description="ε of the clipped policy ratio.")
    clip_range_value: float = Field(0.2, gt=0, description="ε of the clipped value loss.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ppo_epochs: int = Field(4, gt=0, description="Optimisation epochs per rollout batch.")
    mini_batch_size: int | None = Field(None, gt=0, description="Default: the whole rollout batch.")
    whiten_advantages: bool = True
    eval_max_prompts: int = Field(32, gt=0, description="Eval prompts scored before/after training.")


class GroupConfig(GenerationConfig, RewardConfig):
    num_generations: int = Field(4, ge=2, description="Completions per prompt (one group).")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the adapter-disabled reference (0: none).")
    epsilon: float = Field(0.2, gt=0, description="Clipping ε of the policy ratio.")
    num_iterations: int = Field(1, gt=0, description="Optimisation passes per generation batch (μ).")


class GRPOSettings(GroupConfig):
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = Field(
        "dapo", description="TRL's GRPO loss aggregation.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Reward std normalisation.")


class RLOOSettings(GroupConfig):
    beta: float = Field(0.05, ge=0, description="KL coefficient to the adapter-disabled reference.")
    normalize_advantages: bool = False


# --------------------------------------------------------------------------- the table

STAGE_SETTINGS: dict[str, type[StageConfig]] = {
    "sft": StageConfig, "pt": PretrainSettings, "cls": ClassificationSettings, "contrastive": ContrastiveSettings,
    "pet": PETSettings, "icl": ICLSettings,
    "self_train": RoundSettings, "co_train": CoTrainSettings, "active": ActiveSettings, "meta": MetaSettings,
    "distill": DistillSettings, "continual": ContinualSettings, "multitask": MultiTaskSettings, "dann": DANNSettings,
    "rm": StageConfig, "dpo": DPOSettings, "ppo": PPOStageSettings, "grpo": GRPOSettings, "rloo": RLOOSettings,
}


def parse_stage(spec: dict[str, Any], source: str = "recipe", marks: dict | None = None) -> tuple[str, StageConfig]:
    """``{"name": "pet", "templates": [...]}`` → ("pet", its validated ``PETSettings``); an unknown
    name suggests the closest one."""
    name, settings = split_name(spec, f"{source}: stage")
    settings_class = lookup(STAGE_SETTINGS, name, "stage", entry_place(source, marks))
    return name, validated(settings_class, settings, source, f"stage {name}", marks)


def validate_stage_settings(spec: dict[str, Any], source: str, marks: dict | None = None) -> dict[str, Any]:
    """The stage entry validated, defaults filled in; ``marks`` (from the recipe's YAML) place its
    keys at their line and column."""
    name, config = parse_stage(spec, source, marks)
    return {"name": name, **config.model_dump(mode="json")}
