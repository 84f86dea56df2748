"""README and docs/results.md splicing: replace, idempotent, missing markers, relative links, --check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medk2n.benchmarks.cli import cli
from medk2n.benchmarks.readme import (BEGIN, END, demote, result_files, results_section, splice, update_all,
                                      update_readme, update_results_doc)
from medk2n.errors import MedK2NError

STAMP = {"cpu": "Test CPU", "logical_cpus": 2, "physical_cores": None, "threads": 2, "gpu": [],
         "versions": {"python": "3.11.7"}, "date": "2026-01-02T03:04:05+00:00"}
README = f"# medk2n\n\nIntro.\n\n## Results\n\n{BEGIN}\nold numbers typed by hand\n{END}\n\n## Licence\n"
DOC = f"# Benchmark results\n\nHow they were made.\n\n{BEGIN}\n{END}\n"
DEMO_MD = ("### bundle-fp32: flair+adc → dwi\n\n"
           "| target | method | masked_psnr |\n|---|---|---|\n| dwi | model | 16.2 |\n")


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


@pytest.fixture
def two_files(project):
    """The project with a committed demo and a docs/results.md: what `medk2n-bench readme` maintains."""
    results, readme = project
    (results / "demo.md").write_text(DEMO_MD)
    (results / "demo.json").write_text(json.dumps({"machine": STAMP, "summary": {}}))
    (results / "demo_risk_coverage.png").write_bytes(b"png")
    doc = readme.parent / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text(DOC)
    return results, readme, doc


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


def test_full_block_content_and_idempotence(two_files):
    """docs/results.md gets every result file, headings under its `#` title, links relative to docs/."""
    results, _, doc = two_files
    assert update_results_doc(results, doc) is True
    text = doc.read_text()
    section = text.split(BEGIN)[1].split(END)[0]
    assert text.startswith("# Benchmark results\n\nHow they were made.\n") and text.endswith(f"{END}\n")
    order = [section.index(s) for s in ("## Demo\n", "## Latency\n", "## Latency (h100)", "## Quality\n",
                                        "## Quality (h100)")]
    assert order == sorted(order)
    assert "### bundle-fp32: flair+adc" in section  # the demo table's own `###` sits one below its title
    assert "### Per backend" in section and "# not a heading" in section
    assert "from ../benchmarks/results;" in section
    assert "![latency](../benchmarks/results/latency.png)" in section
    assert "![demo_risk_coverage](../benchmarks/results/demo_risk_coverage.png)" in section
    # each result file shows its own figures, not another tag's
    quality = section.split("## Quality\n")[1].split("## Quality (h100)")[0]
    assert "![quality](../benchmarks/results/quality.png)" in quality
    assert "![quality_examples](../benchmarks/results/quality_examples.png)" in quality
    assert "quality-h100.png" not in quality and "![quality-h100](../benchmarks/results/quality-h100.png)" in section
    assert "Source: [latency.md](../benchmarks/results/latency.md)" in section
    assert "Machine: Test CPU (2 logical CPUs, 2 threads used)" in section
    assert update_results_doc(results, doc) is False
    assert doc.read_text() == text


def test_readme_block_is_the_demo_alone_and_links_the_full_page(two_files):
    results, readme, doc = two_files
    assert update_readme(results, readme, doc=doc) is True
    text = readme.read_text()
    section = text.split(BEGIN)[1].split(END)[0]
    assert "old numbers" not in section
    assert text.startswith("# medk2n\n") and text.endswith(f"{END}\n\n## Licence\n")
    assert "\n### bundle-fp32: flair+adc" in section and "Demo" not in section  # its own heading, under `## Results`
    assert "| dwi | model | 16.2 |" in section
    assert "Source: [demo.md](benchmarks/results/demo.md)" in section
    assert "Machine: Test CPU (2 logical CPUs, 2 threads used)" in section
    assert "![demo_risk_coverage](benchmarks/results/demo_risk_coverage.png)" in section
    assert "[docs/results.md](docs/results.md)" in section
    assert "Latency" not in section.split("[docs/results.md]")[0].split("Machine:")[0]  # no latency table here
    for other in ("latency", "quality"):
        assert f"{other}.md" not in section and f"{other}.png" not in section
    assert update_readme(results, readme, doc=doc) is False
    assert readme.read_text() == text


def test_readme_block_puts_the_demo_top_heading_under_results_whatever_its_level(two_files):
    results, readme, doc = two_files
    (results / "demo.md").write_text("# Demo run\n\n## Table\n\n```\n# not a heading\n```\n")
    update_readme(results, readme, doc=doc)
    section = readme.read_text().split(BEGIN)[1].split(END)[0]
    assert "\n### Demo run\n" in section and "\n#### Table\n" in section and "\n# not a heading\n" in section
    update_results_doc(results, doc)
    page = doc.read_text().split(BEGIN)[1].split(END)[0]
    assert "\n## Demo run\n" in page and "\n### Table\n" in page


def test_readme_without_a_committed_demo_still_links_the_results_page(project):
    results, readme = project
    doc = readme.parent / "docs" / "results.md"
    assert update_readme(results, readme) is True  # doc defaults to docs/results.md beside the README
    section = readme.read_text().split(BEGIN)[1].split(END)[0]
    assert "make demo-results" in section and "[docs/results.md](docs/results.md)" in section
    assert "latency" not in section.lower().split("latency, quality and robustness")[0]
    assert not doc.exists()


def test_update_all_writes_both_and_check_names_each_stale_file(two_files):
    results, readme, doc = two_files
    assert update_all(results, readme, doc, check=True) == [doc, readme]
    assert readme.read_text() == README and doc.read_text() == DOC  # --check writes nothing
    assert update_all(results, readme, doc) == [doc, readme]
    assert update_all(results, readme, doc, check=True) == []
    doc.write_text(doc.read_text().replace("16.2", "99.9"))  # hand-edited page: only it is stale
    assert update_all(results, readme, doc, check=True) == [doc]
    (results / "demo.md").write_text(DEMO_MD.replace("16.2", "17.0"))  # new demo: both are
    assert update_all(results, readme, doc, check=True) == [doc, readme]


def test_update_all_validates_both_files_before_writing_either(two_files, tmp_path):
    results, readme, doc = two_files
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedK2NError, match="no demo.md"):
        update_all(empty, readme, doc)
    assert readme.read_text() == README and doc.read_text() == DOC
    doc.write_text("# no markers\n")
    with pytest.raises(MedK2NError, match="BEGIN RESULTS"):
        update_all(results, readme, doc)
    assert readme.read_text() == README
    doc.unlink()
    with pytest.raises(MedK2NError, match="not found"):
        update_all(results, readme, doc)
    assert readme.read_text() == README


def test_cli_check_and_errors(two_files):
    results, readme, doc = two_files
    args = ["readme", "--results", str(results), "--readme", str(readme), "--results-doc", str(doc)]
    stale = CliRunner().invoke(cli, args + ["--check"])
    assert stale.exit_code == 1 and "out of date" in stale.stderr
    assert str(readme) in stale.stderr and str(doc) in stale.stderr
    assert readme.read_text() == README and doc.read_text() == DOC  # --check writes nothing
    assert CliRunner().invoke(cli, args).exit_code == 0
    fresh = CliRunner().invoke(cli, args + ["--check"])
    assert fresh.exit_code == 0, fresh.output
    assert "up to date" in fresh.output

    doc.write_text(doc.read_text().replace("16.2", "99.9"))
    one = CliRunner().invoke(cli, args + ["--check"])
    assert one.exit_code == 1 and str(doc) in one.stderr and str(readme) not in one.stderr

    readme.write_text("# no markers\n")
    broken = CliRunner().invoke(cli, args)
    assert broken.exit_code == 2
    assert broken.stderr.startswith("error: ") and "BEGIN RESULTS" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1 and "Traceback" not in broken.output


def test_cli_defaults_are_relative_to_the_current_directory(two_files, monkeypatch):
    results, readme, doc = two_files
    monkeypatch.chdir(readme.parent)
    assert CliRunner().invoke(cli, ["readme"]).exit_code == 0
    assert "[docs/results.md](docs/results.md)" in readme.read_text()
    assert "../benchmarks/results/latency.md" in doc.read_text()
    assert CliRunner().invoke(cli, ["readme", "--check"]).exit_code == 0


def test_no_results_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    for update in (lambda: update_readme(tmp_path, readme), lambda: update_results_doc(tmp_path, readme)):
        with pytest.raises(MedK2NError, match="no demo.md, latency"):
            update()


def test_committed_readme_and_results_page_quote_the_committed_results():
    """README.md's and docs/results.md's results blocks are what `medk2n-bench readme` makes of
    benchmarks/results/ (never hand-typed)."""
    root = Path(__file__).resolve().parents[2]
    results = root / "benchmarks" / "results"
    if not results.is_dir() or not result_files(results):
        pytest.skip("no committed benchmark results yet")
    doc = root / "docs" / "results.md"
    assert not update_results_doc(results, doc, check=True), "docs/results.md is stale: run `medk2n-bench readme`"
    assert not update_readme(results, root / "README.md", check=True, doc=doc), \
        "README is stale: run `medk2n-bench readme`"


def test_committed_readme_prose_agrees_with_the_committed_demo():
    """The README's hand-written reading of the demo table quotes its numbers: model vs best copy, masked PSNR."""
    root = Path(__file__).resolve().parents[2]
    demo = root / "benchmarks" / "results" / "demo.md"
    if not demo.is_file():
        pytest.skip("no committed demo results yet")
    prose = (root / "README.md").read_text().split(END, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in demo.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and (cells[1] == "model" or cells[1].endswith("(best copy)")):
            rows.setdefault(cells[0], {})["model" if cells[1] == "model" else "copy"] = float(cells[2].split()[0])
    assert rows, f"{demo}: no model / best copy rows"
    for target, row in rows.items():
        quoted = f"{row['model']:.2f} vs {row['copy']:.2f}"
        assert quoted in prose, f"README Results should say {target}: {quoted} (from {demo.name}); update the prose"


def test_demo_results_are_committed_with_a_machine_stamp_and_quoted_first(tmp_path):
    from medk2n.benchmarks.demo_results import commit_demo

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
