"""Issue 16, item 8: glip_d2.text builds prompts "on any Python", i.e. also where neither
Detectron2 nor torch is installed (torch is not an install requirement of glip_d2: a plain
``pip install glip_d2`` has transformers but no torch)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Makes detectron2 and torch unimportable in the child, as on a Python without them.
_BLOCK = "import sys\nsys.modules['detectron2'] = None\nsys.modules['torch'] = None\n"


def _run(code, python=sys.executable):
    return subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)


@pytest.mark.heavy(6)
def test_prompt_tools_import_and_work_without_torch_or_detectron2():
    out = _run(
        _BLOCK
        + "from glip_d2.text import (build_detection_prompt, build_training_prompt,"
        " chunk_vocabulary, clean_name, count_tokens, load_tokenizer, swap_left_right)\n"
        "caption, spans = build_detection_prompt(['person', 'red car'])\n"
        "tok = load_tokenizer('bert-base-uncased')\n"
        "chunks = chunk_vocabulary(['person', 'red car', 'dog'], tok, chunk_size=2)\n"
        "packed = chunk_vocabulary(['person', 'red car', 'dog'], tok, chunk_size=0, max_len=7)\n"
        "print(repr(caption), spans, [c.caption for c in chunks], [c.label_ids for c in packed],"
        " count_tokens(tok, 'red car'), clean_name('traffic_light'),"
        " swap_left_right('left hand', [[(0, 9)]]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'detectron2')"
        " and sys.modules[m] is not None))\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().split("\n")
    assert lines[-2] == (
        "'person. red car' [(0, 6), (8, 15)] ['person. red car', 'dog'] [[0, 1], [2]] 2 "
        "traffic light ('right hand', [[(0, 10)]])"
    )
    assert lines[-1] == "[]"


def test_positive_maps_without_torch_say_torch_is_needed():
    # only the tensor-valued tools need torch, and they say so when called, not at import
    out = _run(
        _BLOCK
        + "import glip_d2.text as t\n"
        "try:\n"
        "    t.aggregate_token_scores(None, None)\n"
        "except ImportError as e:\n"
        "    print('ImportError', e)\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith(
        "ImportError glip_d2.text.aggregate_token_scores needs torch, which is not installed: "
        "pip install torch."
    )


# a real interpreter, not a pyenv shim (a shim for a version not selected exits 127)
_BARE_39 = next(iter(sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
                     + [p for p in ("/usr/bin/python3.9", "/usr/local/bin/python3.9")
                        if os.path.isfile(p)]), "")


@pytest.mark.skipif(not os.path.isfile(_BARE_39), reason="no Python 3.9 interpreter here")
def test_prompts_build_on_a_bare_python_3_9():
    # the oldest Python setup.py accepts, with nothing installed (no torch, no transformers)
    out = _run(
        "import glip_d2.text as t\n"
        "print(t.build_detection_prompt(['person', 'red car']), t.clean_name('a_b(c)'),"
        " [c.caption for c in t.chunk_vocabulary(['a', 'b', 'c'], chunk_size=2)])\n",
        python=_BARE_39,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "('person. red car', [(0, 6), (8, 15)]) a b ['a. b', 'c']"


def test_from_glip_d2_import_text_works_without_detectron2():
    # `from glip_d2 import text` asks hasattr(glip_d2, "text") before importing the submodule;
    # the package's no-Detectron2 __getattr__ must not answer that with "needs Detectron2"
    out = _run(
        "import sys\nsys.modules['detectron2'] = None\n"
        "from glip_d2 import text\n"
        "import glip_d2\n"
        "print(text.clean_name('traffic_light'), getattr(glip_d2, '__wrapped__', 'absent'))\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "traffic light absent"
