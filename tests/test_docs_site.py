"""The documentation site: it builds with --strict (a broken link, a missing anchor or a page
left out of the nav fails), its API reference is generated from the application's own OpenAPI
document, and its configuration table names every setting the code reads."""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

SETTING = re.compile(r"(?:SESSIONS|CLUSTER)_[A-Z0-9_]+")
HEADING_ID = re.compile(r'<h[1-6] id="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_site_builds_strict_with_every_page_of_the_nav(site: Path) -> None:
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [page for item in nav for page in pages(item)]
        if isinstance(nav, dict):
            return [page for value in nav.values() for page in pages(value)]
        return []

    listed = pages(config["nav"])
    assert sorted(listed) == sorted(path.name for path in (REPO / "docs").glob("*.md"))
    for page in listed:
        built = site / ("index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html")
        assert built.is_file(), page


def test_the_api_reference_is_generated_from_the_openapi_document(site: Path) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import docs_hooks
    finally:
        sys.path.remove(str(REPO / "tools"))
    document = docs_hooks.openapi_document()
    assert docs_hooks.MARKER in (REPO / "docs" / "api.md").read_text()
    page = _text(site / "api" / "index.html")
    assert f"version {document['info']['version']}" in page
    for path, item in document["paths"].items():
        assert path in page, path
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                assert parameter["name"] in page, (path, parameter["name"])
            for status in operation["responses"]:
                assert status in page, (path, status)
    for name in document["components"]["schemas"]:
        assert f"schema-{name.lower()}" in HEADING_ID.findall((site / "api" / "index.html").read_text()), name


def _settings_read_by(folder: Path) -> set[str]:
    """Every string constant in the code that is a setting's name: what the code reads."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING.fullmatch(node.value):
                names.add(node.value)
    return names


def _settings_in_tables(page: Path) -> set[str]:
    rows = [line for line in page.read_text().splitlines() if line.startswith("| `")]
    return {match for row in rows for match in SETTING.findall(row.split("|")[1])}


def test_the_configuration_table_names_every_setting_the_code_reads() -> None:
    read = _settings_read_by(REPO / "app") | _settings_read_by(REPO / "cluster")
    assert "SESSIONS_DIR" in read and "CLUSTER_REPLICAS" in read  # the scan sees the settings
    documented = _settings_in_tables(REPO / "docs" / "configuration.md")
    assert read - documented == set(), "settings the code reads missing from docs/configuration.md"
    assert documented - read == set(), "settings in docs/configuration.md that no code reads"


def test_every_test_file_the_docs_name_exists() -> None:
    named = {
        match
        for page in [*(REPO / "docs").glob("*.md"), REPO / "README.md", REPO / "client" / "README.md"]
        for match in re.findall(r"tests/[A-Za-z0-9_/]+\.py", page.read_text())
    }
    assert named, "the docs name the tests behind their guarantees"
    missing = sorted(name for name in named if not (REPO / name).is_file())
    assert missing == []


def test_the_front_pages_link_only_to_files_that_exist() -> None:
    # README.md and client/README.md are read on the forge, outside the site's --strict build.
    for page in (REPO / "README.md", REPO / "client" / "README.md"):
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
        local = [target for target in targets if "://" not in target]
        assert local or page.name == "README.md"
        missing = [target for target in local if not (page.parent / target).exists()]
        assert missing == [], (page, missing)
    assert len(re.findall(r"\]\(docs/", (REPO / "README.md").read_text())) >= 10  # the README links into the docs


def test_code_cites_the_contract_by_anchors_that_exist(site: Path) -> None:
    # Comments cite the contract page by anchor, as docs/contract.md#files (never a section
    # number of a document outside the repository); each anchor must be a heading of the page.
    anchors = set(HEADING_ID.findall((site / "contract" / "index.html").read_text()))
    cited: dict[str, set[str]] = {}
    for folder in ("app", "client/src", "cluster", "tests", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            assert "SPEC \N{SECTION SIGN}" not in text, f"{path}: cite the contract page by its anchor instead"
            for group in re.findall(r"docs/contract\.md((?:#[a-z-]+(?:, )?)+)", text):
                cited.setdefault(str(path.relative_to(REPO)), set()).update(re.findall(r"#([a-z-]+)", group))
    assert cited, "the code cites the contract"
    unknown = {path: names - anchors for path, names in cited.items() if names - anchors}
    assert unknown == {}


def test_the_architecture_page_names_every_module_in_its_package() -> None:
    rows = {
        cells[1].strip(" `"): cells[3]
        for line in (REPO / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("| `app/") and len(cells := line.split("|")) > 4
    }
    for package in sorted(path for path in (REPO / "app").iterdir() if (path / "__init__.py").is_file()):
        row = rows.get(f"app/{package.name}/")
        assert row is not None, f"app/{package.name}/ has no row in docs/architecture.md"
        for module in sorted(package.glob("*.py")):
            if module.name != "__init__.py":
                assert f"`{module.stem}`" in row, f"{module} is missing from its row in docs/architecture.md"
    shared = rows["app/"]
    for module in sorted((REPO / "app").glob("*.py")):
        if module.name != "__init__.py":
            assert f"`{module.stem}`" in shared, f"{module} is missing from docs/architecture.md"


def test_the_readme_is_a_front_page() -> None:
    # What the service is, the commands, a tour, examples and links: the reference is the site.
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    text = "\n".join(lines)
    assert text.index("make run") < text.index("```python"), "the commands come first"
    assert 'addEventListener("ADDED"' in text


def test_each_default_in_the_configuration_table_is_the_codes() -> None:
    # The table's default, read by the setting's own parser, must be the field's default: a
    # default changed in app/settings.py and not here (or the reverse) fails.
    import dataclasses

    from app.settings import SETTINGS, Settings

    defaults = {field.name: field.default for field in dataclasses.fields(Settings)}
    cells = {
        cells[1].strip(" `"): cells[2].strip()
        for line in (REPO / "docs" / "configuration.md").read_text().splitlines()
        if line.startswith("| `SESSIONS_") and len(cells := line.split("|")) > 3
    }
    for setting in SETTINGS:
        cell = cells[setting.variable]
        if setting.unset is not None:
            assert cell == f"`{setting.unset}`", setting.variable
        elif cell == "unset":
            assert defaults[setting.field] in (None, (), frozenset()), setting.variable
        else:
            assert setting.parse(cell.strip("`")) == defaults[setting.field], (setting.variable, cell)
