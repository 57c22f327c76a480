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


def test_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    """The README's in-memory Python API example, executed verbatim (in a temporary working directory)."""
    text = README.read_text()
    start, end = "<!-- api-example:start -->\n```python\n", "```\n<!-- api-example:end -->"
    assert start in text and end in text, "README lost its api-example markers"
    code = text.split(start, 1)[1].split(end, 1)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md:api-example", "exec"), scope)
    summary = scope["summary"]
    assert summary["steps"] == 2 and summary["eval_before"] is not None and summary["eval_after"] is not None
    assert (tmp_path / "runs" / "api-example" / "metrics.jsonl").is_file()
    config = (tmp_path / "runs" / "api-example" / "config.yaml").read_text()
    assert "readme_example:ends_with_answer" in config  # the callable is named in the run's config
