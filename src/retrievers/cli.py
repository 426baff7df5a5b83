"""`retrievers`: get a released model (Hub, MLflow registry or local folder), encode texts, index a corpus, search.

XTR/ColBERT models index through PyLate's PLAID index; SPLADE models through Seismic (pyseismic-lsr), an
inverted index made for learned sparse retrieval. Corpora and query files are jsonl or parquet
with an ``id`` (or ``_id``) and a ``text`` field (``title``, when present, is prepended to the text).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from retrievers.io import write_json_atomic

app = typer.Typer(
    help="Download released retrievers, encode texts, index a corpus and search it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INDEX_RECORD = "retrievers-index.json"  # = indexing.INDEX_RECORD
BATCH = 32


class CLIError(Exception):
    """Bad input from the user: printed as one line, exit status 1."""


# -------------------------------------------------------------------------------------------- models
def fetch(spec: str, out: Path | None = None) -> Path:
    """A local folder holding the model named by ``spec``: a path, ``models:/name@alias`` or ``org/name[@rev]``."""
    if Path(spec).expanduser().exists():
        folder = Path(spec).expanduser()
    elif spec.startswith("models:/"):
        folder = _from_registry(spec)
    else:
        repo_id, _, revision = spec.partition("@")
        if not HUB_ID.match(repo_id):
            raise CLIError(f"unknown model {spec!r}: give a local folder, models:/<name>@<alias> or <org>/<name>[@rev]")
        folder = _from_hub(repo_id, revision or None)
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    model_kind(folder)
    return folder


def _from_registry(uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as error:
        raise CLIError(f"{uri}: {str(error).splitlines()[0]} (tracking URI {mlflow.get_tracking_uri()})") from None
    import yaml

    mlmodel = model_dir / "MLmodel"
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}) if mlmodel.exists() else {}
    bundle_path = flavor.get("python_function", {}).get("artifacts", {}).get("bundle", {}).get("path")
    if not bundle_path or not (model_dir / bundle_path).is_dir():
        raise CLIError(f"{uri} is not a retrievers release (its MLmodel has no 'bundle' artifact)")
    return model_dir / bundle_path


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RevisionNotFoundError:
        raise CLIError(f"{at}: {repo_id} has no revision {revision!r} on {constants.ENDPOINT}") from None
    except RepositoryNotFoundError:  # some servers (olah) answer this for a missing revision too
        raise CLIError(f"{at}: not found on {constants.ENDPOINT} (check the repository, the revision, "
                       "and HF_TOKEN if it is private)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:
        raise CLIError(f"cannot download {at}: {str(error).splitlines()[0]}") from None


def model_kind(folder: Path) -> str:
    """``colbert`` or ``splade``, from the bundle's release.json or else its sentence-transformers modules."""
    release = folder / "release.json"
    if release.exists():
        return json.loads(release.read_text())["kind"]
    modules = folder / "modules.json"
    if not modules.exists():
        raise CLIError(f"{folder} is not a retriever model folder (no release.json or modules.json)")
    return "splade" if "SpladePooling" in modules.read_text() else "colbert"


def load(folder: Path):
    from retrievers.evaluate import load_kind

    kind = model_kind(folder)
    with console.status(f"loading {kind} model from {folder}"):
        return kind, load_kind(kind, folder)


# ---------------------------------------------------------------------------------------------- data
def read_records(path: Path) -> list[dict]:
    """[{'id', 'text'}] from a jsonl or parquet file (a query file: small, read whole)."""
    from retrievers.indexing import iter_batches

    records = [r for batch in iter_batches(path, 1024) for r in batch]
    if not records:
        raise CLIError(f"{path}: no records")
    return records


def encode(kind: str, model, texts: list[str], is_query: bool, what: str):
    """ColBERT: a list of [tokens, dim] arrays; SPLADE: a scipy CSR matrix [texts, vocabulary]."""
    from retrievers.indexing import encode_texts

    parts = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"encoding {what}", total=len(texts))
        for start in range(0, len(texts), BATCH):
            parts.append(encode_texts(kind, model, texts[start : start + BATCH], is_query))
            progress.advance(task, len(parts[-1]) if kind == "colbert" else parts[-1].shape[0])
    if kind == "colbert":
        return [e for part in parts for e in part]
    from scipy import sparse

    return sparse.vstack(parts).tocsr()


