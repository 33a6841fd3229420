"""In-context learning (Brown et al. 2020, GPT-3, arXiv:2005.14165): no training; k
demonstrations from the (few-shot) training data are written before each query.

Classification: label words scored at the query's {mask} (optionally calibrated, Zhao et
al. 2021); accuracy and macro-F1. Generation (chat data): greedy continuation after the
query; exact match and token F1. Demonstrations are chosen ``random``ly, ``balanced``
over labels, or ``similar`` to the query (sentence embeddings), and ordered ``random``ly or
``similar_last``; drawn per query, or once for all queries (``fixed``: one prompt, as in
Zhao et al. 2021, whose shared prefix is then computed once and cached). ``preset: nli`` is
zero-shot classification by an NLI-style template (K = 0 works: ``data.shots: 0``).
"""
from __future__ import annotations

import random
import re
import string
from collections import Counter

import torch

from ..errors import RecipeError
from ..evaluation.batching import inference, length_sorted
from ..evaluation.classification import classification_metrics
from ..prompting.calibration import calibrate, content_free_probs
from ..prompting.demonstrations import cosine, example_text, get_embedder, order, render_demonstrations, select
from ..prompting.label_scoring import collate_prompts, prefix_cache, score_labels, shared_prefix_length
from ..prompting.verbalizer import PRESETS, Verbalizer, label_description
from ..recipe.stage_settings import ICLSettings
from ..recipe.template import Template, truncate_text
from .pet import check_labels, prompt_head
from .registry import PreparedData, Stage, register

DEFAULT_TEMPLATES = {"classification": "{text}\nAnswer: {mask}", "generation": "Question: {text}\nAnswer: {mask}"}
MIN_CACHED_PREFIX = 16  # shorter shared prompt prefixes are not worth a cache


