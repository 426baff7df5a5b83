"""`retrievers`: get a released model (Hub, MLflow registry or local folder), encode texts, index a corpus, search.

XTR/ColBERT models index through PyLate's PLAID index; SPLADE models through Seismic (pyseismic-lsr), an
inverted index made for learned sparse retrieval. Corpora and query files are jsonl or parquet
with an ``id`` (or ``_id``) and a ``text`` field (``title``, when present, is prepended to the text).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from retrievers.io import atomic_dir

app = typer.Typer(
    help="Download released retrievers, encode texts, index a corpus and search it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INDEX_RECORD = "retrievers-index.json"
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
        from retrievers.data.download import with_retries

        return Path(with_retries(lambda: snapshot_download(repo_id, revision=revision), at))
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
    """[{'id', 'text'}] from a jsonl or parquet file."""
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CLIError(f"{path}:{number}: not a JSON object; each line must be one") from None
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise CLIError(f"{path}: unknown format {path.suffix!r}; give a .jsonl or .parquet file")
    records = []
    for number, row in enumerate(rows, 1):
        key = "id" if isinstance(row, dict) and "id" in row else "_id"
        if not isinstance(row, dict) or key not in row or "text" not in row:
            raise CLIError(f"{path}: row {number} needs an 'id' (or '_id') and a 'text' field")
        if not isinstance(row["text"], str):
            raise CLIError(f"{path}: row {number} ({key} {row[key]!r}): 'text' is {type(row['text']).__name__}, "
                           "not a string; fix or drop the row")
        text = f"{row['title']} {row['text']}" if row.get("title") else row["text"]
        records.append({"id": str(row[key]), "text": text})
    if not records:
        raise CLIError(f"{path}: no records")
    return records


def encode(kind: str, model, texts: list[str], is_query: bool, what: str):
    """ColBERT: a list of [tokens, dim] arrays; SPLADE: a scipy CSR matrix [texts, vocabulary]."""
    parts = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"encoding {what}", total=len(texts))
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            if kind == "colbert":
                parts += model.encode(batch, is_query=is_query, batch_size=BATCH, show_progress_bar=False)
            else:
                method = model.encode_query if is_query else model.encode_document
                parts.append(_to_csr(method(batch, batch_size=BATCH, convert_to_sparse_tensor=True,
                                            show_progress_bar=False)))
            progress.advance(task, len(batch))
    if kind == "colbert":
        return [np.asarray(p, dtype=np.float32) for p in parts]
    from scipy import sparse

    return sparse.vstack(parts).tocsr()


def _rows(matrix):
    """(term ids as strings, float32 weights) per row of a CSR matrix: Seismic's sparse vector format."""
    from seismic import get_seismic_string

    for i in range(matrix.shape[0]):
        row = matrix.getrow(i)
        yield row.indices.astype(str).astype(get_seismic_string()), row.data.astype(np.float32)


def _to_csr(tensor):
    from scipy import sparse

    coo = tensor.coalesce().cpu()
    rows, cols = coo.indices().numpy()
    return sparse.csr_matrix((coo.values().float().numpy(), (rows, cols)), shape=tuple(coo.shape))


# ------------------------------------------------------------------------------------------ commands
def _run(body):
    try:
        return body()
    except CLIError as error:
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


@app.command()
def index(
    model: Annotated[str, typer.Argument(help="model folder or anything `download` accepts")],
    corpus: Annotated[Path, typer.Argument(help="jsonl or parquet corpus with id and text")],
    index_dir: Annotated[Path, typer.Argument(help="folder to write the index into: new, empty, or an index "
                                                   "`retrievers index` wrote (replaced)")],
    overwrite: Annotated[bool, typer.Option(help="replace INDEX_DIR even if it holds other files")] = False,
):
    """Encode a corpus and build its index: PLAID for ColBERT, Seismic for SPLADE."""

    def body():
        check_index_target(index_dir, overwrite)
        records = read_records(corpus)
        folder = fetch(model)
        kind, loaded = load(folder)
        embeddings = encode(kind, loaded, [r["text"] for r in records], False, "documents")
        with atomic_dir(index_dir) as scratch:
            _build_index(kind, scratch, [r["id"] for r in records], embeddings)
            record = {"kind": kind, "model": str(folder.resolve()), "documents": len(records), "corpus": str(corpus)}
            (scratch / INDEX_RECORD).write_text(json.dumps(record, indent=2))
        console.print(f"indexed {len(records)} documents with {kind} into {index_dir}")

    _run(body)