# ------------------------------------------------------------------------------------------ commands
def _run(body):
    from retrievers.indexing import IndexInputError

    try:
        return body()
    except (CLIError, IndexInputError) as error:
        typer.echo(f"retrievers: error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="org/name[@revision] on the Hub (HF_ENDPOINT), models:/name@alias "
                                              "in the MLflow registry, or a local folder")],
    out: Annotated[Path | None, typer.Option(help="copy the model into this folder")] = None,
):
    """Fetch a released model and print the local folder that holds it."""
    typer.echo(_run(lambda: fetch(model, out)))


@app.command("encode")
def encode_command(
    model: Annotated[str, typer.Argument(help="model folder or anything `download` accepts")],
    texts: Annotated[Path, typer.Argument(help="jsonl or parquet file with id and text")],
    queries: Annotated[bool, typer.Option("--queries/--documents", help="encode as queries or documents")] = False,
    top_terms: Annotated[int, typer.Option(help="SPLADE: terms to print per text")] = 32,
):
    """Print one JSON line per text: ColBERT token vectors, or SPLADE's top terms and weights."""

    def body():
        records = read_records(texts)
        kind, loaded = load(fetch(model))
        encoded = encode(kind, loaded, [r["text"] for r in records], queries, texts.name)
        for i, record in enumerate(records):
            if kind == "colbert":
                out = {"id": record["id"], "embedding": encoded[i].astype(np.float64).round(6).tolist()}
            else:
                row = encoded.getrow(i)
                order = np.argsort(-row.data)[:top_terms]
                tokens = loaded.tokenizer.convert_ids_to_tokens(row.indices[order].tolist())
                weights = row.data[order].astype(np.float64).round(4).tolist()
                out = {"id": record["id"], "terms": dict(zip(tokens, weights, strict=True))}
            typer.echo(json.dumps(out))

    _run(body)


