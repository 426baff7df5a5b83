"""Every training hyperparameter of a published card next to what params.yaml gives the trainer.

The published cards' hyperparameter lists are extracted once into ``model_cards/published/<model>.yaml``
(``--extract``, from the cards in ../shared/reference-cards) so that the comparison works in any clone.
``--write``/``--check`` render ``model_cards/hyperparameters.md``. The "ours" column is read from the real
``(Sentence|SparseEncoder)TrainingArguments`` object that ``train@<phase>`` builds, not from params.yaml
directly, so defaults the trainer fills in are compared too (``retrievers.cards.arguments``).
A developer tool: ``python -m tools.hyperparameters`` (``make hyperparameters``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from retrievers.cards.arguments import trainer_hyperparameters
from retrievers.config import Params, SpladePhase, load_params

PUBLISHED_DIR = Path("model_cards/published")

BULLET = re.compile(r"^\s*(?:•|-)\s*`?([A-Za-z_][A-Za-z0-9_]*)`?:\s*(.*?)\s*$")
SECTIONS = ("All Hyperparameters", "Non-Default Hyperparameters")


def card_hyperparameters(card_text: str) -> dict[str, str]:
    """The card's hyperparameter bullets: its 'All Hyperparameters' list if it has one, else 'Non-Default'."""
    for section in SECTIONS:
        start = card_text.find(section)
        if start < 0:
            continue
        values: dict[str, str] = {}
        for line in card_text[start:].splitlines()[1:]:
            match = BULLET.match(line)
            if match:
                values[match.group(1)] = match.group(2)
            elif values and line.strip() and not line.strip().startswith(("Click", "</", "<")):
                break
        if values:
            return values
    raise ValueError("no hyperparameter list found in the card")


def _same(card: str, ours: Any) -> bool:
    text = str(ours.value if hasattr(ours, "value") else ours)
    if card == text:
        return True
    try:
        return float(card) == float(text)
    except (TypeError, ValueError):
        return card.strip("'\"") == text.strip("'\"")


