"""The advisor: every rule of the table fires where it should and not elsewhere; rankings
follow the limited-data guidance; only approaches that fit the task are proposed, each
with its own reasons; every written recipe loads."""
from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from leantune.cli import app
from leantune.guide.advisor import (
    APPROACHES,
    FITS,
    HELPERS,
    RULES,
    TASKS,
    Situation,
    advise,
    fired,
    fits,
    rank,
    recipe_for,
    score,
)
from leantune.guide.advisor_recipes import MIN_STEPS, epochs_for, model_for, steps_for
from leantune.guide.data_facts import guess_language, read_data, situation_from_data
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
    "small_encoder": (dict(encoder=True, params=22_000_000), dict(encoder=True, params=1_000_000_000)),
    "lm_head_missing": (dict(heads=("seq_cls", "encoder")), dict(heads=("masked_lm", "seq_cls"))),
    "preference_pairs": (dict(task="generation", data_kind="preference"), dict(task="generation", data_kind="chat")),
    "text_only": (dict(data_kind="text", labelled=0), dict(data_kind="classification")),
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
    assert any("200 labelled examples" in why for why in rows["lora"].reasons)
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


# --------------------------------------------------------------------------- advise DATA


WORDS = ("the model of a space probe is in orbit and the crew of the station is on the way to the moon with "
         "a new engine for the rocket").split()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sentence(i: int, label: str = "") -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) + f" {label} {i}"


def cls_rows(labels: int, per_class: int):
    return [{"text": _sentence(i, f"topic{c}"), "label": f"topic{c}"}
            for c in range(labels) for i in range(per_class)]


def situation_of(path, **kw):
    return situation_from_data(read_data(path), Situation(**kw))


def test_few_labels_per_class_read_from_the_data(tmp_path):
    s = situation_of(_write(tmp_path / "few.jsonl", cls_rows(4, 5)))
    assert (s.task, s.data_kind, s.labelled, s.num_labels, s.per_class_min) == ("classification", "classification",
                                                                                  20, 4, 5)
    assert s.language == "English"
    r = rank(s, with_memory=False)
    assert [a.approach for a in r.advice][:2] == ["icl", "pet"]
    assert any("20 labelled examples (5 per class, 4 labels)" in why for a in r.advice for why in a.reasons)


def test_data_wins_over_labelled_option(tmp_path):
    s = situation_of(_write(tmp_path / "many.jsonl", cls_rows(3, 600)), labelled=10, task="generation")
    assert (s.task, s.labelled, s.per_class_min) == ("classification", 1800, 600)
    order = [a.approach for a in rank(s, with_memory=False).advice]
    assert order[0] == "lora" and "icl" not in order[:3]


def test_unlabelled_text_proposes_continued_pretraining(tmp_path):
    s = situation_of(_write(tmp_path / "text.jsonl", [{"text": _sentence(i)} for i in range(30)]))
    assert (s.data_kind, s.task, s.labelled, s.unlabelled) == ("text", "generation", 0, True)
    r = rank(s, with_memory=False)
    assert r.advice[0].approach == "continued_pretraining" and r.advice[0].raw["stage"] == "pt"
    assert r.advice[0].raw["data"]["train"] == "train.jsonl"
    assert all(a.raw is None or a.raw["stage"] == "pt" for a in r.advice)  # nothing that needs labels
    assert any(d.startswith("icl:") for d in r.dropped)


def test_chat_data_is_generation_with_sft_recipes(tmp_path):
    rows = [{"instruction": _sentence(i), "output": _sentence(i + 1)} for i in range(40)]
    s = situation_of(_write(tmp_path / "chat.jsonl", rows))
    assert (s.data_kind, s.task, s.labelled) == ("chat", "generation", 40)
    r = rank(s, tmp_path / "rec", with_memory=False)
    by = {a.approach: a for a in r.advice}
    assert by["lora"].raw["stage"] == "sft" and "pet" not in by
    for a in r.advice:
        if a.recipe:
            load_recipe(a.recipe)


def test_preference_data_proposes_dpo_only_trainers_that_read_it(tmp_path):
    rows = [{"prompt": _sentence(i), "chosen": _sentence(i + 1), "rejected": _sentence(i + 2)} for i in range(30)]
    s = situation_of(_write(tmp_path / "pref.jsonl", rows))
    assert (s.data_kind, s.task) == ("preference", "generation")
    r = rank(s, tmp_path / "rec", with_memory=False)
    assert r.advice[0].approach == "dpo" and r.advice[0].raw["stage"] == "dpo"
    assert load_recipe(r.advice[0].recipe).stage["name"] == "dpo"
    trained = [a.approach for a in r.advice if a.raw is not None]
    assert trained == ["dpo"], trained
    assert any(d.startswith("lora:") and "preference" in d for d in r.dropped)


def test_language_guess():
    assert guess_language([_sentence(i) for i in range(20)]) == "English"
    assert guess_language(["der hund und die katze sind im garten heute abend wieder"] * 10) == "not English"
    assert guess_language(["hi"]) is None


