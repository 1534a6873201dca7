"""Resumable, sharded output of a pseudo-labelling run.

Layout under the output directory::

    run.json                                  settings of the run (checked on resume)
    parts/shard0000-of-0004/part000000.json   results of consecutive images of a shard
    pseudo_labels.json                        the merged MDETR-style grounding json (last)
    pseudo_labels.odvg.jsonl                  the same as ODVG grounding lines (--format odvg/both)
    summary.json                              image_root and counts of the merged output

Every file is written to a temporary name and renamed into place, so a file that exists is
complete: a killed run loses at most the part it was computing, and a rerun skips finished parts.
The merged json is written only once every part of every shard exists; its content depends only
on the inputs (images sorted by id, annotation ids numbered in that order), not on how the work
was split or interrupted.
"""

import glob
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

from ..atomic_file import atomic_write, complete_temp_file
from ..data.datasets.caption_collection import CaptionRecord, shard_records
from ..data.datasets.pseudo_labels import FINAL_JSON, FINAL_ODVG, SUMMARY_JSON

__all__ = ["PartStore", "atomic_write_json", "FINAL_JSON", "FINAL_ODVG", "SUMMARY_JSON", "FORMATS"]

# --format choice -> the merged files written.
FORMATS = {"mdetr": (FINAL_JSON,), "odvg": (FINAL_ODVG,), "both": (FINAL_JSON, FINAL_ODVG)}


def atomic_write_json(path: str, obj) -> None:
    """Write ``obj`` as json (keys sorted, compact) to ``path`` so that ``path`` never holds a
    partial file."""
    atomic_write(path, lambda f: _dump_json(obj, f))


def _dump_json(obj, f) -> None:
    json.dump(obj, f, sort_keys=True, separators=(",", ":"))


def _create_json(path: str, obj) -> bool:
    """Create ``path`` holding ``obj`` as json, complete, unless it exists already (then False):
    of shards started at the same time, exactly one records the run's settings and the others
    compare theirs with it (a plain rename would let the last one silently replace them)."""
    with complete_temp_file(path, lambda f: _dump_json(obj, f)) as tmp:
        try:
            os.link(tmp, path)  # fails if path exists, never replaces it
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: the rename of before
            os.replace(tmp, path)
        return True


def _fingerprint(records: Sequence[CaptionRecord]) -> str:
    h = hashlib.sha1()
    for r in records:
        h.update(json.dumps([r.image_id, r.file_name, r.caption]).encode("utf-8"))
    return h.hexdigest()


def _first_change(labelled: Sequence[Dict], chunk: Sequence[CaptionRecord]) -> str:
    """The first difference between the records a part labelled and those the collection now
    puts there, in words."""
    for position, (old, new) in enumerate(zip(labelled, chunk)):
        for key, value in (("id", new.image_id), ("file_name", new.file_name),
                           ("caption", new.caption)):
            if old.get(key) != value:
                return (
                    f"image {position + 1} of the part, id {old.get('id')}: {key} "
                    f"{old.get(key)!r} then, {value!r} now"
                )
    return f"the part labelled {len(labelled)} images, the collection now puts {len(chunk)} there"


