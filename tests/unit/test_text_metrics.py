"""``eval.metrics``: each built-in metric against its reference implementation on fixed strings,
the exact-match normalisation, a user metric named ``module:function``, and bad names."""
from __future__ import annotations

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from leantune.errors import RecipeError
from leantune.evaluation.generation_eval import conversation_items
from leantune.evaluation.text_metrics import METRICS, normalize, resolve_metrics, score_all
from leantune.recipe import TEXT_METRICS, load_recipe

PREDICTIONS = ["The cat sat on the mat.", "find . -size +100M", "Paris is the capital of France",
               "```bash\nls -la\n```", '{"a": 1}', "completely unrelated words here", ""]
REFERENCES = ["A cat was sitting on the mat.", "find . -type f -size +100M", "paris",
              "ls -la", '{"a": 1}', "nothing in common at all", "something"]


def score(name: str) -> tuple[float, list[float]]:
    totals, per = score_all(resolve_metrics([name]), PREDICTIONS, REFERENCES, [{} for _ in PREDICTIONS])
    return totals[name], [row[name] for row in per]


def test_the_recipe_knows_every_built_in_metric():
    assert TEXT_METRICS == tuple(METRICS)


def test_rouge_l_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])  # its default: no stemming
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)]
    total, per = score("rouge_l")
    assert per == pytest.approx(expected, abs=1e-12)
    assert total == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert 0 < total < 1


def test_bleu_equals_sacrebleu_corpus_bleu():
    total, per = score("bleu")
    assert total == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100, abs=1e-12)
    assert per == pytest.approx([sacrebleu.sentence_bleu(p, [r]).score / 100
                                 for p, r in zip(PREDICTIONS, REFERENCES)], abs=1e-12)
    assert 0 < total < 1


@pytest.mark.parametrize("text, expected", [
    ("  Paris  ", "paris"),
    ('"ls  -la"', "ls -la"),
    ("`pwd`", "pwd"),
    ("```bash\nls -la\n```", "ls -la"),
    ("```\n'x'\n```", "x"),
    ("'It''s'", "it''s"),               # only a matching pair around the whole answer is removed
    ("\"unbalanced'", "\"unbalanced'"),
    ("A\n\tB   C.", "a b c."),          # punctuation inside stays
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact_match_contains_json_valid():
    assert score("exact_match") == (pytest.approx(2 / 7), [0, 0, 0, 1, 1, 0, 0])
    assert score("contains")[1] == [0, 0, 1, 1, 1, 0, 0]
    assert score("json_valid")[1] == [0, 0, 0, 0, 1, 0, 0]
    assert json.loads('{"a": 1}') and score("json_valid")[0] == pytest.approx(1 / 7)


def test_user_metric_by_module_and_function(tmp_path):
    (tmp_path / "my_scores.py").write_text(
        "def first_word(predictions, references):\n"
        "    return sum(p.split()[:1] == r.split()[:1] for p, r in zip(predictions, references)) / len(predictions)\n"
        "def lengths(predictions, references, examples):\n"
        "    return {'mean_len': sum(map(len, predictions)) / len(predictions), 'rows': float(len(examples))}\n")
    metrics = resolve_metrics(["my_scores:first_word", "my_scores:lengths", "exact_match"], tmp_path)
    totals, per = score_all(metrics, ["a b", "x y", "q"], ["a c", "z y", "q"], [{"line": 1}, {"line": 2}, {"line": 3}])
    assert totals == {"first_word": pytest.approx(2 / 3), "mean_len": pytest.approx(7 / 3), "rows": 3.0,
                      "exact_match": pytest.approx(1 / 3)}
    assert per == [{"exact_match": 0.0}, {"exact_match": 0.0}, {"exact_match": 1.0}]


@pytest.mark.parametrize("source, entry, says", [
    ("def f(p, r):\n    return 'high'\n", "m1:f", "must return a finite number"),
    ("def f(p, r):\n    return {'x': float('nan')}\n", "m2:f", "for 'x'"),
    ("def f(p, r):\n    raise KeyError('boom')\n", "m3:f", "raised KeyError"),
    ("x = 1\n", "m4:f", "has no function 'f'"),
    ("import not_installed_anywhere\n", "m5:f", "importing m5 failed"),
    (None, "absent_module_xyz:f", "no module 'absent_module_xyz'"),
])
def test_bad_user_metric_is_one_paragraph_naming_the_entry(tmp_path, source, entry, says):
    if source is not None:
        (tmp_path / f"{entry.split(':')[0]}.py").write_text(source)
    with pytest.raises(RecipeError) as err:
        metrics = resolve_metrics([entry], tmp_path)
        score_all(metrics, ["a"], ["a"], [{}])
    message = str(err.value)
    assert message.startswith(f"eval.metrics: {entry}") and says in message and "\n" not in message


def test_unknown_built_in_name_lists_the_metrics():
    with pytest.raises(RecipeError, match=r"unknown metric 'rouge'.*Did you mean 'rouge_l'.*bleu, contains"):
        resolve_metrics(["rouge"])


@pytest.mark.parametrize("section, says", [
    ({"metrics": ["rougeL"]}, "eval.metrics: unknown metric 'rougeL'; available: rouge_l, bleu"),
    ({"metrics": ["rouge_l"], "metric": "bleu"}, "eval.metric: bleu is not computed"),
    ({"metrics": ["my.mod:fn", "my.mod:fn"]}, "names a metric twice"),
])
def test_recipe_validates_names_at_load(section, says):
    with pytest.raises(RecipeError, match=says):
        load_recipe(raw={"model": "m", "eval": section})
    assert load_recipe(raw={"model": "m", "eval": {"metrics": "my.mod:fn"}}).eval.metrics == ["my.mod:fn"]


def test_conversation_items_prompt_and_reference():
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                        {"role": "assistant", "content": "a2"}], "line": 3}
    pref = {"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "bad", "line": 4}
    items = conversation_items([chat, pref, {"text": "plain", "line": 5}])
    assert [(i.prompt, i.reference) for i in items] == [(chat["messages"][:-1], "a2"), (pref["prompt"], "good")]
