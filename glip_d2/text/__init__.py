"""Text side of GLIP: prompts, tokenization, positive maps, score aggregation, vocabulary chunks."""

from .aggregation import aggregate_token_scores
from .descriptions import (
    ClassDescription,
    apply_descriptions,
    as_description,
    entry_name,
    load_descriptions,
)
from .chunking import PromptChunk, chunk_vocabulary
from .positive_map import create_positive_map, span_to_token_range
from .prompt import build_detection_prompt, clean_name
from .spans import mentions_left_right, swap_left_right, validate_spans
from .tokenization import (
    check_text,
    count_tokens,
    load_tokenizer,
    packaged_model_dir,
    tokenize,
)
from .training_prompt import build_training_prompt

__all__ = [
    "aggregate_token_scores",
    "apply_descriptions",
    "as_description",
    "ClassDescription",
    "entry_name",
    "load_descriptions",
    "build_detection_prompt",
    "build_training_prompt",
    "check_text",
    "chunk_vocabulary",
    "clean_name",
    "count_tokens",
    "create_positive_map",
    "load_tokenizer",
    "mentions_left_right",
    "packaged_model_dir",
    "PromptChunk",
    "span_to_token_range",
    "swap_left_right",
    "tokenize",
    "validate_spans",
]
