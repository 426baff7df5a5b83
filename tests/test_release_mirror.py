"""A Hub release mirrors its bundle: files the new bundle no longer has are deleted in the same commit.

Runs HubPublisher (the real huggingface_hub client) against the local STAND-IN for the Hub's commit API
(tests/hub_standin.py), which keeps each repository as a git repository, so the test reads the commits."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from retrievers.config import load_params
from retrievers.release import HubPublisher

from .conftest import REPO
from .hub_standin import HubStandIn

TOKEN = "hf_test" + secrets.token_hex(8)


def _bundle(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_release_that_drops_a_file_deletes_it_on_the_hub_in_the_same_commit(tmp_path, monkeypatch):
    config = load_params(REPO / "params.yaml").models["neobert-splade"]
    config = config.model_copy(update={
        "hub_repo_id": "retrievers-test/mirror",
        "release": config.release.model_copy(update={"hub": config.release.hub.model_copy(update={"force": True})}),
    })
    first = _bundle(tmp_path / "v1", {"README.md": "card 1", "model.safetensors": "w1", "1_Dense/config.json": "{}",
                                      "stale.json": "only in the first release"})
    second = _bundle(tmp_path / "v2", {"README.md": "card 2", "model.safetensors": "w2"})
    with HubStandIn(tmp_path / "hub", token=TOKEN) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        publisher = HubPublisher("neobert-splade", config)
        publisher.push(first, publisher.preflight(), "release 1")
        assert set(hub.git(config.hub_repo_id, "ls-files").splitlines()) == {
            "README.md", "model.safetensors", "1_Dense/config.json", "stale.json"}
        before = int(hub.git(config.hub_repo_id, "rev-list", "--count", "HEAD"))

        record = publisher.push(second, publisher.preflight(), "release 2")

        repo = config.hub_repo_id
        assert set(hub.git(repo, "ls-files").splitlines()) == {"README.md", "model.safetensors"}
        assert int(hub.git(repo, "rev-list", "--count", "HEAD")) == before + 1  # one commit: adds and deletes
        changed = hub.git(repo, "show", "--name-status", "--format=", "HEAD").splitlines()
        assert sorted(changed) == sorted(["D\t1_Dense/config.json", "D\tstale.json", "M\tREADME.md",
                                          "M\tmodel.safetensors"])
        assert hub.tags(repo)[config.release.hub.tag] == record["commit"] == hub.git(repo, "rev-parse", "HEAD")
        assert record["deleted"] == ["1_Dense/config.json", "stale.json"]
        assert not hub.rejected


@pytest.mark.parametrize("kept", [".gitattributes"])
def test_the_hub_s_own_files_are_not_deleted(tmp_path, monkeypatch, kept):
    """A Hub repository starts with .gitattributes (LFS rules); a release leaves it alone."""
    config = load_params(REPO / "params.yaml").models["neobert-splade"].model_copy(
        update={"hub_repo_id": "retrievers-test/keep"})
    with HubStandIn(tmp_path / "hub", token=TOKEN) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        publisher = HubPublisher("neobert-splade", config)
        publisher.api.create_repo(config.hub_repo_id)
        folder = hub.repo_dir(config.hub_repo_id)
        (folder / kept).write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        hub.git(config.hub_repo_id, "add", kept)
        hub.git(config.hub_repo_id, "commit", "-q", "-m", "repository set-up")
        publisher.push(_bundle(tmp_path / "b", {"README.md": "card"}), False, "release")
        assert set(hub.git(config.hub_repo_id, "ls-files").splitlines()) == {kept, "README.md"}
