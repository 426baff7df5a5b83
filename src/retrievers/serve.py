"""`retrievers serve INDEX`: an index behind HTTP (FastAPI on uvicorn).

- ``GET /health``: ``{"status": "ok", "kind", "mode", "documents"}``.
- ``POST /search``: ``{"query": "text"}`` or ``{"queries": ["text", ...]}``, optional ``"k"`` (default 10) and
  ``"exact"`` -> ``{"results": [{"query", "hits": [{"id", "score"}]}]}``, best first.
  ``GET /search?q=text&k=5`` answers one query the same way.
- ``GET /``: a page to try queries in a browser (``/?q=text`` runs one on load).

A bad request gets a 4xx status and ``{"error": "<one line>"}``. The model and index are loaded once; requests
are answered one at a time by the model (the encoders are not shared between threads).
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrievers.indexing import Searcher

MAX_K = 1000
MAX_BATCH = 256


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str | None = Field(None, min_length=1)
    queries: list[str] | None = Field(None, min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    exact: bool = False

    @model_validator(mode="after")
    def one_of_query_or_queries(self):
        if (self.query is None) == (self.queries is None):
            raise ValueError("give 'query' (a string) or 'queries' (a list of strings), one of the two")
        if self.queries is not None and any(not q.strip() for q in self.queries):
            raise ValueError("'queries' has an empty string")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


def _one_line(error: RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",)) or "body"
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return f"{where}: {message}" if where != "body" or "one of the two" not in message else message


def create_app(index_dir: Path, searcher: Searcher | None = None) -> FastAPI:
    searcher = searcher or Searcher(index_dir)
    lock = threading.Lock()
    app = FastAPI(title="retrievers search", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError):
        return JSONResponse({"error": _one_line(error)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    def answer(texts: list[str], k: int, exact: bool) -> dict:
        queries = [{"id": str(i), "text": text} for i, text in enumerate(texts)]
        with lock:
            found = searcher.search(queries, k, exact)
        return {"results": [{"query": text, "hits": [{"id": d, "score": s} for d, s in hits]}
                            for text, hits in zip(texts, found, strict=True)]}

    @app.get("/health")
    def health() -> dict:
        record = searcher.record
        return {"status": "ok", "kind": searcher.kind, "mode": record.get("mode", "approximate"),
                "documents": record["documents"]}

    @app.post("/search")
    def search(request: SearchRequest) -> dict:
        return answer(request.texts(), request.k, request.exact)

    @app.get("/search")
    def search_get(q: str = Query(min_length=1), k: int = Query(10, ge=1, le=MAX_K), exact: bool = False) -> dict:
        return answer([q], k, exact)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{{documents}}", f"{searcher.record['documents']:,}").replace("{{kind}}", searcher.kind)

    return app


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>retrievers search</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 46em; color: #222; }
 form { display: flex; gap: .5em; } input[type=text] { flex: 1; padding: .5em; font-size: 1em; }
 input[type=number] { width: 4em; } button { padding: .5em 1em; }
 table { border-collapse: collapse; margin-top: 1em; width: 100%; }
 td, th { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; } .muted { color: #777; }
</style></head><body>
<h1>retrievers search</h1>
<p class="muted">{{kind}} index of {{documents}} documents</p>
<form id="f"><input type="text" id="q" placeholder="a query" autofocus>
 <label>k <input type="number" id="k" value="10" min="1" max="1000"></label><button>Search</button></form>
<p id="status" class="muted"></p><table id="hits"></table>
<script>
const form = document.getElementById("f"), status = document.getElementById("status");
async function run() {
  const q = document.getElementById("q").value, k = Number(document.getElementById("k").value);
  if (!q.trim()) return;
  status.textContent = "searching...";
  const started = performance.now();
  const response = await fetch("/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify({query: q, k: k})});
  const body = await response.json();
  const table = document.getElementById("hits");
  table.innerHTML = "";
  if (!response.ok) { status.textContent = "error: " + body.error; return; }
  status.textContent = `${body.results[0].hits.length} results in ${Math.round(performance.now() - started)} ms`;
  table.insertAdjacentHTML("beforeend", "<tr><th>rank</th><th>document</th><th>score</th></tr>");
  body.results[0].hits.forEach((hit, i) => {
    const row = table.insertRow();
    [String(i + 1), hit.id, hit.score.toFixed(4)].forEach(text => { row.insertCell().textContent = text; });
  });
}
form.addEventListener("submit", event => { event.preventDefault(); run(); });
const initial = new URLSearchParams(location.search).get("q");
if (initial) { document.getElementById("q").value = initial; run(); }
</script></body></html>
"""
