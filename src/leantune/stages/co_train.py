"""Co-training (Blum & Mitchell 1998, "Combining labeled and unlabeled data with co-training"):
two classifiers on two views of each text — here the head and the tail of the text (the first
and the last ``max_length // 2`` tokens) — each trained on the labelled set plus the examples
the *other* one labelled confidently in earlier rounds; labelled pool examples leave the pool.
The second model is a copy of the first (same base, same method). Evaluation averages the two
views' probabilities; ``eval.json`` has each view's and the combined accuracy per round. The
second view's weights are saved in ``adapter/view_b``."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

from ..evaluation.classification import classification_metrics
from ..recipe.stage_settings import CoTrainSettings
from ..semisup.pseudo_label import pseudo_label_precision, select
from ..training.checkpoint import trainable_state
from . import rounds as R
from .registry import PreparedData, Stage, register

VIEWS = ("head", "tail")


@register
class CoTrain(R.RoundClassifier, Stage):
    name = "co_train"
    summary = "Co-training: two models on head/tail views of the text label confident pool examples for each other."

    Config = CoTrainSettings

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.start_pool(recipe, tokenizer, train_examples, eval_examples)
        ml = recipe.train.max_length
        self.views = {v: {"train": R.featurize(train_examples, tokenizer, ml, self.labels, v),
                          "eval": R.featurize(eval_examples, tokenizer, ml, self.labels, v),
                          "pool": R.featurize(self.unlabeled, tokenizer, ml, self.labels, v)} for v in VIEWS}
        self.model_b = None
        train = self.views["head"]["train"]
        evals = R.featurize(eval_examples, tokenizer, ml, self.labels)
        return self.prepared(train, evals, self.labels, len(self.unlabeled))

    def view_metrics(self, model_a, model_b, batch_size) -> dict[str, float]:
        gold = [f["labels"] for f in self.views["head"]["eval"]]
        pa = R.class_probs(model_a, self.views["head"]["eval"], batch_size, self.pad_id)
        pb = R.class_probs(model_b, self.views["tail"]["eval"], batch_size, self.pad_id)
        both = (pa + pb) / 2
        return {**classification_metrics(both.argmax(-1).tolist(), gold),
                "accuracy_head": R.accuracy(pa, gold), "accuracy_tail": R.accuracy(pb, gold)}

    def evaluate(self, model, features, batch_size) -> dict[str, float]:
        """Both views of the evaluation set (before training, the one model reads both views)."""
        return self.view_metrics(model, self.model_b or model, batch_size)

    def run(self, model, *, recipe, run_dir: Path, data: PreparedData, method, tokenizer, progress, resume, say, runtime=None):
        cfg, bs = self.config, recipe.eval.batch_size
        self.method = method
        with warnings.catch_warnings():  # transformers warns about deprecated properties while copying
            warnings.simplefilter("ignore", FutureWarning)
            self.model_b = copy.deepcopy(model)
        models = {"head": model, "tail": self.model_b}
        start = {v: trainable_state(m) for v, m in models.items()} if cfg.reset else None
        extra: dict[str, list[dict]] = {v: [] for v in VIEWS}  # examples labelled for view v by the other
        pool_left = list(range(len(self.unlabeled)))
        results, rounds = [], []
        for r in range(cfg.rounds + 1):
            for v, m in models.items():
                results.append(R.fit(m, self.views[v]["train"] + extra[v], recipe,
                                     run_dir / "rounds" / f"round-{r}-{v}", self.pad_id, start[v] if start else None))
            record = {"round": r, "added_head": len(extra["head"]), "added_tail": len(extra["tail"])}
            if data.eval:
                record.update(self.view_metrics(model, self.model_b, bs))
            if r == cfg.rounds or not pool_left:
                rounds.append(record)
                break
            taken: set[int] = set()
            for v, other in (("head", "tail"), ("tail", "head")):
                candidates = [i for i in pool_left if i not in taken]  # not those the other view just took
                if not candidates:
                    break
                probs = R.class_probs(models[v], [self.views[v]["pool"][i] for i in candidates], bs, self.pad_id)
                chosen = [(candidates[j], c, p) for j, c, p in select(probs, threshold=cfg.threshold,
                                                                       per_class=cfg.per_class)]
                taken |= {i for i, _, _ in chosen}
                extra[other] += [{**self.views[other]["pool"][i], "labels": c} for i, c, _ in chosen]
                record[f"labelled_by_{v}"] = len(chosen)
                record[f"precision_{v}"] = pseudo_label_precision(chosen, self.gold)
            pool_left = [i for i in pool_left if i not in taken]
            rounds.append(record)
            say(f"round {r}: accuracy {record.get('accuracy', float('nan')):.3f}; pool left {len(pool_left)}")
        self.eval_details = {"rounds": rounds, "views": list(VIEWS)}
        return model, R.merge_results(results)

    def save_extra(self, model, folder: Path) -> None:
        if self.model_b is not None:
            sub = Path(folder) / "view_b"
            sub.mkdir(parents=True, exist_ok=True)
            self.method.save(self.model_b, sub)
