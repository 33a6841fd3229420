"""Pattern-Exploiting Training (Schick & Schütze 2021, arXiv:2001.07676): prompt-based
fine-tuning on few labelled examples.

Each example is written into one or more cloze templates; the label's words are scored
at the [MASK] position (masked LMs) or as the continuation of the prompt (causal LMs),
and the loss is the cross-entropy over the label scores. It composes with any method
(``method: lora``, ``full``, ``bitfit``…). Several templates train one shared model (each
example once per template; PET proper trains one model per pattern) and are combined at
evaluation by ``ensemble: average | vote``. With an unlabelled pool (``data.unlabeled``)
the ensemble's soft labels are written to ``soft_labels.jsonl`` in the run directory:
PET's distillation set for a final classifier (``stage: cls``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import DataValidationError, Problem, RecipeError
from ..evaluation.batching import inference, length_sorted
from ..evaluation.classification import classification_metrics
from ..prompting.autoprompt import search_triggers
from ..prompting.calibration import calibrate, content_free_probs
from ..prompting.ensemble import combine
from ..prompting.label_scoring import SoftPrompt, collate_prompts, input_embeddings, score_labels
from ..prompting.verbalizer import Verbalizer, search_label_words
from ..recipe.stage_settings import PETSettings
from ..recipe.template import Template
from .pt import ENCODERS
from .registry import PreparedData, Stage, register

SOFT_MODULE = "leantune_soft_prompt"


def prompt_head(objective: str, model_type: str, is_encoder_decoder: bool, stage: str) -> str:
    if is_encoder_decoder:
        raise RecipeError(f"stage {stage}: encoder-decoder models ({model_type}) are not supported; "
                          "use a masked LM (BERT, RoBERTa) or a causal LM")
    mlm = objective == "mlm" or (objective == "auto" and model_type in ENCODERS)
    return "masked_lm" if mlm else "causal_lm"


def check_labels(labels: list[str], sets) -> None:
    index = set(labels)
    bad = [Problem(file, e.get("line") or 0, "label", f"label {e['label']!r} is not among the labels {labels[:10]}")
           for file, examples in sets for e in examples if "label" in e and str(e["label"]) not in index]
    if bad:
        raise DataValidationError(bad)


@register
class PET(Stage):
    name = "pet"
    summary = "Prompt-based fine-tuning (PET): cloze templates + verbalizers, masked or causal LMs; accuracy, macro-F1."
    data_kinds = ("classification",)

    Config = PETSettings

    # ------------------------------------------------------------------ setup
    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return prompt_head(self.config.objective, model_type, is_encoder_decoder, self.name)

    @property
    def causal(self) -> bool:
        return getattr(self, "head_name", "masked_lm") == "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id or 0
        self.max_length, self.seed = recipe.train.max_length, recipe.train.seed
        if not self.causal and tokenizer.mask_token_id is None:
            raise RecipeError("stage pet on a masked LM needs a tokenizer with a mask token")
        labels = cfg.labels or sorted({str(e["label"]) for e in train_examples + eval_examples})
        check_labels(labels, ((recipe.data.train or "train", train_examples),
                              (recipe.data.eval or "eval", eval_examples)))
        self.labels = labels
        self.templates = [Template(t) for t in cfg.templates]
        self.auto = cfg.verbalizer == "auto"
        self.verbalizer = None if self.auto else Verbalizer(labels, cfg.verbalizer, cfg.scoring)
        self.train_examples = train_examples
        self.n_masks = 1 if (self.causal or self.auto) else self.verbalizer.max_tokens(tokenizer, False)
        offsets, n = [], 0
        for t in self.templates:
            offsets.append(n)
            n += t.n_soft
        self.soft_offsets, self.n_soft = offsets, n
        self.soft: SoftPrompt | None = None
        self._ready_done = False
        train = self.featurize(train_examples, with_labels=True)
        evals = self.featurize(eval_examples, with_labels=True)
        tokens = sum(len(f["input_ids"]) for f in train)
        return PreparedData(train, evals, labels=labels,
                            info={"tokenize": {"examples": len(train_examples), "tokens": tokens},
                                  "templates": cfg.templates})

    def featurize(self, examples: list[dict], with_labels: bool) -> list[dict]:
        index = {lab: i for i, lab in enumerate(self.labels)}
        out = []
        for i, ex in enumerate(examples):
            for t, template in enumerate(self.templates):
                enc = template.encode(self.tokenizer, ex, causal=self.causal, n_masks=self.n_masks,
                                      max_length=self.max_length)
                soft = [k + self.soft_offsets[t] if k >= 0 else -1 for k in enc.soft_index]
                feat = {"input_ids": enc.input_ids, "mask_positions": enc.mask_positions, "soft_index": soft,
                        "template": t, "idx": i, "slots": enc.trigger_slots, "space": enc.prefix_space}
                if with_labels and "label" in ex:
                    feat["labels"] = index[str(ex["label"])]
                out.append(feat)
        return out

    def _ready(self, model) -> None:
        """First contact with the model: automatic verbalizer, AutoPrompt triggers, soft prompts."""
        if self._ready_done:
            return
        self._ready_done = True
        cfg = self.config
        if self.auto:
            words = search_label_words(model, self.tokenizer, self.templates[0], self.train_examples, self.labels,
                                       causal=self.causal, k=cfg.auto_words, max_length=self.max_length)
            self.verbalizer = Verbalizer(self.labels, words, cfg.scoring)
        for template in self.templates:
            if template.n_trigger and cfg.autoprompt_iterations:
                _, self.autoprompt_history = search_triggers(
                    model, self.tokenizer, template, self.verbalizer, self.train_examples, causal=self.causal,
                    iterations=cfg.autoprompt_iterations, candidates=cfg.autoprompt_candidates,
                    max_length=self.max_length, seed=self.seed)
        if self.n_soft:
            emb = input_embeddings(model).weight
            gen = torch.Generator().manual_seed(self.seed)
            rows = torch.randint(0, min(emb.shape[0], 5000), (self.n_soft,), generator=gen)
            self.soft = SoftPrompt(self.n_soft, emb.detach()[rows.to(emb.device)]).to(emb.device)
        self._encode_words()

    def _encode_words(self) -> None:
        space = any(t.encode(self.tokenizer, {"text": "x", "text_pair": "x"}, causal=self.causal).prefix_space
                    for t in self.templates[:1])
        self.words, self.lengths = self.verbalizer.encode(self.tokenizer, space)

    def load_extra(self, model, folder: Path) -> None:
        """Restore what :meth:`save_extra` wrote (verbalizer, AutoPrompt triggers, soft prompt) so
        that a reloaded run scores as at the end of its training, instead of searching words and
        triggers again or starting a fresh soft prompt. Call after :meth:`prepare`."""
        folder = Path(folder)
        info = json.loads((folder / "prompting.json").read_text())
        if info["labels"] != self.labels:
            raise RecipeError(f"{folder}: the run was trained with labels {info['labels']}, not {self.labels}")
        words = info["verbalizer"]
        self.verbalizer = Verbalizer(self.labels, words["words"], words["mode"])
        for template, ids in zip(self.templates, info["trigger_ids"]):
            template.trigger_ids = ids
        if self.n_soft:
            weight = load_file(str(folder / "soft_prompt.safetensors"))["weight"]
            device = input_embeddings(model).weight.device
            self.soft = SoftPrompt(self.n_soft, weight).to(device)
        self._ready_done = True
        self._encode_words()

    def attach(self, model):
        self._ready(model)
        if self.soft is not None:
            self.soft.requires_grad_(True)
            model.add_module(SOFT_MODULE, self.soft)
        return model

    # ------------------------------------------------------------------ training
    def collate(self, features, generator=None) -> dict:
        batch = collate_prompts(features, self.pad_id)
        for row, f in enumerate(features):
            ids = self.templates[f["template"]].trigger_ids
            if ids:
                for slot, t in zip(f["slots"], ids):
                    batch["input_ids"][row, slot] = t
        return batch

    def scores(self, model, batch) -> torch.Tensor:
        self._ready(model)
        return score_labels(model, batch, self.words, self.lengths, self.verbalizer.word_label, len(self.labels),
                            causal=self.causal, mode=self.verbalizer.mode, soft=self.soft)

    def loss(self, model, batch) -> torch.Tensor:
        return F.cross_entropy(self.scores(model, batch), batch["labels"])

    # ------------------------------------------------------------------ evaluation
    def template_probs(self, model, features, batch_size, temperature: float = 1.0) -> list[torch.Tensor]:
        """Per template, [N examples, L] label probabilities (examples in ``idx`` order); batches
        of similar length, longest first."""
        device = next(model.parameters()).device
        per: dict[int, dict[int, torch.Tensor]] = {t: {} for t in range(len(self.templates))}
        with inference(model):
            for _, chunk in length_sorted(features, batch_size):
                batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
                probs = (self.scores(model, batch) / temperature).softmax(-1).cpu()
                for f, p in zip(chunk, probs):
                    per[f["template"]][f["idx"]] = p
        return [torch.stack([d[i] for i in sorted(d)]) for d in per.values()]

    def content_free(self, model, batch_size) -> list[torch.Tensor]:
        inputs = [{"text": t, "text_pair": t} for t in self.config.content_free]
        probs = self.template_probs(model, self.featurize(inputs, with_labels=False), batch_size)
        return [content_free_probs(p) for p in probs]

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        self._ready(model)
        per_template = self.template_probs(model, features, batch_size)
        golds: dict[int, int] = {f["idx"]: f["labels"] for f in features}
        gold = [golds[i] for i in sorted(golds)]
        metrics: dict[str, float] = {}
        if self.config.calibrate:
            raw = combine(per_template, self.config.ensemble)
            plain = classification_metrics(raw.argmax(-1).tolist(), gold)
            metrics.update(accuracy_uncalibrated=plain["accuracy"], macro_f1_uncalibrated=plain["macro_f1"])
            per_template = [calibrate(p, cf) for p, cf in zip(per_template, self.content_free(model, batch_size))]
        probs = combine(per_template, self.config.ensemble)
        target = torch.tensor(gold)
        metrics["loss"] = float(F.nll_loss(probs.clamp_min(1e-12).log(), target))
        metrics.update(classification_metrics(probs.argmax(-1).tolist(), gold))
        if len(per_template) > 1:
            for t, p in enumerate(per_template):
                metrics[f"accuracy_template{t}"] = classification_metrics(p.argmax(-1).tolist(), gold)["accuracy"]
        return metrics

    # ------------------------------------------------------------------ saving, distillation
    def save_extra(self, model, folder: Path) -> None:
        info = {"templates": self.config.templates, "labels": self.labels,
                "verbalizer": self.verbalizer.as_dict() if self.verbalizer else None,
                "trigger_ids": [t.trigger_ids for t in self.templates],
                "triggers": [self.tokenizer.decode(t.trigger_ids) if t.trigger_ids else None for t in self.templates],
                "soft_offsets": self.soft_offsets, "ensemble": self.config.ensemble}
        (Path(folder) / "prompting.json").write_text(json.dumps(info, indent=2))
        if self.soft is not None:
            save_file({"weight": self.soft.weight.detach().cpu().contiguous()}, str(Path(folder) / "soft_prompt.safetensors"))
        if self.unlabeled:
            write_soft_labels(self, model, self.unlabeled, Path(folder).parent / "soft_labels.jsonl")


def write_soft_labels(stage: PET, model, pool: list[dict], path: Path, batch_size: int = 16) -> Path:
    """PET's distillation data: each unlabelled example with the template ensemble's soft
    labels (temperature ``distill_temperature``) and its argmax as ``label``; a
    ``stage: cls`` run trains the final classifier on it."""
    feats = stage.featurize(pool, with_labels=False)
    probs = combine(stage.template_probs(model, feats, batch_size, stage.config.distill_temperature),
                    stage.config.ensemble)
    rows = []
    for ex, p in zip(pool, probs):
        rows.append({"text": ex["text"], **({"text_pair": ex["text_pair"]} if ex.get("text_pair") else {}),
                     "label": stage.labels[int(p.argmax())],
                     "soft_label": {lab: round(float(q), 6) for lab, q in zip(stage.labels, p)}})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path

