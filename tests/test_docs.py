"""The docs: the README stays short and links only inside the repository, the site builds with
`mkdocs build --strict`, and the generated pages (configuration and API reference, benchmarks)
are what the code gives now."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from kit.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_docs  # noqa: E402
import render_bench  # noqa: E402

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def test_the_readme_is_short_and_links_only_to_files_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    targets = LINK.findall(readme)
    assert targets, "the README links into the docs"
    for target in targets:
        if target.startswith("https://"):
            continue
        assert not re.match(r"^[a-z]+:|^/|^~", target), f"README links outside the repo: {target}"
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"README links to {target}"


def test_every_docs_page_is_in_the_site_and_links_only_inside_it() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(str(page.relative_to(ROOT / "docs")) for page in (ROOT / "docs").rglob("*.md"))
    assert [page for page in pages if f": {page}\n" not in nav] == []
    for page in (ROOT / "docs").rglob("*.md"):
        for target in LINK.findall(page.read_text()):
            assert not re.match(r"^/|^~|^file:", target), f"{page.name} links to {target}"
            assert "../" not in target, f"{page.name} links out of docs/: {target}"


def test_the_site_builds_with_strict_checks(tmp_path: Path) -> None:
    """Strict: a broken link, a missing anchor or a page out of the nav fails the build."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1",
                                            "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    concepts = (tmp_path / "site" / "concepts" / "index.html").read_text()
    assert concepts.count('class="mermaid"') >= 2, "the diagrams are mermaid fences"
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "/api/v1/domains/{hostname}" in api
    assert (tmp_path / "site" / "reference" / "openapi.json").exists()


def test_the_generated_pages_are_current() -> None:
    """`python3 scripts/gen_docs.py` after changing a setting or an API operation."""
    assert gen_docs.stale() == []


def test_the_api_reference_is_the_document_the_app_serves(client: FlaskClient) -> None:
    served = client.get("/api/v1/openapi.json").get_json()
    committed = json.loads((ROOT / "docs" / "reference" / "openapi.json").read_text())
    assert served == committed
    page = (ROOT / "docs" / "reference" / "api.md").read_text()
    for path, methods in served["paths"].items():
        for method in methods:
            assert f"### `{method.upper()} {path}`" in page
    for name in served["components"]["schemas"]:
        assert f"### {name}\n" in page


def configuration_names() -> list[str]:
    """The setting names in the first column of the configuration reference's tables."""
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])]


def test_the_configuration_reference_names_every_setting_once() -> None:
    declared = [field.name for field in dataclasses.fields(Settings)]
    documented = configuration_names()
    assert sorted(documented) == sorted(declared)
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    assert "| `api_token` 🔒 | `EDGE_API_TOKEN` | required by `serve` |" in page
    assert "| `claim_ttl_seconds` | `EDGE_CLAIM_TTL_SECONDS` | 604800 (7 days) |" in page


def test_a_setting_needs_a_meaning_and_a_note_needs_a_setting(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    notes = gen_docs.NOTES.read_text()
    wrong = tmp_path / "settings.toml"
    wrong.write_text(notes + '\n[[setting]]\nsection = "x"\nnames = ["no_such"]\nmeaning = "m"\n')
    monkeypatch.setattr(gen_docs, "NOTES", wrong)
    with pytest.raises(ValueError, match="no_such"):
        gen_docs.settings_rows()
    wrong.write_text(notes.replace('names = ["sweep_batch"]', 'names = []'))
    docstrings = gen_docs.field_docstrings()
    assert "sweep_batch" in docstrings  # so it is still documented, by its docstring
    rows = gen_docs.settings_rows()
    assert {"section": "Other settings", "names": ["sweep_batch"]}.items() <= rows[-1].items()
    monkeypatch.setattr(gen_docs, "field_docstrings", lambda: {})
    with pytest.raises(ValueError, match="sweep_batch has no meaning"):
        gen_docs.settings_rows()


def test_the_benchmarks_page_is_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_bench.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "from `bench/results.json`" in page and "### edge_apply" in page, \
        "the committed run_all results are on the page"


def test_bench_results_render_with_their_conditions_and_keep_the_legacy_figures(
        tmp_path: Path) -> None:
    """What `python3 scripts/render_bench.py RESULTS.jsonl` does with run_all's lines."""
    conditions = {"date": "2026-12-04 21:00 UTC", "commit": "abc1234", "haproxy": "2.6.12",
                  "openssl": "OpenSSL 3.0.15", "python": "3.11.7", "cores": 2,
                  "load_average": 0.42}
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in (
        {"bench": "edge_apply", "conditions": conditions, "figures": {
            "hot apply p50": {"value": 14.8, "unit": "ms", "baseline": 3300, "ratio": 224},
            "applies": 50}},
        {"bench": "dns_check", "conditions": {**conditions, "commit": "def5678"},
         "figures": {"round": {"value": 19.2, "unit": "s", "threads": 8}}})) + "\n")
    out = tmp_path / "benchmarks.md"
    out.write_text("# old\n\nreplaced\n\n" + render_bench.LEGACY + "\n\nkept by hand\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_bench.py"),
                           str(results), "--out", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "replaced" not in page and page.endswith(render_bench.LEGACY + "\n\nkept by hand\n")
    assert ("| hot apply p50 | 14.8 | ms | 3,300 | 224 | 2026-12-04 21:00 UTC | `abc1234` | "
            "HAProxy 2.6.12, OpenSSL 3.0.15, Python 3.11.7 | 2 cores, load 0.42 |") in page
    assert "| applies | 50 |" in page
    assert '| round | 19.2 ({"threads": 8}) | s |' in page and "`def5678`" in page
    assert page.index("### dns_check") < page.index("### edge_apply")
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_bench.py"),
                            str(results), "--out", str(out), "--check"], timeout=60)
    assert check.returncode == 0
    results.write_text('{"bench": "x", "figures": {}}\n')
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_bench.py"),
                          str(results), "--out", str(out)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "lacks bench, conditions or figures" in bad.stderr
