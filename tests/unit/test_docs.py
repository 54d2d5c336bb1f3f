"""The README stays a short entry point and the docs site keeps everything it used to hold.

Fast and offline: no mkdocs needed (`.ci/run` builds the site with `mkdocs build --strict`).
`data/readme_inventory.json` lists the images and the tables (header row + first data row) of
the long README before it was split into docs/; each must survive in some docs page.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INVENTORY = Path(__file__).parent / "data" / "readme_inventory.json"
MAX_README_CHARS = 12_000

LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE_RE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Anything a reader would type in a shell: the README must show `make train` / `make test` first.
COMMAND_RE = re.compile(
    r"python3? -m |\bpip install|\.venv/bin/|\bsource \.venv|\bwandb (?:sync|sweep|agent)\b|\bmkdocs (?:serve|build)\b|\blhp-[a-z-]+ "
)


def _docs_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose(text: str) -> str:
    """Markdown text without fenced code blocks and inline code spans (links there are not links)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        marker = re.match(r"^(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * 3
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is None:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _fenced_lines(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            lines.append(line)
    return lines


@pytest.fixture(scope="module")
def inventory() -> dict:
    return json.loads(INVENTORY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def docs_text() -> dict[Path, str]:
    pages = _docs_pages()
    assert pages, "docs/ has no markdown pages"
    return {p: p.read_text(encoding="utf-8") for p in pages}


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8"))
    assert n <= MAX_README_CHARS, (
        f"README.md has {n:,} characters (max {MAX_README_CHARS:,}): move depth to docs/"
    )


def test_readme_shows_make_train_and_make_test_first() -> None:
    text = README.read_text(encoding="utf-8")
    commands = [
        ln.strip() for ln in _fenced_lines(text) if ln.strip() and not ln.strip().startswith("#")
    ]
    assert commands[:2] and commands[0].startswith("make train"), commands[:2]
    assert commands[1].startswith("make test"), commands[:2]
    first_train, first_test = text.find("make train"), text.find("make test")
    other = COMMAND_RE.search(text)
    assert other is not None
    assert 0 <= first_train < other.start() and 0 <= first_test < other.start(), (
        f"README shows {other.group(0)!r} before `make train` / `make test`"
    )


def test_inventory_fixture_is_complete(inventory: dict) -> None:
    # 4 figures and 17 tables in the README before the split; the fixture must not shrink.
    assert len(inventory["images"]) == 4
    assert len(inventory["tables"]) == 17


def test_every_old_readme_image_is_in_the_docs(inventory: dict, docs_text: dict[Path, str]) -> None:
    shown = set()
    for page, text in docs_text.items():
        for target in IMAGE_RE.findall(_prose(text)):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.relative_to(ROOT)}: image {target} does not exist"
            shown.add(path)
    for image in inventory["images"]:
        path = (ROOT / image).resolve()
        assert path.is_file(), f"{image} (shown in the old README) is missing on disk"
        assert path in shown, f"{image} (shown in the old README) is shown by no docs page"


def test_every_old_readme_table_is_in_the_docs(inventory: dict, docs_text: dict[Path, str]) -> None:
    pages = {p: [ln.strip() for ln in t.splitlines()] for p, t in docs_text.items()}

    def found(header: str, first_row: str) -> bool:
        for lines in pages.values():
            for i, line in enumerate(lines[:-2]):
                if line == header and lines[i + 2] == first_row:
                    return True
        return False

    missing = [t["header"] for t in inventory["tables"] if not found(t["header"], t["first_row"])]
    assert not missing, f"tables of the old README found in no docs page: {missing}"


def test_relative_links_point_to_existing_files(docs_text: dict[Path, str]) -> None:
    files = {README: README.read_text(encoding="utf-8"), **docs_text}
    broken = []
    for page, text in files.items():
        for target in LINK_RE.findall(_prose(text)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # external (http:, mailto:) or an anchor on the same page
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"broken relative links: {broken}"


def test_mkdocs_nav_lists_every_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["name"] == "material"

    def entries(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [e for item in node for e in entries(item)]
        if isinstance(node, dict):
            return [e for value in node.values() for e in entries(value)]
        return []

    nav = entries(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in _docs_pages()}
    assert "reliability.md" in nav
    assert not [e for e in nav if e not in pages], "nav names pages that do not exist"
    assert not sorted(pages - set(nav)), "docs pages missing from the mkdocs nav"
