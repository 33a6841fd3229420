"""Meta-learning on N-way K-shot episodes, on any encoder (mean-pooled embeddings) with any
catalog method (only the method's trainable parameters learn):

- ``protonet`` (Snell et al. 2017, arXiv:1703.05175): episode loss = cross-entropy of the
  queries over negative squared distances to the class prototypes (mean support embeddings);
- ``reptile`` (first-order; Nichol et al. 2018, arXiv:1803.02999): per episode, ``inner_steps``
  SGD steps on the prototypical loss of the episode from θ, giving θ'; then
  θ ← θ + meta_lr (mean θ' − θ) over the step's episodes.

Evaluation is on classes not seen in training: with ``unseen_classes: N``, N classes (chosen with
``train.seed``) are removed from the training data and their examples (training and evaluation
files) form the test classes; otherwise ``data.eval`` is used as given (and its overlap with the
training classes is reported). Metric: mean query accuracy over ``eval_episodes`` episodes
(reptile adapts on each episode's support set first), with a 95% interval.

Training uses the engine's pieces. A step is one meta-update on the mean over ``train.grad_accum``
episodes: ``train.max_steps`` counts steps (as in the engine), ``episodes`` counts episodes, so
without ``max_steps`` a run has ⌈episodes / grad_accum⌉ steps. ``train.precision`` (autocast, fp16
with loss scaling), ``max_grad_norm``, ``scheduler`` + ``warmup_ratio``, the NaN guard, checkpoints
every ``save_steps`` and on Ctrl-C (weights, optimizer, scheduler, random states and the episode
sampler's state) and ``--resume`` apply to both algorithms; ``metrics.jsonl`` logs the ``lr`` each
step used. For protonet the optimizer is ``train.optimizer`` at ``train.lr``. For reptile the
meta-update is an SGD step of size β on θ − mean θ' (Nichol et al.'s view of Reptile as a
gradient), so the schedule and warm-up scale β = ``meta_lr``; the inner loop is plain SGD at
``inner_lr``, clipped at ``max_grad_norm``. Reptile has no use for ``train.lr`` (ignored, as
``meta_lr``/``inner_lr`` replace it) and refuses ``train.weight_decay`` and ``train.optimizer``.
"""
from __future__ import annotations

import math
import random
import time
from functools import partial
from pathlib import Path

import torch

from ..data.collate import pad_batch
from ..errors import RecipeError
from ..recipe.stage_settings import MetaSettings
from ..semisup.contrastive import encode
from ..semisup.episodes import Episode, sample_episode
from ..semisup.protonet import proto_loss
from ..semisup.reptile import adapt, load_trainable, meta_gradient, trainable_state
from ..training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ..training.device import autocast_context, resolve_precision
from ..training.engine import TrainResult, seed_everything
from ..training.guard import check_finite
from ..training.interrupt import stop_on_signals
from ..training.metrics_log import append_metrics, truncate_metrics
from ..training.optim import build_optimizer, build_scheduler, param_groups
from ..training.progress import TrainProgress
from .registry import PreparedData, Stage, register


