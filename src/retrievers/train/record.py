"""What train@<phase> records for the model card, read from the objects that trained: the loss (its class and its
config as the loss reports it), the trainer arguments as the trainer used them, the library versions, and the
training data (its source record and the number of samples the trainer saw).

The record is saved beside the weights (``models/<phase>/training_record.json``) and logged to the phase's MLflow
run; a later phase carries the records of the phases before it, so the card stage reads one file per model.
"""

from __future__ import annotations

import json
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Any

from retrievers.paths import Workspace

RECORD = "training_record.json"
VERSIONS = ("torch", "transformers", "sentence-transformers", "pylate", "datasets", "tokenizers", "huggingface-hub")
RUN_SPECIFIC = ("output_dir", "logging_dir", "local_rank")
SKIPPED_ATTRIBUTES = ("model", "training")
MAX_DEPTH = 3


def class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _value(value: Any, depth: int, seen: frozenset[int]) -> Any:
    """A config value as JSON: scalars as they are, a loss or scorer inside as {'class', 'config'}."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_value(v, depth, seen) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v, depth, seen) for k, v in value.items()}
    if hasattr(value, "numel") and value.numel() == 1:  # a learnable scalar (a tensor or Parameter)
        return float(value.detach().float().item())
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return value.__name__
    if depth >= MAX_DEPTH or id(value) in seen or hasattr(value, "encode") or hasattr(value, "tokenize"):
        return class_name(value)  # a model, an object already described above, or one nested deeper: named only
    return describe(value, depth + 1, seen)


def describe(obj: Any, depth: int = 0, seen: frozenset[int] = frozenset()) -> dict[str, Any]:
    """{'class': its full class name, 'config': its parameters}: ``get_config_dict()`` where the object has one
    (sentence-transformers' losses), else its public scalar attributes and the objects it holds (PyLate's)."""
    if hasattr(obj, "get_config_dict"):
        config = obj.get_config_dict()
    else:
        attributes = {k: v for k, v in vars(obj).items() if not k.startswith("_") and k not in SKIPPED_ATTRIBUTES}
        modules = getattr(obj, "_modules", {}) or {}
        parameters = getattr(obj, "_parameters", {}) or {}
        config = attributes | {k: v for k, v in modules.items() if k not in SKIPPED_ATTRIBUTES} | parameters
    seen = seen | {id(obj)}
    return {"class": class_name(obj), "config": {k: _value(v, depth, seen) for k, v in config.items()}}


def loss_classes(loss) -> list[str]:
    """The loss's class and those of the losses it uses (SpladeLoss -> its loss and FlopsLoss regularizers), found
    as sentence-transformers finds them for its cards' ``loss:<Class>`` tags (``model_card.get_losses``)."""
    from sentence_transformers.model_card import get_losses

    return list(dict.fromkeys(type(part).__name__ for part in get_losses(loss)))


def trainer_arguments(trainer) -> dict[str, Any]:
    """The trainer's arguments as it used them (``TrainingArguments.to_dict()``), run-specific folders and tokens
    left out, enums as their values."""
    values = trainer.args.to_dict()
    return {k: (v.value if hasattr(v, "value") else v) for k, v in values.items()
            if k not in RUN_SPECIFIC and not k.endswith("token")}


def default_arguments(trainer) -> dict[str, Any]:
    defaults = type(trainer.args)(output_dir="/tmp/defaults").to_dict()
    return {k: (v.value if hasattr(v, "value") else v) for k, v in defaults.items()}


def _source(folder: Path, name: str) -> dict[str, Any]:
    record = folder / "SOURCE.json"
    return json.loads(record.read_text()) if record.exists() else {"path": name}


def training_record(ws: Workspace, phase_key: str, phase, trainer) -> dict[str, Any]:
    """The card's facts about one phase, read from the trainer that trained it. Folders are named as params.yaml
    names them (relative to the workspace root), so the record does not depend on where the workspace is."""
    arguments, defaults = trainer_arguments(trainer), default_arguments(trainer)
    loss = describe(trainer.loss)
    earlier = ws.folder(phase.init) / RECORD
    return {
        "phase": phase_key,
        "recipe": phase.recipe,
        "init": phase.init,
        "data": {"folder": phase.data, "source": _source(ws.folder(phase.data), phase.data),
                 "train_samples": len(trainer.train_dataset),
                 "steps": trainer.state.global_step},
        "loss": loss,
        "loss_classes": loss_classes(trainer.loss),
        "trainer_arguments": arguments,
        "non_default_trainer_arguments": {k: v for k, v in arguments.items() if defaults.get(k, object()) != v},
        "versions": {"python": sys.version.split()[0]} | {name: metadata.version(name) for name in VERSIONS},
        "earlier_phases": json.loads(earlier.read_text())["phases"] if earlier.exists() else [],
    }


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Save the phase's record (and the earlier phases') as ``<model folder>/training_record.json``."""
    phases = [*record.pop("earlier_phases"), record]
    path = folder / RECORD
    path.write_text(json.dumps({"phases": phases}, indent=2, default=str) + "\n")
    return path


def read_records(model_dir: Path) -> list[dict[str, Any]]:
    """The records of every phase that made the model in ``model_dir``, first phase first."""
    path = model_dir / RECORD
    if not path.exists():
        from retrievers.errors import MissingInputError

        raise MissingInputError(f"{path} is missing: the model was trained before training records existed; "
                                "re-run its train@ stage (`dvc repro`)")
    return json.loads(path.read_text())["phases"]
