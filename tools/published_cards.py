"""The published cards' evaluation results, extracted into ``model_cards/published/<model>.metrics.yaml``.

The copies in ../shared/reference-cards lost their indentation (the front matter is no longer valid YAML) and,
for the XTR card, their Markdown (a page's text). The extracts keep what the golden test compares: the
architecture block, every ``model-index`` result (task, dataset, metrics with type, value and name) and the
evaluation tables as cells.
``python -m tools.published_cards ../shared/reference-cards`` (``make published-metrics``) regenerates them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from tools.hyperparameters import PUBLISHED, PUBLISHED_DIR

KEY_VALUE = re.compile(r"^\s*(?:-\s+)?([A-Za-z_-]+):\s*(.*?)\s*$")


def _scalar(text: str):
    return yaml.safe_load(text) if text else None


def parse_model_index(card_text: str) -> tuple[str | None, list[dict]]:
    """(model-index name, results) from a card's front matter, read line by line (indentation is lost)."""
    lines = card_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "model-index:")
    name: str | None = None
    results: list[dict] = []
    section: str | None = None
    for line in lines[start + 1 :]:
        match = KEY_VALUE.match(line)
        if not match:
            break
        key, value = match.group(1), match.group(2)
        if key == "name" and name is None:
            name = _scalar(value)
        elif key == "task":
            results.append({"task": {}, "dataset": {}, "metrics": []})
            section = "task"
        elif key in ("dataset", "metrics"):
            section = key
        elif section in ("task", "dataset"):
            results[-1][section][key] = _scalar(value)
        elif section == "metrics":
            if key == "type":
                results[-1]["metrics"].append({})
            results[-1]["metrics"][-1][key] = _scalar(value)
    return name, results


def _cells(line: str) -> list[str]:
    if line.startswith("|"):
        return [cell.strip() for cell in line.strip().strip("|").split("|")]
    return line.split()


def parse_tables(card_text: str) -> list[list[list[str]]]:
    """Every evaluation table (header row first) after the card's 'Evaluation' heading, as cells.

    Markdown tables ('| Metric | ...') and their plain-text renderings ('Metric NanoSciFact ...') both count;
    separator rows ('|:---|') are dropped."""
    lines = card_text[card_text.index("Evaluation\n", card_text.index("model-index:")) :].splitlines()
    tables, current = [], None
    for line in lines:
        if re.match(r"^\|?\s*Metric\s*(\||\s)", line):
            current = [_cells(line)]
            tables.append(current)
        elif current is not None and line.strip() and not re.match(r"^\|[:\-| ]+\|$", line.strip()):
            cells = _cells(line)
            if len(cells) != len(current[0]):
                current = None
                continue
            current.append(cells)
        elif current is not None and not line.strip():
            current = None
        if "Training Details" in line:
            break
    return tables


def parse_architecture(card_text: str) -> str:
    """The 'Full Model Architecture' block ('ColBERT(' / 'SparseEncoder(' ... ')')."""
    lines = card_text[card_text.index("Full Model Architecture") :].splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^(ColBERT|SparseEncoder)\($", line.strip()))
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == ")")
    return "\n".join(line.strip() if i in (start, end) else "  " + line.strip()
                     for i, line in enumerate(lines[start : end + 1], start))


def extract(cards_dir: Path, out_dir: Path = PUBLISHED_DIR) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, (card, _) in PUBLISHED.items():
        text = (cards_dir / card).read_text()
        name, results = parse_model_index(text)
        data = {"card": card, "model_index_name": name, "architecture": parse_architecture(text), "results": results,
                "tables": parse_tables(text)}
        (out_dir / f"{model}.metrics.yaml").write_text(
            yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=200)
        )


def load(model: str, published_dir: Path = PUBLISHED_DIR) -> dict:
    return yaml.safe_load((published_dir / f"{model}.metrics.yaml").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cards_dir", type=Path, help="folder of the published cards (../shared/reference-cards)")
    extract(parser.parse_args(argv).cards_dir)


if __name__ == "__main__":
    main()
