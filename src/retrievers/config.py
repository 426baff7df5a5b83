"""Typed view of params.yaml. Loading validates everything once; past this boundary code gets frozen objects.

An unknown or mistyped key anywhere fails at load with the key's dotted path, e.g.
``params.yaml: models.modernbert-xtr.evaluation.batchsize: unknown key``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrievers.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------- sources
class HubRepo(Strict):
    """One repository on the Hugging Face Hub at a pinned revision."""

    repo_id: str
    revision: str
    repo_type: Literal["model", "dataset"]
    allow_patterns: list[str] | None = None

    @property
    def pinned(self) -> bool:
        return re.fullmatch(r"[0-9a-f]{40}", self.revision) is not None


class LocalFolder(Strict):
    """A folder laid out as the Hub serves a repository (the bundled fixture uses these).

    ``sha256`` is the folder's content digest; the profile materialiser fills it in so that DVC sees a
    changed fixture as a changed parameter, and download refuses a folder that no longer matches it."""

    path: Path
    sha256: str | None = None


class Source(Strict):
    """What one ``download@<key>`` stage fetches into ``data/<key>``: one repository or folder, or a group of
    them fetched into sub-folders (e.g. the 13 NanoBEIR sets)."""

    hub: HubRepo | None = None
    local: LocalFolder | None = None
    members: dict[str, HubRepo | LocalFolder] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if sum(x is not None for x in (self.hub, self.local, self.members)) != 1:
            raise ValueError("set exactly one of hub, local or members")
        return self


# ------------------------------------------------------------------------------------------------ models
class ColBERTConfig(Strict):
    embedding_size: int = 128
    query_length: int = 32
    document_length: int = 512
    query_prefix: str = ""
    document_prefix: str = ""
    attend_to_expansion_tokens: bool = False


class SpladeConfig(Strict):
    max_seq_length: int = 256
    pooling_strategy: Literal["max", "sum"] = "max"
    activation_function: Literal["relu", "log1p_relu"] = "relu"


class PyLateNanoBEIR(Strict):
    """PyLate's NanoBEIREvaluator over per-set repositories (zeta-alpha-ai layout)."""

    evaluator: Literal["pylate-nanobeir"]
    data: str = Field(description="source key whose members are the Nano* sets")
    datasets: list[str]
    batch_size: int = 32


class SparseNanoBEIR(Strict):
    """sentence-transformers' SparseNanoBEIREvaluator over one NanoBEIR-en style repository."""

    evaluator: Literal["sparse-nanobeir"]
    data: str = Field(description="source key of a NanoBEIR-en style dataset")
    datasets: list[str]
    batch_size: int = 32


