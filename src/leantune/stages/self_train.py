"""Self-training with pseudo-labels (Yarowsky 1995; Lee 2013, "Pseudo-Label"): train a
classifier on the labelled set, label the unlabelled pool (``data.unlabeled``) where the model
is confident (``threshold``, or the ``per_class`` most confident per class), retrain on both,
for ``rounds`` rounds. ``eval.json`` holds accuracy per round and, where the pool's true labels
are known (``data.unlabeled: keep``, or a pool file with a ``label`` column), the precision of
the pseudo-labels. Trained with the shared engine (``train.*``, ``train.adversarial``)."""
from __future__ import annotations

from pathlib import Path

from ..recipe.stage_settings import RoundSettings
from ..semisup.pseudo_label import pseudo_label_precision, select
from ..training.checkpoint import trainable_state
from . import rounds as R
from .registry import PreparedData, Stage, register


@register
class SelfTrain(R.RoundClassifier, Stage):
    name = "self_train"
    summary = "Self-training: pseudo-label the unlabelled pool by confidence, retrain for R rounds."
    Config = RoundSettings

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        self.start_pool(recipe, tokenizer, train_examples, eval_examples)
        ml = recipe.train.max_length
        self.pool = R.featurize(self.unlabeled, tokenizer, ml, self.labels)
        train = R.featurize(train_examples, tokenizer, ml, self.labels)
        evals = R.featurize(eval_examples, tokenizer, ml, self.labels)
        return self.prepared(train, evals, self.labels, len(self.pool))

    def run(self, model, *, recipe, run_dir: Path, data: PreparedData, method, tokenizer, progress, resume, say, runtime=None):
        cfg, bs = self.config, recipe.eval.batch_size
        start = trainable_state(model) if cfg.reset else None
        results, rounds, current = [], [], list(data.train)
        for r in range(cfg.rounds + 1):
            results.append(R.fit(model, current, recipe, run_dir / "rounds" / f"round-{r}", self.pad_id, start))
            record = {"round": r, "labelled": len(data.train), "pseudo_labelled": len(current) - len(data.train)}
            if data.eval:
                record.update(self.evaluate(model, data.eval, bs))
            if r == cfg.rounds:
                rounds.append(record)
                break
            probs = R.class_probs(model, self.pool, bs, self.pad_id)
            chosen = select(probs, threshold=cfg.threshold, per_class=cfg.per_class)
            precision = pseudo_label_precision(chosen, self.gold)
            record["next_pseudo_labels"], record["pseudo_label_precision"] = len(chosen), precision
            rounds.append(record)
            say(f"round {r}: accuracy {record.get('accuracy', float('nan')):.3f}; {len(chosen)} pseudo-labels"
                + (f", precision {precision:.3f}" if precision is not None else ""))
            current = list(data.train) + [{**self.pool[i], "labels": c} for i, c, _ in chosen]
        self.eval_details = {"rounds": rounds}
        return model, R.merge_results(results)
