"""release@<model> to the Hub (a local STAND-IN for its commit API), then back through a real Hub-compatible
server (olah, serving the pushed git repository on loopback) with `retrievers download`, index and search."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from retrievers.release import bundle_files

from .conftest import REPO, olah_offline, run
from .hub_standin import HubStandIn

pytestmark = pytest.mark.slow
MODELS = {"modernbert-xtr": "robro612/ModernBERT-XTR", "neobert-splade": "drexalt/splade-NeoBERT-msmarco-triplets-muon"}
TAG = "v0.1.0"
CANARY = "hf_canary" + secrets.token_hex(16)


class Workspace:
    """A copy of the smoke workspace with its own MLflow store (the session's smoke run stays read-only)."""

    def __init__(self, root: Path, hub: HubStandIn):
        self.root, self.hub = root, hub
        self.outputs: list[str] = []

    def set_release(self, model: str, **values) -> None:
        params_file = self.root / "params.yaml"
        params = yaml.safe_load(params_file.read_text())
        release = params["models"][model]["release"]
        for key, value in values.items():
            if key in ("gate_min",):
                release[key] = value
            else:
                release.setdefault("hub", {})[key] = value
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    def release(self, model: str, token: str | None = CANARY, check: bool = True):
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{self.root}/mlflow.db", "HF_ENDPOINT": self.hub.endpoint,
               "HF_HUB_OFFLINE": "0", "HF_HOME": str(self.root.parent / "hf-home")}
        env["HF_TOKEN"] = token or ""  # empty: not set, whatever the calling shell has
        result = run([sys.executable, "stages/release.py", model], cwd=self.root, env=env, check=check)
        self.outputs += [result.stdout, result.stderr]
        return result


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandIn(tmp_path_factory.mktemp("hub"), token=CANARY) as standin:
        yield standin


@pytest.fixture(scope="module")
def workspace(smoke_run, hub, tmp_path_factory) -> Workspace:
    """Both models released with push on, against the stand-in, with HF_TOKEN set to a random canary."""
    root = tmp_path_factory.mktemp("release") / "ws"
    shutil.copytree(smoke_run.workspace, root, symlinks=True)
    ws = Workspace(root, hub)
    for model in MODELS:
        ws.set_release(model, push=True, tag=TAG)
        ws.release(model)
    return ws


def test_push_is_one_commit_of_the_bundle_with_a_version_tag(workspace, hub):
    assert not hub.rejected, hub.rejected
    for model, repo_id in MODELS.items():
        record = json.loads((workspace.root / "releases" / f"{model}.json").read_text())
        assert record["hub"]["tag"] == TAG and hub.tags(repo_id)[TAG] == record["hub"]["commit"]
        commits = [p for m, p in hub.requests if m == "POST" and p.startswith(f"/api/models/{repo_id}/commit/")]
        assert len(commits) == 1
        bundle = workspace.root / "releases" / model
        pushed = hub.git(repo_id, "ls-tree", "-r", "--name-only", TAG).splitlines()
        assert sorted(pushed) == [name for name, _ in bundle_files(bundle)]
        assert {"README.md", "metrics.json", ".eval_results/nanobeir.yaml", "model.safetensors"} <= set(pushed)
        for name in pushed:
            blob = subprocess.run(["git", "show", f"{TAG}:{name}"], cwd=hub.repo_dir(repo_id), capture_output=True,
                                  check=True).stdout
            assert blob == (bundle / name).read_bytes(), name


def test_canary_token_appears_in_no_output_log_mlflow_store_or_pushed_file(workspace, hub, smoke_run):
    # The stand-in refuses requests without the canary as bearer token, so the pushes above prove it was used.
    assert any(m == "POST" and "/commit/" in p for m, p in hub.requests) and not hub.rejected
    assert all(CANARY not in text for text in workspace.outputs)
    # MLflow artifacts of the copied runs are written where the experiment points: the original workspace.
    roots = [workspace.root, hub.root, smoke_run.workspace / "mlartifacts"]
    needle = CANARY.encode()
    leaks = [str(p) for root in roots for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert not leaks, leaks


def _refusal(workspace, model, **kwargs) -> str:
    result = workspace.release(model, check=False, **kwargs)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"release@{model}: error: ")
    return last


