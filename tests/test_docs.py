"""The documentation (README.md, docs/*.md, mkdocs.yml) agrees with the code (issue 20, item 9).

Every version the docs name is the one the code and docker-compose.yml run, every command
line they show parses with the real parsers, every ``YADTQ_*`` variable they name is read,
the configuration table is the settings the code reads with their defaults, every page is
in the site's navigation, and the site builds with warnings as errors.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from worker_node.__main__ import parse_args as parse_worker_args
from yadtq import config as config_module
from yadtq.cli import build_parser
from yadtq.config import Config
from yadtq.local.apache_kafka import KAFKA_VERSION

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.M | re.S)  # also in list items
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _all_docs() -> str:
    return "\n".join(_text(page) for page in PAGES)


def _shell_snippets(text: str) -> Iterator[str]:
    """Every command line a page shows: lines of shell code blocks, with backslash
    continuations joined, and every inline code span of its prose and tables."""
    for language, body in FENCE.findall(text):
        if language in ("bash", "sh", "shell", "console", ""):
            yield from body.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    yield from re.findall(r"`([^`\n]+)`", prose)


def _argv(snippet: str) -> tuple[str, list[str]] | None:
    """("yadtq" | "worker_node" | "make", its arguments) when the snippet runs one of
    them, else None. Leading VAR=value assignments and `sudo [-u USER]` are skipped;
    the command ends at a shell operator or a comment; an optional option shown in
    brackets (`[--kafka-nodes 3]`) is parsed as given; a bare `yadtq` is a name."""
    snippet = re.sub(r"\[(--[^\]]+)\]", r"\1", snippet)
    lexer = shlex.shlex(snippet, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return None
    for index, token in enumerate(tokens):
        if token in SHELL_OPERATORS:
            tokens = tokens[:index]
            break
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]
    if tokens[:1] == ["sudo"]:
        tokens = tokens[3:] if tokens[1:2] == ["-u"] else tokens[1:]
    if not tokens:
        return None
    program = tokens[0].rsplit("/", 1)[-1]
    if program == "yadtq" and len(tokens) > 1:
        return "yadtq", tokens[1:]
    if program.startswith("python") and tokens[1:2] == ["-m"] and len(tokens) > 2:
        if tokens[2] == "yadtq":
            return "yadtq", tokens[3:]
        if tokens[2] == "worker_node":
            return "worker_node", tokens[3:]
    if program == "make":
        return "make", tokens[1:]
    return None


def _commands() -> list[tuple[str, str, list[str]]]:
    """(page, program, argv) of every command of ours the docs show."""
    found = []
    for page in PAGES:
        for snippet in _shell_snippets(_text(page)):
            command = _argv(snippet)
            if command is not None:
                found.append((page.name, *command))
    return found


@pytest.fixture
def exact_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsers built meanwhile take no abbreviations: `--worker` is no longer `--workers`,
    so an option the docs show that was renamed is caught even if it is still a prefix."""
    init = argparse.ArgumentParser.__init__

    def without_abbreviations(self, *args, **kwargs) -> None:
        init(self, *args, **{**kwargs, "allow_abbrev": False})

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", without_abbreviations)


