"""`retrievers serve`: the HTTP service driven by a real client on loopback, a bounded load run, and a
headless-browser screenshot of its page answering a query."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from .conftest import OFFLINE_ENV, REPO, free_port

FIXTURE = REPO / "fixtures" / "datasets" / "tiny-NanoMSMARCO"
CLI = str(Path(sys.executable).parent / "retrievers")
ENV = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def index_dir(tiny_splade, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "index"
    subprocess.run([CLI, "index", str(tiny_splade), str(next((FIXTURE / "corpus").glob("*.parquet"))), str(folder),
                    "--processes", "1"], check=True, capture_output=True, env=ENV)
    return folder


@pytest.fixture(scope="module")
def service(index_dir, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve-log") / "serve.log", "w")
    server = subprocess.Popen([CLI, "serve", str(index_dir), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              env=ENV)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
        assert server.poll() is None, "the service exited"
    yield url
    server.terminate()
    server.wait(timeout=20)
    log.close()


QUERIES = [q["text"] for q in pq.read_table(next((FIXTURE / "queries").glob("*.parquet"))).to_pylist()]


def _same_hits(ours: list[dict], theirs: list[dict]) -> bool:
    """Same documents in the same order, scores equal to float32 resolution: a query encoded alone and inside a
    padded batch differ in the last bits (SDPA over the padding)."""
    return [h["id"] for h in ours] == [h["id"] for h in theirs] and all(
        h["score"] == pytest.approx(g["score"], rel=1e-5) for h, g in zip(ours, theirs, strict=True))


def test_health_and_search_answer_as_the_command_line_does(service, index_dir):
    from retrievers.cli import search_index

    health = httpx.get(f"{service}/health").json()
    assert health == {"status": "ok", "kind": "splade", "mode": "approximate", "documents": 300}
    one = httpx.post(f"{service}/search", json={"query": QUERIES[0], "k": 5}).json()["results"]
    batch = httpx.post(f"{service}/search", json={"queries": QUERIES[:4]}).json()["results"]
    got = httpx.get(f"{service}/search", params={"q": QUERIES[0], "k": 5}).json()["results"]
    assert len(one) == 1 and len(one[0]["hits"]) == 5 and got == one
    assert [r["query"] for r in batch] == QUERIES[:4] and all(len(r["hits"]) == 10 for r in batch)
    expected = search_index(index_dir, [{"id": str(i), "text": q} for i, q in enumerate(QUERIES[:4])], 10)
    assert all(_same_hits(r["hits"], e["results"]) for r, e in zip(batch, expected, strict=True))
    assert _same_hits(batch[0]["hits"][:5], one[0]["hits"])
    exact = httpx.post(f"{service}/search", json={"query": QUERIES[0], "exact": True}).json()["results"][0]["hits"]
    assert _same_hits(exact, search_index(index_dir, [{"id": "0", "text": QUERIES[0]}], 10, exact=True)[0]["results"])


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/search", {}, 422, "give 'query' (a string) or 'queries' (a list of strings), one of the two"),
        ("POST", "/search", {"query": "a", "queries": ["b"]}, 422, "one of the two"),
        ("POST", "/search", {"query": "a", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ("POST", "/search", {"query": ""}, 422, "query: String should have at least 1 character"),
        ("POST", "/search", {"queries": []}, 422, "queries: List should have at least 1 item"),
        ("POST", "/search", {"query": "a", "top": 3}, 422, "top: Extra inputs are not permitted"),
        ("POST", "/search", "not json", 422, "JSON decode error"),
        ("GET", "/search", None, 422, "query.q: Field required"),
        ("GET", "/nothing", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_with_one_line(service, method, path, body, status, message):
    if isinstance(body, str):
        response = httpx.request(method, f"{service}{path}", content=body, headers={"Content-Type": "application/json"})
    else:
        response = httpx.request(method, f"{service}{path}", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error, error


def test_bounded_load_run_has_no_errors(service):
    """8 concurrent clients, 25 single-query requests each, on loopback: latency percentiles and no errors."""
    clients, per_client = 8, 25

    def client(n: int) -> list[tuple[int, float]]:
        out = []
        with httpx.Client(base_url=service, timeout=60) as http:
            for i in range(per_client):
                start = time.perf_counter()
                response = http.post("/search", json={"query": QUERIES[(n * per_client + i) % len(QUERIES)]})
                out.append((response.status_code, time.perf_counter() - start))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - start
    latencies = sorted(seconds * 1000 for _, seconds in results)
    errors = sum(status != 200 for status, _ in results)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
    print(f"load: {len(results)} requests from {clients} clients in {wall:.1f} s ({len(results) / wall:.1f}/s), "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {errors}")
    assert len(results) == clients * per_client and errors == 0


def _browser_flags(tmp_path: Path) -> list[str]:
    """Headless, and no background connections (refused by a closed network, many at a time)."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000"]


def test_page_answers_a_query_in_a_headless_browser(service, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("RETRIEVERS_REQUIRE_BROWSER") == "1":
            pytest.fail("RETRIEVERS_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium (Debian: apt-get install chromium; .ci/run installs it)")
    query = QUERIES[0]
    dom = subprocess.run([browser, *_browser_flags(tmp_path), "--dump-dom",
                          f"{service}/?q={httpx.QueryParams({'q': query})['q']}"],
                         capture_output=True, text=True, timeout=120).stdout
    top = httpx.post(f"{service}/search", json={"query": query}).json()["results"][0]["hits"][0]["id"]
    assert "results in" in dom and f"<td>{top}</td>" in dom
    shot = tmp_path / "page.png"
    subprocess.run([browser, *_browser_flags(tmp_path), "--window-size=900,640", f"--screenshot={shot}",
                    f"{service}/?q={query}"],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    target = os.environ.get("RETRIEVERS_SCREENSHOT")  # where to keep it (the README's copy is docs/serve-page.png)
    if target:
        shutil.copyfile(shot, target)
