"""Continual learning: a sequence of classification tasks trained one after another.

Strategies: ``naive`` (plain sequential fine-tuning, the forgetting baseline); ``ewc``
(Kirkpatrick et al. 2017, arXiv:1612.00796: diagonal Fisher after each task, penalty
λ/2 Σ F (θ − θ*)²); ``replay`` (a reservoir buffer of past examples, ``replay_ratio`` of every
later task's training mix); ``adapters`` (one PEFT adapter per task, e.g. ``method: lora``,
added with ``add_adapter`` and chosen by task name with ``set_adapter``; the classifier is
per adapter too, so nothing is shared and nothing is forgotten).

One classification head over the union of the tasks' labels; with ``task_incremental``
(default) the task is known at training and test time and each example's logits are
restricted to its task's labels (the multi-head setting). After each task every task is
evaluated: R[i][j] = accuracy on task j after training task i. eval.json gets R, the
average accuracy A = mean_j R[T−1][j] and the forgetting of Chaudhry et al. 2018
(arXiv:1801.10112): f_j = max_{l<T−1} R[l][j] − R[T−1][j], averaged over j < T−1; and
the backward transfer (Lopez-Paz & Ranzato 2017) mean_j R[T−1][j] − R[j][j].
``train.*`` (epochs, max_steps, lr…) applies to each task.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.collate import pad_batch
from ..data.tokenize import tokenize_classification
from ..errors import RecipeError
from ..evaluation.classification import classification_metrics
from ..methods.base import wraps_model
from ..recipe.stage_settings import ContinualSettings
from ..training.engine import Engine, TrainResult
from ..training.modes import evaluating
from ..transfer.features import cross_entropy, masked_logits
from ..transfer.fisher import EWC, diagonal_fisher
from ..transfer.replay import ReservoirBuffer, mix_with_replay
from ..transfer.tasks import load_tasks, task_names
from .registry import PreparedData, Stage, register

TASK_ADAPTERS = "task_adapters.json"


def forgetting_metrics(R: list[list[float]]) -> dict:
    """Average accuracy, Chaudhry et al.'s forgetting and backward transfer of an accuracy matrix."""
    T = len(R)
    last = R[-1]
    per_task = [max(R[l][j] for l in range(T - 1)) - last[j] for j in range(T - 1)]
    bwt = [last[j] - R[j][j] for j in range(T - 1)]
    return {
        "average_accuracy": sum(last) / T,
        "forgetting": sum(per_task) / len(per_task) if per_task else 0.0,
        "per_task_forgetting": per_task,
        "backward_transfer": sum(bwt) / len(bwt) if bwt else 0.0,
    }


