"""The README's configuration reference is generated from config.py: keep the two in sync."""
from pathlib import Path

from gmpo.config import markdown_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    assert start in text and end in text, "README lost its config-reference markers"
    current = text.split(start, 1)[1].split(end, 1)[0]
    assert current == markdown_reference(), (
        "README config reference is stale: regenerate it with "
        "python -c 'from gmpo.config import markdown_reference as m; print(m())'"
    )


def test_readme_quick_start_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
