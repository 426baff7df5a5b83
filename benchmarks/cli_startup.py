"""Start-up of every command-line entry point: wall time and peak RSS (median of N runs), and which heavy
libraries each imports.

    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py --workdir build/bench-startup [--src OTHER/src] [--runs 3]

``--src`` measures another checkout's code with this environment (PYTHONPATH=OTHER/src comes before the
editable install), e.g. main's as the "before" column. The models are the tiny ones benchmarks/synthetic.py
builds (SPLADE) and an untrained PyLate ColBERT on the fixture's tiny ModernBERT; the indexes are a 300-passage
fixture corpus, one per kind, exact (no approximate index is built or loaded). Peak RSS is the process's own
(os.wait4's ru_maxrss); `serve` is timed until /health answers. Each row also has the import profile of one more
run (PYTHONPROFILEIMPORTTIME): the seconds spent importing, in all and per top-level package (self times summed),
which the machine's load distorts less than the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

HEAVY = ("torch", "transformers", "sentence_transformers", "pylate", "mlflow", "fastapi", "seismic", "fast_plaid")
CORPUS = next((REPO / "fixtures" / "datasets" / "tiny-NanoMSMARCO" / "corpus").glob("*.parquet"))


def tiny_colbert(folder: Path) -> Path:
    if (folder / "modules.json").exists():
        return folder
    from pylate import models

    models.ColBERT(str(REPO / "fixtures" / "models" / "tiny-modernbert"), embedding_size=32, device="cpu",
                   document_length=64, query_length=16).save(str(folder))
    return folder


def timed(command: list[str], env: dict, until_health: int | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS MiB) of one run."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if until_health is not None:
        import httpx

        while process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{until_health}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        wall = time.perf_counter() - start
        process.terminate()
        _, _, usage = os.wait4(process.pid, 0)
        return wall, usage.ru_maxrss // 1024
    _, _, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss // 1024


def import_profile(command: list[str], env: dict) -> dict:
    """The heavy libraries a run imports and its import seconds, in all and for the packages that took longest
    (PYTHONPROFILEIMPORTTIME's self times summed per top-level package)."""
    if "serve" in command:
        return {}
    result = subprocess.run(command, env=env | {"PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True,
                            timeout=600)
    per_package: Counter[str] = Counter()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            per_package[name.strip().split(".")[0]] += int(own)
    return {"imports": [name for name in HEAVY if name in per_package],
            "import_seconds": round(sum(per_package.values()) / 1e6, 2),
            "import_seconds_by_package": {name: round(us / 1e6, 2) for name, us in per_package.most_common(8)}
            | {"retrievers": round(per_package["retrievers"] / 1e6, 2)}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--src", type=Path, help="measure this src folder's code instead of the installed one")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cheap-only", action="store_true", help="only the commands that load no model")
    parser.add_argument("--only", nargs="+", default=[], help="only the commands whose name contains one of these")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    splade, colbert = args.workdir / "splade", args.workdir / "colbert"
    # built in another process: a child's peak RSS (ru_maxrss) counts the parent's pages it forked from
    subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(REPO / 'benchmarks')!r}]; "
                    "import synthetic, cli_startup; from pathlib import Path; "
                    f"synthetic.tiny_splade(Path({str(splade)!r}), max_seq_length=64); "
                    f"cli_startup.tiny_colbert(Path({str(colbert)!r}))"], check=True, capture_output=True)
    texts = args.workdir / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                             for i, t in enumerate(["what is the capital", "about the river city", "the music team"])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI":
           f"sqlite:///{args.workdir / 'mlflow.db'}"}
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    index = args.workdir / f"index-{'other' if args.src else 'here'}"
    colbert_index = args.workdir / f"colbert-index-{'other' if args.src else 'here'}"
    py = str(Path(sys.executable))
    cli = [py, "-c", "import sys; from retrievers.cli import app; sys.argv[0] = 'retrievers'; app()"]
    if not args.cheap_only:
        for model, folder in ((splade, index), (colbert, colbert_index)):
            subprocess.run([*cli, "index", str(model), str(CORPUS), str(folder), "--overwrite", "--exact"], env=env,
                           check=True, capture_output=True)
    port = free_port()
    commands = {
        "retrievers --help": [*cli, "--help"],
        "retrievers index --help": [*cli, "index", "--help"],
        "retrievers download LOCAL_FOLDER": [*cli, "download", str(splade)],
        "retrievers search MISSING q (error)": [*cli, "search", str(args.workdir / "missing"), "q"],
        "retrievers index MODEL MISSING (error)": [*cli, "index", str(splade), str(args.workdir / "x.jsonl"),
                                                   str(args.workdir / "x")],
        "retrievers encode SPLADE 3 texts": [*cli, "encode", str(splade), str(texts)],
        "retrievers encode COLBERT 3 texts": [*cli, "encode", str(colbert), str(texts)],
        "retrievers index SPLADE 300 passages --exact": [*cli, "index", str(splade), str(CORPUS),
                                                         str(args.workdir / "index-again"), "--overwrite", "--exact"],
        "retrievers index COLBERT 300 passages --exact": [*cli, "index", str(colbert), str(CORPUS),
                                                          str(args.workdir / "colbert-index-again"), "--overwrite",
                                                          "--exact"],
        "retrievers search INDEX q": [*cli, "search", str(index), "capital of the river"],
        "retrievers search COLBERT-INDEX q": [*cli, "search", str(colbert_index), "capital of the river"],
        "retrievers serve INDEX (until /health)": [*cli, "serve", str(index), "--port", str(port)],
    } | {f"python stages/{s.stem}.py --help": [py, str(REPO / "stages" / s.name), "--help"]
         for s in sorted((REPO / "stages").glob("*.py"))}
    if args.cheap_only:
        commands = {n: c for n, c in commands.items() if "--help" in n or "error" in n or "download" in n}
    if args.only:
        commands = {n: c for n, c in commands.items() if any(part in n for part in args.only)}
    rows = []
    for name, command in commands.items():
        runs = [timed(command, env, port if "serve" in name else None) for _ in range(args.runs)]
        row = {"command": name, "seconds": round(statistics.median(r[0] for r in runs), 2),
               "peak_rss_mib": int(statistics.median(r[1] for r in runs))} | import_profile(command, env)
        print(json.dumps(row), flush=True)
        rows.append(row)
    load = os.getloadavg()
    print(json.dumps({"load_average": load}), flush=True)
    name = "startup-other.json" if args.src else "startup.json"
    (args.workdir / name).write_text(json.dumps({"rows": rows, "load_average": load}, indent=2))


if __name__ == "__main__":
    main()
