"""card@<model>: metrics + params + provenance -> model_cards/<model>/README.md (Hub front matter + Jinja body).

The ``model-index`` mirrors the published cards: one result per NanoBEIR set (task
``py-late-information-retrieval`` / ``sparse-information-retrieval``) and one for the mean (task
``nano-beir`` / ``sparse-nano-beir``, dataset ``NanoBEIR mean``), metric names title-cased from their types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from retrievers import models
from retrievers.config import ModelConfig

MEAN = "NanoBEIR_mean"


@dataclass(frozen=True)
class CardStyle:
    per_set_task: tuple[str, str]
    mean_task: tuple[str, str]
    library_name: str
    pipeline_tag: str
    tags: tuple[str, ...]
    metric_order: tuple[str, ...] = field(default=())


def card_style(kind: str) -> CardStyle:
    """The front-matter style of a kind's published card (``CARD_STYLE`` of its module in retrievers.models)."""
    return CardStyle(**models.kind_module(kind).CARD_STYLE)


def metric_display_name(metric_type: str) -> str:
    """'MaxSim_ndcg@10' -> 'Maxsim Ndcg@10', 'query_active_dims' -> 'Query Active Dims' (sentence-transformers'
    model card rule, which both published cards follow)."""
    return metric_type.replace("_", " ").title()


def format_value(value: float) -> str:
    """A table cell as sentence-transformers' cards write it: rounded to 4 decimals, no padding (0.6, 1.0)."""
    return str(round(value, 4)) if isinstance(value, float) else str(value)


def metric_tables(metrics: dict[str, float]) -> dict[str, str]:
    """The card's two evaluation tables, laid out as sentence-transformers' model cards lay them out
    (``transformers.modelcard.make_markdown_table``; the primary metric, nDCG@10, in bold):
    ``per_set`` (one column per NanoBEIR set) and ``mean`` (NanoBEIR mean)."""
    from transformers.modelcard import make_markdown_table

    table = split_metrics(metrics)
    sets = [name for name in table if name != MEAN]

    def cell(metric: str, value: float) -> str:
        text = format_value(value)
        return f"**{text}**" if metric.endswith("_ndcg@10") else text

    def label(metric: str) -> str:
        return f"**{metric}**" if metric.endswith("_ndcg@10") else metric

    tables = {}
    if sets:
        lines = [{"Metric": label(m)} | {s: cell(m, table[s][m]) for s in sets} for m in table[sets[0]]]
        tables["per_set"] = make_markdown_table(lines).replace("-:|", "--|")
    if MEAN in table:
        lines = [{"Metric": label(m), "Value": cell(m, v)} for m, v in table[MEAN].items()]
        tables["mean"] = make_markdown_table(lines).replace("-:|", "--|")
    return tables


def eval_result_entries(metrics: dict[str, float], datasets: dict[str, tuple[str, str | None]]) -> list[dict]:
    """huggingface_hub's ``.eval_results/*.yaml`` entries (``EvalResultEntry``): nDCG@10 per NanoBEIR set, with
    the benchmark dataset and revision it was computed on. ``datasets`` maps a set ('NanoSciFact') to
    (dataset id, revision)."""
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    entries = []
    for dataset, values in split_metrics(metrics).items():
        ndcg = [(m, v) for m, v in values.items() if m.endswith("_ndcg@10")]
        if dataset == MEAN or not ndcg or dataset not in datasets:
            continue
        dataset_id, revision = datasets[dataset]
        entries.append(
            EvalResultEntry(dataset_id=dataset_id, task_id=dataset, value=ndcg[0][1], dataset_revision=revision,
                            notes=ndcg[0][0])
        )
    return eval_result_entries_to_yaml(entries)


def split_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Flat evaluator keys ('NanoSciFact_dot_ndcg@10', 'NanoBEIR_mean_dot_ndcg@10') -> {set: {metric: value}}."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(MEAN + "_"):
            dataset, metric = MEAN, key[len(MEAN) + 1 :]
        else:
            dataset, _, metric = key.partition("_")
        if not dataset.startswith("Nano") or not metric:
            continue
        table.setdefault(dataset, {})[metric] = value
    return table


