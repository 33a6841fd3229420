"""Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531) and the teacher-logit cache.

Classification: α · T² · KL(p_T ‖ p_S) + (1 − α) · CE(student, gold), with p = softmax(z / T);
the T² keeps the soft term's gradients on the scale of the hard term's.

Causal LMs: token-level KL at the response positions against the teacher's distribution,
stored as its top-k logits. ``forward``: KL(p_T ‖ p_S) with p_T the teacher's top-k logits
renormalised and p_S the student's full-vocabulary distribution read at those k tokens
(the mass p_T leaves out is taken to be 0). ``reverse``: KL(q_S ‖ p_T) on the top-k support,
both renormalised over it (mode-seeking; Gu et al. 2024, MiniLLM, arXiv:2306.08543).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

Direction = Literal["forward", "reverse"]


def kd_classification_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                           temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.'s mixture; ``labels`` may be None when α = 1 (soft labels only)."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    soft = alpha * t * t * kl
    if alpha >= 1 or labels is None:
        return soft
    return soft + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


def topk_token_kl(student_logits: torch.Tensor, teacher_indices: torch.Tensor, teacher_values: torch.Tensor,
                  temperature: float = 1.0, direction: Direction = "forward") -> torch.Tensor:
    """Mean over positions of the KL between teacher (top-k) and student, times T².

    ``student_logits`` [N, V]; ``teacher_indices``/``teacher_values`` [N, k]."""
    t = temperature
    idx = teacher_indices.long()
    log_pt = F.log_softmax(teacher_values.float() / t, dim=-1)
    if direction == "forward":
        log_ps = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, idx)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    elif direction == "reverse":
        log_qs = F.log_softmax(student_logits.float().gather(-1, idx) / t, dim=-1)
        kl = (log_qs.exp() * (log_qs - log_pt)).sum(-1)
    else:
        raise ValueError(f"direction {direction!r}: forward or reverse")
    return kl.mean() * t * t


# --------------------------------------------------------------------------- the cache

def cache_key(teacher: str, kind: str, top_k: int | None, features: list[dict], extra: str = "") -> str:
    """Identifies (teacher, its inputs): the teacher's forward pass is skipped when it matches."""
    h = hashlib.sha256()
    h.update(json.dumps([str(teacher), kind, top_k, extra]).encode())
    for f in features:
        h.update(json.dumps([f["input_ids"], f.get("labels") if kind == "lm" else None,
                             f.get("token_type_ids")]).encode())
    return h.hexdigest()[:20]


def save_classification_cache(path: Path, logits: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logits": logits.float().contiguous()}, str(tmp))
    tmp.replace(path)


def load_classification_cache(path: Path) -> torch.Tensor:
    return load_file(str(path))["logits"]


def save_lm_cache(path: Path, per_example: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Top-k (indices int32, values fp16) of every response position of every example."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = torch.tensor([0] + [len(i) for i, _ in per_example], dtype=torch.long)
    k = per_example[0][0].shape[-1] if per_example else 1
    idx = torch.cat([i for i, _ in per_example]) if per_example else torch.zeros(0, k, dtype=torch.int32)
    val = torch.cat([v for _, v in per_example]) if per_example else torch.zeros(0, k, dtype=torch.float16)
    tmp = path.with_suffix(".tmp")
    save_file({"indices": idx.to(torch.int32).contiguous(), "values": val.to(torch.float16).contiguous(),
               "offsets": lengths.cumsum(0).contiguous()}, str(tmp))
    tmp.replace(path)


def load_lm_cache(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_file(str(path))
    off = data["offsets"].tolist()
    return [(data["indices"][a:b], data["values"][a:b]) for a, b in zip(off, off[1:])]
