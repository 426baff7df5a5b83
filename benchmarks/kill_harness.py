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
    "neobert-splade": {"max_train_samples": 112, "eval_samples": 16,  # 96 training rows: 3 batches an epoch
                       "args": {"num_train_epochs": 3, "save_steps": 2, "eval_steps": 2, "logging_steps": 1}},
}
# (stage to re-run, kill point): every stage, start-up to Hub push. The Hub push is on for neobert-splade (against
# the stand-in). The points that resume mid-training come first.
POINTS = [
    ("train@modernbert-xtr-contrastive", "step:6"),  # resumes from checkpoint-4 (epoch 2 of 2-step epochs)
    ("train@modernbert-xtr", "step:5"),  # the KD phase, from checkpoint-4
    ("train@neobert-splade", "step:5"),  # from checkpoint-4: mid-epoch, the collator's draws after an evaluation
    ("train@neobert-splade", "checkpoint-save:4"),  # checkpoint-4 unsealed: from checkpoint-2, mid-epoch
    ("train@modernbert-xtr-contrastive", "checkpoint-save:8"),
    ("train@modernbert-xtr-contrastive", "atomic:models/modernbert-xtr-contrastive"),  # inside the final save
    ("train@neobert-splade", "step:9"),  # the last step, before the best checkpoint is loaded and saved
    ("train@neobert-splade", "atomic:models/neobert-splade"),
    ("train@modernbert-xtr", "atomic:models/modernbert-xtr"),
    ("train@modernbert-xtr", "checkpoint-save:4"),
    ("train@modernbert-xtr-contrastive", "step:11"),
    ("evaluate@modernbert-xtr", "evaluated"),
    ("evaluate@neobert-splade", "evaluated"),
    ("card@modernbert-xtr", "card"),
    ("release@modernbert-xtr", "atomic:releases/modernbert-xtr"),
    ("release@modernbert-xtr", "registry"),
    ("release@neobert-splade", "hub-push"),
    ("download@ms-marco-en-bge-gemma", "start:download"),
    ("download@ms-marco-en-bge-gemma", "atomic:data/ms-marco-en-bge-gemma"),
    ("train@modernbert-xtr-contrastive", "start:train"),
    ("train@modernbert-xtr-contrastive", "step:1"),  # before the first checkpoint: starts afresh
    ("evaluate@modernbert-xtr", "start:evaluate"),
    ("card@neobert-splade", "start:card"),
    ("release@neobert-splade", "start:release"),
]


def _env(workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace}/mlflow.db",
                        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                        # The workspace's own copy of the library (what dvc.lock hashes), not the checkout's
                        # editable install: editing the checkout while the harness runs changes nothing here.
                        "PYTHONPATH": str(workspace / "src")}
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


def _max_difference(ours: dict, theirs: dict) -> float | None:
    """The largest absolute difference between two runs' numeric metrics (None when their keys differ)."""
    flat = [(a, b) for name in ours.keys() & theirs.keys() for key in ours[name].keys() & theirs[name].keys()
            for a, b in [(ours[name][key], theirs[name][key])] if isinstance(a, (int, float))]
    if ours.keys() != theirs.keys() or any(ours[n].keys() != theirs[n].keys() for n in ours):
        return None
    return max((abs(a - b) for a, b in flat), default=0.0)


def markdown_table(results: list[dict]) -> str:
    """The by-hand run's table (README and notes)."""
    lines = ["| stage | kill point | killed | resumed from | s | metrics max abs diff | output hashes | "
             "leftovers | RUNNING runs | dvc status | result |", "|---" * 11 + "|"]
    for r in results:
        hashes = "equal" if r["hashes_equal"] else "differ: " + ", ".join(r.get("hash_differences", []))
        resumed = r["resumed_from"]
        resumed = "-" if resumed is None else (Path(resumed).name if resumed else "afresh")
        lines.append(f"| {r['stage']} | {r['point']} | {'yes' if r['killed'] else 'NO'} | {resumed} | {r['seconds']} "
                     f"| {r['metrics_max_abs_diff']} | {hashes} | {len(r['leftovers'])} | {r['mlflow_running']} | "
                     f"{'clean' if r['dvc_status_clean'] else 'DIRTY'} | {'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def _leftovers(workspace: Path) -> list[str]:
    found = [str(p.relative_to(workspace)) for folder in ("models", "releases", "metrics", "model_cards", "runs",
                                                           "plots", "data")
             if (workspace / folder).exists() for p in (workspace / folder).rglob(".*")
             if p.name not in (".eval_results",) and not p.name.startswith(".gitignore")]
    if (workspace / "checkpoints").exists():  # a phase's checkpoints are removed once its model is saved
        found += [str(p.relative_to(workspace)) for p in (workspace / "checkpoints").iterdir() if p.name != "tokens"]
    tokens = workspace / "checkpoints" / "tokens"  # the token caches (speed.pretokenized) stay: content-keyed,
    if tokens.exists():  # renamed into place whole; only a scratch build (".<key>.*") would be a leftover
        found += [str(p.relative_to(workspace)) for p in tokens.iterdir() if p.name.startswith(".")]
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
    workspace = workdir / ("ws-" + f"{stage}-{point}".replace(":", "-").replace("/", "-").replace("@", "-"))
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(reference, workspace, symlinks=True)
    hub = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub_endpoint, "HF_HUB_OFFLINE": "0"}
    start = time.perf_counter()
    # Atomic writes name their target by its full path (stages get the workspace root): name it in this copy.
    named = f"atomic:{workspace / point.split(':', 1)[1]}" if point.startswith("atomic:") else point
    killed = _dvc(workspace, "repro", "--force", "--single-item", stage,
                  env=_env(workspace, hub | {"RETRIEVERS_KILL_AT": named}))
    outcome = {"stage": stage, "point": point, "killed": killed.returncode in (-9, 137)}
    resumed = _dvc(workspace, "repro", env=_env(workspace, hub))
    outcome["repro_rc"] = resumed.returncode
    outcome["seconds"] = round(time.perf_counter() - start, 1)
    if resumed.returncode != 0:
        outcome["error"] = (resumed.stdout + resumed.stderr)[-1500:]
    status = _dvc(workspace, "status", "--json", env=_env(workspace))
    outcome["dvc_status_clean"] = status.returncode == 0 and status.stdout.strip() in ("{}", "")
    outcome["metrics_equal"] = _metrics(workspace) == _metrics(reference)
    outcome["metrics_max_abs_diff"] = _max_difference(_metrics(workspace), _metrics(reference))
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
    chosen = [p for p in POINTS if not args.points or p[1] in args.points or f"{p[0]}:{p[1]}" in args.points]
    results = run(args.workdir, chosen)
    passed = sum(r["passed"] for r in results)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown_table(results))
    print(f"kill points tried: {len(results)}, passed: {passed}")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