def test_refusals_are_one_line_each(workspace, hub):
    model, repo_id = "neobert-splade", MODELS["neobert-splade"]
    tagged = hub.tags(repo_id)[TAG]
    assert f"already has tag {TAG}" in _refusal(workspace, model)
    assert "HF_TOKEN is not set" in _refusal(workspace, model, token=None)
    metrics = workspace.root / "metrics" / f"{model}.json"
    moved = metrics.rename(metrics.with_suffix(".bak"))
    try:
        assert "is missing" in _refusal(workspace, model)
    finally:
        moved.rename(metrics)
    workspace.set_release(model, gate_min=1.5)
    assert "below the release gate 1.5" in _refusal(workspace, model)
    workspace.set_release(model, gate_min=0.0)
    assert hub.tags(repo_id)[TAG] == tagged  # nothing moved


def test_force_moves_the_tag_and_dry_run_lists_the_files(workspace, hub):
    model, repo_id = "neobert-splade", MODELS["neobert-splade"]
    workspace.set_release(model, force=True)
    before = hub.tags(repo_id)[TAG]
    workspace.release(model)
    assert hub.tags(repo_id)[TAG] != before
    workspace.set_release(model, force=False, dry_run=True)
    result = workspace.release(model, token=None)
    bundle = workspace.root / "releases" / model
    files = bundle_files(bundle)
    lines = result.stdout.strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("dry run:")) :]
    assert lines[0] == (f"dry run: would push {len(files)} files ({sum(s for _, s in files):,} bytes) to {repo_id} "
                        f"as one commit tagged {TAG}")
    assert [line.split() for line in lines[1:]] == [[f"{size:,}", name] for name, size in files]


# ---------------------------------------------------------------- download through a real Hub-compatible server
@pytest.fixture(scope="module")
def olah(hub, workspace, tmp_path_factory):
    """olah (a Hub mirror server from PyPI) in offline mode, serving the stand-in's git repositories."""
    with olah_offline(hub.root, tmp_path_factory.mktemp("olah")) as port:
        yield f"http://127.0.0.1:{port}"


def _cli(*args: str, cwd: Path, env: dict) -> str:
    return run([str(Path(sys.executable).parent / "retrievers"), *args], cwd=cwd, env=env).stdout


