"""Card generation against the published cards (golden test) and the committed extracts of them.

The published cards' metrics (``model_cards/published/<model>.metrics.yaml``, extracted from
../shared/reference-cards) go through the generator; the ``model-index`` results and the evaluation tables
that come out must equal the published ones. The XTR card's extract is the text of its Hub page, where the
Markdown emphasis is gone, so its table cells are compared without ``**``; the SPLADE card's are compared as
written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from retrievers.cards import describe_architecture, eval_result_entries, flat_metrics, front_matter, metric_tables
from retrievers.config import load_params
from tools.hyperparameters import PUBLISHED
from tools.published_cards import extract, load, parse_tables

REPO = Path(__file__).resolve().parents[1]
SHARED_CARDS = REPO.parent / "shared" / "reference-cards"
MODELS = list(PUBLISHED)


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def table_cells(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("|") and not re.match(r"^\|[:\-| ]+\|$", line)]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


@pytest.mark.parametrize("model_key", MODELS)
def test_published_metrics_give_the_published_model_index(model_key, params):
    published = load(model_key)
    metrics = flat_metrics(published["results"])
    model = params.models[model_key]
    matter = front_matter(model, metrics, base_model=None, datasets=[], dataset_size=None)
    (index,) = matter["model-index"]
    assert index["results"] == published["results"]
    assert matter["metrics"] == [m["type"] for m in published["results"][0]["metrics"]]


@pytest.mark.parametrize("model_key", MODELS)
def test_published_metrics_give_the_published_tables(model_key):
    published = load(model_key)
    tables = metric_tables(flat_metrics(published["results"]))
    ours = [table_cells(tables["per_set"]), table_cells(tables["mean"])]
    expected = published["tables"]
    if published["card"].endswith(".txt"):  # page text: emphasis lost
        ours = [[[cell.replace("**", "") for cell in row] for row in table] for table in ours]
    assert ours == expected


def test_eval_results_entries_are_the_hub_format():
    from huggingface_hub import parse_eval_result_entries

    metrics = {"NanoSciFact_dot_ndcg@10": 0.71, "NanoSciFact_dot_mrr@10": 0.68, "NanoBEIR_mean_dot_ndcg@10": 0.71}
    entries = eval_result_entries(metrics, {"NanoSciFact": ("sentence-transformers/NanoBEIR-en", "beb106f")})
    assert entries == [{"dataset": {"id": "sentence-transformers/NanoBEIR-en", "task_id": "NanoSciFact",
                                    "revision": "beb106f"}, "value": 0.71, "notes": "dot_ndcg@10"}]
    (parsed,) = parse_eval_result_entries(yaml.safe_load(yaml.safe_dump(entries)))
    assert (parsed.dataset_id, parsed.value) == ("sentence-transformers/NanoBEIR-en", 0.71)


@pytest.mark.skipif(not SHARED_CARDS.exists(), reason="../shared/reference-cards is not here")
def test_committed_extracts_match_the_published_cards(tmp_path):
    extract(SHARED_CARDS, tmp_path)
    for model_key in MODELS:
        name = f"{model_key}.metrics.yaml"
        assert (tmp_path / name).read_text() == (REPO / "model_cards" / "published" / name).read_text(), name


def test_table_parser_reads_markdown_and_page_text():
    text = "model-index:\nEvaluation\n| Metric | A | B |\n|:--|:--|:--|\n| m@1 | 0.5 | **1.0** |\n\nx\n"
    assert parse_tables(text) == [[["Metric", "A", "B"], ["m@1", "0.5", "**1.0**"]]]
    assert parse_tables("model-index:\nEvaluation\nMetric A B\nm@1 0.5 1.0\n\n") == [
        [["Metric", "A", "B"], ["m@1", "0.5", "1.0"]]
    ]


def write_module(folder: Path, config: dict, sentence_bert: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if sentence_bert is not None:
        (folder / "sentence_bert_config.json").write_text(json.dumps(sentence_bert))


@pytest.mark.parametrize("model_key", MODELS)
def test_architecture_block_is_written_as_the_published_cards(model_key, tmp_path):
    """A saved model folder of the published sizes (RECIPES.md) gives the published architecture block."""
    kind = "colbert" if model_key == "modernbert-xtr" else "splade"
    if kind == "colbert":
        modules = [("", "sentence_transformers.models.Transformer"), ("1_Dense", "pylate.models.Dense.Dense")]
        write_module(tmp_path, {"architectures": ["ModernBertModel"]}, {"max_seq_length": 512, "do_lower_case": False})
        write_module(tmp_path / "1_Dense", {"in_features": 768, "out_features": 128, "bias": False,
                                            "activation_function": "torch.nn.modules.linear.Identity",
                                            "use_residual": False})
    else:
        modules = [("", "sentence_transformers.sparse_encoder.models.MLMTransformer"),
                   ("1_SpladePooling", "sentence_transformers.sparse_encoder.models.SpladePooling")]
        write_module(tmp_path, {"architectures": ["NeoBERTLMHead"]}, {"max_seq_length": 256, "do_lower_case": False})
        write_module(tmp_path / "1_SpladePooling", {"pooling_strategy": "max", "activation_function": "relu",
                                                    "word_embedding_dimension": 30522})
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": kind_} for i, (path, kind_) in enumerate(modules)]
    ))
    assert describe_architecture(tmp_path, kind) == load(model_key)["architecture"]
