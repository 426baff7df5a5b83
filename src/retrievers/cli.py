"""`retrievers`: get a released model (Hub, MLflow registry or local folder), encode texts, index a corpus, search.

Glue only: getting models is :mod:`retrievers.hub`, encoding, indexing and search :mod:`retrievers.search`.
XTR/ColBERT models index through PyLate's PLAID index; SPLADE models through Seismic (pyseismic-lsr), an
inverted index made for learned sparse retrieval. Corpora and query files are jsonl or parquet
with an ``id`` (or ``_id``) and a ``text`` field (``title``, when present, is prepended to the text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from retrievers import models
from retrievers.errors import CLIError, exit_on_user_error
from retrievers.hub import fetch
from retrievers.search import build_index, check_index_target, encode, load, read_records, search_index

app = typer.Typer(
    help="Download released retrievers, encode texts, index a corpus and search it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _run(body):
    return exit_on_user_error("retrievers", body)


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="org/name[@revision] on the Hub (HF_ENDPOINT), models:/name@alias "
                                              "in the MLflow registry, or a local folder")],
    out: Annotated[Path | None, typer.Option(help="copy the model into this folder")] = None,
):
    """Fetch a released model and print the local folder that holds it."""

    def body() -> Path:
        folder = fetch(model, out)
        models.folder_kind(folder)  # refuses a folder that is not a retriever model
        return folder

    typer.echo(_run(body))


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
            typer.echo(json.dumps({"id": record["id"]} | kind.encoded_record(loaded, encoded, i, top_terms)))

    _run(body)


@app.command()
def index(
    model: Annotated[str, typer.Argument(help="model folder or anything `download` accepts")],
    corpus: Annotated[Path, typer.Argument(help="jsonl or parquet corpus with id and text")],
    index_dir: Annotated[Path, typer.Argument(help="folder to write the index into: new, empty, an index `retrievers "
                                                   "index` wrote (replaced), or its interrupted run (resumed)")],
    overwrite: Annotated[bool, typer.Option(help="replace INDEX_DIR even if it holds other files")] = False,
    exact: Annotated[bool, typer.Option(help="no approximate index: search scores every document")] = False,
    shard_size: Annotated[int, typer.Option(min=1, help="passages per encoded shard (the unit of resuming)")] = 10_000,
    processes: Annotated[int, typer.Option(min=0, help="encoding processes (0: one per GPU, or CPU cores / 2)")] = 0,
    calibration_queries: Annotated[Path | None, typer.Option(
        help="jsonl or parquet queries (id, text) like the ones the index will serve: the parameters are chosen on "
             "them instead of on pseudo-queries drawn from the corpus")] = None,
):
    """Encode a corpus (streamed, resumable) and build its index: PLAID for ColBERT, Seismic for SPLADE, with
    parameters checked against exact search; or --exact."""

    def body():
        from retrievers.indexing import count_rows

        count_rows(corpus)  # bad input fails before a model is fetched or a folder touched
        given = [r["text"] for r in read_records(calibration_queries)] if calibration_queries else None
        check_index_target(index_dir, overwrite)
        build_index(fetch(model), corpus, index_dir, exact=exact, shard_size=shard_size, processes=processes,
                    calibration_queries=given)

    _run(body)


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

        searcher = Searcher(index_dir)  # a bad folder fails here, with one line, before the server starts
        import uvicorn

        from retrievers.serve import create_app

        typer.echo(f"serving {index_dir} ({searcher.kind}, {searcher.record['documents']:,} documents) on "
                   f"http://{host}:{port}/", err=True)
        uvicorn.run(create_app(index_dir, searcher), host=host, port=port, log_level="warning")

    _run(body)


if __name__ == "__main__":
    app()
