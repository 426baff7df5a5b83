"""Typed view of params.yaml. Loading validates everything once; past this boundary code gets frozen objects.

params.yaml is the only home of recipe values: every field that can change a trained model, a metric or which
data is read has no default here, so a recipe that leaves one out fails at load. The few defaults that remain
cannot change a result; each says why (``# not a recipe value: ...``), and ``tests/test_params_explicit.py``
fails on any other default.

An unknown or mistyped key anywhere fails at load with the key's dotted path, e.g.
``params.yaml: models.modernbert-xtr.evaluation.batchsize: unknown key``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retrievers.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------------- sources
class HubRepo(Strict):
    """One repository on the Hugging Face Hub at a pinned revision."""

    repo_id: str
    revision: str
    repo_type: Literal["model", "dataset"]
    # not a recipe value: which files of the pinned revision are fetched (None: all); data/<key> is a DVC output
    # whose content hash every later stage depends on, so a change shows as a changed input
    allow_patterns: list[str] | None = None

    @property
    def pinned(self) -> bool:
        return re.fullmatch(r"[0-9a-f]{40}", self.revision) is not None


class LocalFolder(Strict):
    """A folder laid out as the Hub serves a repository (the bundled fixture uses these).

    ``sha256`` is the folder's content digest; the profile materialiser fills it in so that DVC sees a
    changed fixture as a changed parameter, and download refuses a folder that no longer matches it."""

    path: Path
    sha256: str | None = None  # not a recipe value: a check that the folder is still the one DVC saw


class Source(Strict):
    """What one ``download@<key>`` stage fetches into ``data/<key>``: one repository or folder, or a group of
    them fetched into sub-folders (e.g. the 13 NanoBEIR sets)."""

    # not recipe values: exactly one of the three is set (validated), the others are absent
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
    embedding_size: int = Field(ge=1)
    query_length: int = Field(ge=1)
    document_length: int = Field(ge=1)
    query_prefix: str
    document_prefix: str
    attend_to_expansion_tokens: bool


class SpladeConfig(Strict):
    max_seq_length: int = Field(ge=1)
    pooling_strategy: Literal["max", "sum"]
    activation_function: Literal["relu", "log1p_relu"]


class PyLateNanoBEIR(Strict):
    """PyLate's NanoBEIREvaluator over per-set repositories (zeta-alpha-ai layout)."""

    evaluator: Literal["pylate-nanobeir"]
    data: str = Field(description="source key whose members are the Nano* sets")
    datasets: list[str] = Field(min_length=1)
    batch_size: int = Field(ge=1)


class SparseNanoBEIR(Strict):
    """sentence-transformers' SparseNanoBEIREvaluator over one NanoBEIR-en style repository."""

    evaluator: Literal["sparse-nanobeir"]
    data: str = Field(description="source key of a NanoBEIR-en style dataset")
    datasets: list[str] = Field(min_length=1)
    batch_size: int = Field(ge=1)


