"""README results splicing: replace, idempotent, missing markers, --check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medk2n.benchmarks.cli import cli
from medk2n.benchmarks.readme import BEGIN, END, demote, result_files, splice, update_readme
from medk2n.errors import MedK2NError

STAMP = {"cpu": "Test CPU", "logical_cpus": 2, "physical_cores": None, "threads": 2, "gpu": [],
         "versions": {"python": "3.11.7"}, "date": "2026-01-02T03:04:05+00:00"}
README = f"# medk2n\n\nIntro.\n\n## Results\n\n{BEGIN}\nold numbers typed by hand\n{END}\n\n## Licence\n"


@pytest.fixture
def project(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "latency.md").write_text("# Latency\n\n## Per backend\n\n| a | b |\n")
    (results / "latency.json").write_text(json.dumps({"machine": STAMP}))
    (results / "latency.png").write_bytes(b"png")
    (results / "latency-h100.md").write_text("# Latency (h100)\n\nrow\n")
    (results / "quality.md").write_text("# Quality\n\n```\n# not a heading\n```\n")
    (results / "quality.png").write_bytes(b"png")
    (results / "quality_examples.png").write_bytes(b"png")
    (results / "quality-h100.md").write_text("# Quality (h100)\n\nrow\n")
    (results / "quality-h100.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return results, readme


def test_splice_replaces_only_between_markers():
    out = splice(README, "NEW")
    assert out == f"# medk2n\n\nIntro.\n\n## Results\n\n{BEGIN}\nNEW\n{END}\n\n## Licence\n"
    assert splice(out, "NEW") == out


@pytest.mark.parametrize("text", ["no markers", f"{BEGIN}\nx\n", f"{END}\n{BEGIN}\n", f"{BEGIN}{BEGIN}{END}"])
def test_splice_needs_one_ordered_marker_pair(text):
    with pytest.raises(MedK2NError, match="BEGIN RESULTS"):
        splice(text, "x")


def test_demote_skips_code_fences():
    assert demote("# A\n```\n# b\n```\n## C") == "### A\n```\n# b\n```\n#### C"


def test_update_readme_content_and_idempotence(project):
    results, readme = project
    assert update_readme(results, readme) is True
    text = readme.read_text()
    section = text.split(BEGIN)[1].split(END)[0]
    assert "old numbers" not in section
    assert text.startswith("# medk2n\n") and text.endswith(f"{END}\n\n## Licence\n")
    order = [section.index(s) for s in ("### Latency\n", "### Latency (h100)", "### Quality\n", "### Quality (h100)")]
    assert order == sorted(order)
    assert "#### Per backend" in section and "# not a heading" in section
    assert "![latency](benchmarks/results/latency.png)" in section
    # each result file shows its own figures, not another tag's
    quality = section.split("### Quality\n")[1].split("### Quality (h100)")[0]
    assert "![quality](benchmarks/results/quality.png)" in quality
    assert "![quality_examples](benchmarks/results/quality_examples.png)" in quality
    assert "quality-h100.png" not in quality and "![quality-h100](benchmarks/results/quality-h100.png)" in section
    assert "Source: [latency.md](benchmarks/results/latency.md)" in section
    assert "Machine: Test CPU (2 logical CPUs, 2 threads used)" in section
    assert update_readme(results, readme) is False
    assert readme.read_text() == text


def test_cli_check_and_errors(project):
    results, readme = project
    args = ["readme", "--results", str(results), "--readme", str(readme)]
    stale = CliRunner().invoke(cli, args + ["--check"])
    assert stale.exit_code == 1 and "out of date" in stale.stderr
    assert readme.read_text() == README  # --check writes nothing
    assert CliRunner().invoke(cli, args).exit_code == 0
    fresh = CliRunner().invoke(cli, args + ["--check"])
    assert fresh.exit_code == 0, fresh.output

    readme.write_text("# no markers\n")
    broken = CliRunner().invoke(cli, args)
    assert broken.exit_code == 2
    assert broken.stderr.startswith("error: ") and "BEGIN RESULTS" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1 and "Traceback" not in broken.output


def test_no_results_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(MedK2NError, match="no latency"):
        update_readme(tmp_path, readme)


def test_committed_readme_quotes_the_committed_results():
    """The README's results section is what `medk2n-bench readme` makes of benchmarks/results/ (never hand-typed)."""
    root = Path(__file__).resolve().parents[2]
    results = root / "benchmarks" / "results"
    if not results.is_dir() or not result_files(results):
        pytest.skip("no committed benchmark results yet")
    assert not update_readme(results, root / "README.md", check=True), "README is stale: run `medk2n-bench readme`"


def test_demo_results_are_committed_with_a_machine_stamp_and_quoted_first(tmp_path):
    from medk2n.benchmarks.demo_results import commit_demo
    from medk2n.benchmarks.readme import results_section

    eval_dir, results = tmp_path / "demo" / "eval", tmp_path / "results"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps({"summary": {"model": {}}, "subjects": []}))
    (eval_dir / "metrics.md").write_text("### bundle: demo table\n\n| target | model |\n")
    (eval_dir / "metrics_risk_coverage.png").write_bytes(b"\x89PNG fake")
    written = commit_demo(eval_dir / "metrics.json", results)
    assert sorted(p.name for p in written) == ["demo.json", "demo.md", "demo_risk_coverage.png"]
    assert "machine" in json.loads((results / "demo.json").read_text())
    (results / "latency.md").write_text("## Latency\n")
    section = results_section(results, tmp_path / "README.md")
    assert section.index("demo table") < section.index("Latency")
    assert "demo_risk_coverage.png" in section and "Machine:" in section
    with pytest.raises(MedK2NError, match="not found"):
        commit_demo(tmp_path / "nowhere" / "metrics.json", results)
