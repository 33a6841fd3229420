"""The stage registry: one training paradigm per stage.

A stage owns the data format it reads, how examples become features, the loss,
and its evaluation metrics; the shared engine runs the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..recipe.stage_settings import (
    STAGE_SETTINGS,
    WHOLE_LAYER_METHODS,
    StageConfig,
    parse_stage,
    validate_stage_settings,  # noqa: F401  (re-exported: torch-free in .settings)
)
from ..registry import Registry


@dataclass
class PreparedData:
    """Tokenized features plus what the stage learned about the data."""

    train: list[dict]
    eval: list[dict]
    labels: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Stage:
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    data_kinds: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StageConfig]] = StageConfig
    trains: ClassVar[bool] = True  # False: the pipeline only evaluates (in-context learning)
    device: torch.device = torch.device("cpu")  # the run's device, set by the pipeline before prepare()

    def __init__(self, config: StageConfig):
        self.config = config
        self.unlabeled: list[dict] | None = None  # the unlabelled pool (data.unlabeled), if any

    def attach(self, model: nn.Module) -> nn.Module:
        """Called after the method is applied and before training: a stage may register
        trainable modules of its own (e.g. soft prompt embeddings) on the model."""
        return model

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        """The model head this stage trains (``causal_lm``, ``masked_lm``, ``seq_cls``…)."""
        raise NotImplementedError

    def prepare(self, recipe, tokenizer, train_examples: list[dict], eval_examples: list[dict]) -> PreparedData:
        raise NotImplementedError

    def collate(self, features: list[dict], generator: torch.Generator) -> dict:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, features: list[dict], batch_size: int) -> dict[str, float]:
        raise NotImplementedError

    def loss_weight(self, batch: dict) -> int:
        """How many terms :meth:`loss` averages over in ``batch``: the engine weights each
        micro-batch's mean loss by it, so that micro-batches accumulated (and split over
        processes) give the gradient of one large batch. Examples by default; stages whose
        loss is a mean over label tokens return the number of those tokens."""
        return len(batch["input_ids"])

    # ---- stages that run their own loop instead of the shared engine (PPO, TRL trainers)
    custom_loop: ClassVar[bool] = False
    # runs as one of several processes (--nproc, torchrun, accelerate launch): every engine stage;
    # a custom loop only when it says so
    multi_process: ClassVar[bool] = True
    precision: str = "fp32"  # what the custom loop trained in, for the run summary

    def run(self, model: nn.Module, *, recipe, run_dir: Path, data: PreparedData, method, tokenizer,
            progress: bool, resume: bool, say, runtime=None) -> tuple[nn.Module, Any]:
        """Train ``model`` (the method already applied); returns the trained model and a
        ``training.engine.TrainResult``. Only called when ``custom_loop`` is True."""
        raise NotImplementedError

    def place(self, device: torch.device) -> None:
        """Move what the stage built in ``prepare`` (a reward model, …) to the run's device:
        every attribute with a ``place_on(device)`` method."""
        for value in list(vars(self).values()):
            if hasattr(value, "place_on"):
                value.place_on(device)

    def save_extra(self, model: nn.Module, folder: Path) -> None:
        """Save what the stage trained beside the method's weights (e.g. PPO's value head)."""

    def load_extra(self, model: nn.Module, folder: Path) -> None:
        """Restore what :meth:`save_extra` wrote that evaluation needs (PET: label words, soft prompt)."""

    def restore(self, head: str, labels: list[str] | None) -> None:
        """Set up to evaluate a finished run: the head it trained and, for stages with a
        ``labels`` setting, the label order it was trained with."""
        self.head_name = head
        if labels and "labels" in type(self.config).model_fields:
            self.config.labels = labels


def half_weights_on_cpu(stage: Stage | type[Stage], methods: list[dict[str, Any]]) -> bool:
    """Whether ``model.dtype: auto`` loads the frozen weights in bf16 on a CPU training in bf16:
    for stages that train through the shared engine, unless a method trains whole layers (full
    fine-tuning from bf16-loaded weights learned markedly less: loss 3.88 against 3.50 after 12
    steps of SmolLM2-135M, at no speed gain)."""
    return stage.trains and not stage.custom_loop and not any(m["name"] in WHOLE_LAYER_METHODS for m in methods)


REGISTRY: Registry[Stage] = Registry("stage", __package__, STAGE_SETTINGS)
STAGES: dict[str, type[Stage]] = REGISTRY.classes
register = REGISTRY.register


def get_stage_class(name: str) -> type[Stage]:
    return REGISTRY.get(name)  # an unknown name: an error naming the closest one


def build_stage(spec: dict[str, Any], source: str = "recipe") -> Stage:
    name, config = parse_stage(spec, source)
    return get_stage_class(name)(config)


def list_stages() -> list[type[Stage]]:
    return REGISTRY.all()
