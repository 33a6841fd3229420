"""Documentation in the prompt: retriever-aware instructions (Gorilla, Patil et al. 2023,
arXiv:2305.15334).

The recipe's ``data.retrieval`` names a corpus and a retriever; every training instruction
gets the top-k passages for its last user turn, and so does every prompt at evaluation, in
``leantune chat``, ``serve`` and the web UI, with the same retriever over the corpus as it is
then (documentation that changed after training is used as it now reads). Passages are cut
to the tokens ``train.max_length`` leaves once the conversation is whole (at inference, once
the prompt and ``max_new_tokens`` are counted), so no instruction or response is truncated
for them.
"""
from __future__ import annotations

from pathlib import Path

from ..data.paths import resolve_data_path
from ..data.retrieval import Bm25Retriever, EmbeddingRetriever, corpus_key, fit_passages, load_corpus, with_passages
from ..data.templates import render, resolve_template
from ..errors import LeantuneError, RecipeError
from ..models.catalog import leantune_home
from ..recipe import RetrievalSection
from ..run_dir import read_run_files
from .demonstrations import get_embedder

CORPUS_KEY = "retrieval_corpus"  # run.json: the corpus a run trained with, as an absolute path
JOIN_TOKENS = 2  # the blank line between the user's text and the reference block


class Documentation:
    """A corpus and its retriever, built once; ``corpus`` overrides the recipe's (e.g. newer docs)."""

    def __init__(self, section: RetrievalSection, base_dir: Path | None = None, corpus: str | Path | None = None):
        self.path = resolve_data_path(str(corpus if corpus is not None else section.corpus), base_dir)
        self.passages = load_corpus(self.path)
        self.k = section.k
        if section.retriever == "bm25":
            self.retriever = Bm25Retriever(self.passages)
        else:
            cache = leantune_home() / "retrieval" / f"{corpus_key(self.passages, section.embedder)}.safetensors"
            self.retriever = EmbeddingRetriever(self.passages, get_embedder(section.embedder), cache)

    def _with_docs(self, messages: list[dict], tokenizer, template: str, budget: int,
                   generation_prompt: bool) -> list[dict]:
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        if query is None or budget <= 0:
            return messages
        found = self.retriever.search(query, self.k)

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        limit = render_length(tokenizer, messages, template, generation_prompt) + budget
        for _ in range(3):  # tokens at the seams can differ from the sum of the parts: shrink until it fits
            augmented = with_passages(messages, fit_passages(found, budget - JOIN_TOKENS, count))
            over = render_length(tokenizer, augmented, template, generation_prompt) - limit
            if over <= 0:
                return augmented
            budget -= over
        return messages

    def for_training(self, examples: list[dict], tokenizer, template_name: str, max_length: int) -> list[dict]:
        """Each chat example with the passages for its last user turn, in what ``max_length`` leaves."""
        template = resolve_template(tokenizer, template_name)
        out = []
        for ex in examples:
            budget = max_length - render_length(tokenizer, ex["messages"], template, False)
            out.append({**ex, "messages": self._with_docs(ex["messages"], tokenizer, template, budget, False)})
        return out

    def for_prompt(self, messages: list[dict], tokenizer, template_name: str, max_length: int,
                   max_new_tokens: int) -> list[dict]:
        """A conversation to answer, with the passages for its last user turn in what ``max_length``
        leaves after the prompt and the answer's room (``max_new_tokens``, at most a quarter of
        ``max_length``: training filled what the response left, and responses are short)."""
        template = resolve_template(tokenizer, template_name)
        room = min(max_new_tokens, max_length // 4)
        budget = max_length - render_length(tokenizer, messages, template, True) - room
        return self._with_docs(messages, tokenizer, template, budget, True)


def render_length(tokenizer, messages: list[dict], template: str, generation_prompt: bool) -> int:
    return len(tokenizer(render(tokenizer, messages, template, add_generation_prompt=generation_prompt),
                         add_special_tokens=False)["input_ids"])


def documentation_for(recipe, base_dir: Path | None = None) -> Documentation | None:
    """The recipe's documentation retriever, or None without ``data.retrieval``."""
    section = recipe.data.retrieval
    return Documentation(section, base_dir) if section is not None else None


def documentation_of_run(run_dir: Path, recipe, corpus: str | Path | None = None) -> Documentation | None:
    """A trained run's retriever over ``corpus`` (newer documentation), else the corpus it trained
    with (its absolute path in ``run.json``, so the run answers from any folder)."""
    section = recipe.data.retrieval
    if section is None:
        if corpus is not None:
            raise RecipeError(f"--corpus: {run_dir} was trained without data.retrieval; it does not read "
                              f"documentation")
        return None
    chosen = corpus if corpus is not None else read_run_files(run_dir).get(CORPUS_KEY) or section.corpus
    try:
        return Documentation(section, None, chosen)
    except LeantuneError as exc:
        raise LeantuneError(f"{exc}. The run {run_dir} reads documentation at every answer: pass the corpus "
                            f"with --corpus PATH") from None
