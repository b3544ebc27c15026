"""The README and the docs site stay true to the code.

The README's shell commands are checked against what exists: each `make` target in the Makefile, each
`plait-train` recipe loaded and validated with its `--set` overrides, each launcher config file, each
`plait-eval` command parsed with its suites. Its Python blocks run, its links and repository paths resolve.
The docs site builds offline in strict mode (a broken link, a missing API object or any warning fails),
and every result in bench/results/ appears in it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from plait.eval.cli import build_parser as eval_parser
from plait.eval.cli import expand_suites
from plait.train.cli import parse_args as train_args
from plait.train.data_cli import parse_args as data_args
from plait.train.recipe import RecipeError, load_recipe
from plait.train.sweep_spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def shell_commands() -> list[list[str]]:
    """Each command line of the README's bash blocks, comments removed, as argv."""
    commands = []
    for block in fenced("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def prepared_by_readme() -> set[str]:
    """The directories the README's `plait-data prepare` commands write."""
    return {data_args(argv[1:]).output_dir for argv in shell_commands() if argv[0] == "plait-data"}


def check_train(argv: list[str]) -> None:
    args = train_args(argv)
    try:
        load_recipe(args.recipe, args.overrides)  # raises RecipeError naming the bad field
    except RecipeError as e:  # a directory the README prepares first is all that may be missing
        missing = re.search(r"path='(.+?)' is not a prepared directory", str(e))
        if not missing or os.path.relpath(missing.group(1), os.getcwd()) not in prepared_by_readme():
            raise


def check_command(argv: list[str]) -> None:
    program, rest = argv[0], argv[1:]
    if program == "make":
        assert set(rest) <= make_targets(), f"{argv}: no such make target"
    elif program == "plait-train":
        check_train(rest)
    elif program == "plait-eval":
        args = eval_parser().parse_args(rest)
        expand_suites(args.suites, args.hub_tasks)
    elif program == "accelerate":
        config = rest[rest.index("--config_file") + 1]
        assert (ROOT / config).is_file(), f"{argv}: {config} does not exist"
        check_train(rest[rest.index("plait.train") + 1 :])
    elif program == "plait-data":
        args = data_args(rest)
        assert args.command == "prepare"
    elif program == "plait-sweep":
        sweep = rest[0]
        assert (ROOT / sweep).is_file(), f"{argv}: {sweep} does not exist"
        load_sweep(ROOT / sweep)  # raises RecipeError naming the bad field
    elif program == "sbatch":
        script = next(arg for arg in rest if arg.endswith(".sbatch"))
        assert (ROOT / script).is_file(), f"{argv}: {script} does not exist"
        check_train(rest[rest.index(script) + 1 :])
    else:
        pytest.fail(f"the README runs {program!r}, which this test does not know how to check: add it here")


def test_readme_is_one_or_two_screens():
    assert len(README.splitlines()) <= 200


@pytest.mark.parametrize("argv", shell_commands(), ids=" ".join)
def test_readme_command_names_what_exists(argv):
    check_command(argv)


def test_readme_inline_make_targets_and_programs_exist():
    for target in re.findall(r"`make ([\w-]+)`", README):
        assert target in make_targets(), f"README names `make {target}`, which the Makefile lacks"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"plait-train", "plait-eval", "plait-data", "plait-sweep"} <= set(scripts)


def test_readme_commands_cover_a_users_day():
    programs = {argv[0] for argv in shell_commands()}
    assert {
        "make",
        "plait-train",
        "plait-data",
        "plait-sweep",
        "plait-eval",
        "accelerate",
        "sbatch",
    } <= programs
    assert {"demo", "test"} <= {arg for argv in shell_commands() if argv[0] == "make" for arg in argv[1:]}


def test_readme_python_runs():
    for block in fenced("python"):
        exec(compile(block, "<README.md python block>", "exec"), {})


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README links to {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, f"README links to {target}: no such heading"


def test_readme_repository_paths_exist():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for span in re.findall(r"`([^`\s]+)`", README):
        first = span.split("/")[0]
        if "/" in span and first in folders and not re.search(r"[<>*]", span):
            assert (ROOT / span).exists(), f"README names {span}, which does not exist"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed")
def test_docs_build_strict_offline_with_every_result(tmp_path):
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    html = "\n".join(page.read_text() for page in site.rglob("*.html"))
    for result in sorted((ROOT / "bench" / "results").glob("*.json")):
        assert f"bench/results/{result.name}" in html, f"no docs table is rendered from {result.name}"
    for plot in sorted((ROOT / "bench" / "results").glob("*.png")):
        assert (site / "bench-results" / plot.name).is_file() and f"bench-results/{plot.name}" in html, plot
    assert "<!-- bench:" not in html
