"""benchmarks/run_gpu_suite.sh as the GPU machine runs it: once, unattended, under
GPU_SUITE_SECONDS, with no second try. Every command it runs must parse, write its own result
file under benchmarks/results/, and a run that hangs or a signal must still leave the README
tables rebuilt. A stub interpreter stands in for python (no torch, no GPU)."""

import importlib
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(ROOT, "benchmarks", "run_gpu_suite.sh")
BENCH = os.path.join(ROOT, "benchmarks")

# Logs each call; "-c" is the suite's CUDA check; the call whose arguments are exactly $STUB_HANG
# hangs (exec: a signal reaches the sleep itself, as it would reach python).
STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
if [ "$1" = -c ]; then exit 0; fi
if [ -n "${STUB_HANG:-}" ] && [ "$*" = "$STUB_HANG" ]; then exec sleep 60; fi
exit 0
"""

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout"
)


def _stub(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    return str(stub), log


def _calls(log):
    return [line for line in log.read_text().splitlines() if not line.startswith("-c ")]


def _env(log, **kw):
    env = dict(os.environ, STUB_LOG=str(log))
    env.pop("GPU_SUITE_SECONDS", None)
    env.update(kw)
    return env


@pytest.fixture(scope="module")
def suite_calls(module_tmp):
    tmp = module_tmp("suite")
    stub, log = _stub(tmp)
    proc = subprocess.run(["bash", SUITE, stub], cwd=str(tmp), env=_env(log), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return _calls(log)


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, BENCH)
    try:
        return {name: importlib.import_module(name)
                for name in ("bench_inference", "bench_train", "make_table", "common")}
    finally:
        sys.path.remove(BENCH)


def test_every_suite_command_names_a_script_whose_parser_takes_its_arguments(suite_calls,
                                                                            bench_modules):
    # A flag the script does not know (or a typo) ends the run with an argparse error on the GPU
    # machine, after its start-up, and that row stays empty until the next lent machine.
    benches = [c.split() for c in suite_calls if c.startswith("benchmarks/bench_")]
    assert len(benches) == 11
    for argv in benches:
        assert os.path.isfile(os.path.join(ROOT, argv[0])), argv[0]
        module = bench_modules[os.path.basename(argv[0])[:-3]]
        args = module.parse_args(argv[1:])
        assert args.device == "cuda" and args.opts == []
        # no --out-dir: results land in benchmarks/results/, where make_table reads them
        assert args.out_dir is None
        assert args.size == [800, 1333] and args.config == "configs/glip_swin_t.yaml"
    assert os.path.realpath(bench_modules["common"].RESULTS_DIR) == os.path.realpath(
        os.path.join(ROOT, "benchmarks", "results"))
    # make_table reads HERE/results by default
    assert os.path.realpath(bench_modules["make_table"].HERE) == os.path.realpath(BENCH)
    assert suite_calls[-1] == "benchmarks/make_table.py"


def test_every_suite_run_writes_its_own_result_file(suite_calls, bench_modules):
    # Two runs with one file name would leave one row of the matrix silently overwritten.
    names = []
    for argv in (c.split() for c in suite_calls if c.startswith("benchmarks/bench_")):
        module = bench_modules[os.path.basename(argv[0])[:-3]]
        names.append(module.run_name(module.parse_args(argv[1:]), "h200"))
    assert len(set(names)) == len(names) == 11
    assert "h200_infer_lvis_b1_bfloat16_sdpa_ib32" in names
    assert {"h200_train_b2_fp32_official", "h200_train_b2_amp_official",
            "h200_train_b2_amp_sdpa"} <= set(names)


def test_a_hanging_run_is_stopped_at_the_budget_and_the_tables_are_still_rebuilt(tmp_path):
    # GPU_SUITE_SECONDS=26 leaves 6 s for the runs (20 s are kept for the table rebuild): the
    # LVIS run hangs, is stopped at the budget, every later run is skipped and named, and the
    # tables are rebuilt within the budget.
    stub, log = _stub(tmp_path)
    hang = "benchmarks/bench_inference.py --device cuda --batch 1 --vocab lvis --iters 5 --warmup 2"
    start = time.monotonic()
    proc = subprocess.run(["bash", SUITE, stub], cwd=str(tmp_path), capture_output=True, text=True,
                          env=_env(log, STUB_HANG=hang, GPU_SUITE_SECONDS="26"), timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert elapsed < 26
    calls = _calls(log)
    assert hang in calls and calls[-1] == "benchmarks/make_table.py"
    assert not [c for c in calls[calls.index(hang) + 1:-1]]  # nothing started after the hang
    assert "GPU_SUITE_SECONDS=26 used up" in proc.stderr
    assert proc.stderr.count("(skipped: GPU_SUITE_SECONDS=26 used up)") == 6
    assert "--vocab lvis --iters 5 --warmup 2 (stopped after" in proc.stderr


@pytest.mark.parametrize("budget", [None, "500"])
def test_a_timeout_around_the_suite_rebuilds_the_tables_and_exits_1(tmp_path, budget):
    # `timeout N bash benchmarks/run_gpu_suite.sh` (README): the signal ends the run in
    # progress, the tables are rebuilt from the runs finished so far, the rest never starts;
    # also when the run in progress is itself under the suite's own `timeout` (a budget).
    stub, log = _stub(tmp_path)
    hang = "benchmarks/bench_inference.py --device cuda --batch 1 --vocab coco --dtype bfloat16"
    env = _env(log, STUB_HANG=hang, **({"GPU_SUITE_SECONDS": budget} if budget else {}))
    start = time.monotonic()
    proc = subprocess.run(["timeout", "--preserve-status", "3", "bash", SUITE, stub], text=True,
                          cwd=str(tmp_path), capture_output=True, env=env, timeout=60)
    assert time.monotonic() - start < 20  # the hanging run was ended, not waited for
    assert proc.returncode == 1
    calls = _calls(log)
    assert calls[-1] == "benchmarks/make_table.py" and calls[-2] == hang
    assert "stopped by a signal" in proc.stderr


@pytest.mark.parametrize("script, flags", [
    ("bench_inference", ["--iters", "0"]),
    ("bench_inference", ["--batch", "0"]),
    ("bench_inference", ["--inference-batch", "0"]),
    ("bench_inference", ["--warmup", "-1"]),
    ("bench_train", ["--iters", "0"]),
    ("bench_train", ["--batch", "0"]),
    ("bench_train", ["--warmup", "-1"]),
])
def test_counts_that_measure_nothing_are_refused_before_the_model_is_built(bench_modules, capsys,
                                                                           script, flags):
    # --iters 0 used to build GLIP-T, count its FLOPs, run the warm-up and then fail with
    # "no median for empty data"; --batch 0 with a ZeroDivisionError. argparse names the flag.
    with pytest.raises(SystemExit) as exc:
        bench_modules[script].parse_args(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and ("at least 1" in err or "at least 0" in err)