class HubPushConfig(Strict):
    """Publishing the verified bundle to ``hub_repo_id`` as one commit plus a version tag.

    ``push`` needs HF_TOKEN in the environment; ``dry_run`` prints the files and sizes it would push and
    pushes nothing (no token needed); ``force`` moves an existing ``tag`` instead of refusing."""

    push: bool = False
    tag: str = Field(default="v0.1.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dry_run: bool = False
    force: bool = False


class ReleaseConfig(Strict):
    gate_metric: str
    gate_min: float = 0.0
    registered_model_name: str
    probe_texts: list[str] = Field(min_length=1)
    hub: HubPushConfig = HubPushConfig()


class ModelConfig(Strict):
    """One released model: how it is evaluated, described and released. Training is in ``phases``."""

    kind: Literal["colbert", "splade"]
    title: str
    hub_repo_id: str = Field(description="where releases of this model go on the Hub")
    reference: HubRepo | None = Field(
        default=None, description="the published checkpoint this recipe reproduces (python -m retrievers.reproduce)"
    )
    evaluation: Annotated[PyLateNanoBEIR | SparseNanoBEIR, Field(discriminator="evaluator")]
    release: ReleaseConfig


# ------------------------------------------------------------------------------------------------ phases
class TrainerArgs(Strict):
    """The subset of (Sentence)TrainingArguments the recipes set; everything else keeps its default.

    ``optim``, ``ddp_find_unused_parameters`` and ``average_tokens_across_devices`` are pinned to the values
    in the published cards: transformers 5 changed their defaults (see ``python -m tools.hyperparameters``)."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int = 1
    learning_rate: float
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    max_steps: int = -1
    num_train_epochs: float = 1.0
    fp16: bool = False
    bf16: bool = False
    torch_compile: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    dataloader_drop_last: bool = True
    dataloader_num_workers: int = 0
    batch_sampler: Literal["batch_sampler", "no_duplicates"] = "batch_sampler"
    optim: str = "adamw_torch"
    ddp_find_unused_parameters: bool | None = False
    average_tokens_across_devices: bool = False


class PhaseBase(Strict):
    model: str = Field(description="key in `models` this phase trains towards")
    init: str = Field(description="folder the phase starts from: data/<base model> or models/<earlier phase>")
    data: str = Field(description="folder of the training dataset: data/<source key>")
    max_train_samples: int | None = None
    nproc_per_node: int = Field(
        1, ge=1, description="training processes on this node (one per GPU); above 1 train@ runs under torchrun (DDP)"
    )
    args: TrainerArgs


class XTRContrastivePhase(PhaseBase):
    recipe: Literal["xtr-contrastive"]
    colbert: ColBERTConfig
    k_train: int = 256
    temperature: float = 0.05
    learnable_temperature: bool = True
    gather_across_devices: bool = True


class XTRDistillationPhase(PhaseBase):
    recipe: Literal["xtr-distillation"]
    colbert: ColBERTConfig
    k_train: int = 256
    n_ways: int = 16
    temperature: float = 1.0
    learnable_temperature: bool = True
    teacher_scores: Literal["train", "train_unormalized"] = "train"


class MuonConfig(Strict):
    """``torch.optim.Muon`` for the encoder's hidden 2-D matrices; the rest (embeddings, MLM decoder, norms,
    biases) goes to AdamW. Both use ``args.learning_rate`` and ``args.weight_decay``."""

    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = Field(
        default="match_rms_adamw", description="scale Muon's update to AdamW's RMS, so one learning rate serves both"
    )


class SpladePhase(PhaseBase):
    recipe: Literal["splade"]
    splade: SpladeConfig
    loss: Literal["mnrl", "margin-mse", "distill-kldiv"] = Field(
        default="mnrl",
        description="inside SpladeLoss: SparseMultipleNegativesRankingLoss (the card), or soft distillation on "
        "the teacher scores with SparseMarginMSELoss or SparseDistillKLDivLoss",
    )
    muon: MuonConfig | None = Field(default=MuonConfig(), description="null: AdamW for every parameter")
    teacher_scores: Literal["train", "train_unormalized"] = "train_unormalized"
    n_negatives: int = 1
    query_regularizer_weight: float = 3e-4
    document_regularizer_weight: float = 3e-4
    regularizer_warmup_ratio: float = Field(
        0.333, description="fraction of training over which regularizer weights ramp up from 0 (explicit schedule)"
    )
    eval_samples: int = 0
    gather_across_devices: bool = True


Phase = Annotated[XTRContrastivePhase | XTRDistillationPhase | SpladePhase, Field(discriminator="recipe")]


class TrackingConfig(Strict):
    experiment_prefix: str = ""


class Params(Strict):
    """The whole of params.yaml."""

    profile: Literal["published", "smoke"]
    seed: int
    tracking: TrackingConfig = TrackingConfig()
    sources: dict[str, Source]
    models: dict[str, ModelConfig]
    phases: dict[str, Phase]

    @model_validator(mode="after")
    def _references_resolve(self) -> Params:
        for key, phase in self.phases.items():
            if phase.model not in self.models:
                raise ValueError(f"phases.{key}.model: {phase.model!r} is not a key of models")
            for field in ("init", "data"):
                folder = getattr(phase, field)
                kind, _, name = folder.partition("/")
                known = self.sources if kind == "data" else self.phases if kind == "models" else {}
                if name not in known:
                    raise ValueError(
                        f"phases.{key}.{field}: {folder!r} names no source (data/<key>) or phase (models/<key>)"
                    )
        for key, model in self.models.items():
            if key not in self.phases:
                raise ValueError(f"models.{key}: no phase of that name produces the final model")
            if model.evaluation.data not in self.sources:
                raise ValueError(f"models.{key}.evaluation.data: {model.evaluation.data!r} is not a key of sources")
        return self

    def phase_chain(self, model_key: str) -> list[str]:
        """The phases that produce ``model_key``, first to last (following ``init: models/<phase>``)."""
        chain, key = [model_key], model_key
        while self.phases[key].init.startswith("models/"):
            key = self.phases[key].init.split("/", 1)[1]
            chain.append(key)
        return chain[::-1]


def _key_path(loc: tuple, raw: Any) -> str:
    """Pydantic's error location as the user's dotted key path: union tags are not keys of the YAML."""
    parts, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            parts.append(str(part))
            node = node[part]
        elif not isinstance(node, dict) or part == loc[-1]:
            parts.append(str(part))
            node = None
    return ".".join(parts)


def _describe(error: ValidationError, root: str, raw: Any) -> str:
    first = error.errors()[0]
    loc = _key_path(first["loc"], raw)
    if first["type"] == "extra_forbidden":
        return f"{root}: {loc}: unknown key (check its spelling against params.yaml's documented keys)"
    return f"{root}: {loc}: {first['msg']}"


def parse_params(raw: dict[str, Any], origin: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, origin, raw)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError with one line naming the bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the repository root (or the smoke workspace)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_params(raw, str(path))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {'a.b.c': value}, for MLflow params."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}