@register
class Meta(Stage):
    name = "meta"
    summary = "N-way K-shot meta-learning: prototypical networks or first-order Reptile; accuracy on unseen classes."
    data_kinds = ("classification",)
    custom_loop = True
    multi_process = False  # its own loop runs in one process

    Config = MetaSettings

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage meta: use an encoder (BERT) or decoder model, not encoder-decoder")
        return "encoder"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        if recipe.train.adversarial is not None:
            raise RecipeError("stage meta runs its own episode loop: train.adversarial is not supported here")
        if cfg.algorithm == "reptile" and recipe.train.weight_decay:
            raise RecipeError("train.weight_decay does not apply to stage meta with algorithm reptile (its "
                              "meta-update is θ ← θ + meta_lr·(θ' − θ)); remove it or use algorithm protonet")
        if cfg.algorithm == "reptile" and recipe.train.optimizer != "adamw":
            raise RecipeError(f"train.optimizer {recipe.train.optimizer} does not apply to stage meta with "
                              f"algorithm reptile (plain SGD at inner_lr, then a meta step of size meta_lr); "
                              f"remove it or use algorithm protonet")
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

    def run(self, model, *, recipe, run_dir: Path, data: PreparedData, method, tokenizer, progress, resume, say,
            runtime=None):
        """Meta-training (see the module docstring); ``resume`` continues from the last checkpoint
        and ends as an uninterrupted run would."""
        cfg, tc = self.config, recipe.train
        reptile = cfg.algorithm == "reptile"
        seed_everything(tc.seed)
        device = runtime.device if runtime is not None else next(model.parameters()).device
        precision = runtime.precision if runtime is not None else resolve_precision(tc.precision, device)
        autocast, self.precision = autocast_context(precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        total = tc.max_steps or math.ceil(cfg.episodes / tc.grad_accum)
        lr, wd = (cfg.meta_lr, 0.0) if reptile else (tc.lr, tc.weight_decay)
        groups = method.param_groups(model, lr, wd) or param_groups(model, lr, wd)
        optimizer = torch.optim.SGD(groups, lr=lr) if reptile else build_optimizer(tc.optimizer, groups, lr)
        scheduler = build_scheduler(tc.scheduler, optimizer, total, tc.warmup_ratio)
        labels, n_way = [f["class"] for f in data.train], self._n_way(self.train_classes)
        sampler = random.Random(self.seed)
        metrics, ckpt_root = Path(run_dir) / "metrics.jsonl", Path(run_dir) / "checkpoints"
        start = 0
        if resume and (ckpts := list_checkpoints(ckpt_root)):
            state = load_checkpoint(ckpts[-1], model, optimizer, scheduler)
            start, (version, inner, gauss) = state["step"], state["sampler"]
            sampler.setstate((version, tuple(inner), gauss))
            if state["scaler"]:
                scaler.load_state_dict(state["scaler"])
            say(f"resuming meta-training from {ckpts[-1]}")
        elif resume:
            say("[yellow]no meta-training checkpoint to resume from; starting over")
        history = truncate_metrics(metrics, start)  # start 0: none, the file removed

        def loss_fn(ep):
            with autocast:
                return self.episode_loss(model, data.train, ep)[0]

        model.train()
        bar = TrainProgress(total, start, enabled=progress, label="meta")
        t0, tokens, loss_value, step = time.perf_counter(), 0, float("nan"), start
        with stop_on_signals() as stop, bar:
            for step in range(start + 1, total + 1):
                episodes = [sample_episode(labels, n_way, cfg.k_shot, cfg.n_query, sampler)
                            for _ in range(tc.grad_accum)]
                tokens += sum(len(data.train[i]["input_ids"]) for ep in episodes for i in ep.support + ep.query)
                step_lr = scheduler.get_last_lr()[0]
                if reptile:
                    loss_value = meta_gradient(model, [partial(loss_fn, ep) for ep in episodes],
                                               cfg.inner_steps, cfg.inner_lr, tc.max_grad_norm, scaler)
                    check_finite(loss_value, step, ckpt_root, cfg.inner_lr, "the Reptile inner loss (at inner_lr)")
                    optimizer.step()
                else:
                    loss_value = 0.0
                    for ep in episodes:
                        loss = loss_fn(ep)
                        check_finite(episode_loss := loss.item(), step, ckpt_root, tc.lr)
                        scaler.scale(loss / len(episodes)).backward()
                        loss_value += episode_loss / len(episodes)
                    if tc.max_grad_norm:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       tc.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                method.after_optimizer_step(model, step)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - t0
                bar.update(step, loss_value, tokens / max(elapsed, 1e-9))
                if step % tc.logging_steps == 0 or step == total:
                    rec = {"step": step, "loss": loss_value, "lr": step_lr, "episodes": step * tc.grad_accum,
                           "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
                    history.append(rec)
                    append_metrics(metrics, rec)
                if (tc.save_steps and step % tc.save_steps == 0) or stop:
                    save_checkpoint(ckpt_root, step, model, optimizer, scheduler,
                                    {"loss": loss_value, "sampler": sampler.getstate(),
                                     "scaler": scaler.state_dict()}, tc.save_total_limit)
                if stop:
                    raise stop.interrupted(f"meta step {step}", str(ckpt_root))
        wall = time.perf_counter() - t0
        return model, TrainResult(steps=step, final_loss=loss_value, wall_time_s=wall, tokens=tokens,
                                  tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=0.0, history=history)


def _split_support(ep):
    """For adaptation at evaluation: an episode made of the support set only, half of each class's
    support as the inner queries (all of it when K = 1)."""
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
