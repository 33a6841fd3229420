"""Write the data files of the recipes in this folder (run from the repository root):

    .venv/bin/python recipes/labels/build_data.py

- data/dialog-en-text.jsonl: English ChatterBot lines as unlabelled text (SimCSE);
- data/dialog-bilingual.jsonl: English and Spanish lines labelled with their shared topic
  (category-level pairing, see docs/few-labels.md: the two corpora are not line-aligned);
- data/20ng-{train,test}.jsonl: 30 (train) / 20 (test) posts of each of the 20 newsgroups
  (meta-learning needs many classes);
- data/20ng-4class-{train,test}.jsonl: 50 posts per class of 4 newsgroups (if missing).
"""
from __future__ import annotations

import sys
from pathlib import Path

from leantune.data.builtin import dialog_pairs, newsgroups, sample_per_class, write_jsonl
from leantune.semisup.contrastive import bilingual_category_rows

HERE = Path(__file__).parent
FOUR = {"comp.graphics", "rec.sport.hockey", "sci.med", "talk.politics.guns"}


def main(out: Path = HERE / "data") -> None:
    seen, lines = set(), []
    for p in dialog_pairs("english"):
        if p["prompt"] not in seen:
            seen.add(p["prompt"])
            lines.append({"text": p["prompt"]})
    write_jsonl(lines, out / "dialog-en-text.jsonl")
    write_jsonl(bilingual_category_rows(), out / "dialog-bilingual.jsonl")
    train, test = newsgroups("train"), newsgroups("test")
    clip = lambda rows: [{"text": r["text"][:2000], "label": r["label"]} for r in rows]  # noqa: E731
    write_jsonl(clip(sample_per_class(train, 30, seed=0)), out / "20ng-train.jsonl")
    write_jsonl(clip(sample_per_class(test, 20, seed=0)), out / "20ng-test.jsonl")
    write_jsonl(clip(sample_per_class([r for r in train if r["label"] in FOUR], 50, seed=0)),
                out / "20ng-4class-train.jsonl")
    write_jsonl(clip(sample_per_class([r for r in test if r["label"] in FOUR], 50, seed=0)),
                out / "20ng-4class-test.jsonl")
    print(f"wrote the data files to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "data")
