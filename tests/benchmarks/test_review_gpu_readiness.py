"""What benchmarks/run_gpu_suite.sh records on the GPU machine: the figures its result files and the
README tables report must describe the timed calls."""

import importlib
import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")


@pytest.fixture(scope="module")
def bench_inference():
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module("bench_inference")
    finally:
        sys.path.remove(BENCH)


def _fake_model(impl):
    attn = SimpleNamespace(impl=impl)
    blocks = [SimpleNamespace(fuse=SimpleNamespace(attn=attn)), SimpleNamespace(fuse=None)]
    return SimpleNamespace(head=SimpleNamespace(tower=SimpleNamespace(blocks=blocks))), attn


def test_flop_count_is_that_of_a_timed_call_with_the_prompt_encodings_cached(bench_inference):
    # The model caches its prompt encodings at test time, so every timed call runs without the
    # text encoder; a count taken on the very first call added the text encoder's FLOPs (BERT on
    # every 256-token prompt: 31 of them for LVIS) to gflop_per_batch and so to TFLOP/s.
    model, attn = _fake_model("sdpa")
    cache, seen = {}, []

    def infer():
        seen.append(attn.impl)
        if "text" not in cache:  # 2 * 8 * 16 * 32 = 8192 FLOPs, first call only
            cache["text"] = torch.ones(8, 16) @ torch.ones(16, 32)
        torch.ones(4, 8) @ cache["text"]  # 2 * 4 * 8 * 32 = 2048 FLOPs, every call

    assert bench_inference._model_flops(model, infer) == 2048
    assert seen[-1] == "official"  # counted on the official attention path
    assert attn.impl == "sdpa"  # and the benchmarked setting restored


class _TinyModel(torch.nn.Module):
    """What bench_inference.main uses of a GLIP model, with one fused tower block."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3, 3))
        self.head = _fake_model("sdpa")[0].head
        self._chunks, self.compile_mode = None, ""

    def set_vocabulary(self, names):
        self._chunks = [names]

    def forward(self, inputs):
        return [self.w @ x["image"].float().flatten(1)[:, :3] for x in inputs]


def _run_main(bench_inference, monkeypatch, tmp_path, *flags):
    monkeypatch.setattr(bench_inference, "build_random_model", lambda *a, **k: _TinyModel())
    bench_inference.main(["--device", "cpu", "--size", "4", "4", "--iters", "2", "--warmup", "0",
                          "--out-dir", str(tmp_path), *flags])
    with open(tmp_path / "cpu_infer_coco_b1_float32_official.json") as f:
        return json.load(f)


def test_a_failing_flop_count_still_records_the_timing(bench_inference, monkeypatch, tmp_path, capsys):
    # The FLOP count is an estimate run before the timing (FlopCounterMode, on the GPU machine's
    # torch only there); its failure must not cost the run's measured times on a one-shot GPU
    # session: the result is written without TFLOP/s and says why.
    res = _run_main(bench_inference, monkeypatch, tmp_path)
    assert res["gflop_per_batch"] == pytest.approx(2 * 3 * 3 * 3 / 1e9) and "flops_error" not in res

    def broken(fn):
        raise RuntimeError("no formula for aten::something")

    monkeypatch.setattr(bench_inference, "count_flops", broken)
    res = _run_main(bench_inference, monkeypatch, tmp_path)
    assert res["ms_median"] > 0 and "tflops_per_s" not in res and "gflop_per_batch" not in res
    assert "no formula for aten::something" in res["flops_error"]
    assert "FLOP count failed" in capsys.readouterr().err
