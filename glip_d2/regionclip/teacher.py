"""The frozen CLIP teacher of RegionCLIP: embeds concepts (text) and regions (image boxes)."""

import json
import os
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

__all__ = ["CLIPRegionTeacher", "REGION_INPUTS"]

# OpenAI CLIP's pixel statistics (RGB, 0..1), used when the model folder has no
# preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REGION_INPUTS = ("crops", "roi_align")


_SAVE_HINT = (
    "save a CLIP model (e.g. openai/clip-vit-base-patch32) there with CLIPModel.save_pretrained "
    "and its tokenizer."
)


def _load_clip(path: str) -> nn.Module:
    """The `CLIPModel` of the folder `path`, refused unless every weight comes from the folder.

    `CLIPModel.from_pretrained` accepts another model's folder (a BERT, say) with a warning and
    initialises what it lacks at random: the whole teacher would then be random, and every
    pseudo label with it, while the run looks normal.
    """
    from transformers import CLIPModel

    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(
            f"MODEL.REGIONCLIP.TEACHER_PATH {path!r} has no config.json, so it holds no saved "
            f"model; {_SAVE_HINT}"
        )
    with open(config, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != "clip":
        raise ValueError(
            f"MODEL.REGIONCLIP.TEACHER_PATH {path!r} holds a {model_type!r} model, not a CLIP "
            f"model (config.json model_type 'clip'); {_SAVE_HINT}"
        )
    try:
        clip, info = CLIPModel.from_pretrained(
            path, local_files_only=True, output_loading_info=True
        )
    except OSError as error:  # e.g. config.json without a weights file
        raise FileNotFoundError(
            f"MODEL.REGIONCLIP.TEACHER_PATH {path!r}: the CLIP model cannot be loaded ({error}); "
            f"{_SAVE_HINT}"
        ) from error
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])  # a list in transformers 4, a set in 5
        raise ValueError(
            f"MODEL.REGIONCLIP.TEACHER_PATH {path!r}: its weights lack {len(missing)} tensors of "
            f"the CLIP model (e.g. {missing[:3]}), which would start at random; give the folder "
            "of a complete CLIP checkpoint."
        )
    return clip


def _load_tokenizer(path: str):
    """The tokenizer saved with the CLIP model in `path`."""
    from transformers import AutoTokenizer

    def missing(reason):
        return FileNotFoundError(
            f"MODEL.REGIONCLIP.TEACHER_PATH {path!r} has a CLIP model but no tokenizer that loads "
            f"({reason}); save the model's tokenizer there too (tokenizer.save_pretrained)."
        )

    # transformers 5 builds a CLIP tokenizer with an empty vocabulary from no files at all, so
    # every concept would be unknown tokens; its files are tokenizer.json or vocab.json (+ merges)
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json")):
        raise missing("no tokenizer.json or vocab.json")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, TypeError, ValueError) as error:
        raise missing(f"{type(error).__name__}: {error}") from error


class CLIPRegionTeacher(nn.Module):
    """A Hugging Face `CLIPModel` scoring image regions against text concepts. Frozen.

    Args:
        clip: the `transformers.CLIPModel`.
        tokenizer: its tokenizer.
        region_input: "crops": each box is cut out of the image (RoIAlign to the CLIP input size)
            and encoded on its own, the most faithful teacher; "roi_align": the whole image is
            encoded once and each box's patch tokens are RoIAligned and projected (RegionCLIP's
            cheaper teacher, coarser for small boxes).
        template: prompt template for a concept.
        pixel_mean, pixel_std: CLIP's input normalisation (RGB, 0..1).
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        *,
        region_input: str = "crops",
        template: str = "a photo of a {}.",
        pixel_mean: Sequence[float] = CLIP_MEAN,
        pixel_std: Sequence[float] = CLIP_STD,
    ):
        super().__init__()
        if region_input not in REGION_INPUTS:
            raise ValueError(
                f"MODEL.REGIONCLIP.TEACHER_REGION_INPUT={region_input!r} is not one of "
                f"{REGION_INPUTS}."
            )
        self.clip = clip.eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.region_input = region_input
        self.template = template
        self.image_size = int(clip.config.vision_config.image_size)
        self.patch_size = int(clip.config.vision_config.patch_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1) * 255.0, False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1) * 255.0, False)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "CLIPRegionTeacher":
        """Load model, tokenizer and pixel statistics from a local folder (no network).

        Raises:
            FileNotFoundError: if `path` is not a folder, or lacks the model's config, weights or
                tokenizer.
            ValueError: if the folder holds another kind of model than CLIP, or CLIP weights that
                leave part of the model at its random initialisation.
        """
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"MODEL.REGIONCLIP.TEACHER_PATH {path!r} is not a folder; {_SAVE_HINT}"
            )
        clip = _load_clip(path)
        tokenizer = _load_tokenizer(path)
        pre = os.path.join(path, "preprocessor_config.json")
        if os.path.isfile(pre):
            with open(pre) as f:
                stats = json.load(f)
            kwargs.setdefault("pixel_mean", stats.get("image_mean", CLIP_MEAN))
            kwargs.setdefault("pixel_std", stats.get("image_std", CLIP_STD))
        return cls(clip, tokenizer, **kwargs)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen, dropout off

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def encode_concepts(self, concepts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(K, P) L2-normalised text embeddings of `template.format(concept)`."""
        return self.encode_texts([self.template.format(c) for c in concepts], batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N, P) L2-normalised embeddings of free texts (captions), as they are."""
        device = self.pixel_mean.device
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=77,
                return_tensors="pt",
            )
            pooled = self.clip.text_model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
            ).pooler_output
            out.append(self.clip.text_projection(pooled))
        if not out:
            return torch.zeros(0, self.embed_dim, device=device)
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_regions(self, images: List[torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        """(R, P) L2-normalised embeddings of the boxes (all images, in order).

        Args:
            images: per image (3, H, W) RGB, 0..255 (any float/uint8 dtype).
            boxes: per image (R_i, 4) XYXY in that image's pixels.
        """
        device = self.pixel_mean.device
        s = self.image_size
        feats = []
        for image, b in zip(images, boxes):
            if len(b) == 0:
                continue
            image = image.to(device=device, dtype=torch.float32)[None]
            b = b.to(device=device, dtype=torch.float32)
            if self.region_input == "crops":
                crops = roi_align(
                    image,
                    [b],
                    output_size=(s, s),
                    spatial_scale=1.0,
                    sampling_ratio=2,
                    aligned=True,
                )
                pooled = self.clip.vision_model(
                    pixel_values=(crops - self.pixel_mean) / self.pixel_std
                ).pooler_output
            else:
                h, w = image.shape[-2:]
                resized = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
                tokens = self.clip.vision_model(
                    pixel_values=(resized - self.pixel_mean) / self.pixel_std
                ).last_hidden_state
                tokens = self.clip.vision_model.post_layernorm(tokens[:, 1:])  # patch tokens
                g = s // self.patch_size
                grid = tokens.transpose(1, 2).reshape(1, -1, g, g)
                scaled = b * torch.tensor([g / w, g / h, g / w, g / h], device=device)
                pooled = roi_align(
                    grid,
                    [scaled],
                    output_size=(2, 2),
                    spatial_scale=1.0,
                    sampling_ratio=2,
                    aligned=True,
                ).mean((2, 3))
            feats.append(self.clip.visual_projection(pooled))
        if not feats:
            return torch.zeros(0, self.embed_dim, device=device)
        return F.normalize(torch.cat(feats), dim=-1)
