"""Multi-task learning: several tasks trained at once.

Classification tasks: a shared backbone (with the method applied) and one linear head per
task on the pooled representation ([CLS] for encoders, the last token for decoders); a
batch may mix tasks, each example routed to its task's head. Chat tasks: instruction
mixing on one causal LM. Either way the training mixture draws task i with probability
p_i ∝ n_i^{1/T} (``temperature``: 1 = proportional to size, large = uniform; Arivazhagan
et al. 2019, arXiv:1907.05019), and the loss of a batch is Σ_t w_t L_t / Σ_t w_t over the
tasks present (``weight`` of each task). Metrics per task (``<task>/accuracy`` or
``<task>/loss``) and their mean. The heads are saved in ``adapter/task_heads.safetensors``.
"""
from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..data.collate import pad_batch
from ..data.templates import resolve_template
from ..data.tokenize import tokenize_chat, tokenize_classification
from ..errors import RecipeError
from ..evaluation.classification import classification_metrics
from ..models.loading import load_config, resolve_model_path
from ..recipe.stage_settings import MultiTaskSettings
from ..training.modes import evaluating
from ..transfer.features import pooled_features, response_logits
from ..transfer.task_sampling import sample_mixture, task_probabilities
from ..transfer.tasks import load_tasks, task_names
from .registry import PreparedData, Stage, register

HEADS_FILE = "task_heads.safetensors"


