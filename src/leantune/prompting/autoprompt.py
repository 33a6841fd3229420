"""AutoPrompt (Shin et al. 2020, arXiv:2010.15980): gradient-guided search for trigger tokens.

A template holds ``{trigger:N}`` slots, filled at first with the mask token (or " the").
Each iteration takes a batch of labelled examples, computes the loss of the gold label
(cross-entropy over label scores) and its gradient g with respect to the trigger slot's
input embedding; the first-order estimate of the loss change from swapping in token w is
(e_w − e_cur)·g, so the ``candidates`` tokens with the smallest e_w·g are tried, and the
one that lowers the batch loss most is kept. Slots are visited in turn; the model is
never updated.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..data.collate import pad_batch
from ..errors import RecipeError
from ..training.modes import set_eval_mode
from .label_scoring import input_embeddings, score_labels


def _features(template, tokenizer, examples, labels, causal, n_masks, max_length):
    index = {str(lab): i for i, lab in enumerate(labels)}
    out = []
    for ex in examples:
        enc = template.encode(tokenizer, ex, causal=causal, n_masks=n_masks, max_length=max_length)
        out.append({"input_ids": enc.input_ids, "mask_positions": enc.mask_positions,
                    "slots": enc.trigger_slots, "y": index[str(ex["label"])], "space": enc.prefix_space})
    return out


def _batch(feats, pad_id, device):
    b = pad_batch([{"input_ids": f["input_ids"]} for f in feats], pad_id)
    b["mask_positions"] = torch.tensor([f["mask_positions"] for f in feats])
    return {k: v.to(device) for k, v in b.items()}


def search_triggers(model, tokenizer, template, verbalizer, examples: list[dict], *, causal: bool,
                    iterations: int = 10, candidates: int = 10, batch_size: int = 8, max_length: int = 256,
                    seed: int = 0) -> tuple[list[int], list[dict]]:
    """Find trigger token ids for ``template`` (sets ``template.trigger_ids``); returns
    (ids, history of {"iteration", "slot", "token", "loss"})."""
    n = template.n_trigger
    if n == 0:
        raise RecipeError("AutoPrompt search needs a template with {trigger} or {trigger:N} slots")
    rng = random.Random(seed)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id or 0
    labels = verbalizer.labels
    template.trigger_ids = None
    filler_enc = template.encode(tokenizer, examples[0], causal=causal, max_length=max_length)
    trig = [filler_enc.input_ids[p] for p in filler_enc.trigger_slots]
    space = filler_enc.prefix_space
    words, lengths = verbalizer.encode(tokenizer, space)
    n_masks = 1 if causal else int(lengths.max())
    feats = _features(template, tokenizer, examples, labels, causal, n_masks, max_length)
    emb_matrix = input_embeddings(model).weight
    banned = torch.zeros(emb_matrix.shape[0], dtype=torch.bool, device=device)
    banned[[t for t in tokenizer.all_special_ids if t < emb_matrix.shape[0]]] = True
    was_training = model.training
    set_eval_mode(model)

    def loss_of(chunk, ids_override=None):
        b = _batch(chunk, pad_id, device)
        if ids_override is not None:
            for row, f in enumerate(chunk):
                for slot, t in zip(f["slots"], ids_override):
                    b["input_ids"][row, slot] = t
        scores = score_labels(model, b, words, lengths, verbalizer.word_label, len(labels), causal=causal,
                              mode=verbalizer.mode)
        return F.cross_entropy(scores, torch.tensor([f["y"] for f in chunk], device=device))

    history = []
    try:
        for it in range(iterations):
            chunk = rng.sample(feats, min(batch_size, len(feats)))
            slot = it % n
            captured = []

            def hook(module, args, out):
                out = out.detach().requires_grad_(True)
                captured.append(out)
                return out

            handle = input_embeddings(model).register_forward_hook(hook)
            try:
                with torch.enable_grad():
                    loss = loss_of(chunk, trig)
                    loss.backward()
            finally:
                handle.remove()
            grads = torch.zeros(emb_matrix.shape[1], device=device)
            for out in captured:
                if out.grad is None:
                    continue
                rows_per = out.shape[0] // len(chunk)  # causal multi-token scoring expands each example
                for r in range(out.shape[0]):
                    f = chunk[r // max(rows_per, 1)]
                    if slot < len(f["slots"]):
                        grads += out.grad[r, f["slots"][slot]].float()
            with torch.no_grad():
                scores = -(emb_matrix.float() @ grads)
                scores[banned] = float("-inf")
                cands = scores.topk(candidates).indices.tolist()
                best_loss, best = float(loss), trig[slot]
                for c in cands:
                    trial = list(trig)
                    trial[slot] = c
                    trial_loss = float(loss_of(chunk, trial))
                    if trial_loss < best_loss:
                        best_loss, best = trial_loss, c
            trig[slot] = best
            history.append({"iteration": it, "slot": slot, "token": tokenizer.decode([best]), "loss": best_loss})
    finally:
        if was_training:
            model.train()
    template.trigger_ids = list(trig)
    return list(trig), history
