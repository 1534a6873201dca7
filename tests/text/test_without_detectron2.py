"""glip_d2.text works on a Python without Detectron2; the rest of glip_d2 says how to install it."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Makes "detectron2" unimportable in the child, as on a machine without it.
_BLOCK = "import sys\nsys.modules['detectron2'] = None\n"


def _run(code):
    return subprocess.run([sys.executable, "-c", _BLOCK + code], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.heavy(9)
def test_text_tools_import_and_work_without_detectron2():
    out = _run(
        "from glip_d2.text import build_detection_prompt, chunk_vocabulary, create_positive_map,"
        " load_tokenizer, tokenize\n"
        "caption, spans = build_detection_prompt(['person', 'red car'])\n"
        "tok = load_tokenizer('bert-base-uncased')\n"
        "t = tokenize(tok, [caption], max_length=16, pad_to_max=False)\n"
        "pm = create_positive_map(t, [[s] for s in spans], max_len=16)\n"
        "print(caption, pm.sum(1).tolist(), len(chunk_vocabulary(['a', 'b', 'c'], tok, chunk_size=2)),"
        " sum(m.startswith('detectron2') and v is not None for m, v in sys.modules.items()))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "person. red car [1, 2] 2 0"


def test_the_rest_says_how_to_install_detectron2():
    out = _run("import glip_d2\nfrom glip_d2 import add_glip_config\n")
    assert out.returncode != 0
    assert "ImportError: glip_d2 needs Detectron2, which is not installed" in out.stderr
    assert "pip install -r requirements.txt" in out.stderr
