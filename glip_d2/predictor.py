"""GLIPPredictor: open-vocabulary detection and phrase grounding on raw images, in the spirit of
Detectron2's ``DefaultPredictor``.

    predictor = GLIPPredictor(cfg)
    out = predictor(image_bgr, vocabulary=["person", "bicycle"])      # or vocabulary="coco"
    out = predictor(image_bgr, caption="a man riding a bicycle")      # phrases found by glip_d2.nlp
    out["instances"].pred_classes  # indices into out["labels"]
"""

import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from .checkpoint import GLIPCheckpointer
from .device import resolve_device
from .nlp import find_noun_phrases
from .text import ClassDescription, check_text, count_tokens, entry_name, span_to_token_range, tokenize
from .text.chunking import check_vocabulary_container
from .vocabularies import get_vocabulary

__all__ = ["GLIPPredictor", "locate_phrases", "to_rgb_uint8"]

logger = logging.getLogger(__name__)

# Grounding captions whose text encodings stay cached besides the vocabulary's prompts.
_TEXT_CACHE_CAPTIONS = 64
# [CLS] and [SEP].
_NUM_SPECIAL_TOKENS = 2
# Names per prompt of a builtin vocabulary when MODEL.GLIP.TEST_CHUNK_SIZE is 0 (pack to the token
# limit): LVIS as the official evaluation prompts it (TEST.CHUNKED_EVALUATION 40, also
# configs/protocols/lvis_minival*.yaml), 31 prompts of 40 names; packing would give ~14 of ~90.
_BUILTIN_CHUNK_SIZES = {"lvis": 40}

Span = Tuple[int, int]


def to_rgb_uint8(image, input_format: str = "RGB") -> np.ndarray:
    """Any common image -> (H, W, 3) uint8 RGB.

    Args:
        image: a numpy array (H, W) (grayscale), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha is
            dropped), or a PIL image. uint16 values are scaled to 8 bits (x / 257); other integer
            types are kept when within 0..255, else taken as 16-bit when within 0..65535. Float
            values (also PIL mode "F") are scaled by their range: all within [0, 1] -> x 255;
            else all within [0, 255] -> kept (like Detectron2's float inputs); else stretched
            linearly from min..max to 0..255; then rounded.
        input_format: channel order of 3/4-channel arrays, "RGB" or "BGR" (PIL images are RGB).

    Returns:
        a new or the same array; (H, W, 3), uint8, RGB.

    Raises:
        ValueError: for another type, shape or channel count, an empty image, values that
            are not valid 8-bit intensities, or a PIL image whose file is truncated or corrupt.
    """
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}.")
    if isinstance(image, Image.Image):
        image, input_format = _pil_to_array(_loaded(image)), "RGB"
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"Expected an image as a numpy array (H, W[, C]) or a PIL image, got "
            f"{type(image).__name__}."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            f"Expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got "
            f"{tuple(image.shape)}; after conversion an image must have 3 channels."
        )
    image = image[:, :, :3]
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"The image is empty: shape {tuple(image.shape)}.")
    image = _to_uint8(image)
    if input_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _loaded(image: "Image.Image") -> "Image.Image":
    """The PIL image with its pixels decoded: ``Image.open`` is lazy, so a truncated or corrupt
    file shows only now, as an OSError (or SyntaxError) from the decoder."""
    try:
        image.load()
    except (OSError, SyntaxError) as e:
        raise ValueError(
            f"The PIL image cannot be decoded: its file is truncated or corrupt ({e})."
        ) from e
    return image


