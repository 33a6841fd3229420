"""`leantune advise`: which approach to try first, from a table of rules.

Every rule is one row of ``RULES``: a name, a condition on the situation, the score it
adds to each approach it concerns, the reason shown to the user, and its source
(docs/guidance.md lists them). Scores add up per approach; approaches are ranked by
score, those whose memory estimate exceeds the budget are marked and sink.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

TASKS = ("classification", "generation", "extraction", "summarization", "qa")

# the main approaches, then the helpers that go with them
APPROACHES = ("icl", "pet", "adapter", "prefix_tuning", "lora", "qlora", "full")
HELPERS = ("continued_pretraining", "self_training", "active_learning", "replay", "llrd", "retrieval")
TRAINS = {"pet", "adapter", "prefix_tuning", "lora", "qlora", "full", "continued_pretraining", "self_training", "llrd"}

EXCLUDED = -100


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

    @property
    def is_cls(self) -> bool:
        return self.task == "classification"


@dataclass(frozen=True)
class Rule:
    name: str
    when: Callable[[Situation], bool]
    scores: dict[str, int]
    reason: str
    source: str


SRC_FEW = "docs/few-shot.md; Schick & Schütze 2021 (PET, arXiv:2001.07676); Brown et al. 2020 (GPT-3 ICL)"
SRC_PEFT = "Hu et al. 2021 (LoRA); Dettmers et al. 2023 (QLoRA); He et al. 2022 (arXiv:2110.04366)"
RULES: tuple[Rule, ...] = (
    Rule("very_low_resource", lambda s: s.labelled < 32,
         {"icl": 6, "pet": 5, "adapter": 3, "prefix_tuning": 3, "lora": 2, "full": -3},
         "very few labelled examples: in-context learning first (no training), then PET, then adapters "
         "or prefix tuning", SRC_FEW),
    Rule("few_labelled", lambda s: 32 <= s.labelled < 1000,
         {"pet": 4, "lora": 4, "qlora": 3, "adapter": 3, "prefix_tuning": 2, "icl": 1, "full": -1},
         "hundreds of examples: parameter-efficient tuning (LoRA, adapters) learns without overfitting; "
         "PET still helps classification", SRC_FEW + "; " + SRC_PEFT),
    Rule("moderate_data", lambda s: 1000 <= s.labelled < 10000,
         {"lora": 5, "qlora": 4, "adapter": 3, "full": 2, "prefix_tuning": 1},
         "thousands of examples: LoRA/QLoRA match full fine-tuning at a fraction of the memory", SRC_PEFT),
    Rule("ample_data", lambda s: s.labelled >= 10000,
         {"full": 6, "lora": 4, "qlora": 3, "adapter": 2},
         "ample data: full fine-tuning is worth it when memory allows", SRC_PEFT),
    Rule("pet_needs_labels_words", lambda s: not s.is_cls,
         {"pet": EXCLUDED}, "PET scores label words: classification only", SRC_FEW),
    Rule("generation_prefers_lora", lambda s: s.task in ("generation", "summarization", "qa", "extraction"),
         {"lora": 1, "qlora": 1}, "generation-type tasks: LoRA on a causal LM (SFT)", SRC_PEFT),
    Rule("many_tasks", lambda s: s.tasks > 1,
         {"adapter": 2, "prefix_tuning": 2, "lora": 2, "qlora": 1, "full": -3},
         "several tasks from one base model: small per-task modules instead of a full copy per task",
         "Houlsby et al. 2019 (arXiv:1902.00751); Li & Liang 2021 (arXiv:2101.00190)"),
    Rule("short_time_budget", lambda s: s.time_budget_h is not None and s.time_budget_h < 1,
         {"icl": 3, "full": -3, "qlora": -1},
         "under an hour: no-training ICL and light methods first; QLoRA's 4-bit kernels are slower", SRC_PEFT),
    Rule("domain_shift_with_text", lambda s: s.low_resource and s.unlabelled,
         {"continued_pretraining": 5},
         "low-resource language or specialised domain with unlabelled text: continued pretraining first",
         "Gururangan et al. 2020, Don't Stop Pretraining (arXiv:2004.10964)"),
    Rule("domain_shift", lambda s: s.low_resource and not s.unlabelled,
         {"retrieval": 2, "continued_pretraining": 1},
         "specialised domain without unlabelled text: retrieval of in-domain passages helps; "
         "collect text for continued pretraining", "Lewis et al. 2020, RAG (arXiv:2005.11401)"),
    Rule("unlabelled_pool", lambda s: s.unlabelled and s.is_cls and s.labelled < 1000,
         {"self_training": 4},
         "an unlabelled pool with few labels: self-training / PET's soft labels on the pool",
         "Schick & Schütze 2021 (iPET); Xie et al. 2020 (arXiv:1911.04252)"),
    Rule("labelling_possible", lambda s: s.labelled < 1000,
         {"active_learning": 2},
         "few labels: label the examples the model is least sure of first (active learning)",
         "Settles 2009, Active Learning Literature Survey"),
    Rule("forgetting", lambda s: s.tasks > 1 or s.low_resource,
         {"replay": 2},
         "sequential tasks or domain shift: mix some earlier/general data back in (replay) against forgetting",
         "Scialom et al. 2022 (arXiv:2205.12393); de Masson d'Autume et al. 2019"),
    Rule("encoder_full_ft", lambda s: s.labelled >= 1000 and s.is_cls,
         {"llrd": 2}, "full fine-tuning of an encoder: layer-wise learning-rate decay stabilises it",
         "Howard & Ruder 2018 (ULMFiT); Clark et al. 2020 (ELECTRA)"),
    Rule("knowledge_heavy", lambda s: s.task in ("qa", "extraction"),
         {"retrieval": 3}, "knowledge-heavy task: retrieve passages into the prompt",
         "Lewis et al. 2020, RAG (arXiv:2005.11401)"),
)


@dataclass
class Advice:
    approach: str
    score: int
    reasons: list[str]
    rules: list[str]
    memory_mb: float | None = None
    fits: bool | None = None
    recipe: str | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def fired(situation: Situation) -> list[Rule]:
    return [r for r in RULES if r.when(situation)]


def score(situation: Situation) -> dict[str, tuple[int, list[Rule]]]:
    out: dict[str, tuple[int, list[Rule]]] = {}
    for rule in fired(situation):
        for approach, pts in rule.scores.items():
            total, rules = out.get(approach, (0, []))
            out[approach] = (total + pts, rules + [rule])
    return out


def default_model(situation: Situation) -> str:
    return situation.model or ("minilm-l6" if situation.is_cls else "smollm2-135m")


# --------------------------------------------------------------------------- recipes

def recipe_for(approach: str, situation: Situation, data: str = "train.jsonl") -> dict | None:
    """A recipe dict for an approach; None when leantune has no stage for it (advice only)."""
    model = default_model(situation)
    cls = situation.is_cls
    fmt = "classification" if cls else "alpaca"
    base = {"model": model, "data": {"train": data, "format": fmt},
            "train": {"epochs": 3, "batch_size": 8, "lr": 2e-4, "max_length": 256},
            "output": {"name": f"advise-{approach}"}}
    stage = "cls" if cls else "sft"
    if approach == "icl":
        return {**base, "stage": {"name": "icl"}, "data": {**base["data"], "shots": 4}}
    if approach == "pet":
        return {**base, "method": "lora", "stage": {"name": "pet", "verbalizer": "auto"},
                "data": {**base["data"], **({"unlabeled": "keep"} if situation.unlabelled else {})},
                "train": {**base["train"], "lr": 1e-3, "epochs": 5}}
    if approach == "self_training":
        if not cls:
            return None
        return {**base, "method": "lora", "stage": {"name": "pet", "verbalizer": "auto"},
                "data": {**base["data"], "unlabeled": "keep"}, "train": {**base["train"], "lr": 1e-3}}
    if approach in ("adapter", "prefix_tuning", "lora", "qlora", "full"):
        lr = {"full": 2e-5, "adapter": 1e-3, "prefix_tuning": 1e-2}.get(approach, 2e-4)
        return {**base, "method": approach, "stage": stage, "train": {**base["train"], "lr": lr}}
    if approach == "llrd":
        return {**base, "method": [{"name": "full"}, {"name": "llrd", "decay": 0.9}], "stage": stage,
                "train": {**base["train"], "lr": 5e-5}}
    if approach == "continued_pretraining":
        return {**base, "method": "lora", "stage": "pt", "data": {"train": "unlabelled.jsonl", "format": "text"}}
    return None  # active_learning, replay, retrieval: advice without a recipe


def memory_for(approach: str, situation: Situation) -> float | None:
    """Estimated peak bytes of the approach's recipe (ICL: a forward pass, no training state)."""
    from .estimate import Setting, estimate, load_shape

    method = {"icl": "lora", "pet": "lora", "self_training": "lora", "continued_pretraining": "lora",
              "llrd": "full"}.get(approach, approach)
    if method not in APPROACHES or method == "icl":
        return None
    try:
        shape = load_shape(default_model(situation))
        est = estimate(shape, Setting(method=[{"name": method}], batch_size=8, seq_len=256,
                                      label_fraction=0.5 if not situation.is_cls else 1.0,
                                      head="seq_cls" if situation.is_cls and approach not in ("pet", "icl",
                                                                                              "self_training")
                                      else None))
        if approach == "icl":
            return est.components["weights"] + est.components["overhead"]
        return est.total
    except Exception:
        return None


