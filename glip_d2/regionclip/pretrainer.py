"""`RegionCLIPPretrainer`: region-text pretraining of a detector's visual side (RegionCLIP).

The student is the visual half of `LanguageAwareRCNN` (backbone + box pooler + box head) plus a
projection into the CLIP teacher's embedding space. For each image the (frozen, ideally
pretrained) RPN proposes regions; the frozen CLIP teacher embeds each region and every concept
of the pool; a region's pseudo label is its best concept. The RPN reads a frozen copy of the
backbone (``rpn_backbone``), not the student's, which the region losses train: its proposals stay
those of the detector it comes from, as RegionCLIP's offline RPN. The student learns with

* a contrastive region-concept loss: cross-entropy over the pool, the pseudo concept positive;
* distillation: KL from the teacher's region-concept distribution to the student's;
* an image-level contrastive loss when the inputs carry captions: the student's embedding of
  the whole image (the same pooler, box head and projection on a full-image box) against the
  teacher's embedding of each image's caption, image i's caption the positive among the batch's.

After pretraining, `init_detector_from_regionclip` copies backbone, box head and projection into
a language-aware R-CNN.
"""

import copy
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_proposal_generator
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from torch import nn

from ..device import CPUFallbackMixin
from ..nlp import resolve_backend
from .concepts import build_concept_pool, read_concept_file
from .losses import (
    image_text_contrastive_loss,
    pseudo_region_labels,
    region_concept_contrastive_loss,
    region_concept_distillation_loss,
)
from .teacher import CLIPRegionTeacher

__all__ = ["RegionCLIPPretrainer"]

logger = logging.getLogger(__name__)


def _concepts_from_config(cfg) -> List[str]:
    rc = cfg.MODEL.REGIONCLIP
    if rc.CONCEPT_FILE:
        return _concepts_from_file(rc.CONCEPT_FILE, rc.MAX_CONCEPTS)
    captions = [
        d["caption"]
        for name in cfg.DATASETS.TRAIN
        for d in DatasetCatalog.get(name)
        if d.get("caption")
    ]
    if not captions:
        raise ValueError(
            "MODEL.REGIONCLIP.CONCEPT_FILE is empty and the DATASETS.TRAIN dicts carry no "
            "'caption' to extract concepts from; give a concept file or caption data."
        )
    backend = rc.NOUN_PHRASES
    if backend not in ("auto", "spacy", "simple"):
        raise ValueError(
            f"MODEL.REGIONCLIP.NOUN_PHRASES {backend!r} is not 'auto', 'spacy' or 'simple'."
        )
    backend = resolve_backend(backend)  # so the log says which one mined the pool
    pool = build_concept_pool(captions, max_concepts=rc.MAX_CONCEPTS, backend=backend)
    logger.info(
        f"RegionCLIP concept pool: {len(pool)} concepts mined from {len(captions)} captions "
        f"(noun phrases: {backend}, MODEL.REGIONCLIP.NOUN_PHRASES {rc.NOUN_PHRASES!r}), most "
        f"frequent first: {pool[:5]}"
    )
    return _same_on_every_process(pool, backend)


