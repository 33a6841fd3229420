"""The advisor as one call: a data file or the number of labelled examples, the task and the
budget in; the ranked approaches, what the data says and why, out. ``leantune advise`` prints
a ``Consultation``; the web page shows the same one."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LeantuneError
from .advisor import TASKS, Ranking, Situation, rank
from .advisor_recipes import default_model
from .data_facts import read_data, situation_from_data
from .gpus import find_gpu
from .model_shape import parse_size

ADVISE_GPUS = ("t4", "v100", "a10", "l4", "3090", "4090", "a100-40gb", "a100", "h100", "h200")


def _nominal(label: str) -> str:
    """The memory a card is sold with, from its label: 'T4 16 GB' → '16GB'."""
    return re.search(r"(\d+) GB", label).group(1) + "GB"


# GPU name → the memory budget it stands for, as text ("16GB")
GPU_MEMORY: dict[str, str] = {name: _nominal(find_gpu(name).label) for name in ADVISE_GPUS}


def budget_memory(memory: str | None, gpu: str | None) -> str:
    """The memory budget as text: the GPU's memory when ``gpu`` is named (a known name, or any
    name with a part ending in NNGB), else ``memory`` (24GB when None)."""
    if not gpu:
        return memory or "24GB"
    key = gpu.lower().removeprefix("nvidia-").removeprefix("rtx")
    text = GPU_MEMORY.get(key) or next((p for p in key.replace("_", "-").split("-") if p.endswith("gb")), "")
    if not text:
        raise LeantuneError(f"advise: --gpu {gpu!r}: one of {', '.join(GPU_MEMORY)}, or a name ending in NNGB")
    return text


def check_request(data_file: Path | None, task: str | None, labelled: int | None) -> None:
    """Refuse an unknown task, and a request with neither a data file nor a number of examples."""
    if task is not None and task not in TASKS:
        raise LeantuneError(f"advise: --task {task!r}; one of {', '.join(TASKS)}")
    if data_file is None and labelled is None:
        raise LeantuneError("advise: give a DATA file, or the number of labelled examples with -n")


@dataclass
class Consultation:
    situation: Situation            # the situation as ranked (with the data's and the model's facts)
    ranking: Ranking
    facts_lines: list[str]          # what the data file says, or the situation in words without one
    header: str                     # "task: … · model: … · memory budget …"
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # approaches that cannot run here, with why

    def rows(self) -> list[dict]:
        """One dict per approach in rank order. ``model``: the model it runs on when that is not
        the default one, else ''; ``recipe_line``: its training length in words, or ''."""
        default = default_model(self.situation)
        out = []
        for i, a in enumerate(self.ranking.advice, 1):
            t = (a.raw or {}).get("train", {})
            recipe_line = (f"recipe: {t['max_steps']} steps × batch {t['batch_size']}, lr {t['lr']:g}, "
                           f"max length {t['max_length']}" if t.get("max_steps") else "")
            out.append({"rank": i, "approach": a.approach, "model": a.model if a.model and a.model != default else "",
                        "score": a.score, "memory_mb": a.memory_mb, "fits": a.fits, "reasons": list(a.reasons),
                        "note": a.note, "recipe_line": recipe_line, "recipe": a.recipe})
        return out


def consult(data_file: Path | None, *, task: str | None = None, labelled: int | None = None,
            unlabelled: bool = False, low_resource: bool = False, tasks: int = 1, memory: str = "24GB",
            gpu: str | None = None, time_h: float | None = None, model: str | None = None, data: str | None = None,
            max_length: int = 512, recipes_dir: Path | None = None) -> Consultation:
    """Read the data file (when given), rank the approaches, write one recipe per approach into
    ``recipes_dir`` (when given); ``data`` is the training file the recipes name (default: the data file)."""
    check_request(data_file, task, labelled)
    memory = budget_memory(memory, gpu)
    base = Situation(task=task or "classification", labelled=labelled or 0, unlabelled=unlabelled,
                     low_resource=low_resource, tasks=tasks, memory_budget=parse_size(memory),
                     time_budget_h=time_h, model=model, max_length_cap=max_length)
    facts = None
    if data_file is not None:
        if not Path(data_file).is_file():
            raise LeantuneError(f"advise: {data_file}: no such file")
        facts = read_data(data_file, None, model or ("minilm-l6" if base.task == "classification"
                                                     else "smollm2-135m"))
        base = situation_from_data(facts, base)
    ranking = rank(base, recipes_dir, data or (str(data_file) if data_file else "train.jsonl"))
    s = ranking.situation
    header = (f"task: {s.task} · model: {default_model(s)} · memory budget {memory}"
              + (f" · {time_h:g} h" if time_h else ""))
    return Consultation(s, ranking, facts.lines() if facts else [f"{s.task}, {s.shots} (no data file read)"],
                        header, list(s.notes), list(ranking.dropped))
