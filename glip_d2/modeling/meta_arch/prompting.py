"""Prompt handling shared by the language-conditioned meta-architectures: the test vocabulary
and its chunks, text encoding, and the test-time cache of encoded prompts."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog
from torch import nn

from ...data.class_descriptions import class_descriptions_from_config
from ...data.register import ensure_class_metadata
from ...text import apply_descriptions, chunk_vocabulary, create_positive_map, tokenize
from ...text.chunking import check_vocabulary_container

logger = logging.getLogger(__name__)


class SourcedVocabulary(list):
    """A vocabulary list that says where it came from (``source``), for its errors."""

    def __init__(self, names, source: str):
        super().__init__(names)
        self.source = source


def default_vocabulary(cfg) -> Optional[List]:
    """MODEL.GLIP.VOCABULARY, else the thing_classes of DATASETS.TEST[0] (with that dataset's
    DATASETS.CLASS_DESCRIPTIONS, if any), else None; a :class:`SourcedVocabulary`, so that a
    name that cannot be prompted is reported with the key or dataset it came from."""
    if len(cfg.MODEL.GLIP.VOCABULARY):
        return SourcedVocabulary(cfg.MODEL.GLIP.VOCABULARY, "MODEL.GLIP.VOCABULARY")
    if len(cfg.DATASETS.TEST):
        name = cfg.DATASETS.TEST[0]
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes", None) is None:
            _load_class_names(name)
        names = meta.get("thing_classes", None)
        if names is None:
            return None
        json_file = meta.get("json_file", None)
        return SourcedVocabulary(
            apply_descriptions(names, class_descriptions_from_config(cfg).get(name)),
            f"the class names of DATASETS.TEST[0] {name!r}"
            + (f" (categories of {json_file})" if json_file else ""),
        )
    return None


def _load_class_names(name: str) -> None:
    """Load a detection dataset whose class names are not known yet: ``register_coco_instances``
    sets ``thing_classes`` only when the json is first loaded, so a model built before
    (``DefaultPredictor(cfg)``, ``build_model``) would have no vocabulary; the names and their
    order are then those the evaluator uses. A dataset that cannot be loaded here (files not
    present) is left alone, with a warning."""
    # detection datasets only: a grounding dataset has no class names to load
    if MetadataCatalog.get(name).get("evaluator_type", None) not in ("coco", "lvis", "odinw"):
        return
    try:
        ensure_class_metadata(name)
    except (OSError, ValueError) as e:
        logger.warning(
            f"DATASETS.TEST[0] {name!r} has no class names yet and could not be loaded to get "
            f"them ({type(e).__name__}: {e}); the model has no default vocabulary: call "
            "model.set_vocabulary([...]) or set MODEL.GLIP.VOCABULARY."
        )


def normalise_phrase_spans(phrase_spans) -> List[List[Tuple[int, int]]]:
    """[[s, e], ...] (one span per phrase) or [[[s, e], ...], ...] -> spans per phrase; lists,
    tuples, numpy arrays or tensors.

    Raises:
        ValueError: for anything else, saying the expected shape.
    """
    spans = phrase_spans.tolist() if hasattr(phrase_spans, "tolist") else phrase_spans
    out = []
    try:
        for s in spans:
            if len(s) and isinstance(s[0], (list, tuple)):
                out.append([_span(x) for x in s])
            else:
                out.append([_span(s)])
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"phrase_spans must be one [start, end] character span per phrase, or a list of such "
            f"spans per phrase ([[[start, end], ...], ...]); got {phrase_spans!r} ({e})."
        ) from e
    return out


def _span(span) -> Tuple[int, int]:
    if len(span) != 2:
        raise ValueError(f"a span has a start and an end, got {list(span)!r}")
    start, end = int(span[0]), int(span[1])
    if start != span[0] or end != span[1]:  # int() would truncate 2.5 to 2
        raise ValueError(f"span {list(span)!r} is not a pair of integers")
    return start, end


def check_phrase_spans(caption: str, spans: Sequence[Sequence[Tuple[int, int]]]) -> None:
    """Refuse phrase spans (as :func:`normalise_phrase_spans` returns them) that do not lie inside
    `caption`: the official token look-up falls back to earlier characters, so a span running
    past the end would silently ground the caption's last word.

    Raises:
        ValueError: naming the phrase and the span.
    """
    for phrase, phrase_spans in enumerate(spans):
        for start, end in phrase_spans:
            if not 0 <= start < end <= len(caption):
                raise ValueError(
                    f"phrase_spans: span [{start}, {end}) of phrase #{phrase} lies outside the "
                    f"caption of {len(caption)} characters ({caption!r}); give [start, end) "
                    "character offsets with 0 <= start < end <= len(caption)."
                )


def _clear_text_cache_after_load(module, incompatible_keys) -> None:
    """load_state_dict post-hook (a plain function, so the module still pickles and deep-copies)."""
    module.clear_text_cache()


class PromptingMixin:
    """Needs: tokenizer, language_backbone, device, max_query_len, pad_to_max, separator,
    test_chunk_size; call `_init_prompting(vocabulary)` in __init__."""

    # Prompt encodings kept at test time (vocabulary chunks + recent grounding captions).
    TEXT_CACHE_SIZE = 256

    def _init_prompting(self, vocabulary: Optional[Sequence[str]]):
        # _chunk_size: names per prompt the chunks were made with (0 = packed to the token limit)
        self.vocabulary, self._chunks, self._chunk_size = None, None, None
        self._text_cache: Dict = {}
        # Cached encodings belong to the weights that computed them: loading a state dict (a
        # checkpoint, EMA weights swapped in for evaluation) makes them stale. The hook also runs
        # when the load goes through a wrapper (DDP) or fails part-way.
        if isinstance(self, nn.Module):  # the mixin alone (tests) has no state dict
            self.register_load_state_dict_post_hook(_clear_text_cache_after_load)
        if vocabulary:
            try:
                self.set_vocabulary(vocabulary)
            except ValueError as e:
                source = getattr(vocabulary, "source", None)
                if source is None:
                    raise
                raise ValueError(
                    f"The model's vocabulary, {source}, cannot be its prompt: {e} (Name # counts "
                    "from 0 in that list.) Rename those classes, or set another vocabulary."
                ) from e

    def clear_text_cache(self):
        """Forget the cached prompt encodings; they are recomputed on next use. Done for you when
        the model enters train mode, loads a state dict or moves (``to``, ``half``, ...)."""
        cache = getattr(self, "_text_cache", None)  # train() may run before _init_prompting
        if cache is not None:
            cache.clear()

    def train(self, mode: bool = True):
        """Entering train mode drops the text cache: training changes the text encoder, so
        encodings cached by one evaluation would be stale at the next."""
        if mode:
            self.clear_text_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        """``to(device)``, ``half()``, ...: cached encodings would keep the old device and dtype."""
        self.clear_text_cache()
        return super()._apply(fn, *args, **kwargs)

    def set_vocabulary(self, names: Sequence, chunk_size: Optional[int] = None):
        """Set the names detected when inputs carry no caption; chunked to fit the token limit.
        An entry may be a class description ({prefix, name, suffix}; glip_d2.text.descriptions).

        Args:
            chunk_size: names per prompt; None = ``test_chunk_size`` (MODEL.GLIP.TEST_CHUNK_SIZE),
                0 = as many as fit the token limit.
        """
        check_vocabulary_container(names)  # list() would misread a str, a mapping or a set
        names = list(names)
        if chunk_size is None:
            chunk_size = self.test_chunk_size
        # validates first: a bad vocabulary leaves the old one intact
        chunks = self.chunk_names(names, chunk_size)
        self.vocabulary, self._chunks, self._chunk_size = names, chunks, chunk_size
        self._text_cache.clear()
        logger.info(f"Vocabulary of {len(names)} names: {len(chunks)} prompt chunk(s) per image.")

    def chunk_names(self, names: Sequence, chunk_size: Optional[int] = None):
        """The prompt chunks of ``names`` as :meth:`set_vocabulary` makes them (this model's
        tokenizer, token limit and separator), without setting them: checks a vocabulary.

        Raises:
            ValueError: for names that cannot be a prompt (repeated, empty after cleaning,
                longer than the token limit).
        """
        return chunk_vocabulary(
            list(names), self.tokenizer,
            chunk_size=self.test_chunk_size if chunk_size is None else chunk_size,
            max_len=self.max_query_len, separator=self.separator,
        )

    def encode_text(self, captions: Sequence[str]):
        """Tokenize and run the language backbone. Returns (tokenized, language dict).

        With prompt tuning (a ``prompt_tuning`` module) the tuned prompt's features (P0 + the
        learned offset) replace the text encoder: in training, where every caption must be the
        one fixed prompt (P0 is encoded on first use), and at test time for that prompt.
        """
        tok = tokenize(self.tokenizer, captions, max_length=self.max_query_len, pad_to_max=self.pad_to_max)
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        tuned = getattr(self, "prompt_tuning", None)
        if tuned is not None:
            if self.training:
                return tok, self._tuned_prompt_for_training(captions, ids, mask)
            if tuned.matches(ids):
                return tok, tuned.features(len(captions))
            self._warn_untuned_prompt(captions[0])
        return tok, self.language_backbone(ids, mask)

    def untuned_prompts(self) -> List[str]:
        """The vocabulary's prompts that a prompt-tuned model scores with its text encoder, not
        with the tuned prompt (zero-shot scores); [] without prompt tuning or before the prompt is
        learned (the first training step)."""
        tuned = getattr(self, "prompt_tuning", None)
        if tuned is None or not tuned.initialized or self._chunks is None:
            return []

        def ids(caption):
            return tokenize(self.tokenizer, [caption], max_length=self.max_query_len,
                            pad_to_max=self.pad_to_max)["input_ids"]

        return [c.caption for c in self._chunks if not tuned.matches(ids(c.caption))]

    def _warn_untuned_prompt(self, caption: str) -> None:
        """Once per model: a prompt-tuned model meets another prompt, which the text encoder
        encodes; its scores are the zero-shot model's, not what was tuned."""
        if not self.prompt_tuning.initialized or getattr(self, "_warned_untuned_prompt", False):
            return
        self._warned_untuned_prompt = True
        logger.warning(
            f"Prompt tuning: the prompt {caption[:80]!r} is not the tuned one, so the text encoder "
            "encodes it and the learned prompt is not used (zero-shot scores). Evaluate with the "
            "training dataset's class names, in the same order and with the same "
            "DATASETS.CLASS_DESCRIPTIONS, in one prompt (MODEL.GLIP.TEST_CHUNK_SIZE 0)."
        )

    def _tuned_prompt_for_training(self, captions, ids, mask):
        tuned = self.prompt_tuning
        if any(c != captions[0] for c in captions):
            raise ValueError(
                "Prompt tuning (MODEL.GLIP.TUNING prompt) learns one fixed prompt, but the "
                f"training captions differ (e.g. {captions[0]!r}); train on one detection "
                "dataset with the grounding mapper, which then names all classes in label order."
            )
        if tuned.initialized and not tuned.matches(ids):
            raise ValueError(
                "Prompt tuning (MODEL.GLIP.TUNING prompt) learns one fixed prompt, but the model "
                f"already holds a tuned prompt ({int(tuned.length)} tokens) other than this "
                f"batch's {captions[0]!r}: either it was loaded with the weights (a checkpoint "
                "prompt-tuned on other classes; start from the checkpoint that tuning started "
                "from instead) or earlier batches had another prompt (train on one detection "
                "dataset)."
            )
        if not tuned.initialized:
            was_training = self.language_backbone.training
            self.language_backbone.eval()
            with torch.no_grad():
                tuned.store(ids[0], self.language_backbone(ids[:1], mask[:1]))
            self.language_backbone.train(was_training)
            logger.info(f"Prompt tuning: encoded the prompt {captions[0]!r} once ({ids.shape[1]} tokens).")
        return tuned.features(len(captions))

    def _cached_prompt(self, caption: str, spans_per_label):
        """(input_ids (1, T), language dict, label->token map (L, T)) of one prompt; cached in eval."""
        key = (caption, tuple(tuple(map(tuple, s)) for s in spans_per_label))
        if self.training or key not in self._text_cache:
            tok, lang = self.encode_text([caption])
            pmap = create_positive_map(tok, spans_per_label, max_len=tok["input_ids"].shape[1])
            value = (tok["input_ids"].to(self.device), lang, pmap.to(self.device))
            if self.training:
                return value
            # drop the oldest entry; room for the whole vocabulary on top (LVIS in chunks of 4
            # is 301 prompts: a smaller cache re-encoded every prompt for every image)
            if len(self._text_cache) >= self.TEXT_CACHE_SIZE + len(self._chunks or ()):
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = value
        return self._text_cache[key]

    def _check_training_inputs(self, batched_inputs: List[Dict]):
        for x in batched_inputs:
            if "caption" not in x or "instances" not in x:
                raise ValueError(
                    f"{type(self).__name__} training inputs need 'caption' and 'instances' with "
                    "gt_positive_map; use glip_d2.data.GroundingDatasetMapper as the train mapper."
                )

    def _prompts_for(self, x: Dict):
        """([(caption, spans per label, label ids)], size of the label space) of one input."""
        if "caption" in x and "phrase_spans" in x:
            spans = normalise_phrase_spans(x["phrase_spans"])
            check_phrase_spans(x["caption"], spans)
            return [(x["caption"], spans, list(range(len(spans))))], len(spans)
        if self._chunks is None:
            raise ValueError(
                "No vocabulary to detect: call model.set_vocabulary([...]), set MODEL.GLIP.VOCABULARY, "
                "or give each input a 'caption' with 'phrase_spans'."
            )
        if "caption" in x and not getattr(self, "_warned_caption_without_spans", False):
            self._warned_caption_without_spans = True
            logger.warning(
                "An input has a 'caption' but no 'phrase_spans': the caption is not used, the "
                "model detects its vocabulary. To ground the caption, give 'phrase_spans' (one "
                "list of [start, end] character spans per phrase; [[[0, len(caption)]]] for the "
                "whole caption), or use GLIPPredictor(image, caption=...), which finds the "
                "phrases."
            )
        prompts = [(c.caption, [[tuple(s)] for s in c.spans], list(c.label_ids)) for c in self._chunks]
        return prompts, len(self.vocabulary)
