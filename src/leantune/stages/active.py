"""Pool-based active learning (Settles 2009): start from ``initial`` labelled examples per
class, train, score the unlabelled pool with an acquisition function (``entropy``, ``margin``,
``least_confidence`` or ``random``), label the ``batch`` highest-scoring examples, retrain; the
learning curve (accuracy vs labels used) goes to ``eval.json``.

Oracles:

- ``oracle: labels`` (simulation): the pool is the training data minus the initial examples
  and a queried example's held-out label is revealed; ``rounds`` queries in one run.
- ``oracle: csv`` (real use): the labelled set is ``data.train`` and the pool ``data.unlabeled``.
  Each run trains on data.train plus the filled rows of ``label_file`` (a CSV with ``text,
  text_pair, label, round``), adds the point to the curve (kept in ``<label_file>.curve.json``),
  appends the next batch to ``label_file`` with an empty ``label`` (copied to the run's
  ``to_label.csv``) and stops. Fill the labels in and run again (``output.overwrite: true``): the
  loop resumes from the file. While rows are still unlabelled, no new batch is queried.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..data.fewshot import sample_shots
from ..errors import RecipeError
from ..recipe.stage_settings import ActiveSettings
from ..semisup.acquisition import query
from ..training.checkpoint import trainable_state
from . import rounds as R
from .registry import PreparedData, Stage, register

CSV_FIELDS = ["text", "text_pair", "label", "round"]


def read_label_file(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (r.get(k) or "") for k in CSV_FIELDS} for r in csv.DictReader(fh)]


def write_label_file(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows([{k: r.get(k) or "" for k in CSV_FIELDS} for r in rows])


@register
class Active(R.RoundClassifier, Stage):
    name = "active"
    summary = "Pool-based active learning (entropy, margin, least confidence, random); accuracy vs labels used."

    Config = ActiveSettings

    def prepare(self, recipe, tokenizer, train_examples, eval_examples) -> PreparedData:
        cfg = self.config
        self.pad_id, self.tokenizer, self.max_length = tokenizer.pad_token_id or 0, tokenizer, recipe.train.max_length
        self.labels = R.label_index(recipe, train_examples, eval_examples, cfg.labels)
        if cfg.oracle == "labels":
            seed, pool = sample_shots(train_examples, cfg.initial, recipe.train.seed)
            self.pool_examples = pool
        else:
            if not self.unlabeled:
                raise RecipeError("stage active, oracle csv: the pool is data.unlabeled (a file of rows with text)")
            seed, self.pool_examples = train_examples, self.unlabeled
            self.label_path = Path(cfg.label_file or Path(recipe.output.dir) / f"{recipe.run_name}-to_label.csv")
        self.pool = R.featurize(self.pool_examples, tokenizer, self.max_length, self.labels)
        train = R.featurize(seed, tokenizer, self.max_length, self.labels)
        evals = R.featurize(eval_examples, tokenizer, self.max_length, self.labels)
        return self.prepared(train, evals, self.labels, len(self.pool))

    def _train_point(self, model, features, recipe, folder, data, start, record):
        result = R.fit(model, features, recipe, folder, self.pad_id, start)
        if data.eval:
            record.update(self.evaluate(model, data.eval, recipe.eval.batch_size))
        return result

    def run(self, model, *, recipe, run_dir: Path, data: PreparedData, method, tokenizer, progress, resume, say, runtime=None):
        start = trainable_state(model) if self.config.reset else None
        if self.config.oracle == "csv":
            return self._run_csv(model, recipe, run_dir, data, start, say)
        cfg, bs = self.config, recipe.eval.batch_size
        labelled, left = list(data.train), list(range(len(self.pool)))
        results, curve = [], []
        for r in range(cfg.rounds + 1):
            record = {"round": r, "labels_used": len(labelled)}
            results.append(self._train_point(model, labelled, recipe, run_dir / "rounds" / f"round-{r}",
                                             data, start, record))
            curve.append(record)
            say(f"round {r}: {len(labelled)} labels, accuracy {record.get('accuracy', float('nan')):.3f}")
            if r == cfg.rounds or not left:
                break
            probs = R.class_probs(model, [self.pool[i] for i in left], bs, self.pad_id)
            picked = [left[j] for j in query(probs, cfg.batch, cfg.strategy, recipe.train.seed + r)]
            labelled += [self.pool[i] for i in picked]  # the oracle: the held-out label
            record["queried"] = len(picked)
            record["queried_labels"] = sorted(self.labels[self.pool[i]["labels"]] for i in picked)
            chosen = set(picked)
            left = [i for i in left if i not in chosen]
        self.eval_details = {"curve": curve, "strategy": cfg.strategy, "oracle": "labels"}
        return model, R.merge_results(results)

    def _run_csv(self, model, recipe, run_dir, data, start, say):
        cfg = self.config
        rows = read_label_file(self.label_path)
        bad = [r["label"] for r in rows if r["label"] and r["label"] not in self.labels]
        if bad:
            raise RecipeError(f"{self.label_path}: labels {sorted(set(bad))[:5]} are not among {self.labels}")
        filled = [r for r in rows if r["label"]]
        pending = [r for r in rows if not r["label"]]
        answered = R.featurize([{"text": r["text"], "text_pair": r["text_pair"] or None, "label": r["label"]}
                                for r in filled], self.tokenizer, self.max_length, self.labels)
        labelled = list(data.train) + answered
        curve_path = self.label_path.with_suffix(".curve.json")
        curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
        round_no = max([int(r["round"]) for r in rows if str(r["round"]).isdigit()], default=-1) + 1
        record = {"round": round_no, "labels_used": len(labelled)}
        result = self._train_point(model, labelled, recipe, run_dir / "rounds" / f"round-{round_no}", data,
                                   start, record)
        curve = [c for c in curve if c["labels_used"] != len(labelled)] + [record]
        curve_path.write_text(json.dumps(curve, indent=2))
        if pending:
            say(f"[yellow]{len(pending)} row(s) of {self.label_path} still have no label: fill them in and rerun")
        else:
            seen = {(r["text"], r["text_pair"]) for r in rows}
            left = [i for i, ex in enumerate(self.pool_examples) if (ex["text"], ex.get("text_pair") or "") not in seen]
            probs = R.class_probs(model, [self.pool[i] for i in left], recipe.eval.batch_size, self.pad_id)
            picked = [left[j] for j in query(probs, cfg.batch, cfg.strategy, recipe.train.seed + round_no)]
            new = [{"text": self.pool_examples[i]["text"], "text_pair": self.pool_examples[i].get("text_pair") or "",
                    "label": "", "round": round_no} for i in picked]
            write_label_file(self.label_path, rows + new)
            write_label_file(run_dir / "to_label.csv", new)
            record["queried"] = len(new)
            say(f"wrote {len(new)} example(s) to label to {self.label_path}; fill the label column and rerun")
        self.eval_details = {"curve": curve, "strategy": cfg.strategy, "oracle": "csv",
                             "label_file": str(self.label_path), "pending": len(pending) or record.get("queried", 0)}
        return model, result
