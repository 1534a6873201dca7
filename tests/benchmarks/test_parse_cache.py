"""The parse cache: any damaged or foreign cache file is parsed again, never a crash."""

import glob
import logging
import pickle

import numpy as np
import pytest

from glip_d2.data.datasets._utils import _cache_file, cached_parse
from glip_d2.data.datasets.coco_json import load_detection_json
from glip_d2.data.datasets.mdetr import load_mdetr_json
from tests.benchmarks.helpers import coco_json, write_json

DAMAGED = {
    "a valid pickle of a tuple": pickle.dumps((1, 2), protocol=5),
    "a dict without the columns": pickle.dumps({"categories": []}),
    "a dict with a list for an array": pickle.dumps({k: [] for k in ("heights", "ann_boxes")}),
    "an unsupported protocol": b"\x80\x63xx",
    "a truncated pickle": pickle.dumps({"a": np.zeros(8)})[:20],
    "a bad opcode": b"\x80\x04\xffzz",
}


@pytest.fixture
def warnings():
    """The cache's warnings (its logger may not propagate: train_net's setup_logger)."""
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("glip_d2.data.datasets._utils")
    log.addHandler(handler)
    yield seen
    log.removeHandler(handler)


@pytest.mark.parametrize("content", list(DAMAGED.values()), ids=list(DAMAGED))
def test_a_damaged_coco_cache_file_is_parsed_again(tmp_path, parse_cache, warnings, content):
    json_file = write_json(tmp_path / "d.json", coco_json([(1, "cat")], [(1, "a.jpg")],
                                                          [(1, 1, [0, 0, 5, 5])]))
    assert len(load_detection_json(json_file, "/img")[0]["annotations"]) == 1
    (cache,) = glob.glob(str(parse_cache / "*.coco-det-segm.pkl"))
    with open(cache, "wb") as f:
        f.write(content)
    (record,) = load_detection_json(json_file, "/img")
    assert record["annotations"][0]["bbox"] == [0, 0, 5, 5]
    assert len(warnings) == 1 and f"cache file {cache}" in warnings[0]
    assert "parsing again" in warnings[0]
    load_detection_json(json_file, "/img")  # the cache was written anew: read, no warning
    assert len(warnings) == 1


def test_cached_parse_checks_the_shape_of_what_it_reads(tmp_path, parse_cache):
    source = tmp_path / "source.txt"
    source.write_text("x")
    calls = []

    def parse():
        calls.append(1)
        return {"records": [1]}

    is_parse = lambda obj: isinstance(obj, dict) and "records" in obj  # noqa: E731
    assert cached_parse(str(source), "t", parse, check=is_parse) == {"records": [1]}
    assert cached_parse(str(source), "t", parse, check=is_parse) == {"records": [1]}
    assert len(calls) == 1  # the second came from the cache
    with open(_cache_file(str(source), "t"), "wb") as f:
        pickle.dump(["another", "shape"], f)
    assert cached_parse(str(source), "t", parse, peek=True, check=is_parse) is None
    assert cached_parse(str(source), "t", parse, check=is_parse) == {"records": [1]}
    assert len(calls) == 2


def test_a_damaged_mdetr_cache_file_is_parsed_again(tmp_path, parse_cache):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10,
                        "caption": "a dog"}],
            "annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 5, 5],
                             "tokens_positive": [[2, 5]]}]}
    json_file = write_json(tmp_path / "m.json", data)
    load_mdetr_json(json_file, "/img")
    (cache,) = glob.glob(str(parse_cache / "*.mdetr.pkl"))
    with open(cache, "wb") as f:
        pickle.dump([{"no": "caption"}], f)
    (record,) = load_mdetr_json(json_file, "/img")
    assert record["caption"] == "a dog" and record["annotations"][0]["tokens_positive"] == [[2, 5]]
