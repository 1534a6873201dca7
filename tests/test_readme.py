"""Every Python block of README.md runs as written (CPU, embedded demo model, no downloads)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_python_blocks_it_documents():
    blocks = _python_blocks()
    assert len(blocks) >= 3
    assert any("GLIPPredictor.from_name" in b for b in blocks)
    assert any("model_zoo.get_config" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GLIP_D2_CACHE", str(tmp_path / "cache"))  # nothing cached: no weights
    code = _python_blocks()[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def test_selftrain_script_follows_the_datasets_root():
    with open(os.path.join(ROOT, "scripts", "demo_selftrain.sh")) as f:
        script = f.read()
    assert "datasets/shapes" not in script
    assert 'SHAPES="${DETECTRON2_DATASETS:-datasets}/shapes"' in script


@pytest.mark.parametrize("variable", ["TEACHER_KIND", "STUDENT"])
def test_selftrain_script_names_its_teacher_and_student_choices(variable):
    """Both demo models can teach and learn (TEACHER_KIND / STUDENT = two_stage | one_stage); a
    wrong value stops before anything is installed or trained, naming the choices."""
    import subprocess

    env = dict(os.environ, **{variable: "three_stage"})
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo_selftrain.sh")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert f"{variable} must be two_stage or one_stage, got 'three_stage'" in result.stderr
    with open(os.path.join(ROOT, "scripts", "demo_selftrain.sh")) as f:
        script = f.read()
    for config in ("configs/demo_glip_tiny_shapes.yaml", "configs/demo_glip_tiny_shapes_student.yaml",
                   "configs/two_stage/demo_faster_rcnn_shapes_student.yaml"):
        assert config in script and os.path.isfile(os.path.join(ROOT, config))