def flat_metrics(results: list[dict]) -> dict[str, float]:
    """The evaluator's flat keys ('NanoSciFact_dot_ndcg@10', 'NanoBEIR_mean_dot_ndcg@10') of model-index results,
    as floats, as the evaluators return them (the Hub page's YAML shows 1.0 as 1)."""
    return {
        f"{result['dataset']['type']}_{metric['type']}": float(metric["value"])
        for result in results
        for metric in result["metrics"]
    }


def eval_results(kind: str, metrics: dict[str, float]):
    from huggingface_hub import EvalResult

    style, results = card_style(kind), []
    for dataset, values in split_metrics(metrics).items():
        task_type, task_name = style.mean_task if dataset == MEAN else style.per_set_task
        name = "NanoBEIR mean" if dataset == MEAN else dataset
        for metric, value in values.items():
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=dataset,
                    dataset_name=name,
                    metric_type=metric,
                    metric_value=value,
                    metric_name=metric_display_name(metric),
                )
            )
    return results


def card_data(
    model: ModelConfig, metrics: dict[str, float], base_model: str | None, datasets: list[str],
    dataset_size: int | None, loss_tags: tuple[str, ...] | list[str] = (),
):
    """huggingface_hub's ModelCardData of a card: the kind's style, the losses train@ recorded
    (``loss:<Class>`` tags, as sentence-transformers tags its cards), sizes, datasets and the eval results."""
    from huggingface_hub import ModelCardData

    style = card_style(model.kind)
    tags = list(style.tags) + list(loss_tags) + ([f"dataset_size:{dataset_size}"] if dataset_size else [])
    per_set = split_metrics(metrics)
    metric_types = list(next(iter(per_set.values())).keys()) if per_set else []
    return ModelCardData(
        language=["en"],
        license="apache-2.0",
        library_name=style.library_name,
        tags=tags,
        base_model=base_model,
        datasets=datasets,
        pipeline_tag=style.pipeline_tag,
        metrics=metric_types,
        model_name=model.title,
        eval_results=eval_results(model.kind, metrics),
    )


def front_matter(
    model: ModelConfig, metrics: dict[str, float], base_model: str | None, datasets: list[str],
    dataset_size: int | None, loss_tags: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    return yaml.safe_load(card_data(model, metrics, base_model, datasets, dataset_size, loss_tags).to_yaml())


def describe_architecture(model_dir: Path, kind: str) -> str:
    """The module stack of a saved model, in the libraries' repr style, read from its files (no model load)."""
    import json

    modules = json.loads((model_dir / "modules.json").read_text())
    lines = [f"{models.kind_module(kind).ARCHITECTURE_NAME}("]
    for module in modules:
        folder = model_dir / module["path"]
        name = module["type"].rsplit(".", 1)[-1]
        if (folder / "sentence_bert_config.json").exists():
            settings = json.loads((folder / "sentence_bert_config.json").read_text())
            settings = {k: v for k, v in settings.items() if k in ("max_seq_length", "do_lower_case")}
            settings["architecture"] = json.loads((folder / "config.json").read_text())["architectures"][0]
        else:
            settings = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        lines.append(f"  ({module['idx']}): {name}({settings!r})")  # the libraries' repr, as the published cards
    return "\n".join(lines + [")"])


def render_card(
    templates: Path,
    model_key: str,
    model: ModelConfig,
    context: dict[str, Any],
    metrics: dict[str, float],
    base_model: str | None,
    datasets: list[str],
    dataset_size: int | None,
    loss_tags: list[str],
) -> str:
    """The card: the card data as front matter (through huggingface_hub's ModelCard) over the kind's template."""
    from huggingface_hub import ModelCard

    env = Environment(
        loader=FileSystemLoader(templates),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    matter = front_matter(model, metrics, base_model, datasets, dataset_size, loss_tags)
    sets = [name for name in split_metrics(metrics) if name != MEAN]
    body = env.get_template(f"{model.kind}.md.j2").render(
        key=model_key, model=model, sets=sets, tables=metric_tables(metrics), style=card_style(model.kind), **context
    )
    card = ModelCard("---\n" + yaml.safe_dump(matter, sort_keys=False, allow_unicode=True) + "---\n\n" + body)
    return str(card)
