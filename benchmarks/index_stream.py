"""`retrievers index` on a large synthetic corpus: wall time, passages/s, peak RSS over time, and a kill at about
half way followed by a resume that must end with the index an uninterrupted run builds.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/index_stream.py tiny --workdir build/bench-stream \
        --passages 1000000 --exact --processes 1

MODEL is a model folder, or ``tiny``: the smallest SPLADE model the repository makes (benchmarks/synthetic.py:
the fixture's tiny NeoBERT, 2 layers x 64, 381-token vocabulary, untrained SPLADE head), built in the workdir.
Passages are the fixture corpora's words at MS MARCO-like lengths (mean ~56 words), seeded.

Runs (1) an uninterrupted `retrievers index` and (2) a second one killed (SIGKILL) once half of its shards exist,
then (3) the same command again, which resumes. Peak RSS is sampled every second over the command's whole
process tree (/proc). Prints one JSON line per run and compares the two indexes: every shard's arrays (ids and
vectors) equal, a sha256 over all of them (the .npz files themselves differ: zip entries carry the write time),
and the records' documents and mode.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import synthetic  # noqa: E402


def corpus(workdir: Path, passages: int) -> Path:
    return synthetic.write_corpus(workdir / f"passages-{passages}.jsonl", passages, synthetic.fixture_words())


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants (KiB)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            todo += [int(c) for c in children]
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
    return total


def run(args: list[str], kill_at_shards: int | None, index_dir: Path) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    peak, samples = 0, []
    while process.poll() is None:
        rss = tree_rss_kib(process.pid)
        peak = max(peak, rss)
        samples.append((round(time.perf_counter() - start), rss // 1024))
        if kill_at_shards is not None and len(list((index_dir / "shards").glob("[0-9]*.npz"))) >= kill_at_shards:
            process.send_signal(signal.SIGKILL)
            process.wait()
            break
        time.sleep(1)
    stderr = process.stderr.read() if process.stderr else ""
    return {"seconds": round(time.perf_counter() - start, 1), "returncode": process.returncode,
            "peak_rss_mib": peak // 1024, "rss_mib_every_minute": samples[::60],
            "last_lines": stderr.strip().splitlines()[-4:]}


def fingerprint(index_dir: Path, names: list[str] | None = None) -> str:
    """sha256 over every shard's (or the ``names`` shards') array names, dtypes, shapes and bytes, in order."""
    import hashlib

    digest = hashlib.sha256()
    paths = sorted((index_dir / "shards").glob("[0-9]*.npz"))
    for path in paths if names is None else [index_dir / "shards" / n for n in names]:
        with np.load(path) as arrays:
            for key in arrays.files:
                value = np.ascontiguousarray(arrays[key])
                digest.update(f"{path.name}/{key}/{value.dtype.str}/{value.shape}".encode())
                digest.update(value.tobytes())
    return digest.hexdigest()


def same_shards(a: Path, b: Path, names: list[str]) -> bool:
    for name in names:
        with np.load(a / "shards" / name) as x, np.load(b / "shards" / name) as y:
            if x.files != y.files or any(not np.array_equal(x[k], y[k]) for k in x.files):
                return False
    return True


def same_index(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "shards").glob("*.npz"))
    if names != sorted(p.name for p in (b / "shards").glob("*.npz")) or not same_shards(a, b, names):
        return False
    keys = ("documents", "build", "search", "mode")
    ra, rb = (json.loads((d / "retrievers-index.json").read_text()) for d in (a, b))
    return all(ra.get(k) == rb.get(k) for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder, or 'tiny' (see above)")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=0)
    parser.add_argument("--exact", action="store_true", help="skip the approximate index (encoding only)")
    parser.add_argument("--skip-uninterrupted", action="store_true",
                        help="only the killed and resumed runs (e.g. beside an uninterrupted run in another process)")
    parser.add_argument("--compare-only", action="store_true", help="only compare WORKDIR/whole and WORKDIR/resumed")
    parser.add_argument("--reference", type=Path,
                        help="with --compare-only: compare WORKDIR/resumed's shards with the same shards of this "
                             "uninterrupted index of a longer corpus whose first rows are this corpus")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.compare_only and args.reference:
        resumed = args.workdir / "resumed"
        names = sorted(p.name for p in (resumed / "shards").glob("[0-9]*.npz"))
        compared = {"shards": len(names), "same_shards": same_shards(args.reference, resumed, names),
                    "sha256": {"reference": fingerprint(args.reference, names), "resumed": fingerprint(resumed)}}
        print(json.dumps(compared), flush=True)
        (args.workdir / "compare.json").write_text(json.dumps(compared, indent=2))
        return
    if args.compare_only:
        whole, resumed = args.workdir / "whole", args.workdir / "resumed"
        compared = {"same_index": same_index(whole, resumed),
                    "sha256": {"whole": fingerprint(whole), "resumed": fingerprint(resumed)}}
        print(json.dumps(compared), flush=True)
        (args.workdir / "compare.json").write_text(json.dumps(compared, indent=2))
        return
    start = time.perf_counter()
    data = corpus(args.workdir, args.passages)
    print(json.dumps({"corpus": str(data), "bytes": data.stat().st_size,
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    model = synthetic.tiny_splade(args.workdir / "tiny-splade") if args.model == "tiny" else Path(args.model)
    cli = [str(Path(sys.executable).parent / "retrievers"), "index", str(model), str(data)]
    options = ["--shard-size", str(args.shard_size), "--processes", str(args.processes)] + (
        ["--exact"] if args.exact else [])
    results = {}
    if not args.skip_uninterrupted:
        results["uninterrupted"] = run([*cli, str(args.workdir / "whole"), *options], None, args.workdir / "whole")
        results["uninterrupted"]["passages_per_second"] = round(args.passages / results["uninterrupted"]["seconds"], 1)
        print(json.dumps({"run": "uninterrupted", **results["uninterrupted"]}), flush=True)
    half = -(-args.passages // args.shard_size) // 2
    resumed_dir = args.workdir / "resumed"
    results["killed"] = run([*cli, str(resumed_dir), *options], half, resumed_dir)
    print(json.dumps({"run": "killed", **results["killed"]}), flush=True)
    results["resumed"] = run([*cli, str(resumed_dir), *options], None, resumed_dir)
    print(json.dumps({"run": "resumed", **results["resumed"]}), flush=True)
    if not args.skip_uninterrupted:
        results["same_index"] = same_index(args.workdir / "whole", resumed_dir)
        results["sha256"] = {"whole": fingerprint(args.workdir / "whole"), "resumed": fingerprint(resumed_dir)}
        print(json.dumps({"same_index": results["same_index"], "sha256": results["sha256"]}), flush=True)
    name = "results-resume.json" if args.skip_uninterrupted else "results.json"
    (args.workdir / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
