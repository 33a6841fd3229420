"""The cloze template language: rendering, encoding, composition, and parse errors."""
from __future__ import annotations

import pytest

from leantune.errors import RecipeError
from leantune.recipe.template import Template, TemplateError, compose, parse, truncate_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EX = {"text": "the film was a delight", "text_pair": "I loved it"}


@pytest.mark.parametrize("template, expected", [
    ("{text} All in all, it was {mask}.", "the film was a delight All in all, it was [MASK]."),
    ("{text_a}? {mask}, {text_b}", "the film was a delight? [MASK], I loved it"),
    ("{text}? {mask}, {text_pair}", "the film was a delight? [MASK], I loved it"),
    ("{soft:3} {text} It was {mask}.", "[SOFT][SOFT][SOFT] the film was a delight It was [MASK]."),
    ("{soft}{text}{mask}", "[SOFT]the film was a delight[MASK]"),
    ("{text} {trigger:2} {mask}.", "the film was a delight [T][T] [MASK]."),
    ("{{literal}} {text} {mask}", "{literal} the film was a delight [MASK]"),
    ("{ text } -> { mask }", "the film was a delight -> [MASK]"),
])
def test_valid_templates_render_exactly(template, expected):
    assert Template(template).render(EX) == expected


def test_label_placeholder_and_counts():
    t = Template('"{text}" ? {mask}, this is about {label}.')
    assert t.has_label and t.render(EX, "Yes", label="sports") == '"the film was a delight" ? Yes, this is about sports.'
    assert Template("{soft:2}{text}{soft}{trigger:4}{mask}").n_soft == 3
    assert Template("{soft:2}{text}{soft}{trigger:4}{mask}").n_trigger == 4
    with pytest.raises(RecipeError, match="filled per candidate label"):
        t.render(EX)


@pytest.mark.parametrize("template, column, problem", [
    ("{text} It was {mask", 15, "unclosed brace"),
    ("{text It was {mask}", 1, "unclosed brace"),
    ("{text} It was {masc}.", 15, "unknown placeholder {masc}. Did you mean {mask}?"),
    ("{sentence} {mask}", 1, "unknown placeholder {sentence}"),
    ("{text} It was great.", 20, "no {mask} placeholder"),
    ("{mask} and {mask}", 12, "multiple {mask} placeholders"),
    ("{text} } {mask}", 8, "stray '}'"),
    ("{text} {} {mask}", 8, "empty placeholder"),
    ("{soft:x} {text} {mask}", 1, "must be a positive integer"),
    ("{soft:0} {text} {mask}", 1, "must be a positive integer"),
    ("{text:2} {mask}", 1, "only soft and trigger take ':N'"),
])
def test_malformed_templates_name_column_and_problem(template, column, problem):
    with pytest.raises(TemplateError) as err:
        parse(template)
    assert err.value.column == column
    assert problem in str(err.value)
    assert f"template column {column}:" in str(err.value)
    # the caret line points at the column
    lines = str(err.value).splitlines()
    assert lines[2].index("^") - 2 == column - 1


def test_encode_masked_lm_positions(tiny_tokenizer):
    t = Template("{soft:2}{text} It was {mask}.")
    enc = t.encode(tiny_tokenizer, {"text": "ok"}, causal=False, n_masks=3)
    ids = enc.input_ids
    assert [ids[p] for p in enc.mask_positions] == [tiny_tokenizer.mask_token_id] * 3
    assert enc.mask_positions == [12, 13, 14]  # 2 soft + "ok It was " (10 bytes)
    assert enc.soft_index[:3] == [0, 1, -1]
    assert tiny_tokenizer.decode(ids[2:12]) == "ok It was "
    assert tiny_tokenizer.decode(ids[15:]) == "."


def test_encode_causal_stops_before_mask(tiny_tokenizer):
    enc = Template("{text} It was {mask}.").encode(tiny_tokenizer, {"text": "ok"}, causal=True)
    assert tiny_tokenizer.decode(enc.input_ids) == "ok It was"
    assert enc.prefix_space and enc.mask_positions == [len(enc.input_ids) - 1]
    enc = Template("{text}:{mask}").encode(tiny_tokenizer, {"text": "ok"}, causal=True, prefix="Q. ")
    assert tiny_tokenizer.decode(enc.input_ids) == "Q. ok:" and not enc.prefix_space


def test_encode_truncates_the_longest_field(tiny_tokenizer):
    t = Template("{text} | {text_pair} ? {mask}")
    enc = t.encode(tiny_tokenizer, {"text": "a" * 50, "text_pair": "b" * 10}, causal=False, max_length=30)
    text = tiny_tokenizer.decode(enc.input_ids)
    assert len(enc.input_ids) == 30 and text.endswith("| bbbbbbbbbb ? [MASK]")
    assert text.count("a") == 30 - len(" | bbbbbbbbbb ? ") - 1


def test_trigger_ids_fill_slots(tiny_tokenizer):
    t = Template("{text} {trigger:2} {mask}")
    t.trigger_ids = [65, 66]
    enc = t.encode(tiny_tokenizer, {"text": "x"}, causal=False)
    assert [enc.input_ids[s] for s in enc.trigger_slots] == [65, 66]


def test_compose_joins_sub_templates():
    t = compose("{text}", "Topic: {mask}.", sep="\n")
    assert t.render({"text": "goal!"}) == "goal!\nTopic: [MASK]."
    with pytest.raises(TemplateError, match="multiple"):
        compose("{text} {mask}", "{mask}")


def test_truncate_text(tiny_tokenizer):
    assert truncate_text(tiny_tokenizer, "abcdef", 3) == "abc"
    assert truncate_text(tiny_tokenizer, "abc", None) == "abc"
