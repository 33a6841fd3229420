"""Retriever-aware instructions (prompting/documentation.py): the right documentation passage
reaches each instruction, inside train.max_length with the instruction and response whole; the
embeddings retriever ranks by cosine and caches the corpus's vectors."""
from __future__ import annotations

import torch

from leantune.data.retrieval import REFERENCE, EmbeddingRetriever, Passage, corpus_key, load_corpus
from leantune.data.templates import render, resolve_template
from leantune.prompting.documentation import Documentation, render_length
from leantune.recipe import RetrievalSection

DOCS = {
    "tar.md": "# tar — pack and unpack archives\n\ntar -czf out.tar.gz DIR creates a gzip-compressed archive; "
              "-x extracts, -t lists the contents, -f names the archive file.",
    "df.md": "# df — free disk space\n\ndf -h shows the size, used and free space of each mounted filesystem "
             "in human-readable units; -i shows inodes instead.",
    "grep.md": "# grep — search text for a pattern\n\ngrep -r PATTERN DIR searches every file below DIR; -i "
               "ignores case; -n prints line numbers.",
}


def _corpus(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def _examples():
    return [{"messages": [{"role": "user", "content": "How do I search files for a word, ignoring case?"},
                          {"role": "assistant", "content": "`grep -ri word .`"}]},
            {"messages": [{"role": "user", "content": "How full are my disks?"},
                          {"role": "assistant", "content": "`df -h`"}]}]


def test_training_examples_get_the_right_passage_within_max_length(tmp_path, tiny_tokenizer):
    docs = Documentation(RetrievalSection(corpus=str(_corpus(tmp_path)), k=1))
    template = resolve_template(tiny_tokenizer, "auto")
    for max_length in (400, 220):
        out = docs.for_training(_examples(), tiny_tokenizer, "auto", max_length)
        for ex, new, doc in zip(_examples(), out, ("grep", "df")):
            user, reply = new["messages"]
            assert user["content"].startswith(ex["messages"][0]["content"] + "\n\n" + REFERENCE)
            assert reply == ex["messages"][1]  # the response whole
            assert render_length(tiny_tokenizer, new["messages"], template, False) <= max_length
            first_words = DOCS[f"{doc}.md"].split()[:4]
            assert " ".join(first_words) in user["content"]
    # no room at all: the example is left as it was
    tight = render_length(tiny_tokenizer, _examples()[0]["messages"], template, False)
    assert docs.for_training(_examples()[:1], tiny_tokenizer, "auto", tight)[0] == _examples()[0]


def test_prompts_keep_room_for_the_answer(tmp_path, tiny_tokenizer):
    docs = Documentation(RetrievalSection(corpus=str(_corpus(tmp_path)), k=3))
    question = [{"role": "user", "content": "How do I unpack an archive?"}]
    template = resolve_template(tiny_tokenizer, "auto")
    asked = docs.for_prompt(question, tiny_tokenizer, "auto", max_length=300, max_new_tokens=40)
    text = render(tiny_tokenizer, asked, template, add_generation_prompt=True)
    assert len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) <= 300 - 40
    assert "pack and unpack archives" in asked[0]["content"]  # tar first, cut where the budget ends


def test_changed_corpus_is_read_at_inference(tmp_path, tiny_tokenizer):
    section = RetrievalSection(corpus=str(_corpus(tmp_path)), k=1)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "df.md").write_text("# df — free disk space\n\nIn version 9, -h was renamed --human-units.")
    asked = Documentation(section, corpus=newer).for_prompt(
        [{"role": "user", "content": "How full are my disks?"}], tiny_tokenizer, "auto", 400, 20)
    assert "--human-units" in asked[0]["content"]


def _bag_of_words(texts):
    vocab = sorted({w for p in DOCS.values() for w in p.lower().split()})
    rows = [[float(w in t.lower().split()) for w in vocab] for t in texts]
    return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_embedding_retriever_ranks_by_cosine_and_caches(tmp_path):
    passages = load_corpus(_corpus(tmp_path))
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return _bag_of_words(texts)

    cache = tmp_path / "cache" / f"{corpus_key(passages, 'bow')}.safetensors"
    first = EmbeddingRetriever(passages, embed, cache)
    query = "-h human-readable free space"
    expected = _bag_of_words([p.text for p in passages]) @ _bag_of_words([query])[0]
    ranked = first.search(query, 3)
    assert [p.source for p in ranked] == [passages[i].source for i in expected.argsort(descending=True).tolist()]
    assert ranked[0].source == "df.md"
    assert cache.is_file() and calls == [len(passages), 1]
    second = EmbeddingRetriever(passages, embed, cache)  # vectors from the cache: only the query is embedded
    assert second.search(query, 1)[0].source == "df.md" and calls == [len(passages), 1, 1]
    assert corpus_key(passages, "bow") != corpus_key([Passage("x", "y"), *passages[1:]], "bow")