def advise(situation: Situation, out_dir: Path | None = None, data: str = "train.jsonl",
           with_memory: bool = True) -> list[Advice]:
    from ..recipe import load_recipe

    scored = score(situation)
    advice = []
    for approach in APPROACHES + HELPERS:
        if approach not in scored:
            continue
        pts, rules = scored[approach]
        a = Advice(approach, pts, [r.reason for r in rules if r.scores[approach] > 0] or
                   [r.reason for r in rules], [r.name for r in rules])
        if pts <= EXCLUDED // 2:
            a.note = "not applicable"
        if with_memory and approach in TRAINS:
            mem = memory_for(approach, situation)
            if mem is not None:
                a.memory_mb = mem / 2**20
                a.fits = mem <= situation.memory_budget
                if not a.fits:
                    a.score += EXCLUDED
                    a.note = "exceeds the memory budget"
        raw = recipe_for(approach, situation, data)
        if raw is not None and out_dir is not None and a.score > EXCLUDED // 2:
            load_recipe(raw=raw)  # valid, or raise
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{approach}.yaml"
            header = f"# leantune advise: {approach} (score {a.score})\n# " + "\n# ".join(a.reasons) + "\n"
            path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
            a.recipe = str(path)
        advice.append(a)
    advice.sort(key=lambda a: (-a.score, (APPROACHES + HELPERS).index(a.approach)))
    return advice
