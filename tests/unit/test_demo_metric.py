"""The demo's command-accuracy metric (evaluation/command_match.py) on hand-written cases."""
from __future__ import annotations

import pytest

from leantune.evaluation.command_match import (
    EQUIVALENT,
    EXACT,
    PROGRAM,
    accuracy,
    extract_command,
    match_command,
    normalize,
    programs,
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
    # cut off inside the leading span (max_new_tokens): the rest of that line
    ("`date -d -m -w -w -w", "date -d -m -w -w -w"),
    # of the inline spans, the first that looks like a command
    ("Use the `-A` option:\n1. Open a terminal.\n2. Run: `ssh-add -A mykey.key`", "ssh-add -A mykey.key"),
    ("Call `time()` in Python, or `uptime`.", "uptime"),
    ("Pass `-v` for more.", "-v"),
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


# --------------------------------------------------------------------------- not a correct answer

@pytest.mark.parametrize("predicted, reference", [
    ("find . -name *.log", "find . -name '*.log'"),                   # unquoted glob: the shell expands it
    ("echo '$HOME'", "echo $HOME"),                                   # literal vs expanded
    ("tar -xzvf archive.tar.gz", "tar -xzf archive.tar.gz"),          # an extra flag
    ("cp b a", "cp a b"),                                             # argument order matters
    ("find . -delete -empty", "find . -empty -delete"),               # find: order is meaning
    ("rsync -a --include=a --exclude=b s/ d/", "rsync -a --exclude=b --include=a s/ d/"),
    ("grep TODO | wc", "grep TODO && wc"),                            # different operator
])
def test_not_a_correct_answer(predicted, reference):
    assert match_command(predicted, reference) not in (EXACT, EQUIVALENT)


@pytest.mark.parametrize("predicted, reference", [
    ("git branch -d x", "git clean -fd"),                             # git: the subcommand is the program
    ("ps aux | grep 80", "sudo lsof -i :8080"),
    ("uname -a", "strings program.bin | less"),
    ("echo 'unclosed", "echo unclosed"),                              # untokenizable, different text
    (None, "ls"),
    ("   ", "ls"),
])
def test_no_match(predicted, reference):
    assert match_command(predicted, reference) is None


@pytest.mark.parametrize("predicted, reference", [
    ("ls", "ls -la"),
    ("df -h", "df -i"),
    ("git branch -d old_branch", "git branch -d feature-login"),      # placeholder name differs
    ("tar -xzf archive.tar.gz", "tar -xzf archive.tar.gz -C /opt/app"),
    ("echo hi | base64", "echo 'aGVsbG8=' | base64 -d"),
    ("/usr/bin/find /", "sudo find . -type f"),
])
def test_right_program_only(predicted, reference):
    assert match_command(predicted, reference) == PROGRAM


def test_programs():
    assert programs("sudo apt update && sudo apt upgrade") == ("apt update", "apt upgrade")
    assert programs("git -C repo status") == ("git",)
    assert programs("strings a.bin | less") == ("strings", "less")
    assert programs("find . -type f > files.txt 2>&1 | sort") == ("find", "sort")


def test_known_leniency_of_equivalent():
    """Which flag takes the argument is not known: only ``exact`` keeps it apart."""
    assert match_command("tar -c -f -z x", "tar -c -z -f x") == EQUIVALENT


def test_order_sensitive_program_needs_same_order_even_for_equivalent():
    assert match_command("find . -size +100M -type f", "find . -type f -size +100M") == PROGRAM
    assert match_command("find  .  -type f -size +100M", "find . -type f -size +100M") == EXACT


def test_normalize_is_canonical():
    assert normalize("tar -zxf a.tgz -C /opt") == normalize("tar  -xzf 'a.tgz' -C \"/opt\"")
    assert normalize("cp config.yaml{,.bak}") != normalize("cp 'config.yaml{,.bak}'")


def test_accuracy():
    assert accuracy([EXACT, EQUIVALENT, PROGRAM, None]) == {EXACT: 0.25, EQUIVALENT: 0.5, PROGRAM: 0.75}
    assert accuracy([]) == {EXACT: 0.0, EQUIVALENT: 0.0, PROGRAM: 0.0}