@pytest.mark.parametrize("model", list(MODELS))
def test_download_index_search_end_to_end(model, workspace, hub, olah, tmp_path):
    repo_id = MODELS[model]
    pinned = hub.tags(repo_id)[TAG]
    env = {"HF_ENDPOINT": olah, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    folder = Path(_cli("download", f"{repo_id}@{pinned}", cwd=tmp_path, env=env).strip())
    assert folder.name == pinned
    bundle = workspace.root / "releases" / model
    assert bundle_files(folder) == bundle_files(bundle)

    data = REPO / "fixtures" / "datasets" / "tiny-NanoMSMARCO"
    corpus, queries = (next((data / part).glob("*.parquet")) for part in ("corpus", "queries"))
    _cli("index", str(folder), str(corpus), "index", cwd=tmp_path, env=env)
    found = json.loads(_cli("search", "index", "--queries", str(queries), "--k", "10", "--format", "json",
                            cwd=tmp_path, env=env))
    relevant: dict[str, set[str]] = {}
    for row in pq.read_table(next((data / "qrels").glob("*.parquet"))).to_pylist():
        relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    first = [item["results"][0]["id"] in relevant[item["query_id"]] for item in found]
    share = sum(first) / len(first)
    print(f"{model}: relevant document first for {sum(first)}/{len(first)} fixture queries ({share:.2f})")
    documents = pq.read_table(corpus).num_rows
    chance = sum(len(v) for v in relevant.values()) / len(relevant) / documents
    assert share > 5 * chance  # far above a random ranking; the measured shares are in the README


def test_download_from_the_mlflow_registry(workspace, tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{workspace.root}/mlflow.db"}
    for model in MODELS:
        folder = Path(_cli("download", f"models:/{model}@candidate", "--out", str(tmp_path / model), cwd=tmp_path,
                           env=env).strip())
        assert bundle_files(folder) == bundle_files(workspace.root / "releases" / model)


def test_download_of_a_missing_revision_or_repository_is_one_line(olah, tmp_path):
    env = {"HF_ENDPOINT": olah, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    exe = str(Path(sys.executable).parent / "retrievers")
    for spec in (f"{MODELS['neobert-splade']}@v9.9.9", "nobody/nothing"):
        result = run([exe, "download", spec], cwd=tmp_path, env=env, check=False)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 1 and last.startswith(f"retrievers: error: {spec}: "), result.stderr


# ------------------------------------------------------- a NeoBERT bundle without this package (stock libraries)
def test_neobert_bundle_loads_with_stock_sentence_transformers_through_the_hub(workspace, hub, olah, tmp_path):
    """A fresh environment with only sentence-transformers (locked versions) loads the pushed bundle with
    trust_remote_code through olah, and encodes exactly as the pipeline's model does with the native class."""
    import torch
    from sentence_transformers import SparseEncoder
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from .stock_env import stock_python

    repo_id = MODELS["neobert-splade"]
    pinned = hub.tags(repo_id)[TAG]
    texts = [row["text"] for row in pq.read_table(next((REPO / "fixtures" / "datasets" / "tiny-NanoMSMARCO" /
                                                        "corpus").glob("*.parquet"))).to_pylist()[:4]]
    env = {"HF_ENDPOINT": olah, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home")}
    result = run([str(stock_python()), str(REPO / "tests" / "stock_load.py"), repo_id, pinned, json.dumps(texts)],
                 cwd=tmp_path, env=env)
    # the libraries print their own lines (load reports) to stdout too: take the script's JSON line
    marker = '{"retrievers_installed"'
    line = next((line for line in result.stdout.splitlines() if marker in line), None)
    assert line is not None, result.stdout[-3000:] + result.stderr[-3000:]
    stock = json.loads(line[line.index(marker):])
    assert not stock["retrievers_installed"]
    for name in ("encoder_class", "mlm_class"):  # transformers' copy of the bundle's modeling_neobert.py
        assert stock[name].startswith("transformers_modules.") and stock[name].endswith(
            "modeling_neobert.NeoBERTLMHead"), stock[name]

    trained = workspace.root / "models" / "neobert-splade"  # the pipeline's model, with this package's class
    model = SparseEncoder(str(trained), device="cpu")
    assert type(model[0].auto_model).__module__ == "retrievers.models.neobert"
    expected = model.encode(texts, convert_to_sparse_tensor=False, convert_to_tensor=True)
    vector_diff = float((torch.tensor(stock["vectors"]) - expected).abs().max())
    mlm = AutoModelForMaskedLM.from_pretrained(trained).eval()
    inputs = AutoTokenizer.from_pretrained(trained)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = mlm(**inputs).logits * inputs["attention_mask"][..., None]
    logit_diff = float((torch.tensor(stock["logits"]) - logits).abs().max())
    print(f"stock sentence-transformers vs pipeline: max |diff| vectors {vector_diff:.3g}, MLM logits {logit_diff:.3g}")
    assert vector_diff <= 1e-6 and logit_diff <= 1e-5

    # With this package imported the bundle loads without remote code, through the registered native class.
    bundle = SparseEncoder(str(workspace.root / "releases" / "neobert-splade"), device="cpu")
    assert type(bundle[0].auto_model).__module__ == "retrievers.models.neobert"
