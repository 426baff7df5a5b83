"""Every training hyperparameter of a published recipe next to what params.yaml gives the trainer, with its source.

Two kinds of rows, both sourced from data, never from this code:

* the published card's own hyperparameter list, extracted once into ``model_cards/published/<model>.yaml``
  (``--extract``, from the cards in ../shared/reference-cards, with each value's line in the card) so that the
  comparison works in any clone: each row cites ``<card>:L<line>``;
* the recipe beyond the card (what the authors' public code does, and the phases the card does not describe),
  written by hand in ``model_cards/published/<model>.recipe.yaml``: each row gives the published value and its
  source (a card line, or a public ``file@commit``; ``unknown`` only where no public source answers), and a
  ``note`` that explains a difference. The same file's ``card_notes`` explain the card rows that differ.

``--write``/``--check`` render ``model_cards/hyperparameters.md``; a row that differs (or is unknown) without a
note fails the render. The "ours" column is read from the real ``(Sentence|SparseEncoder)TrainingArguments``
object that ``train@<phase>`` builds, not from params.yaml directly, so defaults the trainer fills in are compared
too, plus each recipe's own settings (``recipe_settings``).
A developer tool: ``python -m tools.hyperparameters`` (``make hyperparameters``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from retrievers.cards.arguments import trainer_hyperparameters
from retrievers.config import Params, SpladePhase, XTRContrastivePhase, XTRDistillationPhase, load_params

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "model_cards" / "published"

BULLET = re.compile(r"^\s*(?:•|-)\s*`?([A-Za-z_][A-Za-z0-9_]*)`?:\s*(.*?)\s*$")
SECTIONS = ("All Hyperparameters", "Non-Default Hyperparameters")


def card_hyperparameters(card_text: str) -> dict[str, str]:
    """The card's hyperparameter bullets: its 'All Hyperparameters' list if it has one, else 'Non-Default'."""
    return {name: value for name, (value, _) in card_hyperparameter_lines(card_text).items()}


def card_hyperparameter_lines(card_text: str) -> dict[str, tuple[str, int]]:
    """name -> (value, 1-based line of the card) for the list :func:`card_hyperparameters` reads."""
    lines = card_text.splitlines()
    for section in SECTIONS:
        start = next((i for i, line in enumerate(lines) if section in line), None)
        if start is None:
            continue
        values: dict[str, tuple[str, int]] = {}
        for number, line in enumerate(lines[start + 1 :], start=start + 2):
            match = BULLET.match(line)
            if match:
                values[match.group(1)] = (match.group(2), number)
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


Row = tuple[str, str, str, str, str, str]  # name, published, source, ours, mark, note
NOT_AN_ARGUMENT = "(not a trainer argument here)"
NOT_AN_ARGUMENT_NOTE = "not an argument of this transformers version's TrainingArguments (removed or renamed)"


def _plain(value: Any) -> str:
    return str(value.value if hasattr(value, "value") else value)


