"""Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531): a (smaller) student
learns from a teacher's soft labels.

Classification (classification data, ``seq_cls`` student and teacher with the same label
order): α · T² · KL(p_T ‖ p_S) + (1 − α) · CE. Causal LM (chat data): token-level KL at the
response tokens against the teacher's top-k distribution (``direction: forward|reverse``),
mixed with the next-token CE by the same α; teacher and student must share the tokenizer
vocabulary (a classification teacher may have its own tokenizer: it reads the text itself). The teacher (a model name, folder or leantune run directory) runs once over the
training data; its logits are cached as safetensors under ``cache_dir`` (default
``<output.dir>/.teacher-cache``) keyed by teacher and inputs, so later runs (other α, T,
students with the same tokenizer) reuse them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.collate import pad_batch
from ..data.loading import default_load_data
from ..data.templates import resolve_template
from ..data.tokenize import tokenize_chat, tokenize_classification
from ..errors import DataValidationError, Problem, RecipeError
from ..evaluation.classification import classification_metrics, predict
from ..evaluation.lm import lm_loss_and_perplexity
from ..models.loading import is_run_dir, load_config, load_model, load_tokenizer, resolve_model_path
from ..recipe.stage_settings import DistillSettings
from ..training.losses import causal_lm_token_losses, label_count
from ..training.modes import evaluating
from ..transfer.distillation import (
    cache_key,
    kd_classification_loss,
    load_classification_cache,
    load_lm_cache,
    save_classification_cache,
    save_lm_cache,
    topk_token_kl,
)
from ..transfer.features import response_logits
from .registry import PreparedData, Stage, register


@register
class Distill(Stage):
    name = "distill"
    summary = "Knowledge distillation from a teacher: soft labels (classification) or token-level KL (causal LM)."
    data_kinds = ("classification", "chat")

    Config = DistillSettings

    def load_data(self, recipe, base_dir, say):
        """The default loading; the data's kind (classification or chat) picks the head."""
        train, evals = default_load_data(recipe, self, base_dir, say)
        self.lm = bool(train) and "messages" in train[0]
        return train, evals

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage distill: encoder-decoder students are not supported")
        return "causal_lm" if getattr(self, "lm", False) else "seq_cls"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        self.pad_id = tokenizer.pad_token_id
        self.lm = "messages" in train_examples[0]
        teacher_path = resolve_model_path(cfg.teacher)
        teacher_tok = load_tokenizer(teacher_path)
        self.same_vocab = teacher_tok.get_vocab() == tokenizer.get_vocab()
        if self.lm and not self.same_vocab:
            raise RecipeError(
                f"stage distill: teacher {cfg.teacher!r} and the student use different tokenizer vocabularies "
                f"({len(teacher_tok)} vs {len(tokenizer)} tokens); token-level distillation compares the two "
                f"distributions token by token and needs the same vocabulary — pick a teacher of the student's "
                f"model family")
        self.info: dict = {"teacher": cfg.teacher}
        if self.lm:
            template = resolve_template(tokenizer, recipe.data.template)
            args = (tokenizer, template, recipe.train.max_length, recipe.data.train_on_prompt)
            train, stats = tokenize_chat(train_examples, *args)
            evals, _ = tokenize_chat(eval_examples, *args)
            labels = None
        else:
            labels = cfg.labels or sorted({str(e["label"]) for e in train_examples})
            ids = {lab: i for i, lab in enumerate(labels)}
            bad = [Problem("data", e.get("line") or 0, "label", f"label {e['label']!r} not in {labels[:10]}")
                   for e in train_examples + eval_examples if str(e["label"]) not in ids]
            if bad:
                raise DataValidationError(bad)
            train, stats = tokenize_classification(train_examples, tokenizer, recipe.train.max_length, ids)
            evals, _ = tokenize_classification(eval_examples, tokenizer, recipe.train.max_length, ids)
        # classification teachers may tokenize differently: they read the text with their own tokenizer
        if self.lm or self.same_vocab:
            t_train, t_evals, self.teacher_pad = train, evals, tokenizer.pad_token_id
        else:
            t_train, _ = tokenize_classification(train_examples, teacher_tok, recipe.train.max_length, ids)
            t_evals, _ = tokenize_classification(eval_examples, teacher_tok, recipe.train.max_length, ids)
            self.teacher_pad = teacher_tok.pad_token_id
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(recipe.output.dir) / ".teacher-cache"
        kind = "lm" if self.lm else "cls"
        key = cache_key(str(teacher_path.resolve()), kind, cfg.top_k if self.lm else None, t_train,
                        json.dumps(labels))
        path = cache_dir / f"{kind}-{key}.safetensors"
        self.teacher_metrics: dict[str, float] = {}
        if path.is_file():
            self.info["teacher_cache"] = f"{path} (reused)"
            need_teacher = bool(evals)
        else:
            need_teacher = True
        teacher = None
        if need_teacher:
            teacher = self._load_teacher(teacher_path, labels, tokenizer, recipe)
        if not path.is_file():
            if self.lm:
                save_lm_cache(path, self._teacher_topk(teacher, t_train, len(tokenizer)))
            else:
                save_classification_cache(path, self._teacher_logits(teacher, t_train))
            self.info["teacher_cache"] = str(path)
        if self.lm:
            for f, (i, v) in zip(train, load_lm_cache(path)):
                f["kd_idx"], f["kd_val"] = i, v
        else:
            for f, row in zip(train, load_classification_cache(path)):
                f["teacher_logits"] = row
        if teacher is not None and evals:
            pad, self.pad_id = self.pad_id, self.teacher_pad
            scores = self.evaluate(teacher, t_evals, cfg.teacher_batch_size)
            self.pad_id = pad
            self.teacher_metrics = {f"teacher_{k}": v for k, v in scores.items()}
        del teacher
        self.eval_details = {"teacher": {"name": cfg.teacher, **self.teacher_metrics,
                                         "cache": self.info["teacher_cache"]}}
        return PreparedData(train, evals, labels=labels, info={"tokenize": stats.__dict__, **self.info})

    def _load_teacher(self, path: Path, labels, tokenizer, recipe):
        head = "causal_lm" if self.lm else "seq_cls"
        if not self.lm:
            if is_run_dir(path):
                run_labels = json.loads((path / "run.json").read_text()).get("labels")
                if run_labels != labels:
                    raise RecipeError(f"stage distill: teacher run {path} was trained on labels {run_labels}, "
                                      f"the student's are {labels}; set stage.labels to the teacher's order")
            else:
                conf = load_config(path)
                names = [conf.id2label[i] for i in range(conf.num_labels)] if conf.id2label else []
                if conf.num_labels != len(labels):
                    raise RecipeError(f"stage distill: teacher {path} has {conf.num_labels} labels, the data {len(labels)}")
                if names and not all(n.startswith("LABEL_") for n in names) and names != labels:
                    raise RecipeError(f"stage distill: teacher labels {names} differ from the student's {labels}; "
                                      f"set stage.labels to the teacher's order")
        teacher = load_model(path, head, recipe.model.dtype, labels=labels, pad_token_id=self.teacher_pad)
        teacher.to(self.device)
        teacher.requires_grad_(False)
        return teacher

    def _teacher_logits(self, teacher, features) -> torch.Tensor:
        device, out = next(teacher.parameters()).device, []
        bs = self.config.teacher_batch_size
        with evaluating(teacher):
            for s in range(0, len(features), bs):
                batch = {k: v.to(device) for k, v in pad_batch(features[s: s + bs], self.teacher_pad).items()}
                batch.pop("labels", None)
                out.append(teacher(**batch).logits.float().cpu())
        return torch.cat(out)

    def _teacher_topk(self, teacher, features, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        device, out = next(teacher.parameters()).device, []
        bs, k = self.config.teacher_batch_size, self.config.top_k
        with evaluating(teacher):
            for s in range(0, len(features), bs):
                chunk = features[s: s + bs]
                batch = {n: v.to(device) for n, v in pad_batch(chunk, self.pad_id).items()}
                logits, _ = response_logits(teacher, batch)
                vals, idx = logits[:, :vocab].float().topk(min(k, vocab), dim=-1)
                counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
                for a, b in zip([0] + list(torch.tensor(counts).cumsum(0).tolist())[:-1],
                                torch.tensor(counts).cumsum(0).tolist()):
                    out.append((idx[a:b].to(torch.int32).cpu(), vals[a:b].half().cpu()))
        return out

    # ------------------------------------------------------------------ training
    def collate(self, features, generator=None) -> dict:
        plain = [{k: v for k, v in f.items() if k not in ("kd_idx", "kd_val", "teacher_logits")} for f in features]
        batch = pad_batch(plain, self.pad_id)
        if features and "teacher_logits" in features[0]:
            batch["teacher_logits"] = torch.stack([f["teacher_logits"] for f in features])
        if features and "kd_idx" in features[0]:
            batch["kd_idx"] = torch.cat([f["kd_idx"] for f in features]).long()
            batch["kd_val"] = torch.cat([f["kd_val"] for f in features]).float()
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        cfg = self.config
        batch = dict(batch)
        if self.lm:
            idx, val = batch.pop("kd_idx"), batch.pop("kd_val")
            logits, targets = response_logits(model, batch)
            kd = topk_token_kl(logits, idx, val, cfg.temperature, cfg.direction)
            if cfg.alpha >= 1:
                return kd
            ce = torch.nn.functional.cross_entropy(logits.float(), targets)
            return cfg.alpha * kd + (1 - cfg.alpha) * ce
        teacher = batch.pop("teacher_logits")
        labels = batch.pop("labels")
        logits = model(**batch).logits
        return kd_classification_loss(logits, teacher, labels, cfg.temperature, cfg.alpha)

    def loss_weight(self, batch: dict) -> int:
        return label_count(batch) if self.lm else len(batch["input_ids"])

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        if self.lm:
            return lm_loss_and_perplexity(model, features, batch_size, self.collate, causal_lm_token_losses)
        preds, golds, loss = predict(model, features, batch_size, self.collate)
        return {"loss": loss, **classification_metrics(preds, golds)}
