"""What the language-aware ROI heads score regions against: encoded prompts, per image.

Detectron2's `GeneralizedRCNN` calls `roi_heads(images, features, proposals, targets)` and never
shows the heads the text. `LanguageAwareRCNN` encodes the captions (training) or the vocabulary
prompts (inference) and passes them as the extra keyword argument `text=RegionTextInputs(...)`.
"""

from dataclasses import dataclass
from typing import List, Optional

import torch

__all__ = ["EncodedPrompt", "RegionTextInputs"]


@dataclass
class EncodedPrompt:
    """One tokenized and encoded prompt (a caption, or a chunk of the vocabulary).

    Attributes:
        tokens: (T, D) token features (language backbone "embedded", or the fusion tower's text).
        mask: (T,) 1 on real tokens, 0 on padding.
        input_ids: (T,) token ids; identify a phrase by its tokens when classes are phrases.
        label_map: inference only: (L, T) bool, tokens of each label the prompt names.
        label_ids: inference only: (L,) long, the label (vocabulary index / phrase index) of each
            row of `label_map`.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor
    label_map: Optional[torch.Tensor] = None
    label_ids: Optional[torch.Tensor] = None


@dataclass
class RegionTextInputs:
    """Text for a batch of images.

    Attributes:
        prompts: per image, its prompts: in training exactly one (the image's caption); at test
            time the vocabulary chunks (shared by all images) or the image's grounding caption.
        gt_positive_maps: training only: per image (G, T_map) bool, tokens naming each GT box
            (``instances.gt_positive_map`` from `GroundingDatasetMapper`), in GT order.
        num_labels: inference only: per image, the size of its label space (vocabulary size or
            number of phrases); `pred_classes` index into it.
    """

    prompts: List[List[EncodedPrompt]]
    gt_positive_maps: Optional[List[torch.Tensor]] = None
    num_labels: Optional[List[int]] = None

    def __len__(self) -> int:
        return len(self.prompts)

    def check(self, num_images: int, training: bool) -> None:
        """Raise a ValueError that says what is missing for this use."""
        if len(self.prompts) != num_images:
            raise ValueError(
                f"RegionTextInputs has prompts for {len(self.prompts)} images, the batch has "
                f"{num_images}; give one list of prompts per image."
            )
        if training:
            if self.gt_positive_maps is None or len(self.gt_positive_maps) != num_images:
                raise ValueError(
                    "Training the language-aware ROI heads needs gt_positive_maps (one per image, "
                    "from instances.gt_positive_map of GroundingDatasetMapper)."
                )
            if any(len(p) != 1 for p in self.prompts):
                raise ValueError("In training every image has exactly one prompt (its caption).")
        else:
            if self.num_labels is None or len(self.num_labels) != num_images:
                raise ValueError("Inference needs num_labels, the label-space size of each image.")
            for prompts in self.prompts:
                for p in prompts:
                    if p.label_map is None or p.label_ids is None:
                        raise ValueError(
                            "Every inference prompt needs label_map and label_ids (which tokens "
                            "name which label)."
                        )
