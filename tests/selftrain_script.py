"""Run scripts/demo_selftrain.sh in a throw-away copy of the repository whose programs are stubs."""
import hashlib
import os
import shutil
import stat
import subprocess
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_stub(path, text: str):
    """An executable script at ``path``."""
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run_demo_selftrain(
    tmp_path, python_stub: str, env: Dict[str, str], teacher_train_stub: Optional[str] = None
) -> Tuple[subprocess.CompletedProcess, List[str]]:
    """scripts/demo_selftrain.sh in ``tmp_path/repo``, a copy holding the script, env.sh and the
    install inputs, with ``.venv/bin/python`` the stub ``python_stub`` (and, if given,
    scripts/demo_two_stage.sh the stub ``teacher_train_stub``); the environment is .venv's
    install marker up to date, so env.sh installs nothing. Stubs append to ``$STUB_LOG``;
    DETECTRON2_DATASETS is unset unless ``env`` sets it.

    Returns:
        (the finished process, the lines the stubs logged).
    """
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("demo_selftrain.sh", "env.sh"):
        shutil.copy(os.path.join(ROOT, "scripts", name), repo / "scripts" / name)
    if teacher_train_stub is not None:
        write_stub(repo / "scripts" / "demo_two_stage.sh", teacher_train_stub)
    for name in ("requirements.txt", "setup.py"):
        shutil.copy(os.path.join(ROOT, name), repo / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    stub = write_stub(repo / ".venv" / "bin" / "python", python_stub)
    digest = hashlib.sha256(
        (repo / "requirements.txt").read_bytes() + (repo / "setup.py").read_bytes()
    ).hexdigest()[:16]
    (repo / ".venv" / ".glip_d2_installed").write_text(digest + "\n")
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = dict(os.environ, STUB_LOG=str(log), PYTHON=str(stub), **env)
    if "DETECTRON2_DATASETS" not in env:
        full_env.pop("DETECTRON2_DATASETS", None)
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "demo_selftrain.sh")],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, log.read_text().splitlines()