def comparison_rows(card_values: dict[str, str], ours: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, card_value in card_values.items():
        if name in ours:
            value = ours[name]
            mark = "same" if _same(card_value, value) else "differs"
            rows.append((name, card_value, str(value.value if hasattr(value, "value") else value), mark))
        else:
            rows.append((name, card_value, "(not a trainer argument here)", "n/a"))
    return rows


def splade_recipe(phase: SpladePhase) -> dict[str, Any]:
    """What train@<phase> does beyond TrainingArguments, in the words of the hand-written published recipe."""
    from transformers import AutoModelForMaskedLM

    from retrievers.models.neobert import NeoBERTConfig

    loss = {
        "mnrl": "SparseMultipleNegativesRankingLoss(scale=1.0, similarity_fct='dot_score')",
        "margin-mse": "SparseMarginMSELoss on the teacher scores",
        "distill-kldiv": "SparseDistillKLDivLoss on the teacher scores",
    }[phase.loss]
    if phase.muon is None:
        optimizer = "AdamW"
    else:
        muon = ", ".join(f"{k} {v}" for k, v in phase.muon.model_dump().items())
        optimizer = f"Muon (hidden 2-D matrices) + AdamW (the rest), through optimizers= [torch.optim.Muon: {muon}]"
    negatives = "sampled from the other scored documents, redrawn each epoch"
    return {
        # What the Auto class resolves model_type "neobert" to (registered on `import retrievers`).
        "architecture": AutoModelForMaskedLM._model_mapping[NeoBERTConfig].__name__,  # type: ignore[attr-defined]
        "max_seq_length": phase.splade.max_seq_length,
        "pooling_strategy": phase.splade.pooling_strategy,
        "activation_function": phase.splade.activation_function,
        "loss": loss,
        "query_regularizer_weight": phase.query_regularizer_weight,
        "document_regularizer_weight": phase.document_regularizer_weight,
        "regularizer_schedule": f"linear ramp from 0 over the first {phase.regularizer_warmup_ratio} of training",
        "train_samples": phase.max_train_samples,
        "eval_samples": phase.eval_samples,
        "teacher_scores": phase.teacher_scores,
        "positive": "highest teacher score",
        "negatives": f"{phase.n_negatives} {negatives}",
        "optimizer": optimizer,
        "learning_rate": phase.args.learning_rate,
        "weight_decay": phase.args.weight_decay,
        "lr_scheduler": phase.args.lr_scheduler_type,
    }


def recipe_rows(published: dict[str, dict], ours: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, fact in published.items():
        value = ours[name]
        same = _same(str(fact["published"]), value) or str(value).startswith(str(fact["published"]))
        rows.append((name, f"{fact['published']} ({fact['source']})", str(value), "same" if same else "differs"))
    return rows


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    out = ["| hyperparameter | published card | params.yaml -> trainer | |", "|:--|:--|:--|:--|"]
    out += [f"| `{n}` | `{c}` | `{o}` | {m} |" for n, c, o, m in rows]
    return "\n".join(out)


PUBLISHED = {  # model key -> (card in ../shared/reference-cards, the phase the card's trainer ran)
    "modernbert-xtr": ("modernbert-xtr.card.txt", "modernbert-xtr"),
    "neobert-splade": ("neobert-splade.card.md", "neobert-splade"),
}


def extract(cards_dir: Path, out_dir: Path = PUBLISHED_DIR) -> None:
    """Save each published card's hyperparameter list as model_cards/published/<model>.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, (card, phase) in PUBLISHED.items():
        values = card_hyperparameters((cards_dir / card).read_text())
        data = {"card": card, "phase": phase, "hyperparameters": values}
        (out_dir / f"{model}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def report(params: Params, published_dir: Path = PUBLISHED_DIR) -> str:
    """Both models' tables, as committed in model_cards/hyperparameters.md."""
    parts = [
        "# Published hyperparameters next to ours",
        "",
        "Generated by `make hyperparameters` from the published cards' lists (`model_cards/published/`)",
        "and the TrainingArguments that `train@<phase>` builds from params.yaml.",
        "`n/a` rows name arguments this transformers version no longer has. The `differs` rows:",
        "",
        "- `eval_strategy`, `eval_on_start`, `per_device_eval_batch_size`, `dataloader_prefetch_factor`,",
        "  `load_best_model_at_end`: the published runs evaluated during training (and the SPLADE run kept",
        "  its best checkpoint); this pipeline evaluates once, after training, in `evaluate@<model>`. Keeping",
        "  the best checkpoint changes the SPLADE weights: not reproduced yet.",
        "- `num_train_epochs`: ignored by the trainer when `max_steps` is set (XTR).",
        "- `warmup_ratio` (None vs 0.0), `lr_scheduler_kwargs` (None vs {}), `include_num_input_tokens_seen`",
        "  (`no` vs False): transformers 5 spellings of the same setting.",
        "- `local_rank`: set by the launcher at run time.",
        "- `lr_scheduler` (NeoBERT-SPLADE recipe): the author's script used warmup-stable-decay, but its phase",
        "  lengths are not published; params.yaml keeps the trainer's linear decay.",
    ]
    for model in PUBLISHED:
        published = yaml.safe_load((published_dir / f"{model}.yaml").read_text())
        card, phase = published["card"], published["phase"]
        rows = comparison_rows(published["hyperparameters"], trainer_hyperparameters(params, phase))
        same = sum(r[3] == "same" for r in rows)
        parts += ["", f"## {model} (`train@{phase}` vs `{card}`): {same} of {len(rows)} the same", "",
                  markdown_table(rows)]
        recipe_file = published_dir / f"{model}.recipe.yaml"
        if recipe_file.exists():
            recipe = yaml.safe_load(recipe_file.read_text())
            splade_phase = params.phases[recipe["phase"]]
            assert isinstance(splade_phase, SpladePhase), recipe_file
            rows = recipe_rows(recipe["recipe"], splade_recipe(splade_phase))
            same = sum(r[3] == "same" for r in rows)
            parts += ["", f"### {model}: the recipe beyond TrainingArguments ({recipe_file.name}): "
                      f"{same} of {len(rows)} the same", "", markdown_table(rows)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--extract", type=Path, metavar="CARDS_DIR", help="re-extract model_cards/published/")
    parser.add_argument("--write", type=Path, help="write the report here")
    parser.add_argument("--check", type=Path, help="exit 1 if this committed report is out of date")
    args = parser.parse_args(argv)
    if args.extract:
        extract(args.extract)
    text = report(load_params(args.params))
    if args.write:
        args.write.write_text(text)
    elif args.check:
        if args.check.read_text() != text:
            raise SystemExit(f"{args.check} is out of date: run `make hyperparameters`")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
