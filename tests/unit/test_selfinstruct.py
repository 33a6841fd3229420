"""Self-instruct's pieces (arXiv:2212.10560): ROUGE-L against Google's rouge-score, the filters, the parser."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from leantune.data.formats import load_examples
from leantune.data.selfinstruct import (
    RougePool,
    Task,
    build_prompt,
    check_task,
    load_tasks,
    parse_tasks,
    rouge_l,
    rouge_tokens,
    sample_prompt_tasks,
    task_row,
)

SEEDS = Path(__file__).resolve().parents[2] / "src" / "leantune" / "resources" / "demo" / "shell_help_train.jsonl"


def _instructions(k: int) -> list[str]:
    return [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()[:k]]


def test_rouge_l_equals_rouge_score_on_real_sentences():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = _instructions(40) + ["Give three tips for staying healthy.", "What are three tips to stay healthy?",
                                 "Café au lait: how do I list files — sorted by size?", ""]
    pairs = [(a, b) for i, a in enumerate(texts) for b in texts[i + 1:]]
    assert len(pairs) > 900
    for a, b in pairs:
        ours = rouge_l(rouge_tokens(a), rouge_tokens(b))
        assert ours == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12), (a, b)


def test_pool_drops_at_the_threshold_and_keeps_below():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept = "How can I see how full my disks are?"
    pool = RougePool([kept])
    close = "How can I see how full my disks are now?"        # F = 16/17 ≈ 0.94
    far = "Explain what a symbolic link is to a new user."
    for text in (close, far):
        reference = scorer.score(kept, text)["rougeL"].fmeasure
        assert pool.most_similar(text) == (pytest.approx(reference), kept if reference else "")
        assert (check_task(Task(text, "", "x"), pool) == "similar (ROUGE-L)") == (reference >= 0.7)
    assert check_task(Task(close, "", "x"), pool) == "similar (ROUGE-L)"
    assert check_task(Task(far, "", "x"), pool) == ""
    # the threshold decides: the same pair passes a stricter-than-its-score threshold only
    score = scorer.score(kept, close)["rougeL"].fmeasure
    assert check_task(Task(close, "", "x"), pool, threshold=score + 1e-9) == ""
    assert check_task(Task(close, "", "x"), pool, threshold=score) == "similar (ROUGE-L)"


@pytest.mark.parametrize("instruction, reason", [
    ("Sort these numbers.", "too short"),
    ("word " * 151, "too long"),
    ("Describe the image below in one sentence.", "keyword"),
    ("Draw a cat using ASCII characters please.", "keyword"),
    ("Tell me how to go to the station from here.", "keyword"),
    ("Write a program that prints the first ten primes.", "write a program"),
    ("- Give an example of a prime number.", "starts with punctuation"),
    ("Écrivez une phrase sur le printemps, s'il vous plaît.", "not English"),
    ("Give three tips for staying healthy.", ""),
    ("Explain what a mapping between two sets is.", ""),  # 'map' only as a whole word
])
def test_filters_name_their_reason(instruction, reason):
    assert check_task(Task(instruction, "", "an answer"), RougePool()) == reason


def test_keywords_can_be_changed():
    task = Task("How can I delete a file safely?", "", "`rm -i file`")
    assert check_task(task, RougePool()) == "keyword"
    assert check_task(task, RougePool(), keywords=("image",)) == ""


def test_parse_numbered_tasks_with_reasons():
    text = (" Name three primary colors.\n4. Input:\n<noinput>\n4. Output:\nRed, yellow and blue.\n###\n"
            "5. Instruction: Translate the sentence into French.\n5. Input:\nGood morning.\n5. Output:\nBonjour.\n"
            "6. Instruction: Summarize the text in one line.\n6. Input:\nA long story.\n"
            "###\n7. Output:\nno instruction here\n###\n"
            "8. Instruction:\n8. Output:\nsomething\n###\n"
            "9. Instruction: Say hello.\n9. Output:\n\n###\n10. Instruction: How ca")
    parsed = parse_tasks(text, 4)
    assert [p.reason for p in parsed] == ["", "", "missing output", "no instruction", "empty instruction",
                                          "empty output", "missing output"]
    assert parsed[0].task == Task("Name three primary colors.", "", "Red, yellow and blue.")
    assert parsed[1].task == Task("Translate the sentence into French.", "Good morning.", "Bonjour.")
    assert parsed[2].raw.startswith("6. Instruction: Summarize")


def test_parse_chat_answer_drops_the_preamble():
    text = ("Sure! Here are more tasks:\n\n4. Instruction: List two uses of a hammer.\n4. Input:\n<noinput>\n"
            "4. Output:\nDriving nails; removing nails.")
    assert [p.task for p in parse_tasks(text, 4)] == [
        Task("List two uses of a hammer.", "", "Driving nails; removing nails.")]


def test_prompt_shows_sampled_tasks_and_asks_for_the_next():
    seeds = load_tasks(SEEDS)
    assert len(seeds) == 380 and seeds[0] == Task("How can I see how full my disks are?", "", seeds[0].output)
    generated = [Task("Explain what a pipe does in a shell.", "", "It sends output on.")]
    shown = sample_prompt_tasks(seeds, generated, random.Random(0))
    assert len(shown) == 4 and generated[0] in shown
    prompt = build_prompt(shown)
    assert prompt.endswith("\n###\n5. Instruction:")
    reparsed = parse_tasks(prompt[prompt.index("1. Instruction:"):], 1)
    assert [p.task for p in reparsed[:4]] == shown


@pytest.mark.parametrize("fmt", ["alpaca", "messages", "chatglm"])
def test_rows_load_back_in_each_format(tmp_path, fmt):
    tasks = [Task("Translate the sentence into French.", "Good morning.", "Bonjour."),
             Task("Name three primary colors.", "", "Red, yellow and blue.")]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(task_row(t, fmt) for t in tasks), encoding="utf-8")
    result = load_examples(path, None)
    assert result.format == fmt
    assert result.examples[0]["messages"][0]["content"] == "Translate the sentence into French.\n\nGood morning."
    assert result.examples[1]["messages"][-1]["content"] == "Red, yellow and blue."
    back = load_tasks(path, fmt)
    assert back[1] == tasks[1] and (back[0] == tasks[0] if fmt == "alpaca" else back[0].output == "Bonjour.")