class _Progress:
    """Encoding progress with rate and ETA: a live bar on a terminal, a line every few seconds otherwise."""

    def __init__(self):
        self.start, self.last, self.bar = time.perf_counter(), 0.0, None

    def __enter__(self):
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("encoding passages"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console)
            self.bar.__enter__()
            self.task = self.bar.add_task("encoding", total=None, rate="")
        return self

    def __call__(self, done: int, resumed: int, total: int) -> None:
        from retrievers.indexing import eta_text

        seconds = time.perf_counter() - self.start
        if self.bar is not None:
            rate = f"{done / seconds:,.0f}/s" if seconds > 0 else ""
            self.bar.update(self.task, completed=done + resumed, total=total, rate=rate)
        elif seconds - self.last >= 5 or done + resumed == total:
            self.last = seconds
            note = f" ({resumed:,} from the interrupted run)" if resumed else ""
            console.print(f"encoded {done + resumed:,}/{total:,} passages{note}: "
                          f"{eta_text(done, total - resumed, seconds)}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@app.command()
def index(
    model: Annotated[str, typer.Argument(help="model folder or anything `download` accepts")],
    corpus: Annotated[Path, typer.Argument(help="jsonl or parquet corpus with id and text")],
    index_dir: Annotated[Path, typer.Argument(help="folder to write the index into (an interrupted run of the "
                                                   "same model and corpus resumes; another index is replaced)")],
    exact: Annotated[bool, typer.Option(help="no approximate index: search scores every document")] = False,
    shard_size: Annotated[int, typer.Option(min=1, help="passages per encoded shard (the unit of resuming)")] = 10_000,
    processes: Annotated[int, typer.Option(min=0, help="encoding processes (0: one per GPU, or CPU cores / 2)")] = 0,
):
    """Encode a corpus (streamed, resumable) and build its index: PLAID for ColBERT, Seismic for SPLADE,
    with parameters checked against exact search; or --exact."""

    def body():
        from retrievers import indexing

        indexing.count_rows(corpus)  # bad input fails before a model is loaded
        folder = fetch(model).resolve()
        kind = model_kind(folder)
        expected = {"kind": kind, "model": str(folder), "corpus": str(corpus.resolve()), "shard_size": shard_size,
                    "corpus_bytes": corpus.stat().st_size}
        if indexing.resume_state(index_dir, expected):
            console.print(f"resuming the interrupted run in {index_dir}")
        else:
            if index_dir.exists():
                shutil.rmtree(index_dir)
            index_dir.mkdir(parents=True)
            write_json_atomic(index_dir / indexing.PROGRESS, expected)
        (index_dir / indexing.INDEX_RECORD).unlink(missing_ok=True)
        devices = indexing.default_devices() if processes == 0 else ["cpu"] * processes
        loaded = load(folder)[1] if len(devices) == 1 else None
        start = time.perf_counter()
        with _Progress() as progress:
            documents, sample = indexing.encode_corpus(index_dir, folder, kind, corpus, shard_size, devices,
                                                       progress, model=loaded)
        encode_seconds = time.perf_counter() - start
        record = {"kind": kind, "model": str(folder), "documents": documents, "corpus": str(corpus),
                  "mode": "exact" if exact else "approximate", "encode_seconds": round(encode_seconds, 1),
                  "encoding_processes": devices}
        indexing.remove_approximate(index_dir)
        if not exact:
            loaded = loaded or load(folder)[1]
            queries = indexing.encode_texts(kind, loaded, [indexing.pseudo_query(t) for t in sample], True)
            ids = [f"calibration-{i}" for i in range(len(sample))]
            console.print(f"choosing the {'Seismic' if kind == 'splade' else 'PLAID'} parameters "
                          f"(top-10 recall vs exact search on {len(sample)} pseudo-queries from the corpus):")
            start = time.perf_counter()
            record |= indexing.build_approximate(index_dir, kind, queries, ids, documents,
                                                 log=lambda line: console.print(line))
            record["build_seconds"] = round(time.perf_counter() - start, 1)
            console.print(f"chose build {json.dumps(record['build'])}, search {json.dumps(record['search'])}: "
                          f"top-10 recall vs exact {record['calibration_recall@10']:.4f}")
        write_json_atomic(index_dir / indexing.INDEX_RECORD, record)
        (index_dir / indexing.PROGRESS).unlink()
        console.print(f"indexed {documents:,} documents with {kind} ({record['mode']}) into {index_dir}")

    _run(body)


def search_index(index_dir: Path, queries: list[dict], k: int, exact: bool = False) -> list[dict]:
    """[{'query_id', 'query', 'results': [{'id', 'score'}]}] best first."""
    from retrievers.indexing import Searcher

    with console.status(f"loading the index {index_dir} and its model"):
        searcher = Searcher(index_dir)
    results = searcher.search(queries, k, exact)
    return [{"query_id": q["id"], "query": q["text"], "results": [{"id": d, "score": s} for d, s in r]}
            for q, r in zip(queries, results, strict=True)]


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="folder written by `retrievers index`")],
    query: Annotated[list[str] | None, typer.Argument(help="query texts (or use --queries)")] = None,
    queries: Annotated[Path | None, typer.Option(help="jsonl or parquet file of queries with id and text")] = None,
    k: Annotated[int, typer.Option(min=1, help="results per query")] = 10,
    output: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    exact: Annotated[bool, typer.Option(help="score every document instead of using the approximate index")] = False,
):
    """Search an index with query texts or a query file; print a table or JSON."""

    def body():
        if output not in ("table", "json"):
            raise CLIError(f"--format {output!r}: use table or json")
        if bool(query) == bool(queries):
            raise CLIError("give query texts or --queries FILE (one of the two)")
        items = read_records(queries) if queries else [{"id": str(i), "text": t} for i, t in enumerate(query, 1)]
        found = search_index(index_dir, items, k, exact)
        if output == "json":
            typer.echo(json.dumps(found, indent=2))
            return
        table = Table("query", "rank", "document", "score")
        for item in found:
            for rank, hit in enumerate(item["results"], 1):
                table.add_row(item["query_id"] if rank == 1 else "", str(rank), hit["id"], f"{hit['score']:.4f}")
        Console().print(table)

    _run(body)


@app.command()
def serve(
    index_dir: Annotated[Path, typer.Argument(help="folder written by `retrievers index`")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000,
):
    """Serve an index over HTTP: POST /search, GET /health, and a search page at /."""

    def body():
        from retrievers.indexing import Searcher
        from retrievers.serve import create_app

        searcher = Searcher(index_dir)  # a bad folder fails here, with one line, before the server starts
        import uvicorn

        console.print(f"serving {index_dir} ({searcher.kind}, {searcher.record['documents']:,} documents) on "
                      f"http://{host}:{port}/")
        uvicorn.run(create_app(index_dir, searcher), host=host, port=port, log_level="warning")

    _run(body)


if __name__ == "__main__":
    app()
