"""Review of glip_d2.text: half-precision score aggregation, class-description file errors."""

import pytest
import torch

from glip_d2.text import aggregate_token_scores, load_descriptions


def test_mean_of_float16_logits_is_finite_like_the_official_mean():
    # MEAN_LOGIT aggregates logits, which the head clamps at +-50000: three tokens of 4e4 sum to
    # 1.2e5, past float16's 65504, while the official ``logits[..., tokens].mean(-1)`` is 4e4.
    positive_map = torch.zeros(2, 6, dtype=torch.bool)
    positive_map[0, 1:4] = True
    positive_map[1, 4] = True
    logits = torch.tensor([[0.0, 4e4, 4e4, 4e4, -3.0, 0.0]], dtype=torch.float16)
    scores = aggregate_token_scores(logits, positive_map, "mean")
    assert scores.dtype == torch.float16
    official = torch.stack([logits[:, 1:4].mean(-1), logits[:, 4:5].mean(-1)], dim=-1)
    torch.testing.assert_close(scores, official, rtol=0, atol=0)
    probs = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)).half()
    official = torch.stack([probs[:, 1:4].mean(-1), probs[:, 4:5].mean(-1)], dim=-1)
    torch.testing.assert_close(aggregate_token_scores(probs, positive_map, "mean"), official)


@pytest.mark.parametrize(
    "suffix, text, message",
    [
        (".yaml", "- {nme: cat}\n", r"must be a dict with a 'name'"),
        (".yaml", "- cat\n- 3\n", r"must be a name \(str\)"),
        (".yaml", "", r"got NoneType"),
        (".json", '{"cat": null}', r"must be a dict or a string"),
    ],
)
def test_errors_in_a_descriptions_file_name_the_file(tmp_path, suffix, text, message):
    path = tmp_path / f"descriptions{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        load_descriptions(str(path))
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "entries, message",
    [
        ([["ds", '["a"]'], ["ds", '["b"]']], r"names dataset 'ds' twice"),
        (["ds"], r"entry 'ds' must be \[dataset_name"),  # 2 characters: ["d", "s"] before
        # a misspelt name was silently ignored: the model was prompted without descriptions
        ([["dss", '["a"]']], r"names dataset 'dss', which is neither in DATASETS.TRAIN/TEST "
                             r"\(ds, other\), DATASETS.CUSTOM / CAPTIONS / PSEUDO_LABELS nor "
                             r"registered.* Did you mean 'ds'\?"),
    ],
)
def test_config_descriptions_reject_a_dataset_named_twice_a_bare_string_or_an_unknown_name(
    entries, message
):
    from detectron2.config import CfgNode

    from glip_d2.data.class_descriptions import class_descriptions_from_config

    cfg = CfgNode({"DATASETS": CfgNode({"CLASS_DESCRIPTIONS": entries, "TRAIN": ("ds",),
                                        "TEST": ("other",)})})
    with pytest.raises(ValueError, match=message):
        class_descriptions_from_config(cfg)
    cfg.DATASETS.CLASS_DESCRIPTIONS = [["ds", '["a"]'], ["other", '{"b": " on grass"}']]
    assert class_descriptions_from_config(cfg) == {
        "ds": ["a"],
        "other": {"b": {"prefix": "", "name": "b", "suffix": " on grass"}},
    }
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
    cfg.DATASETS.CLASS_DESCRIPTIONS = [["coco_2017_val", '["a"]']]  # registered, not in use
    assert class_descriptions_from_config(cfg) == {"coco_2017_val": ["a"]}
    # declared by the config but not registered (train_net --eval-only registers only the test
    # sets of DATASETS.CUSTOM): a suite's descriptions are taken, not called misspelt
    cfg.DATASETS.CUSTOM = [["suite_a", "a.json", "images"]]
    cfg.DATASETS.CLASS_DESCRIPTIONS = [["suite_a", '["a"]']]
    assert class_descriptions_from_config(cfg) == {"suite_a": ["a"]}
