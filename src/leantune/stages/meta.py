"""Meta-learning on N-way K-shot episodes, on any encoder (mean-pooled embeddings) with any
catalog method (only the method's trainable parameters learn):

- ``protonet`` (Snell et al. 2017, arXiv:1703.05175): episode loss = cross-entropy of the
  queries over negative squared distances to the class prototypes (mean support embeddings);
- ``reptile`` (first-order; Nichol et al. 2018, arXiv:1803.02999): per episode, ``inner_steps``
  SGD steps on the prototypical loss of the episode, then θ ← θ + meta_lr (θ' − θ).

Evaluation is on classes not seen in training: with ``unseen_classes: N``, N classes (chosen with
``train.seed``) are removed from the training data and their examples (training and evaluation
files) form the test classes; otherwise ``data.eval`` is used as given (and its overlap with the
training classes is reported). Metric: mean query accuracy over ``eval_episodes`` episodes
(reptile adapts on each episode's support set first), with a 95% interval.
Episodes replace ``train.max_steps``/``epochs``: ``episodes`` (or ``train.max_steps`` when set).
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
import torch

from ..data.collate import pad_batch
from ..errors import RecipeError
from ..semisup.contrastive import encode
from ..semisup.episodes import sample_episode
from ..semisup.protonet import proto_loss
from ..semisup.reptile import adapt, load_trainable, reptile_step, trainable_state
from ..training.engine import TrainResult
from ..training.optim import build_optimizer, param_groups
from .registry import PreparedData, Stage, register
from .settings import MetaSettings


@register
class Meta(Stage):
    name = "meta"
    summary = "N-way K-shot meta-learning: prototypical networks or first-order Reptile; accuracy on unseen classes."
    data_kinds = ("classification",)
    custom_loop = True

    Config = MetaSettings

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage meta: use an encoder (BERT) or decoder model, not encoder-decoder")
        return "encoder"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        if recipe.train.adversarial is not None:
            raise RecipeError("stage meta runs its own episode loop: train.adversarial is not supported here")
        self.pad_id = tokenizer.pad_token_id or 0
        self.seed = recipe.train.seed
        train_classes = sorted({str(e["label"]) for e in train_examples})
        if cfg.unseen_classes:
            if cfg.unseen_classes >= len(train_classes):
                raise RecipeError(f"stage meta: unseen_classes {cfg.unseen_classes} leaves no training class "
                                  f"({len(train_classes)} in the data)")
            held = set(random.Random(self.seed).sample(train_classes, cfg.unseen_classes))
            eval_examples = [e for e in train_examples + eval_examples if str(e["label"]) in held]
            train_examples = [e for e in train_examples if str(e["label"]) not in held]
        eval_classes = sorted({str(e["label"]) for e in eval_examples})
        self.overlap = sorted(set(eval_classes) & {str(e["label"]) for e in train_examples})

        def feats(examples):
            out = []
            for ex in examples:
                enc = tokenizer(ex["text"], ex.get("text_pair"), truncation=True, max_length=recipe.train.max_length)
                out.append({"input_ids": enc["input_ids"], "class": str(ex["label"])})
            return out

        train, evals = feats(train_examples), feats(eval_examples)
        self.train_classes, self.eval_classes = sorted({f["class"] for f in train}), eval_classes
        tokens = sum(len(f["input_ids"]) for f in train)
        return PreparedData(train, evals, labels=None,
                            info={"tokenize": {"examples": len(train), "tokens": tokens},
                                  "train_classes": self.train_classes, "eval_classes": eval_classes})

    def collate(self, features, generator=None) -> dict:
        return pad_batch([{"input_ids": f["input_ids"]} for f in features], self.pad_id)

    def _embed(self, model, features) -> torch.Tensor:
        device = next(model.parameters()).device
        return encode(model, {k: v.to(device) for k, v in self.collate(features).items()})

    def episode_loss(self, model, features, episode) -> tuple[torch.Tensor, float]:
        device = next(model.parameters()).device
        support = self._embed(model, [features[i] for i in episode.support])
        query = self._embed(model, [features[i] for i in episode.query])
        return proto_loss(support, torch.tensor(episode.support_labels, device=device), query,
                          torch.tensor(episode.query_labels, device=device), len(episode.classes))

    def loss(self, model, batch):  # episodes, not batches: see run()
        raise NotImplementedError("stage meta trains on episodes in its own loop")

    def _n_way(self, classes: list[str]) -> int:
        return min(self.config.n_way, len(classes))

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        cfg = self.config
        labels = [f["class"] for f in features]
        rng = random.Random(self.seed + 1)
        accs = []
        was_training = model.training
        for _ in range(cfg.eval_episodes):
            ep = sample_episode(labels, self._n_way(sorted(set(labels))), cfg.k_shot, cfg.n_query, rng)
            if cfg.algorithm == "reptile":
                saved = trainable_state(model)
                model.train()
                support_only = _split_support(ep)
                adapt(model, lambda: self.episode_loss(model, features, support_only)[0], cfg.inner_steps, cfg.inner_lr)
            model.eval()
            with torch.no_grad():
                _, acc = self.episode_loss(model, features, ep)
            if cfg.algorithm == "reptile":
                load_trainable(model, saved)
            accs.append(acc)
        model.train(was_training)
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / max(len(accs) - 1, 1))
        self.eval_details = {"unseen_classes": self.eval_classes, "train_classes": self.train_classes,
                             "class_overlap": self.overlap, "algorithm": cfg.algorithm,
                             "n_way": self._n_way(self.eval_classes), "k_shot": cfg.k_shot}
        return {"accuracy": mean, "accuracy_ci95": 1.96 * std / math.sqrt(len(accs)), "episodes": len(accs)}

    def run(self, model, *, recipe, run_dir: Path, data: PreparedData, method, tokenizer, progress, resume, say):
        cfg, tc = self.config, recipe.train
        episodes = tc.max_steps or cfg.episodes
        labels = [f["class"] for f in data.train]
        n_way = self._n_way(self.train_classes)
        rng = random.Random(self.seed)
        optimizer = None
        if cfg.algorithm == "protonet":
            optimizer = build_optimizer(tc.optimizer, param_groups(model, tc.lr, tc.weight_decay), tc.lr)
        model.train()
        history, t0, tokens, loss_value = [], time.perf_counter(), 0, float("nan")
        metrics_path = run_dir / "metrics.jsonl"
        for step in range(1, episodes + 1):
            ep = sample_episode(labels, n_way, cfg.k_shot, cfg.n_query, rng)
            tokens += sum(len(data.train[i]["input_ids"]) for i in ep.support + ep.query)
            if optimizer is not None:
                loss, acc = self.episode_loss(model, data.train, ep)
                loss.backward()
                if tc.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tc.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = float(loss.detach())
            else:
                loss_value = reptile_step(model, lambda: self.episode_loss(model, data.train, ep)[0],
                                          cfg.inner_steps, cfg.inner_lr, cfg.meta_lr)
            if step % tc.logging_steps == 0 or step == episodes:
                rec = {"step": step, "loss": loss_value}
                history.append(rec)
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        wall = time.perf_counter() - t0
        return model, TrainResult(steps=episodes, final_loss=loss_value, wall_time_s=wall, tokens=tokens,
                                  tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=0.0, history=history)


def _split_support(ep):
    """For adaptation at evaluation: an episode made of the support set only, half of each class's
    support as the inner queries (all of it when K = 1)."""
    from ..semisup.episodes import Episode

    sup, sup_l, q, q_l = [], [], [], []
    for c in range(len(ep.classes)):
        idx = [i for i, lab in zip(ep.support, ep.support_labels) if lab == c]
        half = max(1, len(idx) // 2)
        sup += idx[:half]
        sup_l += [c] * half
        rest = idx[half:] or idx
        q += rest
        q_l += [c] * len(rest)
    return Episode(ep.classes, sup, sup_l, q, q_l)
