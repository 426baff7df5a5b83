"""Typed params: the committed params.yaml and the smoke profile validate; bad keys fail naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from retrievers.config import ConfigError, flatten, load_params, parse_params
from retrievers.profile import profile_params

from .conftest import REPO


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_published_params_load_and_hold_the_card_recipes():
    params = load_params(REPO / "params.yaml")
    assert params.profile == "published"
    kd = params.phases["modernbert-xtr"]
    assert (kd.k_train, kd.n_ways, kd.args.per_device_train_batch_size, kd.args.learning_rate, kd.args.max_steps) == (
        256,
        16,
        16,
        4e-6,
        20000,
    )
    assert kd.colbert.query_prefix == "" and kd.colbert.document_prefix == ""
    contrastive = params.phases["modernbert-xtr-contrastive"]
    assert (contrastive.k_train, contrastive.args.per_device_train_batch_size, contrastive.temperature) == (
        256,
        64,
        0.05,
    )
    splade = params.phases["neobert-splade"]
    assert (
        splade.args.per_device_train_batch_size,
        splade.args.gradient_accumulation_steps,
        splade.args.num_train_epochs,
        splade.args.bf16,
        splade.args.batch_sampler,
    ) == (24, 5, 8, True, "no_duplicates")
    assert splade.query_regularizer_weight == splade.document_regularizer_weight == 3e-4
    assert (splade.loss, splade.splade.max_seq_length, splade.muon is not None) == ("mnrl", 256, True)
    assert params.sources["ms-marco-en-bge-gemma"].hub.revision == "1a1ffe7cde403016be12ae532b249965b2293114"


def test_smoke_profile_swaps_only_sources_and_sizes():
    published = yaml.safe_load((REPO / "params.yaml").read_text())
    smoke = profile_params(REPO, "smoke")
    parse_params(smoke)
    assert smoke["profile"] == "smoke"
    assert all(
        "local" in s or all("path" in m for m in s.get("members", {}).values()) for s in smoke["sources"].values()
    ), "every smoke source must be a bundled local folder"
    assert set(smoke["phases"]) == set(published["phases"]) and set(smoke["models"]) == set(published["models"])
    for key, phase in smoke["phases"].items():  # the same recipe and loss, fewer/smaller steps
        assert phase["recipe"] == published["phases"][key]["recipe"]
        assert phase["init"] == published["phases"][key]["init"] and phase["data"] == published["phases"][key]["data"]


@pytest.mark.parametrize(
    "path, expected",
    [
        (["phases", "modernbert-xtr", "args", "learning_rat"], "phases.modernbert-xtr.args.learning_rat: unknown key"),
        (
            ["models", "neobert-splade", "evaluation", "batchsize"],
            "models.neobert-splade.evaluation.batchsize: unknown key",
        ),
        (["seeed"], "seeed: unknown key"),
    ],
)
def test_unknown_key_fails_naming_it(raw_params, path, expected):
    broken = copy.deepcopy(raw_params)
    node = broken
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = 1
    with pytest.raises(ConfigError) as error:
        parse_params(broken)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_wrong_type_and_dangling_reference_are_named(raw_params):
    broken = copy.deepcopy(raw_params)
    broken["phases"]["modernbert-xtr"]["k_train"] = "many"
    with pytest.raises(ConfigError, match=r"phases\.modernbert-xtr\.xtr-distillation\.k_train|k_train"):
        parse_params(broken)
    broken = copy.deepcopy(raw_params)
    broken["phases"]["modernbert-xtr"]["init"] = "models/nope"
    with pytest.raises(ConfigError, match="phases.modernbert-xtr.init: 'models/nope'"):
        parse_params(broken)


def test_missing_params_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_flatten_gives_dotted_keys():
    params = load_params(REPO / "params.yaml")
    flat = flatten(params.phases["modernbert-xtr"])
    assert flat["args.learning_rate"] == 4e-6 and flat["colbert.embedding_size"] == 128


def test_committed_hyperparameter_report_is_current():
    """model_cards/hyperparameters.md (the published cards' hyperparameters next to ours) matches params.yaml."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tools.hyperparameters", "--check", "model_cards/hyperparameters.md"],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


def test_card_hyperparameters_are_parsed_from_both_card_styles():
    from tools.hyperparameters import card_hyperparameters

    text_style = "All Hyperparameters\n\nClick to expand\n  • learning_rate: 4e-06\n  • max_steps: 20000\n\nFramework"
    assert card_hyperparameters(text_style) == {"learning_rate": "4e-06", "max_steps": "20000"}
    markdown_style = "#### Non-Default Hyperparameters\n- `per_device_train_batch_size`: 24\n- `bf16`: True\n"
    assert card_hyperparameters(markdown_style) == {"per_device_train_batch_size": "24", "bf16": "True"}


@pytest.mark.skipif(not (REPO.parent / "shared" / "reference-cards").exists(), reason="no ../shared/reference-cards")
def test_committed_published_hyperparameters_match_the_cards(tmp_path):
    from tools.hyperparameters import PUBLISHED, extract

    extract(REPO.parent / "shared" / "reference-cards", tmp_path)
    for model in PUBLISHED:
        committed = REPO / "model_cards" / "published" / f"{model}.yaml"
        assert committed.read_text() == (tmp_path / f"{model}.yaml").read_text()


def test_phase_chain_follows_init_back_to_the_base_model():
    params = load_params(REPO / "params.yaml")
    assert params.phase_chain("modernbert-xtr") == ["modernbert-xtr-contrastive", "modernbert-xtr"]
    assert params.phase_chain("neobert-splade") == ["neobert-splade"]
