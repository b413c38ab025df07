"""The documentation site builds as `make docs` builds it: `mkdocs build --strict`, where a link to a page or
file that does not exist, or an anchor no heading defines, fails the build.

`make test` installs the `docs` extra (mkdocs-material, mkdocstrings) for this; without it these tests are
skipped with the command that installs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INSTALL = "the docs extra is not installed: make install-docs (or pip install -e '.[docs]')"


def _mkdocs(cwd: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=cwd,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def tools():
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=INSTALL)


def test_the_site_builds_strictly(tools, tmp_path):
    site = tmp_path / "site"
    proc = _mkdocs(REPO, site)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    for item in config["nav"]:
        name = next(iter(item.values()))
        built = site / ("index.html" if name == "index.md" else f"{name[:-3]}/index.html")
        assert built.is_file(), name
    api = (site / "api" / "index.html").read_text()
    assert "varlit.pipeline.Pipeline" in api and "varlit.tuning.freeze" in api  # from the docstrings
    assert (site / "world_demo.png").is_file()  # the pictures stay in docs/ and reach the site
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "varlit benchmarks" in benchmarks  # bench/RESULTS.md, included


def test_a_broken_link_or_anchor_fails_the_build(tools, tmp_path):
    """The site's own validation settings turn a dead link or anchor into a failed build."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[there](other.md#no-such-heading)\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A heading\n\n[nowhere](missing.md)\n")
    small = {
        "site_name": "t",
        "strict": config["strict"],
        "validation": config["validation"],
        "nav": [{"Home": "index.md"}, {"Other": "other.md"}],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    proc = _mkdocs(tmp_path, tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-heading" in proc.stderr and "missing.md" in proc.stderr, proc.stderr[-2000:]
