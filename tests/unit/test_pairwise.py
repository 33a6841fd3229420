"""Pairwise judging without models: the verdict of messy replies, the both-orders rule, and the
win rate's interval against a bootstrap computed here directly."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from leantune.evaluation.pairwise import (
    bootstrap_interval,
    compare,
    judge_prompt,
    pair_outcome,
    parse_verdict,
    question_text,
    reason_text,
    winner,
)


@pytest.mark.parametrize("reply, verdict", [
    ("Assistant A names the right command.\n\n[[A]]", "A"),
    ("Both are wrong. Final verdict: **[[C]]**", "C"),
    ("B explains the flag; A does not. [[ b ]]", "B"),
    ("[[B]] because it is shorter. So my verdict is [[B]].", "B"),            # repeated, same verdict
    ('Output "[[A]]" if assistant A is better, "[[B]]" if B, "[[C]]" for a tie.', None),  # the format echoed
    ("I prefer A at first, [[A]], but on reflection [[B]]", None),            # conflicting
    ("Assistant A is better.", None),                                         # no marker
    ("[A] is better", None),
    ("", None),
])
def test_parse_verdict_reads_only_one_consistent_marker(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_reason_drops_markers_and_collapses_space():
    assert reason_text("A is right.\n\n  [[A]]  ") == "A is right."


def test_prompt_shows_first_as_a_and_the_reference_only_when_asked():
    text = judge_prompt("Q?", "first answer", "second answer")
    assert text.index("first answer") < text.index("second answer")
    assert "[The Start of Assistant A's Answer]\nfirst answer\n" in text and "Reference" not in text
    with_ref = judge_prompt("Q?", "x", "y", reference="`ls`")
    assert "[The Start of Reference Answer]\n`ls`\n" in with_ref and "reference answer" in with_ref
    assert question_text([{"role": "user", "content": "hi"}]) == "hi"
    assert question_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == \
        "[System]\ns\n\n[User]\nu"


@pytest.mark.parametrize("first, second, outcome", [
    ("A", "B", "A"),        # A shown first wins, then A (shown second) wins: A both times
    ("B", "A", "B"),
    ("A", "A", "tie"),      # the first-shown answer always wins: position bias, a tie
    ("B", "B", "tie"),
    ("C", "C", "tie"),
    ("A", "C", "tie"),      # one order undecided: no win
    ("C", "A", "tie"),
    (None, "A", "unparseable"),
    ("B", None, "unparseable"),
])
def test_a_win_needs_both_orders(first, second, outcome):
    assert pair_outcome(winner(first, True), winner(second, False)) == outcome


def _direct_bootstrap(scores, resamples=10_000, seed=1):
    rng = np.random.default_rng(seed)
    x = np.asarray(scores)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    return np.percentile(means, [2.5, 97.5])


def test_statistics_count_ties_half_and_report_position_bias():
    pairs = [("A", "B")] * 6 + [("B", "A")] * 2 + [("A", "A")] * 3 + [("C", "C")] + [(None, "B")]
    c = compare(pairs)
    assert (c.wins, c.losses, c.ties, c.unparseable, c.judged) == (6, 2, 4, 1, 12)
    assert c.win_rate == pytest.approx((6 + 0.5 * 4) / 12)
    # replies: first-shown wins: 6 + 2 + 6 (both of the 3 position-biased pairs) = 14; second-shown: 6 + 2 + 1
    assert (c.first_wins, c.second_wins, c.call_ties, c.call_unparseable) == (8 + 6, 6 + 2 + 1, 2, 1)
    assert c.first_share == pytest.approx(14 / 23)
    assert c.position_p == pytest.approx(stats.binomtest(14, 23).pvalue)
    assert c.consistent == 6 + 2 + 1  # the C/C pair names the same outcome twice; A/A does not
    scores = [1.0] * 6 + [0.0] * 2 + [0.5] * 4
    low, high = c.interval
    ref_low, ref_high = _direct_bootstrap(scores)
    assert low == pytest.approx(ref_low, abs=0.03) and high == pytest.approx(ref_high, abs=0.03)
    assert low < c.win_rate < high


def test_interval_matches_a_direct_bootstrap_and_narrows_with_more_questions():
    rng = np.random.default_rng(7)
    scores = rng.choice([0.0, 0.5, 1.0], size=80, p=[0.3, 0.2, 0.5]).tolist()
    low, high = bootstrap_interval(scores)
    ref = _direct_bootstrap(scores)
    assert (low, high) == pytest.approx(tuple(ref), abs=0.015)
    assert bootstrap_interval(scores) == (low, high)          # fixed seed: the same interval again
    few_low, few_high = bootstrap_interval(scores[:20])
    assert few_high - few_low > high - low


def test_degenerate_and_tiny_samples():
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_interval([1.0]) is None
    empty = compare([(None, None)])
    assert empty.win_rate is None and empty.interval is None and empty.unparseable == 1
    assert empty.first_share is None and empty.position_p is None
