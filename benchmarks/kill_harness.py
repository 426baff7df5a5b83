"""Kill harness: SIGKILL every stage of the pipeline at named points, then `dvc repro` to completion, and compare.

For each kill point (``retrievers.killpoints``: start-up, training steps, checkpoint saves, model saves, evaluation,
card, release assembly, registry, Hub push against tests/hub_standin.py) it copies an uninterrupted reference
workspace, re-runs the point's stage with ``RETRIEVERS_KILL_AT=<point>`` (the stage SIGKILLs its whole process
group, `dvc` included), then runs plain ``dvc repro`` and checks: it completes; metrics/*.json and the outputs'
hashes in dvc.lock equal the reference's; no scratch copy (``.<name>.*``) or checkpoint is left; ``dvc status`` is
clean; the MLflow store has no run left RUNNING.

    python benchmarks/kill_harness.py --workdir /tmp/kills            # every point (the by-hand run)
    python benchmarks/kill_harness.py --workdir /tmp/kills --points step:5 atomic:models/modernbert-xtr

The tiny profile (the smoke profile with a few steps, several epochs each, so resumes cross epoch boundaries) keeps a
point to a killed run plus a resumed one. tests/test_kill_harness.py runs a few points of it in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "hf_kill_harness_token"
# The smoke profile, shrunk: (phase -> args and sample overrides). Several epochs per phase, a checkpoint every few.
TINY = {
    "modernbert-xtr-contrastive": {"max_train_samples": 64,
                                   "args": {"max_steps": 12, "save_steps": 4, "logging_steps": 2}},
    "modernbert-xtr": {"max_train_samples": 32, "args": {"max_steps": 8, "save_steps": 4, "logging_steps": 2}},
    "neobert-splade": {"max_train_samples": 112, "eval_samples": 16,
                       "args": {"num_train_epochs": 3, "save_steps": 3, "eval_steps": 3, "logging_steps": 3}},
}
# (stage to re-run, kill point). The Hub push is on for neobert-splade (against the stand-in).
POINTS = [  # the points that resume mid-training first
    ("train@modernbert-xtr-contrastive", "step:6"),
    ("train@modernbert-xtr", "step:5"),
    ("train@neobert-splade", "step:4"),
    ("train@modernbert-xtr-contrastive", "checkpoint-save:8"),
    ("train@modernbert-xtr-contrastive", "step:11"),
    ("train@neobert-splade", "step:7"),
    ("train@modernbert-xtr-contrastive", "atomic:models/modernbert-xtr-contrastive"),
    ("evaluate@modernbert-xtr", "evaluated"),
    ("card@modernbert-xtr", "card"),
    ("release@modernbert-xtr", "atomic:releases/modernbert-xtr"),
    ("release@modernbert-xtr", "registry"),
    ("release@neobert-splade", "hub-push"),
    ("train@modernbert-xtr-contrastive", "start:train"),
    ("train@modernbert-xtr-contrastive", "step:1"),
    ("train@modernbert-xtr-contrastive", "step:3"),
    ("train@modernbert-xtr-contrastive", "checkpoint-save:4"),
    ("train@modernbert-xtr", "step:2"),
    ("train@modernbert-xtr", "checkpoint-save:4"),
    ("train@modernbert-xtr", "atomic:models/modernbert-xtr"),
    ("train@neobert-splade", "step:2"),
    ("train@neobert-splade", "checkpoint-save:3"),
    ("train@neobert-splade", "atomic:models/neobert-splade"),
    ("evaluate@modernbert-xtr", "start:evaluate"),
]


def _env(workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace}/mlflow.db",
                        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RETRIEVERS_KILL_AT", None)
    return env | (extra or {})


def _dvc(workspace: Path, *args: str, env: dict[str, str], timeout: int = 1800) -> subprocess.CompletedProcess:
    # A session of its own: the kill point SIGKILLs its process group (dvc and the stage), never this harness.
    return subprocess.run(["dvc", *args], cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def make_reference(workdir: Path, hub_endpoint: str) -> Path:
    """The tiny profile, materialised and run once, uninterrupted: what every killed-and-resumed run must equal."""
    reference = workdir / "reference"
    hub = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub_endpoint, "HF_HUB_OFFLINE": "0"}
    # Materialised afresh each time: the checkout's sources are synced (only changed files are copied), so an
    # earlier harness run's reference re-runs exactly the stages that the code changes since then affect.
    subprocess.run([sys.executable, "-m", "retrievers.profile", "smoke", str(reference)], cwd=REPO, check=True)
    params = yaml.safe_load((reference / "params.yaml").read_text())
    for phase, overrides in TINY.items():
        for key, value in overrides.items():
            if key == "args":
                params["phases"][phase]["args"].update(value)
            else:
                params["phases"][phase][key] = value
    params["models"]["neobert-splade"]["release"]["hub"] = {"push": True, "tag": "v0.1.0", "dry_run": False,
                                                            "force": True}
    (reference / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _dvc(reference, "repro", env=_env(reference, hub))
    if result.returncode != 0:
        raise SystemExit(f"reference run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return reference


def _lock_hashes(workspace: Path) -> dict[str, str]:
    stages = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    hashes = {out["path"]: out.get("md5", "") for stage in stages.values() for out in stage.get("outs", [])
              if not out["path"].startswith(("runs/", "releases/"))}  # run ids and registry versions differ by design
    for card in sorted((workspace / "model_cards").glob("*/README.md")):  # its provenance names the MLflow run
        text = re.sub(r"MLflow run: `[0-9a-f]+`", "MLflow run: `<run>`", card.read_text())
        hashes[str(card.relative_to(workspace))] = hashlib.md5(text.encode()).hexdigest()
    return hashes


def _metrics(workspace: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((workspace / "metrics").glob("*.json"))}


def _leftovers(workspace: Path) -> list[str]:
    found = [str(p.relative_to(workspace)) for folder in ("models", "releases", "metrics", "model_cards", "runs",
                                                           "plots", "data")
             if (workspace / folder).exists() for p in (workspace / folder).rglob(".*")
             if p.name not in (".eval_results",) and not p.name.startswith(".gitignore")]
    if (workspace / "checkpoints").exists():
        found += [str(p.relative_to(workspace)) for p in (workspace / "checkpoints").iterdir()]
    return found


def _running_runs(workspace: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids, filter_string="attributes.status = 'RUNNING'")) if ids else 0


def _resumed_from(workspace: Path, stage: str) -> str | None:
    """For a training stage: the checkpoint its final run resumed from ('' when it started afresh)."""
    from mlflow import MlflowClient

    if not stage.startswith("train@"):
        return None
    record = json.loads((workspace / "runs" / f"{stage.split('@')[1]}.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace}/mlflow.db")
    return client.get_run(record["run_id"]).data.tags.get("resumed_from")


def try_point(reference: Path, workdir: Path, stage: str, point: str, hub_endpoint: str) -> dict:
    workspace = workdir / ("ws-" + point.replace(":", "-").replace("/", "-"))
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(reference, workspace, symlinks=True)
    hub = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub_endpoint, "HF_HUB_OFFLINE": "0"}
    start = time.perf_counter()
    killed = _dvc(workspace, "repro", "--force", "--single-item", stage,
                  env=_env(workspace, hub | {"RETRIEVERS_KILL_AT": point}))
    outcome = {"stage": stage, "point": point, "killed": killed.returncode in (-9, 137)}
    resumed = _dvc(workspace, "repro", env=_env(workspace, hub))
    outcome["repro_rc"] = resumed.returncode
    outcome["seconds"] = round(time.perf_counter() - start, 1)
    if resumed.returncode != 0:
        outcome["error"] = (resumed.stdout + resumed.stderr)[-1500:]
    status = _dvc(workspace, "status", "--json", env=_env(workspace))
    outcome["dvc_status_clean"] = status.returncode == 0 and status.stdout.strip() in ("{}", "")
    outcome["metrics_equal"] = _metrics(workspace) == _metrics(reference)
    outcome["hashes_equal"] = _lock_hashes(workspace) == _lock_hashes(reference)
    if not outcome["hashes_equal"]:
        ours, theirs = _lock_hashes(workspace), _lock_hashes(reference)
        outcome["hash_differences"] = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    outcome["resumed_from"] = _resumed_from(workspace, stage)
    outcome["leftovers"] = _leftovers(workspace)
    outcome["mlflow_running"] = _running_runs(workspace)
    outcome["passed"] = (outcome["killed"] and resumed.returncode == 0 and outcome["dvc_status_clean"]
                         and outcome["metrics_equal"] and outcome["hashes_equal"] and not outcome["leftovers"]
                         and outcome["mlflow_running"] == 0)
    if outcome["passed"]:
        shutil.rmtree(workspace, ignore_errors=True)
    return outcome


def run(workdir: Path, points: list[tuple[str, str]]) -> list[dict]:
    from tests.hub_standin import HubStandIn

    workdir.mkdir(parents=True, exist_ok=True)
    with HubStandIn(workdir / "hub", token=TOKEN) as hub:
        reference = make_reference(workdir, hub.endpoint)
        results = []
        for stage, point in points:
            results.append(try_point(reference, workdir, stage, point, hub.endpoint))
            print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--points", nargs="*", help="kill points to try (default: all)")
    args = parser.parse_args()
    chosen = [p for p in POINTS if not args.points or p[1] in args.points]
    results = run(args.workdir, chosen)
    passed = sum(r["passed"] for r in results)
    print(f"kill points tried: {len(results)}, passed: {passed}")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
