"""The README's results block is generated from the records: it follows them, and says what they say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mbkit.provenance import ROOT
from mbkit.study.headline import END, START, headline, update_readme


@pytest.fixture()
def results(tmp_path) -> Path:
    shutil.copytree(ROOT / "results", tmp_path / "results")
    return tmp_path / "results"


def test_the_block_follows_the_records(results):
    before = headline(results)
    path = results / "04_method_comparison.json"
    record = json.loads(path.read_text())
    vanilla = next(r for r in record["table"] if r["method"] == "Vanilla")
    vanilla["ndcg@10_mean"] = 0.5
    path.write_text(json.dumps(record))
    after = headline(results)
    assert after != before and "| Vanilla | 0.5000 ±" in after


def test_the_block_names_every_method_with_its_interval(results):
    record = json.loads((results / "04_method_comparison.json").read_text())
    text = headline(results)
    for row in record["table"]:
        assert f"| {row['method']} |" in text
    for change in record["paired_tests"]:
        assert f"[{change['ci_low_pct']:+.1f} %".replace("-", "−") in text, change["method"]


def test_update_readme_rewrites_only_the_block(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nstale\n{END}\noutro\n")
    assert update_readme(readme, results) is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert update_readme(readme, results) is False  # nothing left to change
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="has no results block"):
        update_readme(readme, results)
