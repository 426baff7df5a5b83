"""The release gate and the bundle check refuse what a comparison with NaN would let through."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from retrievers.config import parse_params
from retrievers.release import ReleaseError, check_gate, verify_bundle

from .conftest import REPO

GATE = "NanoBEIR_mean_MaxSim_ndcg@10"


@pytest.fixture
def config():
    return parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).models["modernbert-xtr"]  # gate_min 0.60


def _write(tmp_path, text: str):
    path = tmp_path / "metrics.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    (f'{{"{GATE}": NaN}}', rf"{GATE} = nan is not a finite number; the model cannot be released"),
    (f'{{"{GATE}": Infinity}}', rf"{GATE} = inf is not a finite number"),
    (f'{{"{GATE}": null}}', rf"{GATE} = None is not a finite number"),
    (f'{{"{GATE}": "0.9"}}', rf"{GATE} = '0.9' is not a finite number"),
    (f'{{"{GATE}": 0.59}}', rf"{GATE} = 0.5900 is below the release gate 0.6 "
                            r"\(models.modernbert-xtr.release.gate_min\)"),
    ('{"other": 0.9}', rf"has no '{GATE}'; check models.modernbert-xtr.release.gate_metric"),
    ('{"truncated', r"not valid JSON"),
])
def test_gate_refuses_missing_nan_and_low_values(tmp_path, config, text, message):
    assert not math.nan < 0.6 and not math.nan >= 0.6  # why the gate cannot be written as `value < gate_min`
    with pytest.raises(ReleaseError, match=message):
        check_gate("modernbert-xtr", config, _write(tmp_path, text))


def test_gate_refuses_a_missing_file_and_passes_a_good_value(tmp_path, config):
    with pytest.raises(ReleaseError, match=r"metrics.json is missing; run `dvc repro evaluate@modernbert-xtr`"):
        check_gate("modernbert-xtr", config, tmp_path / "metrics.json")
    assert check_gate("modernbert-xtr", config, _write(tmp_path, json.dumps({GATE: 0.61}))) == 0.61


class _Encoder:
    def __init__(self, vectors):
        self.vectors = vectors


@pytest.mark.parametrize("bundle_values", [[[np.nan, 0.0]], [[0.0, 0.0], [np.nan, 1.0]], [[0.5, 0.0]]])
def test_verification_refuses_nan_and_real_differences(monkeypatch, tmp_path, config, bundle_values):
    """A NaN anywhere (first or later probe) fails, where max() over the diffs could have skipped it."""
    import types

    import retrievers.evaluate
    import retrievers.models

    trained = [np.zeros(2, np.float32) for _ in bundle_values]
    got = [np.asarray(v, np.float32) for v in bundle_values]
    monkeypatch.setattr(retrievers.evaluate, "load_model", lambda cfg, path: _Encoder(got if "bundle" in str(path)
                                                                                      else trained))
    probe = types.SimpleNamespace(encode_probe=lambda model, texts: model.vectors)
    monkeypatch.setattr(retrievers.models, "for_model", lambda config: probe)
    with pytest.raises(ReleaseError, match=r"does not reproduce the trained model \(max \|diff\| = (nan|0.5)\)"):
        verify_bundle(config, tmp_path / "trained", tmp_path / "bundle")
    assert verify_bundle(config, tmp_path / "trained", tmp_path / "trained") == 0.0
