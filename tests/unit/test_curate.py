"""Curation (data/curate.py) against independent references: exact Jaccard of the same shingles for
MinHash and its LSH, planted n-gram overlaps for decontamination, brute-force k-center for the greedy."""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from leantune.data.builtin import newsgroups
from leantune.data.curate import (
    CurateOptions,
    EvalGrams,
    check_outputs,
    curate,
    dropped_path,
    exact_duplicates,
    jaccard,
    minhashes,
    near_duplicates,
    quality_problem,
    shingles,
    write_curated,
)
from leantune.data.diversity import k_center_greedy, proportional_quota, select_diverse
from leantune.errors import LeantuneError, OutputExists


@pytest.fixture(scope="module")
def posts() -> list[list[str]]:
    """The words of real 20 Newsgroups posts, 100 words each, no two sharing a word 5-gram (threads quote)."""
    chosen, seen = [], set()
    for row in newsgroups("test"):
        words = row["text"].split()[:100]
        grams = shingles(" ".join(words))
        if len(words) == 100 and not grams & seen:
            chosen.append(words)
            seen |= grams
        if len(chosen) == 60:
            return chosen


def _chat(prompt: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


# -- MinHash and LSH ------------------------------------------------------------------

def test_minhash_estimates_the_exact_jaccard(posts):
    rng = random.Random(0)
    pairs = []
    for words in posts[:20]:
        cut = rng.randint(10, 90)  # share a prefix of varying length with another post's words
        other = posts[rng.randrange(20, 40)]
        pairs.append((" ".join(words), " ".join(words[:cut] + other[cut:])))
    sets = [shingles(t) for pair in pairs for t in pair]
    hashes = minhashes(sets, num_perm=128)
    for k in range(len(pairs)):
        a, b = sets[2 * k], sets[2 * k + 1]
        exact = jaccard(a, b)
        sigma = math.sqrt(exact * (1 - exact) / 128)  # the estimator's standard deviation
        assert abs(hashes[2 * k].jaccard(hashes[2 * k + 1]) - exact) <= 4 * sigma + 0.02


def test_near_duplicates_are_the_pairs_above_the_threshold_by_exact_jaccard(posts):
    rng = random.Random(1)
    texts = []
    for words in posts[:15]:
        texts.append(" ".join(words))
        for _ in range(rng.randint(0, 2)):  # variants: a word changed or the tail cut near the end
            w = list(words)
            if rng.random() < 0.5:
                w[rng.randrange(92, 100)] = "zzzplanted"
            else:
                w = w[:rng.randint(95, 99)]
            texts.append(" ".join(w))
    for words, other in zip(posts[15:20], posts[20:25]):  # half of a post: well below the threshold
        texts.append(" ".join(words[:50] + other[50:]))
    rng.shuffle(texts)
    sets = [shingles(t) for t in texts]
    sims = {(i, j): jaccard(sets[i], sets[j]) for i, j in itertools.combinations(range(len(texts)), 2)}
    assert all(s >= 0.85 or s <= 0.6 for s in sims.values())  # every pair well away from 0.8
    assert sum(s >= 0.9 for s in sims.values()) >= 8
    expected = {j for (i, j), s in sims.items() if s >= 0.8}
    found = near_duplicates(texts, threshold=0.8)
    assert set(found) == expected
    for i, (j, sim) in found.items():
        assert j < i and j not in found and sim == pytest.approx(sims[(j, i)])


def test_lsh_misses_no_pair_just_above_the_threshold(posts):
    """Pairs at Jaccard ≈ 0.86: with datasketch's default bands for 0.8 (9 × 13) each is a candidate with
    probability about 0.8; with ours (≥ 0.99 at the threshold itself) above 0.9999, so all 40 are found."""
    texts = []
    for k, words in enumerate(posts[:40]):
        w = list(words)
        w[50 - k % 10], w[52 - k % 10] = "zzzone", "zzztwo"  # 7 of 96 shingles changed
        texts += [" ".join(words), " ".join(w)]
    sims = [jaccard(shingles(a), shingles(b)) for a, b in zip(texts[::2], texts[1::2])]
    assert all(0.85 < s < 0.89 for s in sims)
    assert set(near_duplicates(texts, threshold=0.8)) == set(range(1, 80, 2))


def test_exact_duplicates_ignore_case_and_spacing_only():
    texts = ["Hello  World", "hello world", "Hello world!", "HELLO\nWORLD", "other"]
    assert exact_duplicates(texts) == {1: 0, 3: 0}


# -- decontamination -------------------------------------------------------------------

def test_decontamination_finds_the_planted_overlaps_and_nothing_else(posts, tmp_path):
    train = [" ".join(w) for w in posts[:30]]
    planted = {3: 13, 11: 20, 25: 40}  # train index → how many of its words the evaluation row copies
    eval_rows = [{"question": " ".join(posts[i][10:10 + n]) + " unrelated tail", "answer": "x"}
                 for i, n in planted.items()]
    eval_rows.append({"question": " ".join(posts[7][30:42]), "answer": "12 words only"})  # under 13: no match
    eval_rows += [{"question": " ".join(w), "answer": "held out"} for w in posts[40:50]]
    eval_rows.append({"question": " ".join(posts[19][60:66])})  # a short row, found where it appears whole
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    grams = EvalGrams(path, n=13)
    hits = {i for i, t in enumerate(train) if grams.match(t)}
    assert hits == set(planted) | {19}
    assert "line 1" in grams.match(train[3]) and "line 15" in grams.match(train[19])


# -- k-center greedy ---------------------------------------------------------------------

def _radius(points, centres) -> float:
    return max(min(math.dist(p, points[c]) for c in centres) for p in points)


def _reference_greedy(points, k, first):
    chosen = [first]
    while len(chosen) < k:
        far = max((i for i in range(len(points)) if i not in chosen),
                  key=lambda i: (min(math.dist(points[i], points[c]) for c in chosen), -i))
        chosen.append(far)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_k_center_greedy_matches_the_reference_and_is_within_twice_the_optimum(seed):
    rng = random.Random(seed)
    points = [(rng.uniform(0, 10), rng.uniform(0, 10)) for _ in range(11)]
    for k in (2, 3, 4):
        greedy = k_center_greedy(np.array(points), k, first=0)
        assert greedy == _reference_greedy(points, k, 0)
        optimum = min(_radius(points, c) for c in itertools.combinations(range(len(points)), k))
        assert _radius(points, greedy) <= 2 * optimum + 1e-9
        default = k_center_greedy(np.array(points), k)  # starts near the mean
        assert len(set(default)) == k and _radius(points, default) <= 2 * optimum + 1e-9


def test_k_center_greedy_never_repeats_on_identical_points():
    assert sorted(k_center_greedy(np.zeros((5, 2)), 3)) == [0, 1, 2]


def test_proportional_quota_and_label_balance():
    assert proportional_quota({"a": 6, "b": 3, "c": 1}, 5) == {"a": 3, "b": 2, "c": 0}
    assert proportional_quota({"x": 50, "y": 50}, 9) == {"x": 5, "y": 4}
    labels = ["a"] * 8 + ["b"] * 4
    vectors = np.array([(float(i * i), 0.0) for i in range(12)])
    rest = select_diverse(vectors, labels, 6)
    kept = [i for i in range(12) if i not in rest]
    assert [labels[i] for i in kept] == ["a"] * 4 + ["b"] * 2
    assert kept == [0, 4, 6, 7, 8, 10]  # worked by hand: start nearest the mean, then the farthest
    for i, (near, dist) in rest.items():  # the nearest selected point of the same label
        same = [j for j in kept if labels[j] == labels[i]]
        assert near == min(same, key=lambda j: abs(vectors[j][0] - vectors[i][0]))
        assert dist == pytest.approx(abs(vectors[near][0] - vectors[i][0]))
    assert select_diverse(vectors, ["a"] * 11 + ["b"], 3)[11] == (None, pytest.approx(float("nan"), nan_ok=True))


# -- quality filters ------------------------------------------------------------------------

@pytest.mark.parametrize("reply, reason", [
    ("k", "too-short"),
    ("x" * 30 + " " + "y" * 20_000, "too-long"),
    ("$$$ ### !!! %%% ^^^", "junk"),
    ("fine text \ufffd broken", "junk"),
    ("aaaaaaaaaaaaaaaaaaaaa b", "repeated-chars"),
    ("the same line here\nthe same line here\nthe same line here\nanother", "repeated-lines"),
    ("I am sorry. I am sorry. I am sorry. I am sorry. I am sorry.", "repeated-words"),
    ("  What is the capital of France?", "same-as-prompt"),
])
def test_quality_filters_name_their_reason(reply, reason):
    assert quality_problem(_chat("What is the capital of France?", reply))[0] == reason


@pytest.mark.parametrize("reply", ["42", "2+2=4", "Paris.", "def f(x):\n    return x[0] + {}\n}\n}\n}",
                                   "Paris is the capital of France; it lies on the Seine."])
def test_quality_filters_keep_ordinary_replies(reply):
    assert quality_problem(_chat("What is the capital of France?", reply)) is None


# -- the whole pipeline on files ------------------------------------------------------------------

def _rows(posts) -> list[dict]:
    rows = [{"text": " ".join(w), "label": ["sci", "rec"][i % 2]} for i, w in enumerate(posts[:12])]
    rows.insert(3, dict(rows[0]))                                         # exact duplicate of line 1
    rows.insert(6, {"text": " ".join(posts[1][:97]), "label": "rec"})    # near duplicate of line 2
    rows.insert(8, {"text": "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "label": "sci"})
    rows.insert(9, {"text": "", "label": "sci"})                          # invalid
    return rows


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_curate_keeps_or_drops_every_row_and_writes_the_input_format(posts, tmp_path, suffix):
    rows = _rows(posts)
    src = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        src.write_text("".join(json.dumps(r, indent=None, separators=(", ", ":")) + "\n" for r in rows))
    elif suffix == ".json":
        src.write_text(json.dumps(rows))
    elif suffix == ".csv":
        import csv

        with src.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), src)
    embed = lambda texts: np.array([[len(t), t.count("e")] for t in texts], dtype=float)  # noqa: E731
    result = curate(src, None, CurateOptions(max_examples=6), embed)
    reasons = {d.index: d.reason for d in result.dropped}  # row positions, 0-based
    assert reasons[3] == "exact-duplicate" and reasons[6] == "near-duplicate"
    assert reasons[8] == "repeated-chars" and reasons[9] == "invalid"
    assert list(reasons.values()).count("not-selected") == 6
    assert len(result.kept) == 6 and len(result.kept) + len(result.dropped) == result.rows == len(rows)
    assert sorted(ex["label"] for ex in result.kept) == ["rec"] * 3 + ["sci"] * 3
    out = tmp_path / f"out{suffix}"
    side = check_outputs(src, out, force=False)
    write_curated(result, out)
    assert side == dropped_path(out) == tmp_path / "out.dropped.jsonl"
    dropped = [json.loads(x) for x in side.read_text().splitlines()]
    kept_rows = [rows[ex["index"]] for ex in result.kept]
    back = [{"text": ex["text"], "label": ex["label"]} for ex in curate(out, None, CurateOptions(dedup=())).kept]
    assert back == kept_rows  # the kept rows, as they were, in the input's format
    everything = sorted(json.dumps(r, sort_keys=True) for r in kept_rows + [d["row"] for d in dropped])
    assert everything == sorted(json.dumps(r, sort_keys=True) for r in rows)  # nothing lost
    duplicate = next(d for d in dropped if d["reason"] == "exact-duplicate")
    assert duplicate["duplicate_of"] == (2 if suffix == ".csv" else 1) and duplicate["row"] == rows[0]
    if suffix == ".jsonl":  # the original lines, byte for byte
        lines = src.read_text().splitlines()
        assert out.read_text().splitlines() == [lines[ex["line"] - 1] for ex in result.kept]
    with pytest.raises(OutputExists):
        check_outputs(src, out, force=False)


def test_curate_refuses_bad_options_and_inputs(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"text": "", "label": "a"}) + "\n")
    with pytest.raises(LeantuneError, match="No row of .* is a valid"):
        curate(src, None, CurateOptions())
    with pytest.raises(LeantuneError, match="--near-threshold"):
        curate(src, None, CurateOptions(near_threshold=1.5))
    with pytest.raises(LeantuneError, match="--dedup"):
        curate(src, None, CurateOptions(dedup=("fuzzy",)))
    with pytest.raises(LeantuneError, match="same extension"):
        check_outputs(src, tmp_path / "out.csv", force=False)
    with pytest.raises(LeantuneError, match="own input"):
        check_outputs(src, src, force=True)
