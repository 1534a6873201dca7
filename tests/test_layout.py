"""Package layout (issue 16, item 10): one config package, self-training under selftrain/ with
`python -m glip_d2.pseudo_label` kept as a thin entry, no import cycle between data and
selftrain, and only working names in Detectron2's registries."""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "glip_d2"


def _subprocess(code_or_args, timeout=300):
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout,
        cwd=PACKAGE.parent, env=env,
    )


def _imported_modules(path: pathlib.Path):
    """Absolute names of the glip_d2 modules `path` imports anywhere (function bodies too)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    if package[-1:] == ["__init__"]:
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.update([module] + [f"{module}.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "glip_d2" or n.startswith("glip_d2.")}


def _data_side_imports_of(prefixes):
    """{file under glip_d2/data: the modules it imports that start with one of `prefixes`}."""
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            n for n in _imported_modules(path) if n.startswith(prefixes)
        )
        for path in (PACKAGE / "data").rglob("*.py")
    }
    return {k: v for k, v in offenders.items() if v}


def test_the_data_side_imports_nothing_of_self_training():
    """selftrain/ writes pseudo-labels and reads caption collections through glip_d2.data; the
    data side must not import back (the old circle data -> datasets -> custom -> pseudo_label
    -> data)."""
    assert _data_side_imports_of(("glip_d2.selftrain", "glip_d2.pseudo_label")) == {}


@pytest.mark.heavy(9)
def test_data_and_selftrain_import_in_either_order_in_a_fresh_interpreter():
    # Any glip_d2 submodule runs the package's __init__ first (data, modeling, regionclip, in
    # that order), so one fresh interpreter covers every order of the imports below; three
    # interpreters (the earlier form) cost 20 s and tested the same thing.
    result = _subprocess(
        "import glip_d2.selftrain.pseudo_label, glip_d2.data.datasets.custom, sys; "
        "from glip_d2.data.datasets import register_pseudo_labels; "
        "from glip_d2.selftrain.pseudo_label import run_pseudo_labelling; "
        "assert 'glip_d2.data' in sys.modules and 'glip_d2.selftrain' in sys.modules"
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.heavy(9)
def test_pseudo_label_entry_point_is_a_thin_alias_of_selftrain():
    import glip_d2.pseudo_label as entry
    import glip_d2.selftrain.pseudo_label as impl
    from glip_d2.data.datasets import register_pseudo_labels

    for name in ("main", "parse_args", "build_teacher", "run_pseudo_labelling"):
        assert getattr(entry, name) is getattr(impl, name)
    assert entry.register_pseudo_labels is register_pseudo_labels
    result = _subprocess(["-m", "glip_d2.pseudo_label", "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--config-file" in result.stdout and "--num-shards" in result.stdout


def test_config_keys_come_from_one_config_package():
    import glip_d2.config as config
    from glip_d2 import add_glip_config

    assert hasattr(config, "__path__")  # a package: glip.py, datasets.py, two_stage.py
    assert config.add_glip_config is add_glip_config
    for gone in ("glip_d2.config_datasets", "glip_d2.config_two_stage"):
        assert importlib.util.find_spec(gone) is None
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_glip_config(cfg)
    # add_glip_config brings the dataset and two-stage keys along
    assert "BENCHMARK" in cfg.TEST and "LANGUAGE_ROI_HEADS" in cfg.MODEL and "GLIP" in cfg.MODEL


def test_glip_head_by_its_own_name_is_the_working_proposal_generator():
    """GLIPATSSHead's forward is not Detectron2's proposal-generator interface (registered as
    MODEL.PROPOSAL_GENERATOR.NAME it crashed with a TypeError at the first forward), so its name
    builds GLIPATSSProposalGenerator, which wraps it, as that name does."""
    from detectron2.config import get_cfg
    from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY

    from glip_d2 import add_glip_config
    from glip_d2.modeling import GLIPATSSProposalGenerator

    assert PROPOSAL_GENERATOR_REGISTRY.get("GLIPATSSProposalGenerator") is GLIPATSSProposalGenerator
    assert PROPOSAL_GENERATOR_REGISTRY.get("GLIPATSSHead") is GLIPATSSProposalGenerator
    cfg = get_cfg()
    add_glip_config(cfg)
    assert "GLIPATSSHead" in PROPOSAL_GENERATOR_REGISTRY


def test_the_data_side_imports_neither_checkpoints_nor_the_model():
    """glip_d2.data sits below the model: the model imports it (class descriptions), so it must
    not import glip_d2.checkpoint (which imports the Swin backbone converter) or glip_d2.modeling
    back. The annotation cache's restricted unpickler lives in the leaf glip_d2.safe_pickle, its
    atomic writer in the leaf glip_d2.atomic_file."""
    assert _data_side_imports_of(("glip_d2.checkpoint", "glip_d2.modeling")) == {}
    for leaf in ("safe_pickle.py", "atomic_file.py"):
        assert _imported_modules(PACKAGE / leaf) == set(), leaf
