"""Pairwise judging, the parts that need no model: the judge's prompt, its verdict, the rule that
pairs the two orders, and the statistics of a comparison.

The prompt is MT-Bench's pairwise one (Zheng et al. 2023, arXiv:2306.05685, ``pair-v2`` and, with
a reference answer, ``pair-math-v1``): the judge gives a short reason, then ``[[A]]``, ``[[B]]`` or
``[[C]]`` for a tie. Each question is judged twice, each answer shown first once; an answer wins
only when both orders prefer it, anything else is a tie (the paper's conservative rule against
position bias). A reply whose verdict cannot be read is counted apart, never dropped silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import stats

PROMPT_VERSION = "mt-bench-pair-v2"
SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. {reference_rule}Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. Do not allow the length of the responses "
    "to influence your evaluation. Do not favor certain names of the assistants. Be as objective as "
    "possible. Give a short explanation of one or two sentences, then output your final verdict by "
    "strictly following this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is "
    "better, and \"[[C]]\" for a tie."
)
REFERENCE_RULE = ("You will be given a reference answer, assistant A's answer, and assistant B's answer. "
                  "Compare both assistants' answers with the reference answer; identify and correct any "
                  "mistakes. ")
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
CONFIDENCE = 0.95
RESAMPLES = 10_000


def judge_prompt(question: str, first: str, second: str, reference: str | None = None) -> str:
    """The whole request as one user message: ``first`` is shown as assistant A."""
    parts = [SYSTEM.format(reference_rule=REFERENCE_RULE if reference is not None else ""), "",
             f"[User Question]\n{question}", ""]
    if reference is not None:
        parts += [f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]", ""]
    parts += [f"[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]", "",
              f"[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]"]
    return "\n".join(parts)


def question_text(messages: list[dict]) -> str:
    """A single user turn as itself; a longer conversation as a transcript, one turn a block."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{m['role'].capitalize()}]\n{m['content']}" for m in messages)


def parse_verdict(reply: str) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` (tie) when every ``[[X]]`` in ``reply`` names the same one (case
    and inner spaces ignored); None when there is none, or when they disagree (a reply echoing the
    format's three options included), as Arena-Hard reads its judges (Li et al. 2024, arXiv:2406.11939)."""
    found = {m.upper() for m in VERDICT.findall(reply)}
    return found.pop() if len(found) == 1 else None


def reason_text(reply: str) -> str:
    """The reply without its verdict markers, whitespace collapsed."""
    return " ".join(VERDICT.sub(" ", reply).split())


def winner(verdict: str | None, a_first: bool) -> str | None:
    """The run a verdict favours: ``"A"`` / ``"B"`` (the runs, whichever was shown first), ``"tie"``."""
    if verdict is None:
        return None
    if verdict == "C":
        return "tie"
    return ("A" if verdict == "A" else "B") if a_first else ("B" if verdict == "A" else "A")


def pair_outcome(a_first: str | None, b_first: str | None) -> str:
    """The outcome of one question from the winners of its two orders (:func:`winner`): a run wins
    only if both orders prefer it; ``"unparseable"`` if either verdict could not be read."""
    if a_first is None or b_first is None:
        return "unparseable"
    return a_first if a_first == b_first and a_first in ("A", "B") else "tie"


def bootstrap_interval(scores: list[float], seed: int = 0, resamples: int = RESAMPLES,
                       level: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean score over questions (scipy); None below two."""
    if len(scores) < 2:
        return None
    result = stats.bootstrap((np.asarray(scores, dtype=float),), np.mean, n_resamples=resamples,
                             confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass
class Comparison:
    """Win rate of run A over run B from the judged questions."""

    wins: int
    losses: int
    ties: int
    unparseable: int
    win_rate: float | None          # (wins + ties / 2) / judged, unparseable questions left out
    interval: tuple[float, float] | None
    calls: int                      # judge replies read (two a question)
    first_wins: int                 # replies preferring the answer shown first
    second_wins: int
    call_ties: int
    call_unparseable: int
    consistent: int                 # questions whose two orders name the same outcome

    @property
    def judged(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def first_share(self) -> float | None:
        """Share of decisive replies that prefer the first-shown answer (0.5: no position bias)."""
        decisive = self.first_wins + self.second_wins
        return self.first_wins / decisive if decisive else None

    @property
    def position_p(self) -> float | None:
        """Two-sided binomial test of ``first_share`` against 0.5."""
        decisive = self.first_wins + self.second_wins
        return float(stats.binomtest(self.first_wins, decisive).pvalue) if decisive else None

    def as_dict(self) -> dict:
        return {"questions": self.judged + self.unparseable, "judged": self.judged, "wins_a": self.wins,
                "wins_b": self.losses, "ties": self.ties, "unparseable": self.unparseable,
                "win_rate_a": self.win_rate,
                "interval_95": list(self.interval) if self.interval else None,
                "interval_method": f"percentile bootstrap over questions, {RESAMPLES} resamples, seed 0",
                "calls": self.calls, "first_shown_wins": self.first_wins, "second_shown_wins": self.second_wins,
                "call_ties": self.call_ties, "call_unparseable": self.call_unparseable,
                "first_shown_share": self.first_share, "position_bias_p": self.position_p,
                "consistent_questions": self.consistent}


def compare(pairs: list[tuple[str | None, str | None]], seed: int = 0) -> Comparison:
    """Statistics of questions given as (verdict with A shown first, verdict with B shown first),
    each verdict as :func:`parse_verdict` reads it (``"A"`` = the answer shown first)."""
    outcomes, scores = [], []
    first = second = ties = bad = consistent = 0
    for v_a_first, v_b_first in pairs:
        for verdict in (v_a_first, v_b_first):
            first += verdict == "A"
            second += verdict == "B"
            ties += verdict == "C"
            bad += verdict is None
        w1, w2 = winner(v_a_first, True), winner(v_b_first, False)
        outcome = pair_outcome(w1, w2)
        outcomes.append(outcome)
        consistent += w1 is not None and w1 == w2
        if outcome != "unparseable":
            scores.append({"A": 1.0, "B": 0.0, "tie": 0.5}[outcome])
    return Comparison(wins=outcomes.count("A"), losses=outcomes.count("B"), ties=outcomes.count("tie"),
                      unparseable=outcomes.count("unparseable"),
                      win_rate=float(np.mean(scores)) if scores else None,
                      interval=bootstrap_interval(scores, seed), calls=2 * len(pairs), first_wins=first,
                      second_wins=second, call_ties=ties, call_unparseable=bad, consistent=consistent)
