"""Domain-adversarial training (Ganin et al. 2016, DANN, arXiv:1505.07818): labelled source
data (``data.train``, classification) and unlabelled target-domain text (``data.unlabeled``:
a file of rows with ``text``). A domain classifier on the pooled representation learns to
tell source from target; a gradient-reversal layer in front of it makes the shared
features domain-invariant. Loss = CE(source labels) + μ · BCE(domain), with the reversal
strength following λ_p = 2 / (1 + exp(−γ p)) − 1 over training progress p.

``target_eval`` (a labelled classification file from the target domain) is evaluated too:
``target_accuracy`` is the number that domain adaptation is meant to improve.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.collate import pad_batch
from ..data.formats import load_examples
from ..data.loading import default_load_data
from ..data.paths import resolve_data_path
from ..data.tokenize import tokenize_classification
from ..errors import DataValidationError, Problem, RecipeError
from ..evaluation.classification import classification_metrics, predict
from ..models.loading import load_config, resolve_model_path
from ..recipe.stage_settings import DANNSettings
from ..training.engine import count_total_steps
from ..transfer.features import is_encoder, pool_hidden, pooled_features
from ..transfer.grl import DomainClassifier, dann_lambda
from .registry import PreparedData, Stage, register

DOMAIN_FILE = "domain_classifier.safetensors"


@register
class DANN(Stage):
    name = "dann"
    summary = "Domain-adversarial training: labelled source + unlabelled target text, gradient reversal."
    data_kinds = ("classification",)

    Config = DANNSettings

    def load_data(self, recipe, base_dir, say):
        self.base_dir = base_dir  # target_eval is found beside the recipe, like the data files
        return default_load_data(recipe, self, base_dir, say)

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        if is_encoder_decoder:
            raise RecipeError("stage dann: encoder-decoder models are not supported")
        return "seq_cls"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        if not self.unlabeled:
            raise RecipeError("stage dann: needs unlabelled target-domain text: data.unlabeled: <file with text rows>")
        self.pad_id = tokenizer.pad_token_id
        labels = cfg.labels or sorted({str(e["label"]) for e in train_examples})
        ids = {lab: i for i, lab in enumerate(labels)}
        target_eval = []
        if cfg.target_eval:
            target_eval = load_examples(resolve_data_path(cfg.target_eval, getattr(self, "base_dir", None)),
                                        "classification").examples
        bad = [Problem("data", e.get("line") or 0, "label", f"label {e['label']!r} not in {labels[:10]}")
               for e in eval_examples + target_eval if str(e["label"]) not in ids]
        if bad:
            raise DataValidationError(bad)
        n = recipe.train.max_length
        train, stats = tokenize_classification(train_examples, tokenizer, n, ids)
        evals, _ = tokenize_classification(eval_examples, tokenizer, n, ids)
        self.target_eval, _ = tokenize_classification(target_eval, tokenizer, n, ids)
        self.target = [{k: v for k, v in f.items() if k != "labels"} for f in tokenize_classification(
            [{**e, "label": labels[0]} for e in self.unlabeled], tokenizer, n, ids)[0]]
        self.total_steps = count_total_steps(len(train), recipe.train) * recipe.train.grad_accum  # loss calls
        self.calls = 0
        config = load_config(resolve_model_path(recipe.model.name), recipe.model.trust_remote_code)
        dim = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or config.d_model
        torch.manual_seed(recipe.train.seed)
        self.domain = DomainClassifier(dim, cfg.hidden)
        return PreparedData(train, evals, labels=labels,
                            info={"tokenize": stats.__dict__, "target_examples": len(self.target)})

    def attach(self, model):
        self.domain.to(next(model.parameters()).device)
        model.add_module("leantune_domain_classifier", self.domain)
        return model

    def collate(self, features, generator=None) -> dict:
        batch = pad_batch(features, self.pad_id)
        if generator is not None:  # training: as many target examples, drawn with the engine's generator
            pick = torch.randint(len(self.target), (len(features),), generator=generator).tolist()
            target = pad_batch([self.target[i] for i in pick], self.pad_id)
            batch.update({f"target_{k}": v for k, v in target.items()})
        return batch

    def current_lambda(self) -> float:
        c = self.config
        if not c.schedule:
            return c.lambda_max
        return c.lambda_max * dann_lambda(self.calls / max(self.total_steps, 1), c.gamma)

    def loss(self, model, batch) -> torch.Tensor:
        src = {k: v for k, v in batch.items() if not k.startswith("target_")}
        tgt = {k.removeprefix("target_"): v for k, v in batch.items() if k.startswith("target_")}
        self.domain.grl.lambd = self.current_lambda()
        self.calls += 1
        if self.config.domain_weight == 0:  # no adaptation, the baseline: the domain branch adds no gradient
            return model(**src).loss
        out = model(**src, output_hidden_states=True)
        src_feats = pool_hidden(out.hidden_states[-1], src["attention_mask"], is_encoder(model))
        tgt_feats = pooled_features(model, tgt)
        d_logits = self.domain(torch.cat([src_feats, tgt_feats]))
        d_labels = torch.cat([torch.zeros(len(src_feats)), torch.ones(len(tgt_feats))]).to(d_logits.device)
        self.last_domain_loss = F.binary_cross_entropy_with_logits(d_logits.float(), d_labels)
        return out.loss + self.config.domain_weight * self.last_domain_loss

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        preds, golds, loss = predict(model, features, batch_size, self.collate)
        metrics = {"loss": loss, **classification_metrics(preds, golds)}
        if self.target_eval:
            tp, tg, tl = predict(model, self.target_eval, batch_size, self.collate)
            m = classification_metrics(tp, tg)
            metrics.update({"target_loss": tl, "target_accuracy": m["accuracy"], "target_macro_f1": m["macro_f1"]})
        return metrics

    def save_extra(self, model, folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.domain.state_dict().items()},
                  str(Path(folder) / DOMAIN_FILE))