@register
class ICL(Stage):
    name = "icl"
    summary = "In-context learning, no training: k-shot prompts for classification (label words) or generation."
    data_kinds = ("classification", "chat")
    trains = False

    Config = ICLSettings

    embedder = None  # a callable texts -> Tensor[N, D]; set it to plug in another embedder

    def head(self, model_type: str, is_encoder_decoder: bool) -> str:
        return prompt_head(self.config.objective, model_type, is_encoder_decoder, self.name)

    @property
    def causal(self) -> bool:
        return getattr(self, "head_name", "causal_lm") == "causal_lm"

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id or 0
        self.max_length = recipe.train.max_length
        self.seed = cfg.seed if cfg.seed is not None else recipe.train.seed
        chat = any("messages" in e for e in train_examples + eval_examples)
        task = cfg.task if cfg.task != "auto" else ("generation" if chat else "classification")
        if task == "generation" and not chat:
            raise RecipeError("stage icl, task generation: needs chat data (prompt_completion, alpaca, …)")
        if task == "classification" and chat:
            raise RecipeError("stage icl, task classification: needs classification data (text, label)")
        self.task = task
        text = cfg.template
        if cfg.preset:
            preset = PRESETS["nli" if not self.causal else "nli_causal"]
            text = text or preset["template"]
        self.template = Template(text or DEFAULT_TEMPLATES[task])
        if self.causal and self.template.has_label:
            segs = [s.kind if s.kind != "field" else s.value for s in self.template.segments]
            if segs.index("label") > segs.index("mask"):
                raise RecipeError("stage icl: causal LMs read the prompt up to {mask}, so {label} must come before it")
        if task == "generation":
            if not self.causal:
                raise RecipeError("stage icl, task generation: needs a causal LM")
            pool, evals = [_qa(e) for e in train_examples], [_qa(e) for e in eval_examples]
            self.labels = None
        else:
            pool, evals = train_examples, eval_examples
            self.labels = cfg.labels or sorted({str(e["label"]) for e in pool + evals})
            check_labels(self.labels, (("train", pool), ("eval", evals)))
            if self.template.has_label:
                words = cfg.verbalizer if isinstance(cfg.verbalizer, dict) else PRESETS["nli"]["verbalizer"]
                self.answer = Verbalizer(sorted(words), words, cfg.scoring)  # e.g. yes / no
                if "yes" not in self.answer.labels:
                    raise RecipeError("a {label} template's verbalizer needs a 'yes' entry (and e.g. 'no')")
                self.names = {lab: (cfg.label_names or {}).get(lab, label_description(lab)) for lab in self.labels}
                self.verbalizer = self.answer
            else:
                if cfg.verbalizer == "auto":
                    raise RecipeError("stage icl: verbalizer: auto needs training; use stage pet or name the words")
                self.verbalizer = Verbalizer(self.labels, cfg.verbalizer, cfg.scoring)
        self.pool = pool
        self.eval_details: dict = {}
        return PreparedData(pool, evals, labels=self.labels, info={"tokenize": {"examples": len(pool)}})

    # ------------------------------------------------------------------ demonstrations
    def _similarities(self, queries: list[dict]) -> torch.Tensor | None:
        cfg = self.config
        if not self.pool or (cfg.selection != "similar" and cfg.order != "similar_last"):
            return None
        embed = self.embedder if self.embedder is not None else get_embedder(cfg.embedder)
        keys = embed([example_text(e) for e in self.pool])
        return cosine(embed([example_text(q) for q in queries]), keys)

    def demonstrations(self, i: int, sims: torch.Tensor | None) -> list[int]:
        cfg = self.config
        rng = random.Random(self.seed * 1_000_003 + (0 if cfg.fixed else i))
        k = len(self.pool) if cfg.k is None else cfg.k
        row = sims[i] if sims is not None else None
        chosen = select(self.pool, k, cfg.selection, rng, row)
        return order(chosen, cfg.order, rng, row)

    def _fill(self, demo: dict):
        if self.task == "generation":
            return demo["target"]
        if self.template.has_label:
            return self.answer.first_word("yes"), self.names[str(demo["label"])]
        return self.verbalizer.first_word(demo["label"])

    def prefix(self, demos: list[int]) -> str:
        cut = self.config.max_demo_tokens
        shown = [{**d, "text": truncate_text(self.tokenizer, d.get("text", ""), cut),
                  "text_pair": truncate_text(self.tokenizer, d.get("text_pair") or "", cut) or None}
                 for d in (self.pool[j] for j in demos)]
        return render_demonstrations(self.template, shown, self._fill, sep=self.config.separator)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        sims = self._similarities(features)
        with inference(model):
            if self.task == "generation":
                return self._generate(model, features, sims)
            return self._classify(model, features, sims, batch_size)

    def _encode(self, example: dict, prefix: str, label: str | None = None):
        enc = self.template.encode(self.tokenizer, example, causal=self.causal, n_masks=self.n_masks,
                                   max_length=self.max_length, prefix=prefix, label=label)
        return {"input_ids": enc.input_ids, "mask_positions": enc.mask_positions, "space": enc.prefix_space}

    def _label_probs(self, model, queries: list[tuple[dict, str]], batch_size: int) -> torch.Tensor:
        """[N, L] label probabilities for (example, prefix) pairs."""
        device = next(model.parameters()).device
        if self.template.has_label:  # one prompt per candidate label; score = log p(yes) vs the other answers
            rows = [self._encode(ex, pre, self.names[lab]) for ex, pre in queries for lab in self.labels]
        else:
            rows = [self._encode(ex, pre) for ex, pre in queries]
        past = None
        cut = shared_prefix_length([r["input_ids"] for r in rows]) if self.causal and len(rows) > 1 else 0
        if cut >= MIN_CACHED_PREFIX:  # e.g. fixed demonstrations: run them once, score only the rest
            past = prefix_cache(model, torch.tensor([rows[0]["input_ids"][:cut]], device=device))
            rows = [{**r, "input_ids": r["input_ids"][cut:], "mask_positions": [p - cut for p in r["mask_positions"]]}
                    for r in rows]
        scores = torch.empty(len(rows), len(self.verbalizer.labels))
        for idx, chunk in length_sorted(rows, batch_size):  # similar lengths batched, longest first
            batch = {k: v.to(device) for k, v in collate_prompts(chunk, self.pad_id).items()}
            scores[idx] = score_labels(model, batch, self.words, self.lengths, self.verbalizer.word_label,
                                       len(self.verbalizer.labels), causal=self.causal,
                                       mode=self.verbalizer.mode, past=past).float().cpu()
        if self.template.has_label:
            yes = self.answer.labels.index("yes")
            entail = scores.log_softmax(-1)[:, yes].view(len(queries), len(self.labels))
            return entail.softmax(-1)
        return scores.softmax(-1)

    def _prepare_words(self):
        probe = self.template.encode(self.tokenizer, {"text": "x", "text_pair": "x"}, causal=self.causal,
                                     label="x")
        self.words, self.lengths = self.verbalizer.encode(self.tokenizer, probe.prefix_space)
        self.n_masks = 1 if self.causal else int(self.lengths.max())

    def _classify(self, model, features, sims, batch_size) -> dict[str, float]:
        self._prepare_words()
        index = {lab: i for i, lab in enumerate(self.labels)}
        demos = [self.demonstrations(i, sims) for i in range(len(features))]
        prefixes = [self.prefix(d) for d in demos]
        probs = self._label_probs(model, list(zip(features, prefixes)), batch_size)
        gold = [index[str(e["label"])] for e in features]
        metrics: dict[str, float] = {}
        if self.config.calibrate:
            raw = classification_metrics(probs.argmax(-1).tolist(), gold)
            metrics.update(accuracy_uncalibrated=raw["accuracy"], macro_f1_uncalibrated=raw["macro_f1"])
            pair = any(e.get("text_pair") for e in features)
            cache: dict[tuple, torch.Tensor] = {}
            calibrated = []
            for p, d, pre in zip(probs, demos, prefixes):
                key = tuple(d)
                if key not in cache:
                    cf = [{"text": t, "text_pair": t if pair else None} for t in self.config.content_free]
                    cache[key] = content_free_probs(self._label_probs(model, [(c, pre) for c in cf], batch_size))
                calibrated.append(calibrate(p, cache[key]))
            probs = torch.stack(calibrated)
        preds = probs.argmax(-1).tolist()
        metrics.update(classification_metrics(preds, gold))
        self.eval_details = {
            "task": "classification", "labels": self.labels, "verbalizer": self.verbalizer.words,
            "template": self.template.text, "demonstrations_per_prompt": len(demos[0]) if demos else 0,
            "example_prompt": (prefixes[0] + self.template.render(features[0], "[MASK]",
                               label=None if not self.template.has_label else self.names[self.labels[0]]))
            if features else "",
            "predictions": [{"line": e.get("line"), "gold": str(e["label"]), "pred": self.labels[p],
                             "probs": [round(float(x), 4) for x in q], "demonstrations": d}
                            for e, p, q, d in zip(features, preds, probs, demos)],
        }
        return metrics

    def _generate(self, model, features, sims) -> dict[str, float]:
        device = next(model.parameters()).device
        tok = self.tokenizer
        answers, demos_all = [], []
        for i, ex in enumerate(features):
            demos = self.demonstrations(i, sims)
            demos_all.append(demos)
            enc = self.template.encode(tok, ex, causal=True, max_length=self.max_length, prefix=self.prefix(demos))
            ids = torch.tensor([enc.input_ids], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=self.config.max_new_tokens, pad_token_id=self.pad_id,
                                 eos_token_id=tok.eos_token_id)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            answers.append(_first_answer(text, self.config.separator))
        em = [float(_normalize(a) == _normalize(e["target"])) for a, e in zip(answers, features)]
        f1 = [_token_f1(a, e["target"]) for a, e in zip(answers, features)]
        n = max(len(features), 1)
        self.eval_details = {
            "task": "generation", "template": self.template.text,
            "predictions": [{"line": e.get("line"), "target": e["target"], "answer": a, "demonstrations": d}
                            for e, a, d in zip(features, answers, demos_all)],
        }
        return {"exact_match": sum(em) / n, "f1": sum(f1) / n}


def _qa(ex: dict) -> dict:
    *context, target = ex["messages"]
    prompt = "\n".join(m["content"] for m in context if m["role"] != "system")
    return {"text": prompt, "target": target["content"], "line": ex.get("line")}


def _first_answer(text: str, separator: str) -> str:
    text = text.lstrip()
    for stop in (separator, "\n"):
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text.strip()


def _normalize(s: str) -> str:
    """SQuAD-style: lower case, no punctuation or articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(pred: str, gold: str) -> float:
    p, g = _normalize(pred).split(), _normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)