def check_index_target(index_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a folder that holds anything but an index this command wrote (a user's files would go)."""
    if overwrite or not index_dir.exists():
        return
    if not index_dir.is_dir():
        raise CLIError(f"{index_dir} exists and is not a folder; choose another index folder")
    if any(index_dir.iterdir()) and not (index_dir / INDEX_RECORD).exists():
        raise CLIError(f"{index_dir} is not empty and is not an index (no {INDEX_RECORD}); choose another folder "
                       "or pass --overwrite to replace it and everything in it")


def _build_index(kind: str, index_dir: Path, ids: list[str], embeddings) -> None:
    if kind == "colbert":
        from pylate import indexes

        with console.status("building the PLAID index"):
            plaid = indexes.PLAID(index_folder=str(index_dir), index_name="plaid", override=True,
                                  show_progress=False, device="cpu")
            plaid.add_documents(documents_ids=ids, documents_embeddings=embeddings)
    else:
        from seismic import SeismicDataset, SeismicIndex

        dataset = SeismicDataset()
        for doc_id, (terms, weights) in zip(ids, _rows(embeddings), strict=True):
            dataset.add_document(doc_id, terms, weights)
        with console.status("building the Seismic inverted index"):
            SeismicIndex.build_from_dataset(dataset).save(str(index_dir / "seismic"))


def search_index(index_dir: Path, queries: list[dict], k: int) -> list[dict]:
    """[{'query_id', 'query', 'results': [{'id', 'score'}]}] best first."""
    record_file = index_dir / INDEX_RECORD
    if not record_file.exists():
        raise CLIError(f"{index_dir} is not an index (no {INDEX_RECORD}); build one with `retrievers index`")
    record = json.loads(record_file.read_text())
    kind, loaded = load(Path(record["model"]))
    encoded = encode(kind, loaded, [q["text"] for q in queries], True, "queries")
    if kind == "colbert":
        from pylate import indexes, retrieve

        plaid = indexes.PLAID(index_folder=str(index_dir), index_name="plaid", override=False, show_progress=False,
                              device="cpu")
        hits = retrieve.ColBERT(index=plaid).retrieve(queries_embeddings=encoded, k=k)
        results = [[{"id": str(h["id"]), "score": float(h["score"])} for h in row] for row in hits]
    else:
        from seismic import SeismicIndex

        seismic = SeismicIndex.load(str(index_dir / "seismic.index.seismic"))
        results = []
        for query, (terms, weights) in zip(queries, _rows(encoded), strict=True):
            # query_cut = every query term and heap_factor 1: no query pruning, no early stop on the summaries
            hits = seismic.search(query["id"], terms, weights, k=k, query_cut=max(len(terms), 1), heap_factor=1.0)
            results.append([{"id": doc_id, "score": float(score)} for _, score, doc_id in hits])
    return [{"query_id": q["id"], "query": q["text"], "results": r} for q, r in zip(queries, results, strict=True)]


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="folder written by `retrievers index`")],
    query: Annotated[list[str] | None, typer.Argument(help="query texts (or use --queries)")] = None,
    queries: Annotated[Path | None, typer.Option(help="jsonl or parquet file of queries with id and text")] = None,
    k: Annotated[int, typer.Option(min=1, help="results per query")] = 10,
    output: Annotated[str, typer.Option("--format", help="table or json")] = "table",
):
    """Search an index with query texts or a query file; print a table or JSON."""

    def body():
        if output not in ("table", "json"):
            raise CLIError(f"--format {output!r}: use table or json")
        if bool(query) == bool(queries):
            raise CLIError("give query texts or --queries FILE (one of the two)")
        items = read_records(queries) if queries else [{"id": str(i), "text": t} for i, t in enumerate(query, 1)]
        found = search_index(index_dir, items, k)
        if output == "json":
            typer.echo(json.dumps(found, indent=2))
            return
        table = Table("query", "rank", "document", "score")
        for item in found:
            for rank, hit in enumerate(item["results"], 1):
                table.add_row(item["query_id"] if rank == 1 else "", str(rank), hit["id"], f"{hit['score']:.4f}")
        Console().print(table)

    _run(body)


if __name__ == "__main__":
    app()
