"""The MLflow registry entry behind `mlflow models serve -m models:/<name>@candidate --env-manager local` on
loopback: query and document requests (params is_query), responses equal to the bundle's own encodings, and
one-line errors without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import OFFLINE_ENV, free_port

pytestmark = pytest.mark.slow
TEXTS = ["what is the capital of france", "paris is the capital of france"]


@pytest.fixture(scope="module", params=["modernbert-xtr", "neobert-splade"])
def served(request, smoke_run, tmp_path_factory):
    model = request.param
    port = free_port()
    log_path = tmp_path_factory.mktemp("mlflow-serve") / "serve.log"
    env = {**os.environ, **OFFLINE_ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{smoke_run.workspace}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{model}@candidate", "--env-manager",
                                   "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"], stdout=log,
                                  stderr=subprocess.STDOUT, env=env, cwd=smoke_run.workspace)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
        assert server.poll() is None, log_path.read_text()[-3000:]
    yield model, url, smoke_run.workspace / "releases" / model
    server.terminate()
    server.wait(timeout=30)


def _invoke(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/invocations", json=body, timeout=120)


def test_query_and_document_requests_encode_as_the_bundle_does(served):
    from retrievers import models

    model, url, bundle = served
    kind = json.loads((bundle / "release.json").read_text())["kind"]
    local = models.kind_module(kind).load(bundle)
    for is_query in (True, False):
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]},
                "params": {"is_query": is_query}}
        response = _invoke(url, body)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        print(f"{model} is_query={is_query}: request {json.dumps(body)} -> {len(predictions)} predictions, first "
              f"{json.dumps(predictions[0])[:160]}...")
        if kind == "colbert":
            expected = local.encode(TEXTS, is_query=is_query, show_progress_bar=False)
            for got, want in zip(predictions, expected, strict=True):
                np.testing.assert_allclose(np.array(got["embedding"]), want, atol=1e-5)
        else:
            method = local.encode_query if is_query else local.encode_document
            expected = [dict(local.decode(e, top_k=None)) for e in method(TEXTS, show_progress_bar=False)]
            for got, want in zip(predictions, expected, strict=True):
                assert got["terms"].keys() == want.keys()
                np.testing.assert_allclose([got["terms"][t] for t in want], list(want.values()), atol=1e-5)
    # the default is a query
    default = _invoke(url, {"inputs": {"text": TEXTS}}).json()["predictions"]
    assert default == _invoke(url, {"inputs": {"text": TEXTS}, "params": {"is_query": True}}).json()["predictions"]


def test_bad_requests_get_one_line_without_a_traceback(served):
    _, url, _ = served
    for body in ({"inputs": {"text": [""]}}, {"inputs": {"text": ["a"]}, "params": {"is_query": "maybe"}}):
        response = _invoke(url, body)
        assert 400 <= response.status_code < 500, response.text
        payload = response.json()
        assert "stack_trace" not in payload and "Traceback" not in response.text, response.text
        print(f"{json.dumps(body)} -> {response.status_code} {response.text[:300]}")
