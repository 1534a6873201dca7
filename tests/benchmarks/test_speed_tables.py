"""The README speed tables are built from benchmarks/results/*.json (benchmarks/make_table.py)."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def make_table():
    spec = importlib.util.spec_from_file_location(
        "make_table", os.path.join(ROOT, "benchmarks", "make_table.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inference(**kw):
    r = dict(kind="inference", config="configs/glip_swin_t.yaml", size=[800, 1333], batch=1,
             vocab="coco", chunks=2, dtype="bfloat16", attention="sdpa", inference_batch=1,
             compile="", ms_median=20.0, ms_per_image=20.0, images_per_s=50.0, peak_memory_gb=3.0,
             gpu="NVIDIA H100 80GB HBM3", threads=16)
    r.update(kw)
    return r


def test_target_table_takes_the_best_gpu_result_and_marks_missing_ones(make_table, tmp_path):
    files = {
        "h100_a.json": _inference(),
        "h100_b.json": _inference(batch=8, ms_median=64.0, ms_per_image=8.0, images_per_s=125.0),
        "h100_c.json": _inference(ms_median=30.0, ms_per_image=30.0, dtype="float32"),
        "cpu_x.json": _inference(gpu=None, size=[320, 480], ms_median=5000.0, ms_per_image=5000.0,
                                 images_per_s=0.2, threads=2, tflops_per_s=0.05),
        # Not speed results: a dict without "kind" and a list of runs are left out of the tables.
        "ratios.json": {"chunks": 2, "a_full_forward_per_chunk_ms": 1.0},
        "runs.json": [{"mode": "prompt", "ap": 70.0}],
    }
    for name, r in files.items():
        (tmp_path / name).write_text(json.dumps(r))
    rows = make_table.target_table(make_table.load_results(str(tmp_path)))
    b1, throughput, lvis, train = rows[2:]
    assert "| 20.0 ms on NVIDIA H100 80GB HBM3 |" in b1 and "h100_a.json" in b1  # best of 20/30 ms
    assert "125.0 img/s" in throughput and "h100_b.json" in throughput
    assert "not yet measured" in lvis and "not yet measured" in train
    assert "136.2 ms" in b1 and "<= 25 ms" in b1  # official figure and target beside ours
    table = make_table.all_results_table(make_table.load_results(str(tmp_path)))
    assert len(table) == 2 + 4
    assert any("CPU (2 threads)" in row and "| 0.05 |" in row for row in table)


def test_readme_block_is_up_to_date_and_rewritable(make_table, tmp_path):
    readme = os.path.join(ROOT, "README.md")
    results = os.path.join(ROOT, "benchmarks", "results")
    assert make_table.update_readme(readme, results, check=True), (
        "README speed tables are out of date: run python benchmarks/make_table.py"
    )
    copy = tmp_path / "README.md"
    copy.write_text("intro\n" + make_table.BEGIN + "\nold\n" + make_table.END + "\noutro\n")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "h100_a.json").write_text(json.dumps(_inference()))
    assert not make_table.update_readme(str(copy), str(tmp_path / "res"), check=True)
    make_table.update_readme(str(copy), str(tmp_path / "res"))
    text = copy.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert "`h100_a.json`" in text