def _parse_error(parse, argv: list[str]) -> str | None:
    """What argparse said when it refused argv, or None when it parsed."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return stderr.getvalue().strip().splitlines()[-1]
    return None


# --- versions ---------------------------------------------------------------------------

def test_the_apache_kafka_version_in_the_docs_is_the_one_the_code_and_compose_run() -> None:
    # Given the version the local stack resolves, the pom's and docker-compose.yml's image
    pom = _text(ROOT / "yadtq" / "local" / "java" / "pom.xml")
    [pom_version] = re.findall(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    compose = yaml.safe_load(_text(ROOT / "docker-compose.yml"))
    image = compose["services"]["kafka"]["image"]
    assert pom_version == KAFKA_VERSION and image == f"apache/kafka:{KAFKA_VERSION}"

    # When the docs name an Apache Kafka version, an image tag or the jar cache's folder
    docs = _all_docs()
    named = re.findall(r"Apache Kafka (\d+\.\d+(?:\.\d+)?)\b", docs)
    named += re.findall(r"apache/kafka:([\w.-]+)", docs)
    named += re.findall(r"apache-kafka/(\d[\w.-]*)/", docs)

    # Then it is that version, everywhere
    assert len(named) >= 3, named
    assert set(named) == {KAFKA_VERSION}, named


def test_the_redis_image_and_python_version_in_the_docs_are_compose_and_pyproject_ones() -> None:
    compose = yaml.safe_load(_text(ROOT / "docker-compose.yml"))
    docs = _all_docs()

    images = set(re.findall(r"(?<![\w/])redis:(\d[\w.-]*)", docs))  # not redis://host:6379
    assert images == {compose["services"]["redis"]["image"].split(":", 1)[1]}

    [requires] = re.findall(r'requires-python = ">=([\d.]+)"', _text(ROOT / "pyproject.toml"))
    pythons = set(re.findall(r"Python ≥ ([\d.]+)", docs))
    assert pythons == {requires}


# --- command lines ----------------------------------------------------------------------

@pytest.mark.usefixtures("exact_options")
def test_every_yadtq_command_line_in_the_docs_parses_with_the_cli() -> None:
    commands = [(page, argv) for page, program, argv in _commands() if program == "yadtq"]
    shown = {" ".join(argv) for _, argv in commands}
    assert {"local up --workers 3", "submit add 1 2 --wait", "workers"} <= shown, shown

    refused = [(page, "yadtq " + " ".join(argv), error) for page, argv in commands
               if (error := _parse_error(build_parser().parse_args, argv))]

    assert not refused, refused


@pytest.mark.usefixtures("exact_options")
def test_every_worker_node_command_line_in_the_docs_parses_with_its_options() -> None:
    commands = [(page, argv) for page, program, argv in _commands() if program == "worker_node"]
    assert len(commands) >= 3 and any("--bootstrap" in argv for _, argv in commands), commands

    refused = [(page, "python -m worker_node " + " ".join(argv), error)
               for page, argv in commands if (error := _parse_error(parse_worker_args, argv))]

    assert not refused, refused


def test_every_make_target_in_the_docs_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", _text(ROOT / "Makefile"), re.M))
    used = {(page, target) for page, program, argv in _commands() if program == "make"
            for target in argv if not target.startswith("-")}
    assert {"demo", "test"} <= {target for _, target in used}

    assert not {(page, t) for page, t in used if t not in targets}


def test_the_readme_keeps_the_two_quick_start_commands() -> None:
    readme = _text(ROOT / "README.md")

    assert "make demo   # installs into .venv, starts Kafka + Redis + 3 workers locally, " \
        "runs ~300 tasks\n" in readme
    assert "make test   # installs into .venv, runs ruff and the whole test suite against " \
        "real servers\n" in readme


# --- settings ---------------------------------------------------------------------------

def _variables_read_by_the_test_harness() -> set[str]:
    return set(re.findall(r"YADTQ_[A-Z][A-Z0-9_]*",
                          _text(ROOT / "tests" / "conftest.py") + _text(ROOT / ".ci" / "run")))


def test_every_yadtq_variable_in_the_docs_is_one_the_code_reads() -> None:
    read = set(re.findall(r'"(YADTQ_[A-Z][A-Z0-9_]*)"', _text(ROOT / "yadtq" / "config.py")))
    read |= _variables_read_by_the_test_harness()
    named = {(page.name, variable) for page in PAGES
             for variable in re.findall(r"YADTQ_[A-Z][A-Z0-9_]*", _text(page))}
    assert len(named) > 20

    assert not {(page, v) for page, v in named if v not in read}


def test_every_kafka_security_variable_the_code_reads_is_documented() -> None:
    docs = _all_docs()

    undocumented = [v for v in config_module._KAFKA_OPTIONS.values() if v not in docs]

    assert not undocumented


def _configuration_table() -> dict[str, tuple[str, str]]:
    """Setting -> (variable, default cell) from docs/configuration.md's table."""
    rows = re.findall(r"^\| `(\w+)` \| `(YADTQ_\w+)` \| (.*) \|$",
                      _text(DOCS / "configuration.md"), re.M)
    return {setting: (variable, default) for setting, variable, default in rows}


def _documented_default(cell: str) -> object:
    """The value a default cell states: its leading number (with its unit), word or none."""
    if cell.startswith(("—", "none", "off", "min(")):
        return None
    if word := re.match(r"`(\w+)`", cell):
        return word.group(1)
    number = re.match(r"([\d,]+(?:\.\d+)?)( days| s| ms)?\b", cell)
    assert number, f"default not understood: {cell!r}"
    value = float(number.group(1).replace(",", ""))
    return value * 24 * 3600 if number.group(2) == " days" else value


def test_the_configuration_table_is_every_setting_with_its_variable_and_default() -> None:
    # Given the table in docs/configuration.md and the settings config.py reads
    table = _configuration_table()
    settings = {name: variable for name, (variable, _) in config_module._ENV_SETTINGS.items()}

    # Then it has one row per setting, with the variable the code reads for it
    assert {name: variable for name, (variable, _) in table.items()} == settings

    # And each default it states is Config's default
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    wrong = {}
    for name, (_, cell) in table.items():
        documented, actual = _documented_default(cell), defaults[name]
        if actual is False or actual is dataclasses.MISSING:  # "off", "—"
            actual = None
        if documented != actual:
            wrong[name] = (cell, actual)
    assert not wrong, wrong


# --- the site ---------------------------------------------------------------------------

def _nav_pages(nav: list) -> Iterator[str]:
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value


def test_every_docs_page_is_in_the_site_navigation_and_every_entry_exists() -> None:
    nav = list(_nav_pages(yaml.safe_load(_text(ROOT / "mkdocs.yml"))["nav"]))
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}

    assert sorted(nav) == sorted(pages)


def test_every_link_in_the_readme_names_a_file_of_the_checkout() -> None:
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _text(ROOT / "README.md"))
    assert len(links) > 10, links

    assert not [link for link in links if not (ROOT / link).exists()]


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = _text(tmp_path / "site" / "api" / "index.html")
    for name in ("yadtq.connect", "yadtq.Client.map", "yadtq.TaskFuture.result",
                 "yadtq.TaskBatch.results", "yadtq.local.LocalCluster"):
        assert f'id="{name}"' in api, name
