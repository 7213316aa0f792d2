"""The versions the package claims are the ones CI proves (issue 18): setup.py's
floors and classifiers, the pins, scripts/buildbot-matrix.sh and the docs'
table all agree with supported-versions.txt."""

from __future__ import annotations

import re
import runpy
from typing import Any

import pytest
import setuptools

from buildbot_furl.testing.procs import ROOT


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _supported() -> tuple[list[str], list[dict[str, str]]]:
    """(the Pythons, one {name: version} per virtualenv line)."""
    pythons, lines = [], []
    for line in (ROOT / "supported-versions.txt").read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["python"]:
            pythons.append(words[1])
        elif words:
            assert len(words) % 2 == 0, f"supported-versions.txt: {line!r}"
            lines.append(dict(zip(words[::2], words[1::2])))
    return pythons, lines


def _pins() -> dict[str, str]:
    pins = {}
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in (ROOT / name).read_text().splitlines():
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


@pytest.fixture
def metadata(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What setup.py hands setuptools, taken in-process (no build)."""
    got: dict[str, Any] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: got.update(kw))
    monkeypatch.chdir(ROOT)  # as pip runs it
    runpy.run_path(str(ROOT / "setup.py"))
    return got


def _requirement(metadata: dict[str, Any], name: str) -> str:
    reqs = [*metadata["install_requires"], *metadata["extras_require"]["buildbot"]]
    found = [r[len(name):] for r in reqs if re.match(rf"{re.escape(name)}[<>=!~]", r, re.I)]
    assert len(found) == 1, f"setup.py: {name}: {found}"
    return found[0]


def test_one_line_is_exactly_the_pins() -> None:
    """The main suite's line: what requirements*.txt install."""
    pins = _pins()
    _, lines = _supported()
    pinned = [line for line in lines if all(pins.get(n.lower()) == v for n, v in line.items())]
    assert len(pinned) == 1, f"no line of supported-versions.txt is the pins {pins}"
    assert {"buildbot", "buildbot-worker", "twisted"} <= set(pinned[0])


@pytest.mark.parametrize("name", ["buildbot", "buildbot-worker", "twisted"])
def test_setup_floors_are_the_lowest_versions_tested(metadata: dict[str, Any],
                                                     name: str) -> None:
    _, lines = _supported()
    tested = [line[name] for line in lines if name in line]
    assert len(tested) == len(lines), f"every line names its {name}"
    spec = _requirement(metadata, name)
    assert f">={min(tested, key=_key)}" in spec.split(","), spec
    if name != "twisted":  # calendar versions: no upper bound
        high = max(tested, key=_key)
        assert f"<{_key(high)[0] + 1}" in spec.split(","), spec


def test_python_classifiers_are_the_pythons_tested(metadata: dict[str, Any]) -> None:
    pythons, _ = _supported()
    classified = [c.rsplit(" :: ", 1)[1] for c in metadata["classifiers"]
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert sorted(classified) == sorted(pythons)
    assert metadata["python_requires"] == f">={min(pythons, key=_key)}"


def test_the_versions_file_is_in_the_sdist() -> None:
    """setup.py reads it when a wheel is built from the sdist."""
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert re.search(r"^include .*\bsupported-versions\.txt\b", manifest, re.M)


def test_the_matrix_runs_every_test_of_buildbot_code() -> None:
    """A test file that imports Buildbot's master code or the plugin is in
    the matrix's tier (all but the cluster's and the soak's)."""
    script = (ROOT / "scripts" / "buildbot-matrix.sh").read_text()
    tier = set(re.search(r"^TIER=\((.*?)^\)", script, re.M | re.S).group(1).split())
    uses = re.compile(r"^\s*(from buildbot(\.\w+)* import|import buildbot\b"
                      r"|from buildbot_furl\.buildbot\b|from buildbot_furl import buildbot\b)",
                      re.M)
    want = {str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").rglob("test_*.py"))
            if uses.search(p.read_text())}
    want -= {"tests/system/test_cluster.py", "tests/system/test_soak.py"}
    assert want - tier == set(), "not in scripts/buildbot-matrix.sh's TIER"
    assert all((ROOT / t).is_file() for t in tier)


def test_the_docs_table_shows_every_line() -> None:
    """docs/install.md's table names every version CI proves."""
    doc = (ROOT / "docs" / "install.md").read_text()
    section = doc.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    pythons, lines = _supported()
    for python in pythons:
        assert python in section
    for line in lines:
        for name, version in line.items():
            row = [r for r in section.splitlines() if r.lower().startswith(f"| {name} |")]
            assert row and version in row[0], f"docs/install.md: {name} {version}"