@register
class Continual(Stage):
    name = "continual"
    summary = "A sequence of classification tasks (naive, ewc, replay, per-task adapters); accuracy matrix, forgetting."
    data_kinds = ("classification",)
    custom_loop = True
    multi_process = False  # its own loop runs in one process

    Config = ContinualSettings

    def load_data(self, recipe, base_dir, say):
        trains, evals, _ = load_tasks(self.config.tasks, self.data_kinds, self.name, recipe, base_dir, say)
        self.names = task_names(self.config.tasks)
        tag = lambda groups: [{**e, "task": t} for t, g in enumerate(groups) for e in g]  # noqa: E731
        return tag(trains), tag(evals)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return "seq_cls"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.pad_id, self.seed = tokenizer.pad_token_id, recipe.train.seed
        labels = sorted({str(e["label"]) for e in train_examples})
        ids = {lab: i for i, lab in enumerate(labels)}
        T = len(self.names)
        self.allowed = torch.zeros(T, len(labels), dtype=torch.bool)
        for e in train_examples:
            self.allowed[e["task"], ids[str(e["label"])]] = True
        unknown = [e for e in eval_examples if str(e["label"]) not in ids]
        if unknown:
            raise RecipeError(f"stage continual: eval label {unknown[0]['label']!r} of task "
                              f"{self.names[unknown[0]['task']]} does not occur in any task's training data")

        def feats(examples):
            out, stats = tokenize_classification(examples, tokenizer, recipe.train.max_length, ids)
            for f, e in zip(out, examples):
                f["task"] = e["task"]
            return out, stats

        train, stats = feats(train_examples)
        evals, _ = feats(eval_examples)
        self.ewc: EWC | None = None
        self.adapters: dict[int, str] | None = None
        self.eval_details = {}
        return PreparedData(train, evals, labels=labels,
                            info={"tokenize": stats.__dict__, "tasks": self.names})

    # ------------------------------------------------------------------ loss and evaluation
    def collate(self, features, generator=None) -> dict:
        batch = pad_batch([{k: v for k, v in f.items() if k != "task"} for f in features], self.pad_id)
        batch["task"] = torch.tensor([f["task"] for f in features], dtype=torch.long)
        return batch

    def logits(self, model, batch) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "task")}
        logits = model(**inputs).logits
        if self.config.task_incremental:
            logits = masked_logits(logits, self.allowed.to(logits.device)[batch["task"]])
        return logits

    def loss(self, model, batch) -> torch.Tensor:
        loss = cross_entropy(self.logits(model, batch), batch["labels"])
        if self.ewc is not None and self.ewc.tasks:
            loss = loss + self.ewc.penalty(model)
        return loss

    def nll(self, model, batch) -> torch.Tensor:
        logits = self.logits(model, batch)
        if self.config.fisher == "sampled":
            with torch.no_grad():
                y = torch.distributions.Categorical(logits=logits.float()).sample()
        else:
            y = batch["labels"]
        return cross_entropy(logits, y)

    def use_adapter(self, model, task: int) -> None:
        if self.adapters and hasattr(model, "set_adapter"):
            trained = [t for t in self.adapters if t <= task]
            model.set_adapter(self.adapters[max(trained) if trained else min(self.adapters)])

    def task_metrics(self, model, features, batch_size) -> dict[int, dict[str, float]]:
        device = next(model.parameters()).device
        out = {}
        for t in range(len(self.names)):
            feats = [f for f in features if f["task"] == t]
            if not feats:
                continue
            self.use_adapter(model, t)
            preds, golds = [], []
            with evaluating(model):
                for s in range(0, len(feats), batch_size):
                    batch = {k: v.to(device) for k, v in self.collate(feats[s: s + batch_size]).items()}
                    preds += self.logits(model, batch).argmax(-1).tolist()
                    golds += batch["labels"].tolist()
            out[t] = classification_metrics(preds, golds)
        return out

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        active = getattr(model, "active_adapter", None) if self.adapters else None
        per = self.task_metrics(model, features, batch_size)
        if active is not None:
            model.set_adapter(active)
        if not per:
            return {}
        metrics = {"accuracy": sum(m["accuracy"] for m in per.values()) / len(per),
                   "macro_f1": sum(m["macro_f1"] for m in per.values()) / len(per)}
        for t, m in per.items():
            metrics[f"{self.names[t]}/accuracy"] = m["accuracy"]
        return metrics

    # ------------------------------------------------------------------ the task sequence
    def run(self, model, *, recipe, run_dir, data, method, tokenizer, progress, resume, say, runtime=None):
        cfg = self.config
        if resume:
            say("[yellow]stage continual has no checkpoints across tasks; starting over")
        if cfg.strategy == "adapters":
            if not wraps_model(method) or not hasattr(model, "add_adapter"):
                raise RecipeError("stage continual, strategy adapters: the method must be PEFT-based "
                                  "(e.g. method: lora) — one adapter per task is added with add_adapter")
            self.adapters = {0: model.active_adapter}
            peft_config = model.peft_config[model.active_adapter]
        if cfg.strategy == "ewc":
            self.ewc = EWC(cfg.ewc_lambda)
        buffer = ReservoirBuffer(cfg.buffer_size, seed=recipe.train.seed) if cfg.strategy == "replay" else None
        by_task = [[f for f in data.train if f["task"] == t] for t in range(len(self.names))]
        R: list[list[float]] = []
        history, steps, wall, tokens, final = [], 0, 0.0, 0, float("nan")
        self.precision = "fp32"
        for t, feats in enumerate(by_task):
            name = self.names[t]
            if cfg.strategy == "adapters":
                if t > 0:
                    model.add_adapter(name, peft_config)
                    self.adapters[t] = name
                model.set_adapter(self.adapters[t])
                for n, p in model.named_parameters():  # only the active task's adapter (and its head) trains
                    p.requires_grad_(f".{self.adapters[t]}." in n or n.endswith(f".{self.adapters[t]}"))
            mix = mix_with_replay(feats, buffer, cfg.replay_ratio, recipe.train.seed + t) if buffer else feats
            say(f"task {t + 1}/{len(by_task)} ({name}): {len(feats)} example(s)"
                + (f" + {len(mix) - len(feats)} replayed" if buffer else ""))
            task_dir = Path(run_dir) / f"task-{t}-{name}"
            task_dir.mkdir(parents=True, exist_ok=True)
            engine = Engine(model, mix, recipe.train, task_dir, self.collate, self.loss, progress=progress,
                            after_optimizer_step=method.after_optimizer_step, param_groups=method.param_groups)
            result = engine.fit()
            self.precision = engine.precision
            steps += result.steps
            wall += result.wall_time_s
            tokens += result.tokens
            final = result.final_loss
            history += [{**h, "task": name} for h in result.history]
            per = self.task_metrics(model, data.eval, recipe.eval.batch_size)
            self.use_adapter(model, t)
            R.append([per[j]["accuracy"] if j in per else float("nan") for j in range(len(by_task))])
            say(f"after {name}: " + ", ".join(f"{self.names[j]} {a:.3f}" for j, a in enumerate(R[-1])))
            if self.ewc is not None and t < len(by_task) - 1:
                examples = [self.collate([f]) for f in feats[: cfg.fisher_samples]]
                device = next(model.parameters()).device
                examples = [{k: v.to(device) for k, v in b.items()} for b in examples]
                self.ewc.consolidate(model, diagonal_fisher(model, examples, self.nll))
            if buffer is not None:
                buffer.extend(feats)
        with open(Path(run_dir) / "metrics.jsonl", "w") as fh:
            fh.write("".join(json.dumps(h) + "\n" for h in history))
        self.eval_details = {"continual": {"tasks": self.names, "strategy": cfg.strategy, "R": R,
                                           **forgetting_metrics(R),
                                           **({"adapters": {self.names[t]: a for t, a in self.adapters.items()}}
                                              if self.adapters else {})}}
        return model, TrainResult(steps=steps, final_loss=final, wall_time_s=wall, tokens=tokens,
                                  tokens_per_s=tokens / max(wall, 1e-9), label_tokens_per_s=0.0, history=history)

    def save_extra(self, model, folder: Path) -> None:
        if self.adapters:
            (Path(folder) / TASK_ADAPTERS).write_text(json.dumps(
                {self.names[t]: a for t, a in self.adapters.items()}, indent=2))