def comparison_rows(card_values: dict[str, str], ours: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, card value, ours, same | differs | n/a) for each hyperparameter the card lists."""
    rows = []
    for name, card_value in card_values.items():
        if name in ours:
            value = ours[name]
            rows.append((name, card_value, _plain(value), "same" if _same(card_value, value) else "differs"))
        else:
            rows.append((name, card_value, NOT_AN_ARGUMENT, "n/a"))
    return rows


def splade_recipe(phase: SpladePhase) -> dict[str, Any]:
    """What train@<phase> does beyond TrainingArguments, in the words of the hand-written published recipe."""
    from transformers import AutoModelForMaskedLM

    from retrievers.models.neobert import NeoBERTConfig

    loss = {
        "mnrl": "SparseMultipleNegativesRankingLoss(scale=1.0, similarity_fct='dot_score', "
                f"gather_across_devices={phase.gather_across_devices})",
        "margin-mse": "SparseMarginMSELoss on the teacher scores",
        "distill-kldiv": "SparseDistillKLDivLoss on the teacher scores",
    }[phase.loss]
    optimizer = {
        "heavyball-muon": "heavyball.ForeachMuon (all parameters; weight decay 0 for names containing 'bias' or "
                          "'LayerNorm.weight'), through optimizers=",
        "torch-muon-adamw": "torch.optim.Muon (hidden 2-D matrices) + AdamW (the rest), through optimizers=",
        "adamw": "AdamW",
    }[phase.optimizer]
    if phase.lr_schedule is None:
        schedule = phase.args.lr_scheduler_type
    else:
        wsd = phase.lr_schedule
        schedule = (f"get_wsd_schedule(warmup {wsd.warmup_ratio}, decay {wsd.decay_ratio}, "
                    f"min_lr_ratio {wsd.min_lr_ratio})")
    evaluation = phase.in_training_evaluation
    rows = phase.max_train_samples
    return {
        # What the Auto class resolves model_type "neobert" to (registered on `import retrievers`).
        "architecture": AutoModelForMaskedLM._model_mapping[NeoBERTConfig].__name__,  # type: ignore[attr-defined]
        "max_seq_length": phase.splade.max_seq_length,
        "pooling_strategy": phase.splade.pooling_strategy,
        "activation_function": phase.splade.activation_function,
        "loss": loss,
        "query_regularizer_weight": phase.query_regularizer_weight,
        "document_regularizer_weight": phase.document_regularizer_weight,
        "regularizer_schedule": f"{phase.regularizer_schedule} ramp from 0 over the first "
                                f"{phase.regularizer_warmup_ratio} of training",
        "train_samples": None if rows is None else rows - phase.eval_samples,
        "eval_samples": phase.eval_samples,
        "split": f"first {rows} rows, train_test_split(test_size={phase.eval_samples}, seed, shuffle=True)",
        "teacher_scores": phase.teacher_scores,
        "positive": "highest teacher score",
        "negatives": f"{phase.n_negatives} drawn by rng.sample from the other {phase.kept_documents - 1} kept "
                     "documents, RNG reseeded seed + epoch",
        "optimizer": optimizer,
        "learning_rate": phase.args.learning_rate,
        "weight_decay": phase.args.weight_decay,
        "lr_scheduler": schedule,
        "in_training_evaluation": "none" if evaluation is None else
        f"SparseNanoBEIREvaluator({evaluation.datasets}) every {phase.args.eval_steps} steps",
        "checkpoint": "best eval_NanoBEIR_mean_dot_ndcg@10 (load_best_model_at_end)"
        if phase.args.load_best_model_at_end else "last step",
    }


def _hub_id(params: Params, folder: str) -> str:
    kind, _, key = folder.partition("/")
    hub = params.sources[key].hub if kind == "data" else None
    return hub.repo_id if hub else folder


def xtr_recipe(params: Params, phase: XTRContrastivePhase | XTRDistillationPhase) -> dict[str, Any]:
    """What an XTR train@<phase> does beyond TrainingArguments (losses, lengths, temperature), in the recipe's words."""
    colbert = phase.colbert
    facts: dict[str, Any] = {
        "base_model": _hub_id(params, phase.init) if phase.init.startswith("data/") else
        f"phase 1's saved model ({phase.init})",
        "embedding_size": colbert.embedding_size,
        "query_length": colbert.query_length,
        "document_length": colbert.document_length,
        "query_prefix": repr(colbert.query_prefix),
        "document_prefix": repr(colbert.document_prefix),
        "k_train": phase.k_train,
        "temperature": phase.temperature,
        "learnable_temperature": phase.learnable_temperature,
        "temperature_parameter": "a plain nn.Parameter registered on the model as learnable_temperature, trained at "
        "the model's learning_rate and weight_decay" if phase.learnable_temperature else "a fixed float",
        "in_training_evaluation": "none (evaluate@<model> evaluates once, after training)",
    }
    if isinstance(phase, XTRContrastivePhase):
        return facts | {
            "dataset": _hub_id(params, phase.data),
            "loss": "pylate.losses.Contrastive",
            "score_metric": f"XTRScores(k={phase.k_train})",
            "gather_across_devices": phase.gather_across_devices,
        }
    return facts | {
        "dataset": f"{_hub_id(params, phase.data)} (config {phase.teacher_scores})",
        "loss": "pylate.losses.Distillation, with the fork's temperature and min-max (retrievers.losses."
        "TemperatureDistillation)",
        "score_metric": f"XTRKDScores(k={phase.k_train})",
        "n_ways": phase.n_ways,
        "minmax_normalize_scores": "both (student and teacher)" if phase.minmax_normalize_scores else "none",
        "temperature_start": "afresh at the phase's temperature (phase 1's learnt value is not carried over)",
    }


def recipe_settings(params: Params, phase_key: str) -> dict[str, Any]:
    """Everything the hand-written recipe rows of a phase can be compared with: its trainer arguments, plus the
    recipe's own settings."""
    phase = params.phases[phase_key]
    own = splade_recipe(phase) if isinstance(phase, SpladePhase) else xtr_recipe(params, phase)
    return trainer_hyperparameters(params, phase_key) | own


def _recipe_phases(recipe: dict) -> dict[str, dict[str, dict]]:
    """phase -> rows of a recipe file (``phases:``; the older one-phase form ``phase:`` + ``recipe:`` too)."""
    if "phases" in recipe:
        return recipe["phases"]
    return {recipe["phase"]: recipe["recipe"]}


