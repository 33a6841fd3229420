"""`leantune advise`: which approach to try first, from a table of rules.

Every rule is one row of ``RULES``: a name, a condition on the situation, and for each
approach it concerns the score it adds and why (its own sentence, shown on that approach's
row), and its source (docs/guidance.md lists them). Only approaches that fit the task
(``FITS``) and can run on this data and model (a recipe exists: ``advisor_recipes``) are
scored; the others are listed as left out, with why. Scores add up per approach; approaches
are ranked by score, those whose memory estimate exceeds the budget are marked and sink.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ..recipe import load_recipe
from .advisor_recipes import (
    FALLBACK_LM,
    SMALL_MODEL,
    default_model,
    epochs_for,
    model_facts,
    model_for,
    recipe_for,
    steps_for,
)
from .model_shape import load_shape
from .peak_memory import Setting, estimate
from .situation import Situation

__all__ = ["APPROACHES", "FITS", "HELPERS", "RULES", "TASKS", "Advice", "Ranking", "Situation", "advise", "fired",
           "fits", "rank", "recipe_for", "score"]

TASKS = ("classification", "generation", "extraction", "summarization", "qa")

# the main approaches, then the helpers that go with them
APPROACHES = ("icl", "pet", "adapter", "prefix_tuning", "lora", "qlora", "full", "dpo")
HELPERS = ("continued_pretraining", "self_training", "active_learning", "replay", "llrd", "retrieval")
TRAINS = {"pet", "adapter", "prefix_tuning", "lora", "qlora", "full", "dpo", "continued_pretraining",
          "self_training", "llrd"}
ADVICE_ONLY = {"active_learning", "replay", "retrieval"}  # leantune has no stage for these: no recipe

EXCLUDED = -100
GENERATIVE = ("generation", "extraction", "summarization", "qa")


# Which tasks each approach fits: every approach and helper checked against every task in TASKS.
# The advisor proposes an approach only for the tasks listed here, whatever the rules score.
FITS: dict[str, tuple[str, ...]] = {
    "icl": TASKS,                          # label words for classification; demonstrations + continuation otherwise
    "pet": ("classification",),            # cloze templates scored through label words (verbalizers)
    "adapter": TASKS, "prefix_tuning": TASKS, "lora": TASKS, "qlora": TASKS, "full": TASKS,
    "dpo": GENERATIVE,                     # preference pairs of replies (stage dpo)
    "continued_pretraining": TASKS,        # stage pt: causal or masked LM on in-domain text, before any task
    "self_training": ("classification",),  # pseudo-labels are class labels (stages self_train, pet)
    "active_learning": ("classification",),  # uncertainty over a fixed label set (stage active)
    "replay": TASKS,                       # mixing earlier/general data back in works for any objective
    "llrd": ("classification",),           # layer-wise LR decay for full fine-tuning of an encoder
    "retrieval": ("generation", "extraction", "qa"),  # summarization has its source, classification its labels
}
assert set(FITS) == set(APPROACHES + HELPERS) and all(set(t) <= set(TASKS) for t in FITS.values())


def fits(approach: str, task: str) -> bool:
    return task in FITS[approach]


def _params(n: int | None) -> str:
    if not n:
        return "small"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


@dataclass(frozen=True)
class Rule:
    """``effects``: approach → (score, why this approach in this situation). The why is a
    template: {n} labelled examples, {shots} the same with examples per class, {task}, {tasks}
    (number of tasks), {model}, {params}, {steps}/{epochs} (the recipe's training length),
    {fallback} (the model ICL and PET use instead)."""
    name: str
    when: Callable[[Situation], bool]
    effects: dict[str, tuple[int, str]]
    source: str

    @property
    def scores(self) -> dict[str, int]:
        return {approach: pts for approach, (pts, _) in self.effects.items()}

    def reason(self, approach: str, s: Situation) -> str:
        n = s.labelled or 0
        return self.effects[approach][1].format(
            n=f"{n:,}", shots=s.shots, task=s.task, tasks=s.tasks, model=default_model(s), params=_params(s.params),
            steps=steps_for(n), epochs=f"{epochs_for(n):g}", fallback=FALLBACK_LM)


SRC_FEW = "docs/few-shot.md; Schick & Schütze 2021 (PET, arXiv:2001.07676); Brown et al. 2020 (GPT-3 ICL)"
SRC_PEFT = "Hu et al. 2021 (LoRA); Dettmers et al. 2023 (QLoRA); He et al. 2022 (arXiv:2110.04366)"
SRC_RAG = "Lewis et al. 2020, RAG (arXiv:2005.11401)"
RULES: tuple[Rule, ...] = (
    Rule("very_low_resource", lambda s: s.labelled < 32, {
        "icl": (6, "{shots} are too few to train on: in-context learning puts them in the prompt "
                   "as demonstrations, no training; measure it first"),
        "pet": (5, "PET phrases the task as a cloze question whose label words reuse the language model's head: "
                   "the trained option that learns most from {n} examples"),
        "adapter": (3, "adapters train a small bottleneck per layer and leave the model intact: the first trained "
                       "option after the no-training baseline"),
        "prefix_tuning": (3, "prefix tuning learns only virtual tokens in front of every layer: the fewest "
                             "trainable weights, little to overfit on {n} examples"),
        "lora": (2, "LoRA learns a low-rank weight update; with {n} examples keep the rank small"),
        "full": (-3, "full fine-tuning moves every weight: {n} examples overfit it and it forgets what it knew"),
    }, SRC_FEW),
    Rule("few_labelled", lambda s: 32 <= s.labelled < 1000, {
        "pet": (4, "with {shots} PET can beat a fresh classification head: the label words give "
                   "the model a head start"),
        "lora": (4, "{shots}: enough for LoRA, a low-rank update (its head trains too, at a higher learning "
                    "rate) that adapts the model without overfitting"),
        "qlora": (3, "QLoRA is LoRA on a 4-bit base model: the same learning from {n} examples in less memory, "
                     "with slower steps"),
        "adapter": (3, "adapters learn about as well as LoRA from {n} examples, as a separate module per task "
                       "(not merged into the weights)"),
        "prefix_tuning": (2, "prefix tuning trains the fewest weights; with {n} examples it usually trails LoRA "
                             "and adapters"),
        "icl": (1, "ICL costs no training and is the baseline to beat, but only a few of the {n} examples fit "
                   "in a prompt"),
        "full": (-1, "full fine-tuning of a large model on {n} examples can overfit for little gain over "
                     "parameter-efficient tuning"),
    }, SRC_FEW + "; " + SRC_PEFT),
    Rule("moderate_data", lambda s: 1000 <= s.labelled < 10000, {
        "lora": (5, "{n} examples: LoRA matches full fine-tuning at a fraction of the memory"),
        "qlora": (4, "QLoRA keeps LoRA's quality on {n} examples with the base model in 4-bit: the most "
                     "memory-frugal trained option"),
        "adapter": (3, "adapters match LoRA on {n} examples but stay a separate module at inference"),
        "full": (2, "with {n} examples full fine-tuning is worth trying where memory allows: the reference "
                    "the others are measured against"),
        "prefix_tuning": (1, "prefix tuning gains less than LoRA from {n} examples: a lightweight fallback"),
    }, SRC_PEFT),
    Rule("ample_data", lambda s: s.labelled >= 10000, {
        "full": (6, "{n} examples: full fine-tuning can use all of them and is worth its memory"),
        "lora": (4, "LoRA stays close to full fine-tuning on {n} examples at a fraction of the memory"),
        "qlora": (3, "QLoRA trains on {n} examples when neither full fine-tuning nor 16/32-bit LoRA fits "
                     "the memory"),
        "adapter": (2, "adapters come close to full fine-tuning with {n} examples and keep one small module "
                       "per task"),
    }, SRC_PEFT),
    Rule("generation_prefers_lora", lambda s: s.task in ("generation", "summarization", "qa", "extraction"), {
        "lora": (1, "{task}: supervised fine-tuning of a causal LM with LoRA is the common recipe"),
        "qlora": (1, "{task}: QLoRA is the common SFT recipe when a larger causal LM must fit the memory"),
    }, SRC_PEFT),
    Rule("many_tasks", lambda s: s.tasks > 1, {
        "adapter": (2, "{tasks} tasks on one base model: one small adapter per task, loaded as needed"),
        "prefix_tuning": (2, "{tasks} tasks: one learned prefix per task in front of one frozen, shared model"),
        "lora": (2, "{tasks} tasks: one LoRA file per task on a shared base model"),
        "qlora": (1, "{tasks} tasks: per-task LoRA adapters on one shared 4-bit base model"),
        "full": (-3, "{tasks} tasks would need {tasks} full copies of the model"),
    }, "Houlsby et al. 2019 (arXiv:1902.00751); Li & Liang 2021 (arXiv:2101.00190)"),
    Rule("short_time_budget", lambda s: s.time_budget_h is not None and s.time_budget_h < 1, {
        "icl": (3, "under an hour: ICL needs one pass over the evaluation set and no training"),
        "full": (-3, "under an hour: full fine-tuning updates every weight, the slowest steps"),
        "qlora": (-1, "under an hour: QLoRA's 4-bit dequantisation makes each step slower than LoRA's"),
    }, SRC_PEFT),
    Rule("domain_shift_with_text", lambda s: s.low_resource and s.unlabelled, {
        "continued_pretraining": (5, "low-resource language or specialised domain with unlabelled text: "
                                     "continue pretraining on that text before fine-tuning"),
    }, "Gururangan et al. 2020, Don't Stop Pretraining (arXiv:2004.10964)"),
    Rule("domain_shift", lambda s: s.low_resource and not s.unlabelled, {
        "retrieval": (2, "specialised domain without unlabelled text: retrieve in-domain passages into the prompt"),
        "continued_pretraining": (1, "specialised domain: collect in-domain text and continue pretraining on it "
                                     "before fine-tuning"),
    }, SRC_RAG + "; Gururangan et al. 2020 (arXiv:2004.10964)"),
    Rule("unlabelled_pool", lambda s: s.unlabelled and s.is_cls and s.labelled < 1000, {
        "self_training": (4, "{n} labels and an unlabelled pool: label the pool with the model's confident "
                             "predictions (or PET's soft labels) and train again"),
    }, "Schick & Schütze 2021 (iPET); Xie et al. 2020 (arXiv:1911.04252)"),
    Rule("labelling_possible", lambda s: s.labelled < 1000, {
        "active_learning": (2, "only {n} labels: label next the examples the model is least sure of "
                               "(active learning)"),
    }, "Settles 2009, Active Learning Literature Survey"),
    Rule("forgetting", lambda s: s.tasks > 1 or s.low_resource, {
        "replay": (2, "sequential tasks or a domain shift: mix some earlier or general data back into training "
                      "so the model does not forget"),
    }, "Scialom et al. 2022 (arXiv:2205.12393); de Masson d'Autume et al. 2019"),
    Rule("encoder_full_ft", lambda s: s.labelled >= 1000 and s.is_cls, {
        "llrd": (2, "{n} examples on an encoder: full fine-tuning with layer-wise learning-rate decay keeps "
                    "the lower layers stable"),
    }, "Howard & Ruder 2018 (ULMFiT); Clark et al. 2020 (ELECTRA)"),
    Rule("knowledge_heavy", lambda s: s.task in ("qa", "extraction"), {
        "retrieval": (3, "{task} depends on facts the model may lack: retrieve passages into the prompt"),
    }, SRC_RAG),
    Rule("small_encoder", lambda s: s.is_cls and bool(s.encoder) and (s.params or SMALL_MODEL) < SMALL_MODEL, {
        "full": (6, "{model} is a {params} encoder: full fine-tuning for {steps} steps ({epochs} passes over "
                    "{n} examples) costs minutes and gives the fresh head enough updates; measured best on "
                    "8 posts per class (benchmarks/advise_20ng.py)"),
        "llrd": (4, "{model} is small: full fine-tuning with layer-wise learning-rate decay ({steps} steps) "
                    "moves the lower layers less"),
    }, "benchmarks/results/advise_20ng.json; Mosbach et al. 2021 (arXiv:2006.04884): train few-shot BERT longer"),
    Rule("lm_head_missing", lambda s: s.lm_head is False and s.model is None and s.is_cls, {
        "icl": (-3, "runs on {fallback}: {model} has no masked- or causal-LM head to put demonstrations "
                    "through; a second model to serve"),
        "pet": (-3, "runs on {fallback}: {model} has no masked- or causal-LM head to score label words with"),
    }, "Schick & Schütze 2021: PET scores label words with the pretrained MLM head"),
    Rule("preference_pairs", lambda s: s.preference, {
        "dpo": (8, "{n} preference pairs (a prompt, a chosen and a rejected reply): DPO learns from them "
                   "directly, without a reward model"),
    }, "Rafailov et al. 2023, DPO (arXiv:2305.18290)"),
    Rule("text_only", lambda s: s.data_kind == "text", {
        "continued_pretraining": (6, "unlabelled text only: continue pretraining on it (stage pt) so the "
                                     "model learns its domain, then label a few examples for the task"),
    }, "Gururangan et al. 2020, Don't Stop Pretraining (arXiv:2004.10964)"),
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
    model: str | None = None
    raw: dict | None = field(default=None, repr=False)  # the recipe as a dict (None: advice only)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Ranking:
    situation: Situation
    advice: list[Advice]
    dropped: list[str]  # "pet: why it cannot run here"


def fired(situation: Situation) -> list[Rule]:
    return [r for r in RULES if r.when(situation)]


def score(situation: Situation) -> dict[str, tuple[int, list[Rule]]]:
    """Approach → (total score, the fired rules that concern it); approaches that do not fit the task are left out."""
    out: dict[str, tuple[int, list[Rule]]] = {}
    for rule in fired(situation):
        for approach, pts in rule.scores.items():
            if not fits(approach, situation.task):
                continue
            total, rules = out.get(approach, (0, []))
            out[approach] = (total + pts, rules + [rule])
    return out


def with_model(situation: Situation) -> Situation:
    """The situation with the default model's heads, size and kind filled in (as far as it loads)."""
    if situation.heads is not None:
        return situation
    try:
        heads, params, encoder = model_facts(default_model(situation))
    except Exception:  # an unknown model: no facts, no model-based rules
        return situation
    return Situation(**{**situation.__dict__, "heads": heads, "params": params, "encoder": encoder})


SHALLOW_PROMPT_MIN_PARAMS = 10e9  # below it prefix tuning trails fine-tuning on classification


def trails_here(approach: str, s: Situation) -> str | None:
    """Why a runnable approach is still not worth a recipe here, or None. Prefix tuning on
    classification with a model below ~10B parameters: Liu et al. 2022 (P-tuning v2,
    arXiv:2110.07602) show shallow prompts trailing fine-tuning there; measured 0.555 against
    0.695 for full fine-tuning of MiniLM on 8 posts per class (benchmarks/advise_20ng.py)."""
    if approach == "prefix_tuning" and s.is_cls and s.params is not None and s.params < SHALLOW_PROMPT_MIN_PARAMS:
        return (f"prefix_tuning: trails fine-tuning on classification below ~10B parameters "
                f"({default_model(s)}: {_params(s.params)}; Liu et al. 2022, P-tuning v2)")
    return None


def why_not(approach: str, s: Situation) -> str:
    if model_for(approach, s) is None:
        return (f"{approach}: {default_model(s)} has no masked- or causal-LM head (it needs one); "
                f"name a model with one (--model) or leave --model out to use {FALLBACK_LM}")
    return f"{approach}: leantune cannot train it on {s.data_kind} data"


def memory_for(approach: str, situation: Situation) -> float | None:
    """Estimated peak bytes of the approach's recipe (ICL: none, no training state); on a CPU with
    ``train.cpu_heap: release``, what ``auto`` falls back to when the faster reuse would not fit."""
    method = {"pet": "lora", "self_training": "lora", "continued_pretraining": "lora", "dpo": "lora",
              "llrd": "full"}.get(approach, approach)
    model = model_for(approach, situation)
    if method not in APPROACHES or approach == "icl" or model is None:
        return None
    try:
        shape = load_shape(model)
        head = "seq_cls" if situation.is_cls and approach not in ("pet", "self_training") else None
        est = estimate(shape, Setting(method=[{"name": method}], batch_size=8, seq_len=256,
                                      label_fraction=0.5 if not situation.is_cls else 1.0, head=head,
                                      cpu_heap="release"))
        return est.total
    except Exception:
        return None


def rank(situation: Situation, out_dir: Path | None = None, data: str = "train.jsonl",
         with_memory: bool = True) -> Ranking:
    """Score, keep what can run, estimate memory, write recipes (``out_dir``). ``with_memory``:
    look at the model (heads, size, memory estimate); without, the rules alone."""
    s = with_model(situation) if with_memory else situation
    scored = score(s)
    advice, dropped = [], []
    for approach in APPROACHES + HELPERS:
        if approach not in scored:
            continue
        if weak := trails_here(approach, s):
            dropped.append(weak)
            continue
        raw = recipe_for(approach, s, data)
        if raw is None and approach not in ADVICE_ONLY:
            dropped.append(why_not(approach, s))
            continue
        pts, rules = scored[approach]
        ordered = sorted(rules, key=lambda r: r.scores[approach] <= 0)  # what speaks for it, then against
        a = Advice(approach, pts, [r.reason(approach, s) for r in ordered], [r.name for r in ordered],
                   model=raw and raw["model"], raw=raw)
        if with_memory and approach in TRAINS:
            mem = memory_for(approach, s)
            if mem is not None:
                a.memory_mb = mem / 2**20
                a.fits = mem <= s.memory_budget
                if not a.fits:
                    a.score += EXCLUDED
                    a.note = "exceeds the memory budget"
        if raw is not None and out_dir is not None and a.score > EXCLUDED // 2:
            load_recipe(raw=raw)  # valid, or raise
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{approach}.yaml"
            header = f"# leantune advise: {approach} (score {a.score})\n# " + "\n# ".join(a.reasons) + "\n"
            path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
            a.recipe = str(path)
        advice.append(a)
    advice.sort(key=lambda a: (-a.score, (APPROACHES + HELPERS).index(a.approach)))
    return Ranking(s, advice, dropped)


def advise(situation: Situation, out_dir: Path | None = None, data: str = "train.jsonl",
           with_memory: bool = True) -> list[Advice]:
    return rank(situation, out_dir, data, with_memory).advice
