"""The version lives in one place, the package metadata (pyproject.toml), and every place that
shows it shows that value: `python -m app --version`, /openapi.json and sessions_build_info."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest

from app import __version__
from tests.support import REPO, Server, start_server
from tests.support.ops import scrape


def _pyproject_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert isinstance(version, str)
    return version


VERSION = _pyproject_version()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("version")
    sessions = root / "sessions"
    shutil.copytree(REPO / "data" / "sessions", sessions)
    started = start_server(sessions, root)
    yield started
    started.stop()


def test_the_package_version_is_the_one_in_pyproject() -> None:
    assert __version__ == VERSION


def test_python_m_app_version_prints_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"python -m app {VERSION}"


def test_openapi_info_version_is_it(server: Server) -> None:
    assert server.get("/openapi.json").json()["info"]["version"] == VERSION


def test_build_info_metric_is_labelled_with_it(server: Server) -> None:
    samples = scrape(server).samples("sessions_build_info")
    assert samples == [({"version": VERSION}, 1.0)]


def test_the_changelog_names_it() -> None:
    # Keep a Changelog: a release section per version, the newest first after Unreleased.
    text = (REPO / "CHANGELOG.md").read_text()
    releases = [line for line in text.splitlines() if line.startswith("## [")]
    assert releases[0] == "## [Unreleased]"
    assert releases[1].startswith(f"## [{VERSION}] - "), releases[1]


def test_the_image_and_the_manifests_name_it() -> None:
    # An image is built and deployed by tag, and a tag cannot be read from the package: the
    # places that name one are checked against the package's version instead.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.findall(r'org\.opencontainers\.image\.version="([^"]+)"', dockerfile) == [VERSION]
    assert f"job-session-service:{VERSION} ." in dockerfile
    kubernetes = REPO / "deploy" / "kubernetes"
    assert f"job-session-service:{VERSION}\n" in (kubernetes / "deployment.yaml").read_text()
    assert f"newTag: {VERSION}\n" in (kubernetes / "kustomization.yaml").read_text()
