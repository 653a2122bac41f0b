"""The README's promises: the Quick start commands, CI running the test one verbatim, and the
Python API example actually running."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quick_start_is_two_commands_and_ci_runs_the_second_verbatim():
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci


def test_quick_start_trains_an_example_that_exists():
    first = quick_start_commands()[0]
    for config in re.findall(r"examples/\S+\.toml", first):
        assert (ROOT / config).is_file(), config


def test_python_api_example_runs(tmp_path, monkeypatch):
    block = README.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace("epochs=50", "epochs=2"), "README.md", "exec"), namespace)
    assert (tmp_path / "exp.distill").is_file()
    assert namespace["ir_model"].name == "exp"


def test_go_snippet_gives_the_go_mod_lines_the_embed_example_builds_with():
    """The embed example is built by tests/test_embed.py; the README's snippet must name the
    same two go.mod lines (a `replace` without its `require` does not build)."""
    block = README.split("```go\n", 1)[1].split("```", 1)[0]
    go_mod = (ROOT / "examples" / "embed" / "go" / "go.mod").read_text()
    for directive in ("require digits v0.0.0", "replace digits => ./"):
        assert directive in block and directive in go_mod, directive