def _pil_to_array(image: "Image.Image") -> np.ndarray:
    """Pixels of a PIL image: (H, W) for grayscale (16-bit ones as uint16 / int32), else
    (H, W, 3 or 4) RGB(A)."""
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode not in ("L", "RGB", "RGBA", "I", "F") and not image.mode.startswith("I;16"):
        image = image.convert("RGB")  # LA, CMYK, YCbCr, LAB, HSV
    return np.asarray(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "u" and image.dtype.itemsize == 2:  # either byte order ("I;16B")
        return np.round(image / 257.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return _float_to_uint8(image)
    if np.issubdtype(image.dtype, np.integer) and image.dtype != np.bool_:
        lo, hi = int(image.min()), int(image.max())
        if lo >= 0 and hi <= 255:
            return image.astype(np.uint8)
        if lo >= 0 and hi <= 65535:  # e.g. PIL's mode "I" for a 16-bit PNG
            return np.round(image / 257.0).astype(np.uint8)
        raise ValueError(f"Integer image values must lie in 0..65535, got {lo}..{hi}.")
    raise ValueError(f"Unsupported image dtype {image.dtype}; use uint8, uint16 or float.")


def _float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float intensities -> uint8 by their range (see :func:`to_rgb_uint8`): clipping instead
    would turn a [0, 1] image black and saturate a 32-bit float TIFF."""
    if not np.isfinite(image).all():
        raise ValueError("The image holds NaN or infinite values.")
    lo, hi = float(image.min()), float(image.max())
    image = image.astype(np.float64)
    if lo >= 0.0 and hi <= 1.0:
        image = image * 255.0
    elif (lo < 0.0 or hi > 255.0) and hi > lo:
        image = (image - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)  # clip: a constant out-of-range image


class GLIPPredictor:
    """Build a GLIP model from a config, load ``cfg.MODEL.WEIGHTS`` and run it on raw images.

    Like Detectron2's ``DefaultPredictor``: the model is in eval mode, images are resized with
    ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`` (MIN_SIZE_TEST 0: kept at
    their size), their channels reordered to ``INPUT.FORMAT``, and boxes come back in the
    original image's coordinates. A list of images is run as one batch.

    Text encodings are cached by the model, so repeated calls with one vocabulary encode it once
    (the cache is dropped when the model loads a state dict or enters train mode, so it never
    outlives the weights that computed it); a vocabulary longer than one prompt is split into
    chunks, each scored against the same image features (the image backbone runs once per batch).

    Attributes:
        model: the GLIP meta-architecture.
        cfg: a frozen clone of the config.
        weights_used: "ema" (the checkpoint's weight average), "model" (its raw weights) or
            "random" (no MODEL.WEIGHTS).
    """

    def __init__(self, cfg, *, input_format: str = "BGR", confidence_threshold: float = 0.0):
        """
        Args:
            cfg: a glip_d2 config (``add_glip_config``); ``MODEL.WEIGHTS`` is loaded with
                :class:`~glip_d2.checkpoint.GLIPCheckpointer` (empty = random weights, warned);
                with ``TEST.USE_EMA`` (the default) a checkpoint's "ema" entry replaces its
                raw weights, as ``train_net.py --eval-only`` evaluates it (logged).
            input_format: channel order of the 3/4-channel numpy arrays you will pass, "BGR"
                (OpenCV, Detectron2's ``read_image`` default) or "RGB"; PIL images are always RGB.
            confidence_threshold: default minimum score of returned detections.

        Raises:
            FileNotFoundError: if ``MODEL.WEIGHTS`` is a local path that does not exist.
            ValueError: if the checkpoint is another GLIP variant than the config, or an
                argument is invalid.
        """
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(
                f"GLIPPredictor supports INPUT.FORMAT 'RGB' or 'BGR', not {cfg.INPUT.FORMAT!r}."
            )
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}.")
        weights = cfg.MODEL.WEIGHTS
        if weights and "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(f"MODEL.WEIGHTS {weights!r} does not exist.")
        self.cfg = cfg.clone()
        self.cfg.defrost()
        self.cfg.MODEL.DEVICE = resolve_device(self.cfg.MODEL.DEVICE)  # CPU when CUDA is absent
        self.cfg.freeze()
        self.input_format = input_format
        self.confidence_threshold = _check_threshold(confidence_threshold)
        self.model = build_model(self.cfg)
        self.model.eval()
        if weights:
            checkpoint = GLIPCheckpointer(self.model).load(weights)
            self.weights_used = _use_ema_weights(self.model, checkpoint, self.cfg, weights)
        else:
            self.weights_used = "random"
            logger.warning(
                "MODEL.WEIGHTS is empty: GLIPPredictor runs a randomly initialised model."
            )
        self.aug = T.ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST],
            self.cfg.INPUT.MAX_SIZE_TEST,
        )
        # The config's vocabulary (MODEL.GLIP.VOCABULARY / DATASETS.TEST[0]), used when a call
        # gives neither a vocabulary nor a caption.
        self.default_vocabulary = list(self.model.vocabulary) if self.model.vocabulary else None

    @classmethod
    def from_name(cls, name: str, *, trained: bool = True, device: Optional[str] = None, **kwargs):
        """A predictor for a model of :mod:`glip_d2.model_zoo` (or a shipped config name).

        Args:
            name: e.g. "glip_tiny", "glip_large", or a config name such as
                "demo_glip_tiny_shapes" (with ``trained=False``).
            trained: load the model's checkpoint (from the cache, else downloaded once);
                False = random weights (also no backbone initialisation the config names, such
                as a two-stage config's ImageNet weights, nor the pretrained text encoder:
                nothing is loaded or downloaded).
            device: "cpu", "cuda", ...; None = the config's (CPU when CUDA is absent).
            kwargs: passed to :class:`GLIPPredictor` (``input_format``, ``confidence_threshold``).
        """
        from . import model_zoo

        cfg = model_zoo.get_config(name, trained=trained)
        if not trained:  # as model_zoo.get(trained=False), which loads nothing
            cfg.MODEL.WEIGHTS = ""
            cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
        if device is not None:
            cfg.MODEL.DEVICE = str(device)
        return cls(cfg, **kwargs)

    def __call__(
        self,
        image,
        vocabulary: Union[None, str, Sequence[str]] = None,
        caption: Union[None, str, Sequence[str]] = None,
        phrases: Optional[Sequence] = None,
        confidence_threshold: Optional[float] = None,
        top_k: Optional[int] = None,
        visualize: bool = False,
    ) -> Union[Dict, List[Dict]]:
        """Detect a vocabulary or ground a caption's phrases.

        Args:
            image: one image (numpy (H, W[, C]) in ``input_format``, PIL, or a file path) or a
                list of them (run as one batch).
            vocabulary: names to detect (a list, see :meth:`set_vocabulary`), or "coco" /
                "lvis"; None = the config's vocabulary.
            caption: text whose phrases are grounded (one caption for all images, or one per
                image); excludes ``vocabulary``.
            phrases: the phrases of ``caption`` to ground: strings (located in the caption,
                whole words first) or ``(start, end)`` character spans; None = the noun phrases
                :func:`glip_d2.nlp.find_noun_phrases` finds. With one caption per image, give one
                such list per image.
            confidence_threshold: minimum score; None = the predictor's default.
            top_k: keep at most this many detections per image (the highest scores); None = all.
            visualize: also return "visualization": an (H, W, 3) uint8 RGB drawing of the
                detections (Detectron2's Visualizer, boxes labelled with name and score).

        Returns:
            for one image a dict {"instances": Instances (pred_boxes, scores, pred_classes; on
            the model's device), "labels": [str]} (plus "visualization" when asked), where
            ``labels[pred_classes[i]]`` names
            detection i (the vocabulary, or the phrases; grounding also gives "caption" and
            "phrase_spans"); for a list of images a list of such dicts.

        Raises:
            ValueError: for an invalid image (also a truncated file, or one too elongated to
                resize to the test size), an empty or unknown vocabulary, a name or caption
                longer than the model's token limit, a phrase absent from the caption, or both a
                vocabulary and a caption.
            FileNotFoundError / IsADirectoryError: for an image path that does not exist or
                is a folder.
        """
        single = not isinstance(image, (list, tuple))
        images = [_load_if_path(x) for x in ([image] if single else list(image))]
        if top_k is not None and not _is_count(top_k):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
        if not images:
            raise ValueError("Got an empty list of images.")
        threshold = (
            self.confidence_threshold
            if confidence_threshold is None
            else _check_threshold(confidence_threshold)
        )
        if vocabulary is not None and caption is not None:
            raise ValueError(
                "Give either a vocabulary (detection) or a caption (grounding), not both."
            )
        if caption is None and phrases is not None:
            raise ValueError("phrases need a caption to be found in.")
        previous = self._vocabulary_state()
        if caption is None:
            labels = self.set_vocabulary(vocabulary)
            extras = [{"labels": labels} for _ in images]
        else:
            extras = self._grounding_inputs(caption, phrases, len(images))
        try:
            inputs = [self.preprocess(x) for x in images]
            if caption is not None:
                for x, e in zip(inputs, extras):
                    x["caption"] = e["caption"]
                    x["phrase_spans"] = [[list(s)] for s in e["phrase_spans"]]
            with torch.no_grad():
                outputs = self.model(inputs)
        except Exception:
            # a call that raised leaves the model as it found it (its previous vocabulary)
            self._restore_vocabulary_state(previous)
            raise
        self._trim_text_cache()
        results = []
        for out, extra in zip(outputs, extras):
            inst = out["instances"]
            inst = inst[inst.scores >= threshold]
            if top_k is not None:
                inst = inst[inst.scores.argsort(descending=True)[: int(top_k)]]
            # each image its own lists: the batch's images share one vocabulary / caption
            own = {k: list(v) if isinstance(v, list) else v for k, v in extra.items()}
            results.append(dict(own, instances=inst))
        if visualize:
            for res, img in zip(results, images):
                res["visualization"] = self.draw(img, res)
        return results[0] if single else results

    def preprocess(self, image) -> Dict:
        """One model input: {"image": (3, H', W') float32 tensor resized for the test size, in
        INPUT.FORMAT, "height": H, "width": W} (see :func:`to_rgb_uint8` for what ``image``
        may be). INPUT.MIN_SIZE_TEST 0 keeps the image's size, as in Detectron2."""
        rgb = to_rgb_uint8(image, self.input_format)
        img = rgb if self.cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
        height, width = img.shape[:2]
        min_size = self.cfg.INPUT.MIN_SIZE_TEST
        new_h, new_w = (height, width)
        if min_size > 0:  # 0: ResizeShortestEdge is a no-op, nothing to check
            new_h, new_w = T.ResizeShortestEdge.get_output_shape(
                height, width, min_size, self.cfg.INPUT.MAX_SIZE_TEST
            )
        if min(new_h, new_w) < 1:
            raise ValueError(
                f"The image ({width}x{height} pixels) is too elongated for the test size: "
                f"resized to fit INPUT.MIN_SIZE_TEST {self.cfg.INPUT.MIN_SIZE_TEST} / "
                f"MAX_SIZE_TEST {self.cfg.INPUT.MAX_SIZE_TEST} it would be {new_w}x{new_h}; "
                "crop it into less elongated pieces."
            )
        resized = self.aug.get_transform(img).apply_image(img)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        return {"image": tensor, "height": height, "width": width}

    def set_vocabulary(self, vocabulary: Union[None, str, Sequence[str]] = None) -> List[str]:
        """Point the model at a vocabulary; it is chunked (and its prompts encoded) only when it
        changes. Calls with a vocabulary do this themselves.

        Args:
            vocabulary: an ordered list (or tuple) of names, "coco" / "lvis", or None for the
                config's vocabulary. An entry may be a class description
                ``{"prefix", "name", "suffix"}``: the prompt reads the whole text, the name's
                tokens score the class and name it in the labels. Names are prompted
                MODEL.GLIP.TEST_CHUNK_SIZE at a time (0 = as many as fit the token limit),
                except "lvis" with 0: 40 names per prompt (31 prompts), as the official LVIS
                evaluation.

        Returns:
            the labels: ``labels[pred_classes[i]]`` names detection i.

        Raises:
            ValueError: for an empty or unknown vocabulary, a repeated name, a name longer
                than the model's token limit, or a mapping or set instead of a list; the model
                keeps its previous vocabulary.
        """
        chunk_size = self.model.test_chunk_size
        if vocabulary is None:
            if self.default_vocabulary is None:
                raise ValueError(
                    "No vocabulary: pass vocabulary=[...] or 'coco'/'lvis', a caption, or set "
                    "MODEL.GLIP.VOCABULARY / DATASETS.TEST in the config."
                )
            prompt_names = self.default_vocabulary
            labels = [entry_name(e) for e in prompt_names]
        elif isinstance(vocabulary, str):
            vocab = get_vocabulary(vocabulary)
            labels, prompt_names = list(vocab.names), list(vocab.prompt_names)
            if chunk_size == 0:
                chunk_size = _BUILTIN_CHUNK_SIZES.get(vocab.name, 0)
        else:
            check_vocabulary_container(vocabulary)  # a mapping or a set would be misread
            prompt_names = list(vocabulary)
            if not prompt_names:
                raise ValueError("The vocabulary is empty; give at least one name.")
            bad = [n for n in prompt_names if not isinstance(n, (str, dict, ClassDescription))]
            if bad:
                raise ValueError(
                    f"Vocabulary entries must be names (str) or {{prefix, name, suffix}} "
                    f"descriptions, got {bad[0]!r}."
                )
            try:
                labels = [entry_name(e) for e in prompt_names]
            except (TypeError, ValueError) as e:
                raise ValueError(f"Invalid vocabulary: {e}") from e
        if (self.model.vocabulary, self.model._chunk_size) != (prompt_names, chunk_size):
            old = self._vocabulary_state()
            try:
                self.model.set_vocabulary(prompt_names, chunk_size=chunk_size)
            except (TypeError, ValueError) as e:
                # leave the model on its previous, valid vocabulary
                self._restore_vocabulary_state(old)
                raise ValueError(f"Invalid vocabulary: {e}") from e
            if chunk_size != self.model.test_chunk_size:
                logger.info(
                    f"Vocabulary {vocabulary.strip().lower()!r}: {chunk_size} names per prompt, as its official "
                    f"evaluation (MODEL.GLIP.TEST_CHUNK_SIZE is 0): "
                    f"{len(self.model._chunks)} prompts per image."
                )
        return list(labels)

    def _vocabulary_state(self) -> Tuple:
        m = self.model
        return m.vocabulary, m._chunks, m._chunk_size

    def _restore_vocabulary_state(self, state: Tuple) -> None:
        self.model.vocabulary, self.model._chunks, self.model._chunk_size = state

    def _grounding_inputs(self, caption, phrases, num_images: int) -> List[Dict]:
        if isinstance(caption, str):
            return [self._ground_one(caption, phrases)] * num_images
        captions = list(caption)
        if len(captions) != num_images:
            raise ValueError(f"Got {len(captions)} captions for {num_images} images.")
        if phrases is not None and len(phrases) != num_images:
            raise ValueError("With one caption per image, give one list of phrases per image.")
        return [
            self._ground_one(c, None if phrases is None else phrases[i])
            for i, c in enumerate(captions)
        ]

    def _ground_one(self, caption, phrases) -> Dict:
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"The caption must be a non-empty string, got {caption!r}.")
        check_text(caption, "The caption")
        max_len = self.model.max_query_len
        n = count_tokens(self.model.tokenizer, caption)
        if n + _NUM_SPECIAL_TOKENS > max_len:
            raise ValueError(
                f"The caption is {n} tokens; the model reads at most "
                f"{max_len - _NUM_SPECIAL_TOKENS} (MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN). "
                "Shorten it or split it into several calls."
            )
        if phrases is None:
            found = find_noun_phrases(caption)
            if not found:
                raise ValueError(f"No phrase found in the caption {caption!r}; pass phrases=[...].")
            spans = [p.span for p in found]
        else:
            spans = locate_phrases(caption, phrases)
        tokenized = tokenize(self.model.tokenizer, [caption], max_len, pad_to_max=False)
        for s, e in spans:
            tokens = span_to_token_range(tokenized, (s, e))
            if tokens is None or tokens[0] > tokens[1]:
                raise ValueError(
                    f"Phrase {caption[s:e]!r} at [{s}, {e}) of the caption maps to no token "
                    "(whitespace, zero-width or control characters only); pass other phrases."
                )
        return {
            "caption": caption,
            "phrase_spans": spans,
            "labels": [caption[s:e] for s, e in spans],
        }

    def _trim_text_cache(self):
        """Bound the model's text cache: the vocabulary's prompts plus recent captions."""
        cache = self.model._text_cache
        keep = {c.caption for c in (self.model._chunks or [])}
        extra = [k for k in cache if k[0] not in keep]
        for key in extra[: max(0, len(extra) - _TEXT_CACHE_CAPTIONS)]:
            del cache[key]


    def draw(self, image, result: Dict) -> np.ndarray:
        """(H, W, 3) uint8 RGB drawing of one call's ``result`` on ``image`` (as passed to the
        call), boxes labelled with their name and score by Detectron2's Visualizer."""
        from .data.visualize import draw_grounding

        inst, labels = result["instances"].to("cpu"), result["labels"]
        return draw_grounding(
            to_rgb_uint8(_load_if_path(image), self.input_format),
            inst.pred_boxes,
            [labels[c] for c in inst.pred_classes.tolist()],
            inst.scores.tolist(),
        )


def _use_ema_weights(model, checkpoint: Dict, cfg, weights: str) -> str:
    """Evaluate what ``train_net.py --eval-only`` evaluates: the checkpoint's "ema" entry when
    TEST.USE_EMA (and the checkpoint has one), else its raw weights. Returns "ema" or "model"."""
    from .engine import load_eval_weights

    if load_eval_weights(model, checkpoint, cfg.TEST.USE_EMA) == "ema":
        logger.info(f"GLIPPredictor: the EMA weights of {weights} (TEST.USE_EMA).")
        return "ema"
    if checkpoint and checkpoint.get("ema"):
        logger.info(f"GLIPPredictor: the raw weights of {weights}; TEST.USE_EMA is off, its EMA "
                    "weights are not used.")
    return "model"


def _load_if_path(image):
    """A file path (str or os.PathLike) -> its PIL image (EXIF orientation applied); anything
    else unchanged."""
    if not isinstance(image, (str, os.PathLike)):
        return image
    path = os.fspath(image)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path!r} is a folder, not an image file; pass its images as a list of paths (the "
            "demo CLI, python -m glip_d2.demo --input FOLDER, reads a folder's images)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file {path!r} does not exist.")
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"Could not read {path!r} as an image ({e}).") from e


def locate_phrases(caption: str, phrases: Sequence) -> List[Span]:
    """Character spans of ``phrases`` in ``caption``.

    Each phrase is a ``(start, end)`` span or a string, found as whole words first (exact case,
    then any case), else as any substring; a string given again takes another occurrence (the
    first, in that order, that it has not taken yet).

    Raises:
        ValueError: if a string is not in the caption, is empty, or a span is out of range.
    """
    if isinstance(phrases, str):
        raise ValueError(f"phrases must be a list, got the string {phrases!r}; wrap it in a list.")
    if len(phrases) == 0:
        raise ValueError("phrases is empty; give at least one phrase, or None to find them.")
    spans, taken = [], {}
    for p in phrases:
        if isinstance(p, str):
            if not p.strip():
                raise ValueError("A phrase is empty.")
            text = p.strip()
            used = taken.setdefault(text, [])
            span = _find(caption, text, used)
            if span is None:
                again = " again (it is given more often than it occurs)" if used else ""
                raise ValueError(f"Phrase {p!r} is not in the caption {caption!r}{again}.")
            used.append(span)
        else:
            try:
                span = tuple(int(v) for v in p)
                if span != tuple(p):  # int() would truncate 2.5 to 2
                    span = ()
            except (TypeError, ValueError):
                span = ()
            if len(span) != 2 or not 0 <= span[0] < span[1] <= len(caption):
                raise ValueError(
                    f"Phrase {p!r} is neither a string nor a (start, end) span inside the "
                    f"caption (length {len(caption)})."
                )
        spans.append(span)
    return spans


def _find(caption: str, text: str, taken: Sequence[Span]) -> Optional[Span]:
    """The first occurrence of ``text`` (by the priority of :func:`locate_phrases`) that
    overlaps none of the ``taken`` spans (the occurrences earlier copies of it took)."""
    for pattern, flags in (
        (r"(?<!\w)" + re.escape(text) + r"(?!\w)", 0),
        (r"(?<!\w)" + re.escape(text) + r"(?!\w)", re.IGNORECASE),
        (re.escape(text), 0),
        (re.escape(text), re.IGNORECASE),
    ):
        for m in re.compile(pattern, flags).finditer(caption):
            s, e = m.span()
            if all(e <= ts or s >= te for ts, te in taken):
                return s, e
    return None


def _is_count(value) -> bool:
    """A positive integer (also 3.0 or a numpy integer), not a bool, nan, inf or a string."""
    if isinstance(value, (bool, str)):
        return False
    try:
        return int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        return False


def _check_threshold(value) -> float:
    # float() alone would take "0.5" or True, and its errors do not name the argument
    try:
        if isinstance(value, (bool, str)):
            raise TypeError
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"The confidence threshold must be a number in [0, 1], got {type(value).__name__} "
            f"{value!r}."
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"The confidence threshold must lie in [0, 1], got {value}.")
    return value