# --------------------------------------------------------------------------- PET needs an LM head

def test_pet_never_runs_on_a_model_without_an_lm_head(tiny_model_dir):
    no_head = str(tiny_model_dir("bert", "seq_cls"))
    r = rank(Situation(labelled=20, model=no_head))
    assert r.situation.lm_head is False
    assert "pet" not in [a.approach for a in r.advice] and "icl" not in [a.approach for a in r.advice]
    assert any(d.startswith("pet:") and "no masked- or causal-LM head" in d for d in r.dropped)
    mlm = str(tiny_model_dir("bert", "masked_lm"))
    pet = next(a for a in rank(Situation(labelled=20, model=mlm)).advice if a.approach == "pet")
    assert pet.model == mlm


def test_pet_moves_to_an_lm_when_the_default_encoder_has_no_head():
    r = rank(Situation(labelled=64))  # default model minilm-l6: no MLM head
    by = {a.approach: a for a in r.advice}
    assert by["pet"].model == "smollm2-135m" and by["icl"].model == "smollm2-135m"
    assert by["full"].model == "minilm-l6"
    assert r.advice[0].approach == "full"  # small encoder: full fine-tuning, trained long enough
    explicit = rank(Situation(labelled=64, model="minilm-l6"))
    assert "pet" not in {a.approach for a in explicit.advice}
    assert model_for("pet", explicit.situation) is None


# --------------------------------------------------------------------------- steps, not epochs

def test_steps_scale_with_the_examples():
    assert steps_for(64, 8) == 160                 # 20 passes over 64 examples at batch 8
    assert steps_for(10, 8) == MIN_STEPS           # never fewer than MIN_STEPS
    assert steps_for(5000, 8) == 1875              # 3 passes over thousands
    assert epochs_for(10) == 20 and epochs_for(100_000) == 3
    assert all(epochs_for(a) >= epochs_for(b) for a, b in zip(range(1, 3000, 50), range(51, 3050, 50)))


def test_recipes_train_long_enough_at_a_learning_rate_per_method():
    s = Situation(labelled=64, encoder=True, params=22_000_000, heads=("seq_cls",))
    raw = {a: recipe_for(a, s) for a in ("full", "lora", "llrd", "adapter")}
    assert all(r["train"]["max_steps"] == 160 and r["train"]["warmup_ratio"] == 0.1 for r in raw.values())
    assert raw["full"]["train"]["lr"] == 1e-4 and raw["lora"]["train"]["lr"] == 1e-3
    assert 1e-4 >= raw["llrd"]["train"]["lr"] >= 5e-5
    big = recipe_for("full", Situation(labelled=64, task="generation"))
    assert big["train"]["lr"] == 2e-5 and big["stage"] == "sft"
    for r in raw.values():
        load_recipe(raw=r)


# --------------------------------------------------------------------------- the command

def test_cli_advise_data_fits_80_columns(tmp_path):
    data = _write(tmp_path / "train.jsonl", cls_rows(8, 8))
    r = CliRunner().invoke(app, ["advise", str(data), "--out", str(tmp_path / "rec")], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(x) for x in lines) <= 80, [x for x in lines if len(x) > 80]
    text = " ".join(r.output.replace("│", " ").split())
    assert "8 labels, 8 examples per label" in text and "64 labelled examples (8 per class, 8 labels)" in text
    assert "1. full" in r.output and "on smollm2-135m" in r.output and "recipe: 160 steps × batch 8" in text
    assert (tmp_path / "rec" / "full.yaml").is_file()
    assert load_recipe(tmp_path / "rec" / "full.yaml").data.train == str(data)


def test_cli_advise_needs_data_or_n():
    r = CliRunner().invoke(app, ["advise"])
    assert r.exit_code != 0 and "-n" in r.output
    r = CliRunner().invoke(app, ["advise", "-n", "100", "--gpu", "t4"])
    assert r.exit_code == 0, r.output
    assert "memory budget 16GB" in r.output


def test_prefix_tuning_left_out_for_classification_on_a_small_model():
    """Prefix tuning trails fine-tuning on classification below ~10B parameters (P-tuning v2;
    0.555 vs 0.695 on 20NG 8-shot): no recipe, and the output says why; kept for generation
    and when the model's size is unknown."""
    small = Situation(task="classification", labelled=64, heads=("seq_cls",), params=22_000_000, encoder=True)
    r = rank(small, with_memory=False)
    assert "prefix_tuning" not in [a.approach for a in r.advice]
    assert any(d.startswith("prefix_tuning: trails fine-tuning") for d in r.dropped)
    gen = Situation(task="generation", labelled=64, heads=("causal_lm",), params=135_000_000, encoder=False)
    assert "prefix_tuning" in [a.approach for a in rank(gen, with_memory=False).advice]
    assert "prefix_tuning" in ranking(labelled=64)
