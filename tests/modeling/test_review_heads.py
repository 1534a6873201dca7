"""Review round: GLIP inference edge cases (text-to-box answers, captions without phrases) and
the validation of test-time phrase spans."""
import copy

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.modeling.meta_arch.prompting import PromptingMixin
from glip_d2.text import load_tokenizer
from tests.helpers import tiny_cfg

EXPR = "the blue square"


class _Prompter(PromptingMixin):
    def __init__(self):
        self.tokenizer = load_tokenizer("bert-base-uncased")
        self.test_chunk_size, self.max_query_len, self.separator = 40, 256, ". "
        self._init_prompting(None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.NAME = "XVLMBoxHead"
    cfg.MODEL.GLIP.TEXT_BOX_HEAD.HIDDEN_DIM = 32
    return build_model(cfg).eval()


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (3, 160, 192), generator=g, dtype=torch.uint8)


def test_text_box_predict_answers_a_caption_without_phrase_spans_from_the_caption(model):
    """PREDICT answers every input carrying a caption with the box the head reads from that
    caption; an input without "phrase_spans" used to get the box of the last vocabulary chunk's
    prompt (a box for "green triangle", not for the caption)."""
    m = copy.deepcopy(model)
    m.text_box_predict = True
    m.set_vocabulary(["red circle", "blue square", "green triangle"], chunk_size=1)
    image = _image()
    with torch.no_grad():
        bare = m([{"image": image, "caption": EXPR}])[0]["instances"]
        spans = m([{"image": image, "caption": EXPR, "phrase_spans": [[0, len(EXPR)]]}])[0]["instances"]
        last_chunk = m([{"image": image, "caption": "green triangle", "phrase_spans": [[0, 14]]}])
    assert len(bare) == 1 and bare.scores.tolist() == [1.0] and bare.pred_classes.tolist() == [0]
    torch.testing.assert_close(bare.pred_boxes.tensor, spans.pred_boxes.tensor)
    assert not torch.allclose(bare.pred_boxes.tensor, last_chunk[0]["instances"].pred_boxes.tensor)


def test_a_caption_with_no_phrase_gives_long_class_ids(model):
    """A test caption whose phrases were all filtered out (phrase_spans []) has no label: no
    detection, and pred_classes stays an integer tensor (it was float32)."""
    with torch.no_grad():
        out = model([{"image": _image(), "caption": "nothing here", "phrase_spans": []}])[0]["instances"]
    assert len(out) == 0 and out.pred_classes.dtype == torch.long


@pytest.mark.parametrize(
    "spans, message",
    [
        ([[2, 7]], r"\[2, 7\).*outside the caption"),  # past the end of "a cat" (5 characters)
        ([[2.5, 5]], "not a pair of integers"),
    ],
)
def test_phrase_spans_outside_the_caption_or_fractional_are_refused(spans, message):
    """Test-time phrase spans that do not lie inside the caption were accepted when the official
    token fallbacks found a token near the end ([2, 7) on "a cat" grounded "cat"), and fractional
    offsets were truncated; both are now clear errors naming the phrase."""
    model = _Prompter()
    with pytest.raises(ValueError, match=message):
        model._prompts_for({"caption": "a cat", "phrase_spans": spans})
    grounded, n = model._prompts_for({"caption": "a cat", "phrase_spans": [[2, 5.0]]})
    assert grounded == [("a cat", [[(2, 5)]], [0])] and n == 1
