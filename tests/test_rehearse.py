"""The full-size rehearsal: every published trainer, built at the published sizes, takes an optimizer step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from retrievers.config import load_params
from tools.rehearse import cpu_has_fast_bf16, rehearsal_params

from .conftest import OFFLINE_ENV, REPO


def test_rehearsal_changes_only_batch_steps_and_what_the_cpu_cannot_do():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    rehearsal = rehearsal_params(raw, steps=2, batch_size=1, cuda=False, compile_on_cpu=False)
    for key, phase in raw["phases"].items():
        changed = {k: (v, rehearsal["phases"][key]["args"].get(k)) for k, v in phase["args"].items()
                   if rehearsal["phases"][key]["args"].get(k) != v}
        allowed = {"per_device_train_batch_size", "max_steps", "logging_steps", "save_steps", "fp16", "bf16",
                   "torch_compile", "use_cpu"}
        assert set(changed) <= allowed, (key, changed)
        assert {k: v for k, v in phase.items() if k not in ("args", "heavyball_compile")} == {
            k: v for k, v in rehearsal["phases"][key].items() if k not in ("args", "heavyball_compile")}, key
        assert rehearsal["phases"][key].get("heavyball_compile") in (None, False), key  # no compile on CPU
    on_gpu = rehearsal_params(raw, steps=2, batch_size=1, cuda=True, compile_on_cpu=False)
    for key, phase in raw["phases"].items():  # CUDA: the published precision and compile
        args = on_gpu["phases"][key]["args"]
        keys = ("fp16", "bf16", "torch_compile", "use_cpu")
        assert [args.get(k) for k in keys] == [phase["args"].get(k) for k in keys]
        assert on_gpu["phases"][key].get("heavyball_compile") == phase.get("heavyball_compile"), key
    # A CPU without fast bf16 products (AVX2): the mixed-precision phases run in float32 instead.
    no_bf16 = rehearsal_params(raw, steps=2, batch_size=1, cuda=False, compile_on_cpu=False, cpu_bf16=False)
    mixed = [key for key, phase in raw["phases"].items() if phase["args"].get("fp16") or phase["args"].get("bf16")]
    assert mixed
    for key in mixed:
        args, with_bf16 = no_bf16["phases"][key]["args"], rehearsal["phases"][key]["args"]
        assert (args["fp16"], args["bf16"], args["use_cpu"]) == (False, False, True), key
        assert (with_bf16["fp16"], with_bf16["bf16"], with_bf16["use_cpu"]) == (False, True, True), key


@pytest.mark.slow
def test_every_published_phase_takes_a_step_at_full_size(tmp_path):
    out = tmp_path / "rehearsal.json"
    # Changes beyond the rehearsal's own, to fit CI: KD phases score 2 documents per query, not 16 (PyLate pads
    # each to 512 tokens; 16 need ~11 GiB on CPU). `make rehearse` keeps the published values.
    params = load_params(REPO / "params.yaml")
    fewer_ways = [f"phases.{key}.n_ways=2" for key, phase in params.phases.items()
                  if phase.recipe == "xtr-distillation"]
    # And one micro-batch per step (SPLADE accumulates 5: five passes through 28 layers dominate on a CPU).
    fewer_ways += [f"phases.{key}.args.gradient_accumulation_steps=1" for key, phase in params.phases.items()
                   if phase.args.gradient_accumulation_steps > 1]
    command = [sys.executable, "-m", "tools.rehearse", "--workdir", str(tmp_path / "ws"), "--steps", "1",
               "--batch-size", "1", "--short-texts", "--json", str(out)]
    command += [arg for override in fewer_ways for arg in ("--override", override)]
    phases = list(params.phases)
    if not cpu_has_fast_bf16():
        # heavyball's Muon orthogonalises each non-square update in bf16 (heavyball 1.5.3
        # zeropower_via_newtonschulz5: `G.bfloat16()`), which a CPU without fast bf16 products (AVX2) computes
        # with torch's scalar loop. Measured with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: one such
        # orthogonalisation of a 3072 x 768 matrix 8.8 s on one thread (2.0 s at AVX-512), and a full-size step
        # has 84 layer matrices of that order and two of 30522 x 768; the SPLADE phase (heavyball's compile
        # still on then) had not finished after 12 minutes. The other phases still rehearse here; `make rehearse`
        # runs them all.
        phases = [key for key in phases if params.phases[key].recipe != "splade"]
        command += ["--phases", *phases]
    import os

    result = subprocess.run(command, cwd=REPO, env=os.environ | OFFLINE_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    measured = {r["phase"]: r for r in json.loads(out.read_text())}
    assert list(measured) == phases
    for phase, r in measured.items():
        assert r["steps"] == 1 and r["peak_memory_bytes"] > 0, phase
    # Built at the published sizes: ModernBERT-base (22 x 768, vocab 50368) and NeoBERT (28 x 768, vocab 30522).
    config = json.loads((tmp_path / "ws" / "data" / "NeoBERT-RetroMAE-pretrain" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (28, 768, 30522)
    config = json.loads((tmp_path / "ws" / "data" / "ModernBERT-base" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (22, 768, 50368)
    assert "full-size rehearsal on" in result.stdout