class PartStore:
    """Part files of one run (see the module docstring)."""

    def __init__(self, output_dir: str, num_shards: int = 1, part_size: int = 64):
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {part_size}.")
        self.output_dir = output_dir
        self.num_shards = num_shards
        self.part_size = part_size

    # ------------------------------------------------------------------ settings
    def check_settings(self, settings: Dict) -> None:
        """Record the run's settings, or check they equal those of the run being resumed."""
        settings = dict(settings, num_shards=self.num_shards, part_size=self.part_size)
        settings = json.loads(json.dumps(settings, sort_keys=True))
        if not os.path.exists(self._run_json) and _create_json(self._run_json, settings):
            return
        # another run (or a shard started at the same time, which created it first) recorded its
        # settings: this one must agree with them
        old = self._recorded_settings()
        if old != settings:
            diff = {
                k: (old.get(k), settings.get(k))
                for k in set(old) | set(settings)
                if old.get(k) != settings.get(k)
            }
            raise ValueError(
                f"{self.output_dir} holds a run with other settings (old, new): {diff}. "
                "Resume with the same settings or use a new --output-dir"
                + (
                    " (another format of a finished run: --finalize-only --format)."
                    if "output_format" in diff
                    else "."
                )
            )

    def recorded_layout(self) -> Optional[Dict]:
        """What merging the run needs of run.json: ``{"num_shards", "part_size",
        "output_format", "image_root"}`` (None: no run.json; a value the run did not record:
        None)."""
        old = self._recorded_settings()
        if old is None:
            return None
        keys = ("num_shards", "part_size", "output_format", "image_root")
        return {k: old.get(k) for k in keys}

    @property
    def _run_json(self) -> str:
        return os.path.join(self.output_dir, "run.json")

    def _recorded_settings(self) -> Optional[Dict]:
        """The settings run.json records (None: no run.json)."""
        try:
            with open(self._run_json, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ parts
    def shard_dir(self, shard: int) -> str:
        return os.path.join(self.output_dir, "parts", f"shard{shard:04d}-of-{self.num_shards:04d}")

    def part_path(self, shard: int, part: int) -> str:
        return os.path.join(self.shard_dir(shard), f"part{part:06d}.json")

    def chunks(self, records: Sequence[CaptionRecord]) -> List[List[CaptionRecord]]:
        """A shard's records cut into parts of `part_size`."""
        return [
            list(records[i : i + self.part_size]) for i in range(0, len(records), self.part_size)
        ]

    def clean_stale(self, shard: int) -> None:
        """Remove temporary files a killed run of this shard left behind."""
        for tmp in glob.glob(os.path.join(self.shard_dir(shard), ".*.tmp")):
            os.remove(tmp)

    def is_done(self, shard: int, part: int, chunk: Sequence[CaptionRecord]) -> bool:
        """Whether the part exists; raises if it was computed from other inputs."""
        path = self.part_path(shard, part)
        if not os.path.exists(path):
            return False
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        if part["inputs"] != _fingerprint(chunk):
            raise ValueError(
                f"{path} was computed from other images or captions than the collection now "
                f"gives ({_first_change(part.get('images', []), chunk)}); the input changed since "
                "the run started. Restore it, or use a new --output-dir."
            )
        return True

    def write_part(
        self, shard: int, part: int, chunk: Sequence[CaptionRecord], results: List[Dict]
    ):
        atomic_write_json(
            self.part_path(shard, part),
            {"inputs": _fingerprint(chunk), "shard": shard, "part": part, "images": results},
        )

    def missing(self, records: Sequence[CaptionRecord]) -> List[str]:
        """Paths of the parts (of all shards) not written yet."""
        out = []
        for shard in range(self.num_shards):
            for part in range(
                len(self.chunks(shard_records(list(records), shard, self.num_shards)))
            ):
                if not os.path.exists(self.part_path(shard, part)):
                    out.append(self.part_path(shard, part))
        return out

    # ------------------------------------------------------------------ final json
    def finalize(
        self,
        records: Sequence[CaptionRecord],
        image_root: Optional[str],
        extra_info=None,
        output_format: str = "mdetr",
    ) -> Dict:
        """Merge every part into the final file(s) of `output_format`; returns the summary.

        Args:
            output_format: "mdetr" (``pseudo_labels.json``), "odvg"
                (``pseudo_labels.odvg.jsonl``, boxes xyxy, file names relative to image_root)
                or "both". ``summary.json`` is written in every case.

        Raises:
            RuntimeError: if a part is missing (a shard has not finished).
            ValueError: for an unknown `output_format`.
        """
        if output_format not in FORMATS:
            raise ValueError(
                f"Unknown pseudo-label format {output_format!r}; use one of {sorted(FORMATS)}."
            )
        missing = self.missing(records)
        if missing:
            raise RuntimeError(
                f"{len(missing)} parts are not finished yet (first: {missing[0]}); run the "
                "missing shards before finalizing."
            )
        results = []
        for shard in range(self.num_shards):
            mine = shard_records(list(records), shard, self.num_shards)
            for part, chunk in enumerate(self.chunks(mine)):
                self.is_done(shard, part, chunk)  # checks the fingerprint
                with open(self.part_path(shard, part), encoding="utf-8") as f:
                    results.extend(json.load(f)["images"])
        results.sort(key=lambda r: r["id"])
        images, annotations = [], []
        summary = {
            "images": 0,
            "images_with_boxes": 0,
            "phrases": 0,
            "grounded_phrases": 0,
            "boxes": 0,
        }
        for r in results:
            images.append({k: r[k] for k in ("id", "file_name", "height", "width", "caption")})
            for box in r["boxes"]:
                x, y, w, h = box["bbox"]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": r["id"],
                        "bbox": [x, y, w, h],
                        "area": round(w * h, 2),
                        "iscrowd": 0,
                        "category_id": 1,
                        "tokens_positive": [list(r["phrases"][box["phrase"]]["span"])],
                        "phrase_ids": box["phrase"],
                        "score": box["score"],
                    }
                )
            summary["images"] += 1
            summary["images_with_boxes"] += int(bool(r["boxes"]))
            summary["phrases"] += len(r["phrases"])
            summary["grounded_phrases"] += len({b["phrase"] for b in r["boxes"]})
            summary["boxes"] += len(r["boxes"])
        info = {
            "description": "GLIP pseudo-labels (glip_d2.pseudo_label)",
            "image_root": image_root,
            "summary": summary,
            **(extra_info or {}),
        }
        if FINAL_JSON in FORMATS[output_format]:
            atomic_write_json(
                os.path.join(self.output_dir, FINAL_JSON),
                {
                    "info": info,
                    "images": images,
                    "annotations": annotations,
                    "categories": [{"id": 1, "name": "object"}],
                },
            )
        if FINAL_ODVG in FORMATS[output_format]:
            atomic_write(
                os.path.join(self.output_dir, FINAL_ODVG),
                lambda f: _write_odvg(f, images, annotations),
            )
        atomic_write_json(os.path.join(self.output_dir, SUMMARY_JSON), info)
        return summary


def _write_odvg(f, images: List[Dict], annotations: List[Dict]) -> None:
    """ODVG grounding lines (one per image, in id order) of the merged MDETR-style records."""
    by_image: Dict[int, List[Dict]] = {}
    for a in annotations:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in images:
        regions = []
        for a in by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            (start, end), = a["tokens_positive"]
            regions.append(
                {
                    "bbox": [x, y, x + w, y + h],
                    "phrase": im["caption"][start:end],
                    "tokens_positive": [[start, end]],
                    "score": a["score"],
                }
            )
        line = {
            "filename": im["file_name"],
            "height": im["height"],
            "width": im["width"],
            "grounding": {"caption": im["caption"], "regions": regions},
        }
        f.write(json.dumps(line, sort_keys=True) + "\n")
