"""The demo's command-accuracy metric (evaluation/command_match.py) on hand-written cases."""
from __future__ import annotations

import pytest

from leantune.evaluation.command_match import (
    EQUIVALENT,
    EXACT,
    accuracy,
    extract_command,
    match_command,
    normalize,
    tokenize,
)


# --------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("answer, command", [
    # the demo data's own style: inline code on the first line, then an explanation
    ("`ls -la`\n\nLists every entry, including hidden files.", "ls -la"),
    ("`find . -type f -size +100M`\n\nLists regular files larger than 100 MiB.", "find . -type f -size +100M"),
    # prose, then a fenced block: the block's first command line (no prompt, no comment)
    ("You can use the `find` command:\n\n```bash\n# big files\n$ find . -size +100M\n```\nDone.",
     "find . -size +100M"),
    ("Run this:\n```\ntar -xzf archive.tar.gz \\\n  -C /opt/app\n```", "tar -xzf archive.tar.gz -C /opt/app"),
    # a bare command line, no markdown
    ("sudo lsof -i :8080\n\nLists the processes that have port 8080 open.", "sudo lsof -i :8080"),
    ("To see it, use:\n$ df -i", "df -i"),
    # only an inline span in the middle of prose
    ("The simplest way is `git clean -fd`, which removes untracked files.", "git clean -fd"),
    # prose only
    ("To see the login history, open the settings of your browser.", None),
    ("use the history tab", None),
    ("Here's how:\n\n1. Open a terminal and go to the folder.\n2. Run the following command: `sudo", None),
    ("", None),
])
def test_extract_command(answer, command):
    assert extract_command(answer) == command


def test_fenced_block_before_a_later_inline_line_wins():
    answer = "Try:\n```sh\ndu -sh *\n```\n`ls -lhS` also works."
    assert extract_command(answer) == "du -sh *"


def test_leading_inline_line_before_a_later_block_wins():
    answer = "`ls -lhS`\n\nOr:\n```\ndu -sh *\n```"
    assert extract_command(answer) == "ls -lhS"


# --------------------------------------------------------------------------- tokenizing

def test_tokenize_quotes_operators_and_comments():
    words = [t.text for t in tokenize("grep -r 'TODO' src | wc -l  # count them")]
    assert words == ["grep", "-r", "TODO", "src", "|", "wc", "-l"]
    assert [t.kind for t in tokenize("a && b")] == ["word", "op", "word"]
    with pytest.raises(ValueError):
        tokenize("echo 'unclosed")


# --------------------------------------------------------------------------- exact

@pytest.mark.parametrize("predicted, reference", [
    ("ls  -la", "ls -la"),                                            # whitespace
    ("ls -al", "ls -la"),                                             # bundle order, nothing follows
    ("git log --graph --all --oneline", "git log --oneline --graph --all"),
    ("find . -name '*.log'", 'find . -name "*.log"'),                 # quoting style
    ("find . -name \\*.log", "find . -name '*.log'"),                 # backslash = quotes
    ("grep -r TODO .", "grep -r 'TODO' ."),                           # quotes around a plain word
    ("tar -zxf archive.tar.gz", "tar -xzf archive.tar.gz"),           # last letter (f) stays last
    ("rm -f -r -v build", "rm -r -f -v build"),                       # last flag before an arg stays
    ("ss -ltnp | grep 8080", "ss -tlpn | grep 8080"),                 # bundle before an operator
    ("echo \"$HOME\"", "echo $HOME"),                                 # both expand
    ("git clean -fd;", "git clean -fd"),                              # trailing ;
])
def test_exact(predicted, reference):
    assert match_command(predicted, reference) == EXACT


# --------------------------------------------------------------------------- equivalent

@pytest.mark.parametrize("predicted, reference", [
    ("ls -l -a", "ls -la"),                                           # split bundle
    ("tar -xf archive.tar.gz -z", "tar -xzf archive.tar.gz"),         # flag moved past an argument
    ("lsof -i :8080", "sudo lsof -i :8080"),                          # sudo ignored
    ("rm -rf -r build", "rm -rf build"),                              # repeated flag
    ("rm -f -r build", "rm -r -f build"),                             # last flag before an arg moved
    ("ss -l -tnp | grep 8080", "ss -tlpn | grep 8080"),               # per pipeline stage
])
def test_equivalent(predicted, reference):
    assert match_command(predicted, reference) == EQUIVALENT


# --------------------------------------------------------------------------- no match

@pytest.mark.parametrize("predicted, reference", [
    ("find . -name *.log", "find . -name '*.log'"),                   # unquoted glob: the shell expands it
    ("echo '$HOME'", "echo $HOME"),                                   # literal vs expanded
    ("tar -xzvf archive.tar.gz", "tar -xzf archive.tar.gz"),          # an extra flag
    ("cp b a", "cp a b"),                                             # argument order matters
    ("find . -delete -empty", "find . -empty -delete"),               # find: order is meaning
    ("rsync -a --include=a --exclude=b s/ d/", "rsync -a --exclude=b --include=a s/ d/"),
    ("ls", "ls -la"),
    ("grep TODO | wc", "grep TODO && wc"),                            # different operator
    ("echo 'unclosed", "echo unclosed"),                              # untokenizable, different text
    (None, "ls"),
    ("   ", "ls"),
])
def test_no_match(predicted, reference):
    assert match_command(predicted, reference) is None


def test_known_leniency_of_equivalent():
    """Which flag takes the argument is not known: only ``exact`` keeps it apart."""
    assert match_command("tar -c -f -z x", "tar -c -z -f x") == EQUIVALENT


def test_order_sensitive_program_needs_same_order_even_for_equivalent():
    assert match_command("find . -size +100M -type f", "find . -type f -size +100M") is None
    assert match_command("find  .  -type f -size +100M", "find . -type f -size +100M") == EXACT


def test_normalize_is_canonical():
    assert normalize("tar -zxf a.tgz -C /opt") == normalize("tar  -xzf 'a.tgz' -C \"/opt\"")
    assert normalize("cp config.yaml{,.bak}") != normalize("cp 'config.yaml{,.bak}'")


def test_accuracy():
    assert accuracy([EXACT, EQUIVALENT, None, None]) == {EXACT: 0.25, EQUIVALENT: 0.5}
    assert accuracy([]) == {EXACT: 0.0, EQUIVALENT: 0.0}
