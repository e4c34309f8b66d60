"""The documentation stays true: the settings page is the code's, the API examples run, and
nothing the user reads cites a file they do not have."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_settings_page_is_generated_from_the_code():
    from dbm_ltr.cli import settings_page

    assert (DOCS / "settings.md").read_text() == settings_page(), (
        "docs/settings.md is out of date: regenerate it with dbm-ltr settings > docs/settings.md"
    )


def test_every_setting_is_documented():
    import dataclasses

    from dbm_ltr.engine.config import _SECTIONS

    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help text"


def test_the_api_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.S)
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md, example {i + 1}", "exec"), {"__name__": f"api_example_{i}"})


def test_the_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md, example {i + 1}", "exec"), {"__name__": f"readme_example_{i}"})


def test_no_user_facing_text_cites_the_internal_spec():
    texts = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "src").rglob("*.py"), *(ROOT / "src").rglob("*.yaml")]
    cited = [str(p.relative_to(ROOT)) for p in texts if re.search(r"\bSPEC\b", p.read_text())]
    assert not cited, f"cite the paper or the docs, not SPEC: {cited}"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import mkdocs"], capture_output=True).returncode != 0,
    reason="mkdocs not installed for this Python (the test runs it as python -m mkdocs)",
)
def test_the_site_builds_in_strict_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