def recipe_rows(published: dict[str, dict], ours: dict[str, Any], where: str) -> list[Row]:
    rows: list[Row] = []
    for name, fact in published.items():
        if name not in ours:
            raise SystemExit(f"{where}: {name}: no such setting of the phase (trainer argument or recipe setting)")
        value, claimed = ours[name], str(fact["published"])
        if claimed == "unknown":
            mark = "unknown"
        else:
            mark = "same" if _same(claimed, value) or _plain(value).startswith(claimed) else "differs"
        rows.append((name, claimed, str(fact.get("source", "")), _plain(value), mark, str(fact.get("note", ""))))
    return rows


def _require_notes(rows: list[Row], where: str) -> None:
    missing = [r[0] for r in rows if r[4] in ("differs", "unknown", "n/a") and not r[5]]
    unsourced = [r[0] for r in rows if not r[2]]
    if missing or unsourced:
        raise SystemExit(f"{where}: rows without a note explaining the difference: {missing}; "
                         f"rows without a source: {unsourced}")


def markdown_table(rows: list[Row]) -> str:
    out = ["| hyperparameter | published | source | params.yaml -> trainer | | why it differs |",
           "|:--|:--|:--|:--|:--|:--|"]
    out += [f"| `{n}` | `{c}` | {src} | `{o}` | {m} | {note} |" for n, c, src, o, m, note in rows]
    return "\n".join(out)


PUBLISHED = {  # model key -> (card in ../shared/reference-cards, the phase the card's trainer ran)
    "modernbert-xtr": ("modernbert-xtr.card.txt", "modernbert-xtr"),
    "neobert-splade": ("neobert-splade.card.md", "neobert-splade"),
}


def extract(cards_dir: Path, out_dir: Path = PUBLISHED_DIR) -> None:
    """Save each published card's hyperparameter list (and each value's line) as model_cards/published/<model>.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, (card, phase) in PUBLISHED.items():
        found = card_hyperparameter_lines((cards_dir / card).read_text())
        data = {"card": card, "phase": phase, "hyperparameters": {k: v for k, (v, _) in found.items()},
                "lines": {k: line for k, (_, line) in found.items()}}
        (out_dir / f"{model}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _card_rows(published: dict, ours: dict[str, Any], notes: dict[str, str]) -> list[Row]:
    card, lines = published["card"], published.get("lines", {})
    rows: list[Row] = []
    for name, card_value, value, mark in comparison_rows(published["hyperparameters"], ours):
        note = notes.get(name, NOT_AN_ARGUMENT_NOTE if mark == "n/a" else "")
        source = f"{card}:L{lines[name]}" if name in lines else card
        rows.append((name, card_value, source, value, mark, note))
    return rows


def _count(rows: list[Row]) -> str:
    return f"{sum(r[4] == 'same' for r in rows)} of {len(rows)} the same"


def report(params: Params, published_dir: Path = PUBLISHED_DIR) -> str:
    """Both models' tables, as committed in model_cards/hyperparameters.md."""
    parts = [
        "# Published hyperparameters next to ours",
        "",
        "Generated by `make hyperparameters` (`python -m tools.hyperparameters`). Each row names its source: a",
        "line of the published card (the cards' lists are extracted into `model_cards/published/<model>.yaml`), or",
        "a public file at a commit (hand-written in `model_cards/published/<model>.recipe.yaml`, with the note",
        "that explains any difference). The ours column is what `train@<phase>` gives the trainer from params.yaml.",
        "`n/a`: the argument no longer exists; `unknown`: no public source states the value.",
    ]
    for model in PUBLISHED:
        published = yaml.safe_load((published_dir / f"{model}.yaml").read_text())
        card, phase = published["card"], published["phase"]
        recipe_file = published_dir / f"{model}.recipe.yaml"
        recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.exists() else {}
        rows = _card_rows(published, trainer_hyperparameters(params, phase), recipe.get("card_notes") or {})
        _require_notes(rows, f"{published_dir / (model + '.yaml')} (card_notes in {recipe_file.name})")
        title = f"### The card's hyperparameters (`train@{phase}` vs `{card}`): {_count(rows)}"
        parts += ["", f"## {model}", "", title, "", markdown_table(rows)]
        for phase_key, published_rows in (_recipe_phases(recipe) if recipe else {}).items():
            rows = recipe_rows(published_rows, recipe_settings(params, phase_key), f"{recipe_file}: {phase_key}")
            _require_notes(rows, f"{recipe_file}: {phase_key}")
            parts += ["", f"### `train@{phase_key}` beyond the card ({recipe_file.name}): {_count(rows)}", "",
                      markdown_table(rows)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=PUBLISHED_DIR.parents[1] / "params.yaml")
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
