"""The README's command examples are the commands' real output: each ``` block that starts with
`$ minimind-spec ...` is run, and every line it shows (a `...` line stands for lines left out,
rules of box characters are not compared) must be part of the output, up to runs of spaces and
line wrapping; a closing `exit N` is the exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import ROOT

BLOCK = re.compile(r"```\n\$ (minimind-spec [^\n]+)\n(.*?)```", re.DOTALL)


def examples():
    for command, shown in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        yield pytest.param(command, shown, id=command[len("minimind-spec "):][:60])


def _normal(line: str) -> str:
    return " ".join(line.split())


BOX = set("─━┏┓┗┛┃│├└┡┩┳┻╇┯┷╭╮╰╯═║ ")


def _shown_lines(shown: str) -> list[str]:
    """The lines an example shows, without rules of box characters and `...` placeholders."""
    lines = []
    for line in shown.splitlines():
        bare = "".join(ch for ch in line if ch not in BOX)
        if bare and bare != "...":
            lines.append(_normal(line))
    return lines


@pytest.mark.parametrize("command, shown", list(examples()))
def test_readme_example_is_the_real_output(command, shown):
    command = command.split(";")[0]  # `...; echo "exit $?"`: the exit code is checked below
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "minimind_spec", *command.split()[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = _shown_lines(shown)
    if lines and re.fullmatch(r"exit \d+", lines[-1]):
        assert done.returncode == int(lines.pop().split()[1]), done.stderr
    else:
        assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: diff found differences
    # Lines wrapped at another width, or cut short in the README, are still parts of the real text.
    output = _normal(done.stdout + "\n" + done.stderr)
    missing = [line for line in lines if line not in output]
    assert not missing, f"the README shows lines `{command}` does not print:\n  " + "\n  ".join(missing)
