"""Contrastive objectives on sentence embeddings.

- InfoNCE (van den Oord et al. 2018, arXiv:1807.03748) with in-batch negatives.
- Unsupervised SimCSE (Gao et al. 2021, arXiv:2104.08821): two dropout views of the same
  sentence are positives, the other sentences of the batch negatives.
- Supervised contrastive loss (Khosla et al. 2020, arXiv:2004.11362): every other example
  of the same class is a positive.
Plus mean pooling, and the evaluations on learned embeddings: recall@1 and kNN accuracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.builtin import dialog_pairs


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors where ``attention_mask`` is 1: [B, T, H] → [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def encode(model, batch: dict, prefix: str = "") -> torch.Tensor:
    """Mean-pooled last hidden states of ``batch[prefix + 'input_ids']`` (any HF encoder/decoder)."""
    ids, mask = batch[prefix + "input_ids"], batch[prefix + "attention_mask"]
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]
    return mean_pool(hidden.float(), mask)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE: row i of ``queries`` should pick row i of ``keys`` among all keys.

    Loss = mean_i −log( exp(cos(q_i, k_i)/τ) / Σ_j exp(cos(q_i, k_j)/τ) ).
    """
    q, k = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    logits = q @ k.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def simcse_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Unsupervised SimCSE: InfoNCE between two dropout views of the same sentences."""
    return info_nce(view_a, view_b, temperature)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): for each anchor, the mean over its
    positives p (same label, p ≠ anchor) of −log( exp(s_ap/τ) / Σ_{a'≠a} exp(s_aa'/τ) ).
    Anchors without a positive in the batch are skipped; 0 if none has one."""
    z = F.normalize(embeddings.float(), dim=-1)
    sim = z @ z.T / temperature
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    counts = pos.sum(1)
    has = counts > 0
    if not has.any():
        return embeddings.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / counts[has]
    return per_anchor.mean()


def recall_at_1(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """Fraction of queries whose nearest key (cosine) is the key with the same index."""
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
    return float((sims.argmax(1) == torch.arange(len(queries))).float().mean())


def knn_accuracy(queries: torch.Tensor, query_labels: list, memory: torch.Tensor, memory_labels: list,
                 k: int = 1) -> float:
    """Majority vote of the k nearest memory embeddings (cosine); ties go to the nearest."""
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(memory.float(), dim=-1).T
    top = sims.topk(min(k, len(memory)), dim=1).indices.tolist()
    correct = 0
    for row, gold in zip(top, query_labels):
        votes: dict = {}
        for rank, j in enumerate(row):
            lab = memory_labels[j]
            votes[lab] = votes.get(lab, (0, -rank))
            votes[lab] = (votes[lab][0] + 1, votes[lab][1])
        correct += max(votes, key=votes.get) == gold
    return correct / max(len(query_labels), 1)


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola (2020) uniformity: log E exp(−t‖z_i − z_j‖²) over distinct pairs (lower = more uniform)."""
    z = F.normalize(embeddings.float(), dim=-1)
    if len(z) < 2:
        return 0.0
    d = torch.pdist(z).pow(2)
    return float(torch.log(torch.exp(-t * d).mean()))


# English ↔ Spanish categories of the ChatterBot corpus that cover the same topic.
DIALOG_CATEGORY_MAP = {"emotion": "emociones", "psychology": "psicologia", "ai": "IA", "conversations": "conversations",
                       "greetings": "greetings", "money": "dinero", "botprofile": "perfilbot", "trivia": "trivia"}


def bilingual_category_rows(first: str = "english", second: str = "spanish") -> list[dict]:
    """Cross-lingual alignment data from ``builtin.dialog_pairs``: classification rows
    ``{"text", "label", "language"}`` whose label is the shared (English) category name.

    The two corpora are *not* translations line by line (different counts and orders per file,
    e.g. money 31 vs dinero 30 lines), so lines are paired at the category level: the
    supervised contrastive loss pulls together lines of the same topic across both languages.
    Only the categories of ``DIALOG_CATEGORY_MAP`` (present in both) are kept."""
    if (first, second) != ("english", "spanish"):
        raise ValueError("the category map covers english → spanish only")
    back = {v: k for k, v in DIALOG_CATEGORY_MAP.items()}
    rows, seen = [], set()
    for lang, mapping in ((first, {k: k for k in DIALOG_CATEGORY_MAP}), (second, back)):
        for p in dialog_pairs(lang):
            key = (lang, p["prompt"], p["category"])
            if p["category"] in mapping and key not in seen:  # a prompt with several replies: once
                seen.add(key)
                rows.append({"text": p["prompt"], "label": mapping[p["category"]], "language": lang})
    return rows
