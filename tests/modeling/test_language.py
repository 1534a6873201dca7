"""Language backbones: the packaged MiniLM, and clear errors when text weights are not offline."""

import json

import pytest
import torch

from glip_d2.modeling.language.hf_bert import HFBertLanguageBackbone
from glip_d2.text import load_tokenizer


def _bert_base_cached() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache("bert-base-uncased", f), str)
            for f in ("model.safetensors", "pytorch_model.bin")
        )
    except Exception:  # noqa: BLE001  (no hub client: nothing cached)
        return False


def test_packaged_minilm_outputs_and_padding_mask():
    lb = HFBertLanguageBackbone(model_type="minilm", load_pretrained=True).eval()
    assert lb.language_dim == 384
    tok = load_tokenizer("minilm")(["red circle", "a much longer blue square prompt"], padding=True,
                                   return_tensors="pt")
    with torch.no_grad():
        out = lb(tok["input_ids"], tok["attention_mask"])
    assert out["hidden"].shape == out["embedded"].shape == (*tok["input_ids"].shape, 384)
    assert torch.equal(out["masks"], tok["attention_mask"])
    pad = tok["attention_mask"] == 0
    assert pad.any() and out["embedded"][pad].abs().max() == 0  # padding zeroed
    # pretrained, not random: the real encoder places "circle" nearer "square" than "prompt"
    ids = load_tokenizer("minilm")(["circle square prompt"], return_tensors="pt")
    with torch.no_grad():
        h = lb(ids["input_ids"], ids["attention_mask"])["hidden"][0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(h[1], h[2], dim=0) > cos(h[1], h[3], dim=0)


@pytest.mark.skipif(_bert_base_cached(), reason="bert-base-uncased is in the local HF cache")
def test_bert_base_without_cached_weights_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not available offline.*LOAD_PRETRAINED False") as e:
        HFBertLanguageBackbone(model_type="bert-base-uncased", load_pretrained=True)
    assert "NoneType" not in str(e.value) and "endswith" not in str(e.value)
    # nor in the traceback a user sees: the AttributeError is not chained as its cause
    assert not isinstance(e.value.__cause__, AttributeError) and e.value.__suppress_context__
    # random weights from the built-in config work without any file
    lb = HFBertLanguageBackbone(model_type="bert-base-uncased", load_pretrained=False, num_hidden_layers=1)
    assert lb.language_dim == 768


def test_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 64, "vocab_size": 100}
    ))
    with pytest.raises(FileNotFoundError, match="not available offline"):
        HFBertLanguageBackbone(model_type=str(tmp_path), load_pretrained=True)
    with pytest.raises(FileNotFoundError, match="No text-encoder config"):
        HFBertLanguageBackbone(model_type=str(tmp_path / "nowhere"), load_pretrained=True)
