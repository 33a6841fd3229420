"""The advisor: every rule of the table fires where it should and not elsewhere; rankings
follow the limited-data guidance; only approaches that fit the task are proposed, each
with its own reasons; every written recipe loads."""
from __future__ import annotations

import itertools

import pytest
from typer.testing import CliRunner

from leantune.cli import app
from leantune.guide.advisor import (APPROACHES, FITS, HELPERS, RULES, TASKS, Situation, advise, fired, fits,
                                    recipe_for, score)
from leantune.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# rule name → (a situation where it fires, one where it does not)
CASES = {
    "very_low_resource": (dict(labelled=10), dict(labelled=500)),
    "few_labelled": (dict(labelled=200), dict(labelled=5000)),
    "moderate_data": (dict(labelled=5000), dict(labelled=200)),
    "ample_data": (dict(labelled=50000), dict(labelled=5000)),
    "generation_prefers_lora": (dict(task="generation"), dict(task="classification")),
    "many_tasks": (dict(tasks=4), dict(tasks=1)),
    "short_time_budget": (dict(time_budget_h=0.5), dict(time_budget_h=8)),
    "domain_shift_with_text": (dict(low_resource=True, unlabelled=True), dict(low_resource=True)),
    "domain_shift": (dict(low_resource=True), dict(low_resource=True, unlabelled=True)),
    "unlabelled_pool": (dict(unlabelled=True, labelled=50), dict(unlabelled=True, labelled=5000)),
    "labelling_possible": (dict(labelled=50), dict(labelled=5000)),
    "forgetting": (dict(tasks=2), dict(tasks=1)),
    "encoder_full_ft": (dict(labelled=5000), dict(labelled=5000, task="generation")),
    "knowledge_heavy": (dict(task="qa"), dict(task="classification")),
}


def test_every_rule_has_a_case():
    assert set(CASES) == {r.name for r in RULES}
    assert all(r.effects and r.source for r in RULES)
    assert all(why.strip() for r in RULES for _, why in r.effects.values())


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_only_where_it_should(rule):
    yes, no = CASES[rule]
    assert rule in {r.name for r in fired(Situation(**yes))}
    assert rule not in {r.name for r in fired(Situation(**no))}


def ranking(**kw) -> list[str]:
    return [a.approach for a in advise(Situation(**kw), with_memory=False)]


@pytest.mark.parametrize("kw, expected_head", [
    (dict(labelled=10), ["icl", "pet"]),                       # very low resource: ICL, then PET
    (dict(labelled=10, task="generation"), ["icl"]),
    (dict(labelled=5000, task="generation"), ["lora", "qlora"]),
    (dict(labelled=50000, task="generation"), ["full"]),       # ample data and memory
])
def test_rankings_follow_the_guidance(kw, expected_head):
    assert ranking(**kw)[: len(expected_head)] == expected_head


def test_very_low_resource_order_icl_pet_then_adapters():
    order = ranking(labelled=10)
    assert order.index("icl") < order.index("pet") < order.index("adapter") <= order.index("lora")
    assert order.index("pet") < order.index("prefix_tuning")


def test_pet_not_proposed_for_generation():
    assert "pet" not in score(Situation(task="generation", labelled=100))
    assert "pet" not in ranking(task="generation", labelled=10)


# every combination of the inputs that change which rules fire
GRID = [dict(labelled=n, unlabelled=u, low_resource=lr, tasks=t, time_budget_h=h)
        for n, u, lr, t, h in itertools.product((0, 10, 200, 5000, 50000), (False, True), (False, True),
                                                (1, 3), (None, 0.5))]
CLASSIFICATION_ONLY = {"pet", "self_training", "active_learning", "llrd"}


def test_every_approach_is_checked_against_every_task():
    assert set(FITS) == set(APPROACHES + HELPERS)
    assert all(set(tasks) <= set(TASKS) for tasks in FITS.values())
    assert {a for a, tasks in FITS.items() if tasks == ("classification",)} == CLASSIFICATION_ONLY
    for task in TASKS:  # something to train, and something that needs no training, for every task
        assert fits("icl", task) and fits("lora", task)


@pytest.mark.parametrize("task", TASKS)
def test_only_approaches_that_fit_the_task_are_proposed(task):
    for kw in GRID:
        proposed = ranking(task=task, **kw)
        assert proposed, kw
        unfit = [a for a in proposed if not fits(a, task)]
        assert not unfit, (kw, unfit)
        if task != "classification":
            assert not CLASSIFICATION_ONLY & set(proposed), kw


@pytest.mark.parametrize("task", TASKS)
def test_every_row_has_its_own_reasons(task):
    for kw in GRID:
        rows = advise(Situation(task=task, **kw), with_memory=False)
        assert all(a.reasons for a in rows), kw
        reasons = [why for a in rows for why in a.reasons]
        assert len(reasons) == len(set(reasons)), (kw, [a.reasons for a in rows])  # none repeated on two rows


def test_reasons_speak_of_the_situation():
    rows = {a.approach: a for a in advise(Situation(task="generation", labelled=200, tasks=3), with_memory=False)}
    assert any("200 examples" in why for why in rows["lora"].reasons)
    assert any(why.startswith("generation:") for why in rows["lora"].reasons)
    assert any("3 tasks" in why for why in rows["adapter"].reasons)
    assert rows["full"].reasons[-1] == "3 tasks would need 3 full copies of the model"  # what speaks against it, last


def test_every_reason_template_is_distinct():
    templates = [why for r in RULES for _, why in r.effects.values()]
    assert len(templates) == len(set(templates))


def test_memory_budget_sinks_what_does_not_fit():
    tiny = 700 * 2**20  # 700 MB: full fine-tuning of MiniLM does not fit, LoRA does not either with overhead
    adv = {a.approach: a for a in advise(Situation(labelled=50000, memory_budget=tiny))}
    assert adv["full"].memory_mb and adv["full"].fits is False and adv["full"].note == "exceeds the memory budget"
    roomy = {a.approach: a for a in advise(Situation(labelled=50000, memory_budget=64 * 2**30))}
    assert roomy["full"].fits and roomy["full"].score > 0
    assert roomy["full"].memory_mb > roomy["lora"].memory_mb


@pytest.mark.parametrize("task", TASKS)
def test_written_recipes_load(tmp_path, task):
    out = tmp_path / task
    adv = advise(Situation(task=task, labelled=50, unlabelled=True, low_resource=True, tasks=2), out,
                 with_memory=False)
    written = [a for a in adv if a.recipe]
    assert len(written) >= 4
    for a in written:
        recipe = load_recipe(a.recipe)
        assert recipe.output.name == f"advise-{a.approach}"
    assert all(recipe_for(x, Situation()) is None for x in ("active_learning", "replay", "retrieval"))


def test_cli_advise(tmp_path):
    r = CliRunner().invoke(app, ["advise", "--task", "classification", "-n", "12", "--memory", "8GB",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "icl" in r.output and (tmp_path / "icl.yaml").is_file() and (tmp_path / "pet.yaml").is_file()
    r = CliRunner().invoke(app, ["advise", "--task", "poetry", "-n", "12"])
    assert r.exit_code != 0