class HubPushConfig(Strict):
    """Publishing the verified bundle to ``hub_repo_id`` as one commit plus a version tag. Not recipe values:
    they decide where and whether a verified bundle is published, not what it holds.

    ``push`` needs HF_TOKEN in the environment; ``dry_run`` prints the files and sizes it would push and
    pushes nothing (no token needed); ``force`` moves an existing ``tag`` instead of refusing."""

    push: bool = False
    tag: str = Field(default="v0.1.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dry_run: bool = False
    force: bool = False


class ReleaseConfig(Strict):
    gate_metric: str
    gate_min: float
    registered_model_name: str
    probe_texts: list[str] = Field(min_length=1)
    hub: HubPushConfig = HubPushConfig()  # not a recipe value: see HubPushConfig


class ModelConfig(Strict):
    """One released model: how it is evaluated, described and released. Training is in ``phases``."""

    kind: Literal["colbert", "splade"]
    title: str
    hub_repo_id: str = Field(description="where releases of this model go on the Hub")
    reference: HubRepo | None = Field(
        description="the published checkpoint this recipe reproduces (python -m retrievers.reproduce)"
    )
    evaluation: Annotated[PyLateNanoBEIR | SparseNanoBEIR, Field(discriminator="evaluator")]
    release: ReleaseConfig


# ------------------------------------------------------------------------------------------------ phases
class TrainerArgs(Strict):
    """The subset of (Sentence)TrainingArguments the recipes set; everything else keeps the library's default.

    ``optim``, ``ddp_find_unused_parameters`` and ``average_tokens_across_devices`` are pinned to the values
    in the published cards: transformers 5 changed their defaults (see ``python -m tools.hyperparameters``)."""

    per_device_train_batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    lr_scheduler_type: str
    max_steps: int = Field(description="-1: train for num_train_epochs")
    num_train_epochs: float = Field(gt=0)
    fp16: bool
    bf16: bool
    torch_compile: bool
    logging_steps: int = Field(ge=1)
    save_steps: int = Field(ge=1)
    save_total_limit: int = Field(2, ge=1)  # not a recipe value: how many trainer checkpoints stay on disk
    eval_strategy: Literal["no", "steps"]
    eval_steps: int | None = Field(ge=1)
    per_device_eval_batch_size: int = Field(ge=1)
    load_best_model_at_end: bool
    metric_for_best_model: str | None
    dataloader_drop_last: bool
    dataloader_num_workers: int = Field(ge=0)
    dataloader_prefetch_factor: int | None = Field(ge=1)
    batch_sampler: Literal["batch_sampler", "no_duplicates"]
    optim: str
    learning_rate_mapping: dict[str, float] = Field(
        description="parameter-name regex -> its own learning rate (sentence-transformers)"
    )
    use_cpu: bool = Field(description="train on the CPU even with a GPU (bf16 on CPU needs it: `make rehearse`)")
    ddp_find_unused_parameters: bool | None
    average_tokens_across_devices: bool

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be -1 (train for num_train_epochs) or a positive number of steps")
        return value


class SpeedConfig(Strict):
    """Training fast paths (``retrievers.packed``). Each computes what the stock path computes (equal losses and
    gradients, ``tests/test_packed.py``) up to float rounding, so they are recipe values too; on in the published
    recipes. ``SpeedConfig.stock()`` is every path off (the libraries' own code), for tests and benchmarks."""

    length_buckets: bool = Field(
        description="encode a batch in length-sorted micro-forwards, each trimmed to its longest row; outputs "
        "reassembled in the batch's order and shape")
    bucket_tokens: int = Field(ge=1, description="token positions per micro-forward (rows x width)")
    pad_multiple: int = Field(ge=1, description="micro-forward widths are rounded up to this multiple")
    min_bucket_efficiency: float = Field(
        gt=0, le=1,
        description="the fewest micro-forwards whose positions keep the batch's real tokens / positions at or above "
        "this (one micro-forward per width where the rounding to pad_multiple alone falls short)")
    documents_to_longest: bool = Field(
        description="ColBERT: pad documents to the batch's longest, not to document_length (padded positions are "
        "masked out of the scores)")
    fused_splade_pooling: bool = Field(
        description="SPLADE on NeoBERT: max-pooled log1p(relu) activations without the tokens x vocabulary tensor "
        "(custom autograd function)")
    splade_chunk_tokens: int = Field(ge=1, description="token positions whose vocabulary logits exist at once")
    packed_splade_pooling: bool = Field(
        description="with fused_splade_pooling: the decoder over the attended tokens only, packed into chunks of "
        "whole rows, its bias added to each row's maximum, and a backward through compressed-row sparse products "
        "built without a sort")
    pretokenized: bool = Field(
        description="KD recipes: tokenise the queries and documents tables once into a cache (checkpoints/tokens) "
        "and collate batches by padding token ids (retrievers.data.tokens); the stock collators' tensors")
    scan_free_no_duplicates: bool = Field(
        description="batch_sampler no_duplicates: sentence-transformers' sampler's batches from precomputed value "
        "codes instead of a dataset read per visited row (retrievers.sampling)")

    @classmethod
    def stock(cls) -> SpeedConfig:
        """Every fast path off: the stock libraries' code (the sizes are then unused)."""
        return cls(length_buckets=False, bucket_tokens=16384, pad_multiple=8, min_bucket_efficiency=0.95,
                   documents_to_longest=False, fused_splade_pooling=False, splade_chunk_tokens=2048,
                   packed_splade_pooling=False, pretokenized=False, scan_free_no_duplicates=False)


class PhaseBase(Strict):
    model: str = Field(description="key in `models` this phase trains towards")
    init: str = Field(description="folder the phase starts from: data/<base model> or models/<earlier phase>")
    data: str = Field(description="folder of the training dataset: data/<source key>")
    eval_data: str | None = Field(
        description="folder the in-training evaluator reads (data/<source key>); a phase without one repeats `data`, "
        "since dvc.yaml declares this folder a dependency of every train@ stage",
    )
    max_train_samples: int | None = Field(ge=1)
    nproc_per_node: int = Field(
        ge=1, description="training processes on this node (one per GPU); above 1 train@ runs under torchrun (DDP)"
    )
    args: TrainerArgs
    speed: SpeedConfig


class XTRContrastivePhase(PhaseBase):
    recipe: Literal["xtr-contrastive"]
    colbert: ColBERTConfig
    k_train: int = Field(ge=1)
    temperature: float = Field(gt=0, description="the scores are divided by it (its initial value if learnable)")
    learnable_temperature: bool = Field(
        description="a parameter registered on the model, trained at the model's lr and weight decay (the fork)"
    )
    gather_across_devices: bool


class XTRDistillationPhase(PhaseBase):
    recipe: Literal["xtr-distillation"]
    colbert: ColBERTConfig
    k_train: int = Field(ge=1)
    n_ways: int = Field(ge=2, description="documents per query: the positive and at least one negative")
    temperature: float = Field(gt=0, description="the student scores are divided by it (initial if learnable)")
    learnable_temperature: bool
    minmax_normalize_scores: bool = Field(
        description="min-max normalise student and teacher scores per query first (the fork's `true` = both)"
    )
    teacher_scores: Literal["train", "train_unormalized"]


class MuonConfig(Strict):
    """``optimizer: torch-muon-adamw`` only: ``torch.optim.Muon`` for the encoder's hidden 2-D matrices; the rest
    (embeddings, MLM decoder, norms, biases) goes to AdamW, both at ``args.learning_rate``, ``args.weight_decay``."""

    momentum: float
    nesterov: bool
    ns_steps: int
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = Field(
        description="scale Muon's update to AdamW's RMS, so one learning rate serves both"
    )


class WSDSchedule(Strict):
    """``transformers.get_wsd_schedule`` over the run's optimizer updates (library defaults otherwise: linear
    warmup, cosine decay). Phase lengths are fractions of the updates, rounded as the author's script rounds them."""

    warmup_ratio: float = Field(ge=0, le=1)
    decay_ratio: float = Field(ge=0, le=1)
    min_lr_ratio: float = Field(ge=0, le=1)


class InTrainingEvaluation(Strict):
    """The evaluator the trainer runs every ``args.eval_steps`` (``args.eval_strategy: steps``), whose
    ``eval_NanoBEIR_mean_dot_ndcg@10`` ``args.load_best_model_at_end`` selects the saved checkpoint by."""

    datasets: list[str] = Field(min_length=1)
    batch_size: int = Field(ge=1)


class SpladePhase(PhaseBase):
    recipe: Literal["splade"]
    splade: SpladeConfig
    loss: Literal["mnrl", "margin-mse", "distill-kldiv"] = Field(
        description="inside SpladeLoss: SparseMultipleNegativesRankingLoss (the card), or soft distillation on "
        "the teacher scores with SparseMarginMSELoss or SparseDistillKLDivLoss",
    )
    optimizer: Literal["heavyball-muon", "torch-muon-adamw", "adamw"] = Field(
        description="heavyball-muon: heavyball.ForeachMuon over every parameter in the author's two weight-decay "
        "groups; torch-muon-adamw: torch.optim.Muon (hidden matrices) + AdamW (the rest); adamw: AdamW only",
    )
    heavyball_compile: bool = Field(
        description="heavyball-muon: torch.compile its update functions (the library's default); false: eager")
    muon: MuonConfig
    lr_schedule: WSDSchedule | None = Field(description="null: the trainer's lr_scheduler_type")
    teacher_scores: Literal["train", "train_unormalized"]
    n_negatives: int = Field(ge=1)
    kept_documents: int = Field(
        ge=2, description="scored documents kept per row before the positive and negatives are drawn")
    query_regularizer_weight: float = Field(ge=0)
    document_regularizer_weight: float = Field(ge=0)
    regularizer_schedule: Literal["linear", "quadratic"]
    regularizer_warmup_ratio: float = Field(
        ge=0, le=1,
        description="fraction of training over which regularizer weights ramp up from 0 (explicit schedule)")
    eval_samples: int = Field(ge=0, description="rows split off (shuffled, seed) as the eval_loss set")
    in_training_evaluation: InTrainingEvaluation | None
    gather_across_devices: bool

    @model_validator(mode="after")
    def _evaluation_is_wired(self) -> SpladePhase:
        if self.args.load_best_model_at_end and (self.in_training_evaluation is None or self.eval_data is None):
            raise ValueError("args.load_best_model_at_end needs in_training_evaluation and eval_data")
        if self.in_training_evaluation is not None and self.args.eval_strategy != "steps":
            raise ValueError("in_training_evaluation needs args.eval_strategy: steps (and args.eval_steps)")
        return self


Phase = Annotated[XTRContrastivePhase | XTRDistillationPhase | SpladePhase, Field(discriminator="recipe")]


class TrackingConfig(Strict):
    experiment_prefix: str = ""  # not a recipe value: MLflow experiment names only


class Params(Strict):
    """The whole of params.yaml."""

    profile: Literal["published", "smoke"]
    seed: int = Field(ge=0)
    tracking: TrackingConfig = TrackingConfig()  # not a recipe value: see TrackingConfig
    sources: dict[str, Source]
    models: dict[str, ModelConfig]
    phases: dict[str, Phase]

    @model_validator(mode="after")
    def _references_resolve(self) -> Params:
        for key, phase in self.phases.items():
            if phase.model not in self.models:
                raise ValueError(f"phases.{key}.model: {phase.model!r} is not a key of models")
            for field in ("init", "data", "eval_data"):
                folder = getattr(phase, field)
                if folder is None:
                    continue
                top, _, name = folder.partition("/")
                known = self.sources if top == "data" else self.phases if top == "models" else {}
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
    for i, part in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if (isinstance(node, dict) and part in node and following in node and isinstance(node[part], dict)
                and following not in node[part]):
            continue  # a union tag that is also a key (recipe "splade" beside the key `splade`)
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


def load_params(path: Path | str) -> Params:
    """Read and validate params.yaml; raise ConfigError with one line naming the bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the repository root (or the smoke workspace), or pass "
                          "--workspace")
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
