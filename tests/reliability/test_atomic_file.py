"""glip_d2.atomic_file: a target is replaced whole or left as it was, and no temporary file is
left behind either way."""
import json
import os
import subprocess
import sys
import time

import pytest

from glip_d2.atomic_file import atomic_write, atomic_write_json, remove_abandoned


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_a_failing_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(str(path), {"done": [1, 2]})

    def write_half(f):
        f.write('{"done": [1, 2, ')
        raise KeyboardInterrupt  # a command stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), write_half)
    assert json.loads(path.read_text()) == {"done": [1, 2]}
    assert _leftovers(tmp_path) == []


def test_writes_text_as_utf8_binary_as_given_and_creates_the_folder(tmp_path):
    text = tmp_path / "new" / "captions.jsonl"
    atomic_write(str(text), lambda f: f.write("café\n"))
    assert text.read_bytes() == "café\n".encode("utf-8")
    blob = tmp_path / "cache.pkl"
    atomic_write(str(blob), lambda f: f.write(b"\x00\xff"), binary=True)
    assert blob.read_bytes() == b"\x00\xff"
    atomic_write_json(str(tmp_path / "a.json"), [1], indent=1)
    assert (tmp_path / "a.json").read_text() == "[\n 1\n]"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "new") == []


def test_the_target_gets_the_mode_of_a_new_file_without_touching_the_umask(tmp_path, monkeypatch):
    """mkstemp's temporary file is private (0600), so every atomically written file was too; the
    mode is now the umask's, read by the kernel, not by a process-wide os.umask call that races
    other threads."""
    umask = os.umask(0o022)
    try:
        def no_umask(*args):
            raise AssertionError("os.umask is process-wide: another thread may create files meanwhile")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_write_json(str(tmp_path / "results.json"), {"done": []})
    finally:
        monkeypatch.undo()
        os.umask(umask)
    assert os.stat(tmp_path / "results.json").st_mode & 0o777 == 0o644
    assert _leftovers(tmp_path) == []


def test_a_killed_writers_temporary_file_is_removed_a_running_ones_is_kept(tmp_path):
    """A write killed before its rename (SIGKILL) leaves its temporary file; remove_abandoned
    removes it when its process on this machine is gone and no write touched it for a minute,
    and keeps one whose process still runs, a fresh one, and one of another machine (a shared
    folder, whose processes cannot be seen from here)."""
    from glip_d2.atomic_file import _machine

    names = []
    atomic_write(str(tmp_path / "model_final.pth"), lambda f: names.extend(_leftovers(tmp_path)))
    (name,) = names  # the temporary file while the write ran names this process and machine
    assert name.startswith(f".model_final.pth.{os.getpid()}@{_machine()}.") and name.endswith(".tmp")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid, here = int(gone.stdout), _machine()
    old = time.time() - 120
    abandoned = tmp_path / f".model_0000005.pth.{dead_pid}@{here}.0123abcd.tmp"
    abandoned.write_bytes(b"x" * 1000)
    running = tmp_path / f".model_0000009.pth.{os.getpid()}@{here}.0123abcd.tmp"
    fresh = tmp_path / f".model_0000010.pth.{dead_pid}@{here}.0123abcd.tmp"  # touched just now
    elsewhere = tmp_path / f".model_0000011.pth.{dead_pid}@{'0' * 8 if here != '0' * 8 else '1' * 8}.0123abcd.tmp"
    others = [tmp_path / "notes.tmp", tmp_path / f".x.{dead_pid}.tmp", tmp_path / "sub" / abandoned.name]
    others[-1].parent.mkdir()
    for path in [running, fresh, elsewhere] + others:
        path.write_bytes(b"x")
    for path in [abandoned, running, elsewhere] + others:
        os.utime(path, (old, old))
    assert remove_abandoned(str(tmp_path)) == [(str(abandoned), 1000)]
    assert not abandoned.exists() and all(p.exists() for p in [running, fresh, elsewhere] + others)
    assert remove_abandoned(str(tmp_path / "absent")) == []