def _concepts_from_file(path: str, max_concepts: int) -> List[str]:
    """The first `max_concepts` (0: all) concepts of MODEL.REGIONCLIP.CONCEPT_FILE `path`.

    Raises:
        FileNotFoundError: if `path` is not a file.
        ValueError: if it lists no concept, or a concept twice (:func:`_check_concepts`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.REGIONCLIP.CONCEPT_FILE {path!r} does not exist; give a text file with one "
            "concept per line, or '' to mine the concepts from the captions of DATASETS.TRAIN."
        )
    concepts = read_concept_file(path)
    if max_concepts > 0:
        concepts = concepts[:max_concepts]
    _check_concepts(concepts, f"MODEL.REGIONCLIP.CONCEPT_FILE {path!r}")
    return concepts


def _concept_key(concept: str) -> str:
    """What the CLIP teacher sees of a concept: its tokenizer lower-cases and splits at
    whitespace, so "Red  circle" and "red circle" are one concept."""
    return " ".join(concept.lower().split())


def _check_concepts(concepts: Sequence[str], source: str) -> None:
    """Refuse an empty pool, or one that names a concept twice.

    A repeated concept is its own hard negative: its copies get the same logit, so the
    pseudo-label cross-entropy cannot fall below ln 2 and the copies split the distilled
    probability.
    """
    if not concepts:
        raise ValueError(
            f"The RegionCLIP concept pool is empty ({source}): regions need concepts to be "
            "labelled with (a concept file skips blank lines and lines starting with '#')."
        )
    groups: Dict[str, List[str]] = {}
    for c in concepts:
        groups.setdefault(_concept_key(c), []).append(c)
    repeated = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
    if repeated:
        spellings = [g for g in repeated if len(set(g)) > 1]
        raise ValueError(
            f"The RegionCLIP concept pool ({source}) repeats {[g[0] for g in repeated[:10]]}"
            + (
                f", spelled {spellings[:5]} (one concept to the CLIP tokenizer, which ignores "
                "case and extra spaces)"
                if spellings
                else ""
            )
            + "; list each concept once."
        )


def _same_on_every_process(pool: List[str], backend: str) -> List[str]:
    """Refuse concept pools that differ between the processes of one run: each process mines its
    own, and the pools' indices are the region classes, so one rank would train (and evaluate)
    "cat" where another trains "dog" under the same index."""
    if comm.get_world_size() == 1:
        return pool
    pools = comm.all_gather(pool)
    differ = [rank for rank, other in enumerate(pools) if other != pools[0]]
    if differ:
        raise ValueError(
            f"The RegionCLIP concept pool differs between processes: rank 0 mined "
            f"{len(pools[0])} concepts, rank {differ[0]} {len(pools[differ[0]])} (noun phrases "
            f"of this rank: {backend}; a machine with spaCy and one without mine different "
            "pools). Set MODEL.REGIONCLIP.NOUN_PHRASES simple (or install spaCy everywhere), or "
            "give every process the same MODEL.REGIONCLIP.CONCEPT_FILE."
        )
    return pool


@META_ARCH_REGISTRY.register()
class RegionCLIPPretrainer(CPUFallbackMixin, nn.Module):
    """Student of RegionCLIP pretraining (see the module docstring).

    Training returns {"loss_region_contrastive", "loss_region_distill"}, plus
    "loss_image_text" when `image_text_weight` > 0 and some input has a "caption" (over the
    captioned inputs of the batch; with several processes always, 0 on a batch without a
    caption, so that every process reports the same losses); inference returns
    instances whose `pred_classes` index `concepts` (zero-shot region classification of the
    proposals by the student).

    The RPN's backbone ``rpn_backbone`` is a frozen copy of ``backbone`` (in eval mode, no
    gradient), kept in the state dict under its own prefix, so a resumed run proposes as the
    run it resumes. A checkpoint without it (``MODEL.WEIGHTS``: the detector whose RPN is
    trained) gives it that checkpoint's backbone, the one the RPN was trained on (a load hook
    copies ``backbone.*`` to ``rpn_backbone.*``). Caffe2-format ``.pkl`` weights, loaded by name
    matching, cannot tell the two copies apart (Detectron2 refuses the ambiguity); give
    a checkpoint in the model's own names, e.g. a Detectron2 detector's.
    """

    # What MODEL.WEIGHTS must provide (glip_d2's checkpointer judges its coverage on these
    # parameters only): a detector's backbone and trained RPN. The rest is the frozen CLIP
    # teacher (TEACHER_PATH), the RPN's backbone copied from ``backbone`` and the student's new
    # box head and projection; a detector's text encoder has no place here. Counted over the
    # whole model, a language-aware R-CNN checkpoint provided about 35 % and was refused.
    checkpoint_coverage_prefixes = ("backbone.", "proposal_generator.")

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: Optional[nn.Module],
        box_in_features: Sequence[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        teacher: CLIPRegionTeacher,
        concepts: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        proposals_per_image: int = 32,
        temperature: float = 0.01,
        distill_temperature: float = 0.01,
        contrastive_weight: float = 1.0,
        distill_weight: float = 1.0,
        image_text_weight: float = 1.0,
        image_text_temperature: float = 0.01,
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT must be RGB or BGR for the CLIP teacher, got {input_format!r}."
            )
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        if proposal_generator is not None:
            for p in proposal_generator.parameters():
                p.requires_grad_(False)
            # The RPN's own backbone: proposals from the trained `backbone` would drift with it.
            self.rpn_backbone = copy.deepcopy(backbone)
            for p in self.rpn_backbone.parameters():
                p.requires_grad_(False)
            self._register_load_state_dict_pre_hook(self._rpn_backbone_from_backbone)
        else:
            self.rpn_backbone = None
        self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.teacher = teacher
        shape = box_head.output_shape
        self.region_proj = nn.Linear(
            shape.channels * (shape.height or 1) * (shape.width or 1), teacher.embed_dim
        )
        self.concepts = list(concepts)
        _check_concepts(self.concepts, "the given concepts")
        self.register_buffer(
            "concept_emb", teacher.encode_concepts(self.concepts), persistent=False
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if proposals_per_image < 1:  # 0 labels no region, -1 would drop each image's last
            raise ValueError(
                f"MODEL.REGIONCLIP.PROPOSALS_PER_IMAGE is {proposals_per_image}; the region "
                "losses need at least 1 proposal per image (default 32)."
            )
        for key, value in (("TEMPERATURE", temperature),
                           ("DISTILL_TEMPERATURE", distill_temperature),
                           ("IMAGE_TEXT_TEMPERATURE", image_text_temperature)):
            if not value > 0:  # the logits are divided by it: 0 gives inf logits, NaN losses
                raise ValueError(
                    f"MODEL.REGIONCLIP.{key} is {value}; a temperature must be > 0 (default 0.01)."
                )
        self.input_format = input_format
        self.proposals_per_image = proposals_per_image
        self.temperature = temperature
        self.distill_temperature = distill_temperature
        self.loss_weight = {
            "loss_region_contrastive": contrastive_weight,
            "loss_region_distill": distill_weight,
            "loss_image_text": image_text_weight,
        }
        self.image_text_temperature = image_text_temperature

    @classmethod
    def from_config(cls, cfg):
        rc = cfg.MODEL.REGIONCLIP
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        channels = {shapes[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(
                f"ROI_HEADS.IN_FEATURES {in_features} have different widths {channels}."
            )
        return {
            "backbone": backbone,
            "proposal_generator": (
                None if cfg.MODEL.LOAD_PROPOSALS else build_proposal_generator(cfg, shapes)
            ),
            "box_in_features": in_features,
            "box_pooler": ROIPooler(
                output_size=res,
                scales=tuple(1.0 / shapes[f].stride for f in in_features),
                sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            ),
            "box_head": build_box_head(
                cfg, ShapeSpec(channels=channels.pop(), height=res, width=res)
            ),
            "teacher": CLIPRegionTeacher.from_pretrained(
                rc.TEACHER_PATH, region_input=rc.TEACHER_REGION_INPUT
            ),
            "concepts": _concepts_from_config(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "proposals_per_image": rc.PROPOSALS_PER_IMAGE,
            "temperature": rc.TEMPERATURE,
            "distill_temperature": rc.DISTILL_TEMPERATURE,
            "contrastive_weight": rc.CONTRASTIVE_WEIGHT,
            "distill_weight": rc.DISTILL_WEIGHT,
            "image_text_weight": rc.IMAGE_TEXT_WEIGHT,
            "image_text_temperature": rc.IMAGE_TEXT_TEMPERATURE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        super().train(mode)
        if self.proposal_generator is not None:
            self.proposal_generator.eval()  # frozen: proposals as at test time
            self.rpn_backbone.eval()
        return self

    @staticmethod
    def _rpn_backbone_from_backbone(state_dict, prefix, *args):
        """Load hook: a checkpoint without ``rpn_backbone.*`` (a detector's) gives the RPN's
        backbone its ``backbone.*`` weights, those its RPN was trained on; one with them (a
        RegionCLIP checkpoint being resumed) keeps its frozen copy."""
        own, source = prefix + "rpn_backbone.", prefix + "backbone."
        if any(k.startswith(own) for k in state_dict):
            return
        for key in [k for k in state_dict if k.startswith(source)]:
            state_dict[own + key[len(source):]] = state_dict[key]

    def region_embeddings(
        self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]
    ) -> torch.Tensor:
        """(sum R_i, P) L2-normalised student embeddings of the boxes (network-input pixels)."""
        x = self.box_pooler([features[f] for f in self.box_in_features], [Boxes(b) for b in boxes])
        x = self.box_head(x).flatten(1)
        return F.normalize(self.region_proj(x), dim=-1)

    def _regions(self, batched_inputs):
        images = [x["image"].to(self.device) for x in batched_inputs]
        # pad as the detector will (a square-padding backbone such as ViTDet's); the keyword only
        # when there are constraints, so Detectron2 releases without it keep working
        constraints = getattr(self.backbone, "padding_constraints", None)
        normed = ImageList.from_tensors(
            [(im - self.pixel_mean) / self.pixel_std for im in images],
            self.backbone.size_divisibility,
            **({"padding_constraints": constraints} if constraints else {}),
        )
        features = self.backbone(normed.tensor)
        if self.proposal_generator is not None:
            with torch.no_grad():
                rpn_features = self.rpn_backbone(normed.tensor)
                proposals, _ = self.proposal_generator(normed, rpn_features, None)
        else:
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
        # RPN outputs are sorted by objectness; precomputed ones are taken in their order.
        boxes = [p.proposal_boxes.tensor[: self.proposals_per_image].detach() for p in proposals]
        return images, normed, features, boxes

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images, normed, features, boxes = self._regions(batched_inputs)
        student = self.region_embeddings(features, boxes)
        rgb = [im.flip(0) if self.input_format == "BGR" else im for im in images]
        teacher = self.teacher.encode_regions(rgb, boxes)
        teacher_scores = teacher @ self.concept_emb.T  # (R, K) cosine
        student_scores = student @ self.concept_emb.T
        targets = pseudo_region_labels(teacher_scores)
        losses = {
            "loss_region_contrastive": region_concept_contrastive_loss(
                student, self.concept_emb, targets, self.temperature
            ),
            "loss_region_distill": region_concept_distillation_loss(
                student_scores, teacher_scores, self.distill_temperature
            ),
        }
        # Images without a caption take no part in the image-text loss; the others still
        # contrast with each other.
        captioned = [i for i, x in enumerate(batched_inputs) if x.get("caption")]
        if self.loss_weight["loss_image_text"] > 0 and not captioned and comm.get_world_size() > 1:
            # every process must report the same losses: Detectron2 averages each of rank 0's
            # loss names over the ranks (a KeyError where another rank had no caption)
            losses["loss_image_text"] = student.sum() * 0.0
        if self.loss_weight["loss_image_text"] > 0 and captioned:
            whole = [
                torch.tensor([[0.0, 0.0, float(w), float(h)]], device=self.device)
                if i in captioned
                else torch.zeros(0, 4, device=self.device)
                for i, (h, w) in enumerate(normed.image_sizes)
            ]
            losses["loss_image_text"] = image_text_contrastive_loss(
                self.region_embeddings(features, whole),
                self.teacher.encode_texts([batched_inputs[i]["caption"] for i in captioned]),
                self.image_text_temperature,
            )
        return {k: v * self.loss_weight[k] for k, v in losses.items()}

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """Proposals classified over the concept pool by the student."""
        _, normed, features, boxes = self._regions(batched_inputs)
        probs = (
            self.region_embeddings(features, boxes) @ self.concept_emb.T / self.temperature
        ).softmax(-1)
        out = []
        for x, b, p, size in zip(
            batched_inputs, boxes, probs.split([len(b) for b in boxes]), normed.image_sizes
        ):
            inst = Instances(size)
            inst.pred_boxes = Boxes(b)
            inst.scores, inst.pred_classes = (
                p.max(dim=1) if len(p) else (p.new_zeros(0), p.new_zeros(0, dtype=torch.long))
            )
            out.append(
                {
                    "instances": detector_postprocess(
                        inst, x.get("height", size[0]), x.get("width", size[1])
                    )
                }
            )
        return out