@register
class MultiTask(Stage):
    name = "multitask"
    summary = "Several tasks at once: a head per classification task, or instruction mixing; temperature sampling."
    data_kinds = ("classification", "chat")

    Config = MultiTaskSettings

    def load_data(self, recipe, base_dir, say):
        trains, evals, kinds = load_tasks(self.config.tasks, self.data_kinds, self.name, recipe, base_dir, say)
        if len(set(kinds)) > 1:
            raise RecipeError("stage multitask: the tasks must all be classification or all chat data")
        self.names = task_names(self.config.tasks)
        self.generation = kinds[0] == "chat"
        tag = lambda groups: [{**e, "task": t} for t, g in enumerate(groups) for e in g]  # noqa: E731
        return tag(trains), tag(evals)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage multitask: encoder-decoder models are not supported")
        return "causal_lm" if self.generation else "seq_cls"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        self.pad_id = tokenizer.pad_token_id
        self.weights = torch.tensor([t.weight for t in cfg.tasks])
        T = len(self.names)
        if self.generation:
            template = resolve_template(tokenizer, recipe.data.template)
            args = (tokenizer, template, recipe.train.max_length, recipe.data.train_on_prompt)

            def feats(examples, t):
                out, stats = tokenize_chat(examples, *args)
                return [{**f, "task": t} for f in out], stats
            self.labels = None
        else:
            self.labels = [sorted({str(e["label"]) for e in train_examples if e["task"] == t}) for t in range(T)]

            def feats(examples, t):
                ids = {lab: i for i, lab in enumerate(self.labels[t])}
                bad = [e for e in examples if str(e["label"]) not in ids]
                if bad:
                    raise RecipeError(f"stage multitask: task {self.names[t]}: eval label {bad[0]['label']!r} "
                                      f"is not among its training labels {self.labels[t][:10]}")
                out, stats = tokenize_classification(examples, tokenizer, recipe.train.max_length, ids)
                return [{**f, "task": t} for f in out], stats
            config = load_config(resolve_model_path(recipe.model.name), recipe.model.trust_remote_code)
            dim = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or config.d_model
            torch.manual_seed(recipe.train.seed)
            self.heads = nn.ModuleDict({n: nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(dim, len(labs)))
                                        for n, labs in zip(self.names, self.labels)})
        per_task, tokens = [], 0
        for t in range(T):
            f, stats = feats([e for e in train_examples if e["task"] == t], t)
            if not f:
                raise RecipeError(f"stage multitask: task {self.names[t]} has no training examples left")
            per_task.append(f)
            tokens += stats.tokens
        evals = [f for t in range(T) for f in feats([e for e in eval_examples if e["task"] == t], t)[0]]
        sizes = [len(f) for f in per_task]
        probs = task_probabilities(sizes, cfg.temperature)
        train = sample_mixture(per_task, cfg.temperature, cfg.mixture_size, recipe.train.seed)
        self.eval_details = {"multitask": {"tasks": self.names, "sizes": sizes, "sampling_probabilities": probs,
                                           "mixture_counts": [sum(f["task"] == t for f in train) for t in range(T)],
                                           "labels": self.labels}}
        return PreparedData(train, evals, labels=None,
                            info={"tokenize": {"examples": len(train), "tokens": tokens}, "tasks": self.names})

    def attach(self, model):
        if not self.generation:
            self.heads.to(next(model.parameters()).device)
            model.add_module("leantune_task_heads", self.heads)
        return model

    # ------------------------------------------------------------------ loss
    def collate(self, features, generator=None) -> dict:
        batch = pad_batch([{k: v for k, v in f.items() if k != "task"} for f in features], self.pad_id)
        batch["task"] = torch.tensor([f["task"] for f in features], dtype=torch.long)
        return batch

    def _weighted(self, losses: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Σ_t w_t mean(losses of task t) / Σ_t w_t over the tasks present."""
        total, norm = losses.new_zeros(()), 0.0
        for t in tasks.unique().tolist():
            w = float(self.weights[t])
            total = total + w * losses[tasks == t].mean()
            norm += w
        return total / norm

    def task_logits(self, model, batch) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        feats = pooled_features(model, batch)
        out = []
        for t in batch["task"].unique().tolist():
            rows = batch["task"] == t
            head = self.heads[self.names[t]]
            out.append((t, head(feats[rows].to(head[1].weight.dtype)), batch["labels"][rows]))
        return out

    def loss(self, model, batch) -> torch.Tensor:
        if self.generation:
            logits, targets = response_logits(model, batch)
            per_row = (batch["labels"][:, 1:] != -100).sum(1)
            tasks = batch["task"].repeat_interleave(per_row)
            return self._weighted(F.cross_entropy(logits.float(), targets, reduction="none"), tasks)
        total, norm = None, 0.0
        for t, logits, labels in self.task_logits(model, batch):
            w = float(self.weights[t])
            term = w * F.cross_entropy(logits.float(), labels)
            total = term if total is None else total + term
            norm += w
        return total / norm

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        device = next(model.parameters()).device
        T = len(self.names)
        if not self.generation:
            self.heads.to(device)
        sums = [[0.0, 0] for _ in range(T)]
        preds: list[list[int]] = [[] for _ in range(T)]
        golds: list[list[int]] = [[] for _ in range(T)]
        with ExitStack() as stack:
            stack.enter_context(evaluating(model))
            if not self.generation:
                stack.enter_context(evaluating(self.heads))
            for s in range(0, len(features), batch_size):
                batch = {k: v.to(device) for k, v in self.collate(features[s: s + batch_size]).items()}
                if self.generation:
                    logits, targets = response_logits(model, batch)
                    losses = F.cross_entropy(logits.float(), targets, reduction="none")
                    tasks = batch["task"].repeat_interleave((batch["labels"][:, 1:] != -100).sum(1))
                    for t in tasks.unique().tolist():
                        sums[t][0] += float(losses[tasks == t].sum())
                        sums[t][1] += int((tasks == t).sum())
                else:
                    for t, logits, labels in self.task_logits(model, batch):
                        preds[t] += logits.argmax(-1).tolist()
                        golds[t] += labels.tolist()
        metrics: dict[str, float] = {}
        if self.generation:
            present = [t for t in range(T) if sums[t][1]]
            for t in present:
                loss = sums[t][0] / sums[t][1]
                metrics[f"{self.names[t]}/loss"] = loss
                metrics[f"{self.names[t]}/perplexity"] = math.exp(min(loss, 50.0))
            if present:
                metrics["loss"] = sum(sums[t][0] for t in present) / sum(sums[t][1] for t in present)
                metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
            return metrics
        per = {t: classification_metrics(preds[t], golds[t]) for t in range(T) if golds[t]}
        for t, m in per.items():
            metrics[f"{self.names[t]}/accuracy"] = m["accuracy"]
            metrics[f"{self.names[t]}/macro_f1"] = m["macro_f1"]
        if per:
            metrics["accuracy"] = sum(m["accuracy"] for m in per.values()) / len(per)
            metrics["macro_f1"] = sum(m["macro_f1"] for m in per.values()) / len(per)
        return metrics

    def save_extra(self, model, folder: Path) -> None:
        if not self.generation:
            state = {f"{n}.{k}": v.detach().cpu().contiguous() for n, h in self.heads.items()
                     for k, v in h.state_dict().items()}
            save_file(state, str(Path(folder) / HEADS_FILE))
            (Path(folder) / "task_heads.json").write_text(json.dumps(
                {"tasks": self.names, "labels": self.labels}, indent=2))
