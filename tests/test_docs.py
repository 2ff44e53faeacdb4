"""The user docs stay navigable: README is a short front page, relative links and their
anchors resolve, README's commands use flags the CLIs accept, and the two commands exist."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_cli

README = REPO_ROOT / "README.md"
DOCS = [README, REPO_ROOT / "bench" / "RESULTS.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks."""
    lines, in_fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return frozenset(anchors)


def _links(path: Path) -> list[str]:
    return [target for line in _prose_lines(path) for target in LINK.findall(line)]


def test_slug_matches_github():
    assert _slug("Scaling out") == "scaling-out"
    assert _slug("COCO `--split-scheme im2txt`") == "coco---split-scheme-im2txt"
    assert _slug("GPU hosts: expected cost per step, and what to check") == \
        "gpu-hosts-expected-cost-per-step-and-what-to-check"
    assert _slug("Model parts (make bench-parts)") == "model-parts-make-bench-parts"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path):
    """Every relative link points to an existing file, and a #fragment to one of its headings."""
    assert path.exists()
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_docs_link_every_guide_from_readme():
    targets = {t.partition("#")[0] for t in _links(README)}
    for guide in sorted((REPO_ROOT / "docs").glob("*.md")):
        assert f"docs/{guide.name}" in targets, f"README does not link docs/{guide.name}"
    assert "bench/RESULTS.md" in targets


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_two_commands_exist():
    """README's two commands: `make demo` and `make test`, the latter being what CI runs."""
    readme = README.read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M)


def _readme_commands() -> list[list[str]]:
    """`python -m ...` commands of README's code blocks and inline code, continuations joined."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line for line in joined.splitlines() if line.lstrip().startswith("python -m ")]
    commands += re.findall(r"`(python -m [^`]+)`", text)
    return [shlex.split(c.split("#")[0], posix=True) for c in commands]


@functools.cache
def _help(module: str, sub: str | None) -> str:
    result = run_cli(module, *([sub] if sub else []), "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_commands_use_real_flags():
    commands = _readme_commands()
    assert len(commands) >= 8, commands
    modules_with_subcommands = {"caption_app", "tfrecords_tools"}
    unknown = []
    for argv in commands:
        module = argv[2]
        sub = argv[3] if module in modules_with_subcommands else None
        help_text = _help(module, sub)
        for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text):
                unknown.append(f"{' '.join(argv[:4])}: {flag}")
    assert not unknown, "flags the CLI does not accept: " + "; ".join(unknown)
