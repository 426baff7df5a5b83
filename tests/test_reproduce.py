"""`python -m retrievers.reproduce`: evaluate a published checkpoint as evaluate@ does and compare with its card.

The smoke pipeline's release bundles stand for published checkpoints: each carries a card whose
model-index the evaluate stage wrote, so evaluating the bundle again must reproduce every card value."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml

from retrievers.reproduce import card_metrics, compare

from .conftest import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["modernbert-xtr", "neobert-splade"])
def test_a_released_bundle_reproduces_every_number_on_its_card(smoke_run, tmp_path, model):
    output = tmp_path / "comparison.json"
    result = run(
        [sys.executable, "-m", "retrievers.reproduce", model, "--checkpoint", f"releases/{model}",
         "--tolerance", "0", "--output", str(output)],
        cwd=smoke_run.workspace, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())
    pipeline_metrics = json.loads((smoke_run.workspace / "metrics" / f"{model}.json").read_text())
    assert report["metrics"] == pipeline_metrics
    card_keys = {row["metric"] for row in report["comparison"]}
    assert len(card_keys) >= 45 and card_keys <= set(pipeline_metrics)
    assert all(row["diff"] == 0.0 for row in report["comparison"])


def test_a_card_that_overstates_a_metric_is_flagged(smoke_run, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(smoke_run.workspace / "releases" / "modernbert-xtr", bundle)
    readme = bundle / "README.md"
    _, front, body = readme.read_text().split("---\n", 2)
    meta = yaml.safe_load(front)
    mean = next(r for r in meta["model-index"][0]["results"] if r["dataset"]["type"] == "NanoBEIR_mean")
    ndcg = next(m for m in mean["metrics"] if m["type"] == "MaxSim_ndcg@10")
    ndcg["value"] += 0.1
    readme.write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{body}")

    measured = json.loads((smoke_run.workspace / "metrics" / "modernbert-xtr.json").read_text())
    rows = {row["metric"]: row for row in compare(measured, card_metrics(bundle))}
    assert rows["NanoBEIR_mean_MaxSim_ndcg@10"]["diff"] == pytest.approx(-0.1)
    assert sum(abs(row["diff"]) > 0 for row in rows.values()) == 1


def test_a_hub_checkpoint_without_hub_access_fails_in_one_line(smoke_run):
    result = run(
        [sys.executable, "-m", "retrievers.reproduce", "modernbert-xtr", "--checkpoint",
         "robro612/ModernBERT-XTR@0123456789abcdef0123456789abcdef01234567"],
        cwd=smoke_run.workspace, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "robro612/ModernBERT-XTR@0123456789abcdef" in lines[0] and "make smoke" in lines[0]
