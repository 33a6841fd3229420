"""What the advisor knows about a task: the data (read from the file or given as numbers),
the model, and the budget. ``guide/data_facts.py`` fills it from a data file,
``guide/advisor_recipes.py`` from the model."""
from __future__ import annotations

from dataclasses import dataclass, field

# data kinds (``data.formats``) → the task they serve
KIND_TASK = {"classification": "classification", "chat": "generation", "text": "generation",
             "preference": "generation"}


@dataclass
class Situation:
    task: str = "classification"
    labelled: int = 100
    unlabelled: bool = False
    low_resource: bool = False       # low-resource language or specialised domain
    tasks: int = 1                   # tasks to serve from one base model
    memory_budget: float = 24 * 2**30  # bytes
    time_budget_h: float | None = None
    model: str | None = None
    # read from the data file (None: not known, e.g. ``-n`` without a file)
    data_kind: str | None = None     # classification, chat, text, preference
    num_labels: int | None = None
    per_class_min: int | None = None
    per_class_median: float | None = None
    tokens_median: float | None = None
    tokens_p95: float | None = None
    language: str | None = None
    max_length_cap: int = 512        # the longest train.max_length a recipe may get
    # read from the model (None: not looked at)
    heads: tuple[str, ...] | None = None  # causal_lm, masked_lm, seq_cls, encoder
    params: int | None = None
    encoder: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_cls(self) -> bool:
        return self.task == "classification"

    @property
    def preference(self) -> bool:
        return self.data_kind == "preference"

    @property
    def lm_head(self) -> bool | None:
        """Whether the model has a masked- or causal-LM head (None: not known)."""
        return None if self.heads is None else bool({"masked_lm", "causal_lm"} & set(self.heads))

    @property
    def shots(self) -> str:
        """The labelled data in words: '64 labelled examples (8 per class, 8 labels)'."""
        text = f"{self.labelled:,} labelled examples"
        if self.num_labels and self.per_class_min is not None:
            med = self.per_class_median
            per = (f"{self.per_class_min:,}" if med is None or med == self.per_class_min
                   else f"{self.per_class_min:,}–{med:,.0f}")
            text += f" ({per} per class, {self.num_labels} labels)"
        return text
