"""Class descriptions: a vocabulary entry with context words around the class name.

A vocabulary entry is either a plain name (``"cigarette"``) or a description
``{"prefix": "a ", "name": "cigarette", "suffix": ", a thin paper tube smoked near the mouth"}``
(the official ``DATASETS.CAPTION_PROMPT`` format, one dict per class). The prompt carries
``prefix + name + suffix``; only the name's characters are the label's span, so only the name's
tokens are the label's positive tokens and the rest is context the text encoder reads.
"""

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

__all__ = [
    "ClassDescription",
    "as_description",
    "entry_name",
    "load_descriptions",
    "apply_descriptions",
]

_KEYS = {"prefix", "name", "suffix"}


@dataclass(frozen=True)
class ClassDescription:
    """One class in a prompt: ``prefix + name + suffix``; the label's span is the name's."""

    name: str
    prefix: str = ""
    suffix: str = ""

    def __post_init__(self):
        # text glued to the name changes the name's word pieces ("a" + "cigarette" is read as
        # "ac ##iga ##ret ##te"), so the label's positive tokens would be pieces of other words
        from .prompt import clean_name

        name = clean_name(self.name) if isinstance(self.name, str) else ""
        if not name:  # not a string, or empty: the vocabulary checks say so
            return
        prefix = self.prefix if isinstance(self.prefix, str) else ""
        suffix = self.suffix if isinstance(self.suffix, str) else ""
        for part, text, glued, edge, fixed in (
            ("prefix", prefix, prefix + name, (prefix[-1:], name[:1]), prefix + " "),
            ("suffix", suffix, name + suffix, (name[-1:], suffix[:1]), ", " + suffix),
        ):
            if _joins(*edge):
                raise ValueError(
                    f"The {part} {text!r} of class {self.name!r} runs into the name "
                    f"({glued!r}), which changes the name's tokens; separate them with a space "
                    f"(or punctuation), e.g. {part} {fixed!r}."
                )

    def text(self, clean: bool = True) -> str:
        """The prompt text of this class (the name cleaned with :func:`clean_name`)."""
        from .prompt import clean_name  # prompt.py builds on this module

        return self.prefix + (clean_name(self.name) if clean else self.name) + self.suffix

    def to_dict(self) -> Dict[str, str]:
        return {"prefix": self.prefix, "name": self.name, "suffix": self.suffix}


def _joins(left: str, right: str) -> bool:
    """Whether the tokenizer reads two adjacent characters as one word: both letters or digits,
    and neither a CJK ideograph (which BERT's tokenizer always splits off)."""

    def cjk(c):
        o = ord(c)
        return 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F

    return bool(left and right) and left.isalnum() and right.isalnum() and not (cjk(left) or cjk(right))


VocabularyEntry = Union[str, ClassDescription, Mapping[str, str]]


def as_description(entry: VocabularyEntry, index: Optional[int] = None) -> ClassDescription:
    """A :class:`ClassDescription` from a name, a ``{prefix, name, suffix}`` dict or a description.

    Raises:
        TypeError: for another type.
        ValueError: for a dict without "name", with unknown keys, or with non-string values.
    """
    where = f"Vocabulary entry #{index}" if index is not None else "A vocabulary entry"
    if isinstance(entry, ClassDescription):
        return entry
    if isinstance(entry, str):
        return ClassDescription(entry)
    if isinstance(entry, Mapping):
        unknown = set(entry) - _KEYS
        if "name" not in entry or unknown:
            raise ValueError(
                f"{where} ({dict(entry)!r}) must be a dict with a 'name' and optionally 'prefix' "
                f"and 'suffix'{f'; unknown keys {sorted(unknown)}' if unknown else ''}."
            )
        values = {k: entry.get(k, "") for k in _KEYS}
        bad = {k: v for k, v in values.items() if not isinstance(v, str)}
        if bad:
            raise ValueError(f"{where}: prefix, name and suffix must be strings, got {bad!r}.")
        return ClassDescription(values["name"], values["prefix"], values["suffix"])
    raise TypeError(
        f"{where} must be a name (str) or a {{prefix, name, suffix}} dict, got "
        f"{type(entry).__name__} ({entry!r})."
    )


def entry_name(entry: VocabularyEntry) -> str:
    """The class name of a vocabulary entry (the entry itself for a plain name)."""
    return entry if isinstance(entry, str) else as_description(entry).name


def load_descriptions(source: Union[str, "os.PathLike", Sequence, Mapping]) -> Union[List, Dict]:
    """Read class descriptions from a JSON or YAML file, or from inline JSON text.

    The content is either a list (one entry per class, in label order: a name or a
    ``{prefix, name, suffix}`` dict, as the official ``CAPTION_PROMPT``) or a mapping from class
    name to its description (a dict with ``prefix``/``suffix`` and optionally ``name``, or a
    string used as suffix).

    Raises:
        ValueError: if the file cannot be parsed, holds neither a list nor a mapping, or holds a
            malformed description (the message names the file).
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (list, tuple, Mapping)):
        data = source
    elif isinstance(source, str) and os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            text = f.read()
        if source.lower().endswith((".yaml", ".yml")):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(f"Class descriptions {source!r} are not valid YAML: {e}") from e
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"Class descriptions {source!r} are not valid JSON: {e}") from e
    elif isinstance(source, str):
        try:
            data = json.loads(source)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Class descriptions {source[:80]!r} are neither an existing file nor inline "
                f"JSON ({e}); give a .json/.yaml file or a JSON list/object."
            ) from e
    else:
        raise TypeError(f"Class descriptions must be a path or JSON text, got {type(source).__name__}.")
    try:
        return _parsed_descriptions(data)
    except (TypeError, ValueError) as e:
        if isinstance(source, str) and os.path.isfile(source):  # say which file to fix
            raise ValueError(f"Class descriptions {source!r}: {e}") from e
        raise


def _parsed_descriptions(data) -> Union[List, Dict]:
    if isinstance(data, (list, tuple)):
        return [d if isinstance(d, str) else as_description(d, i).to_dict() for i, d in enumerate(data)]
    if isinstance(data, Mapping):
        return {str(name): _keyed_description(name, d).to_dict() for name, d in data.items()}
    raise ValueError(
        f"Class descriptions must be a list (one per class) or a mapping name -> description, "
        f"got {type(data).__name__}."
    )


def _keyed_description(name, description) -> ClassDescription:
    """The description of class ``name`` in a mapping: a dict (its name defaults to ``name``),
    a string (the suffix) or a :class:`ClassDescription`."""
    if isinstance(description, ClassDescription):
        return description
    if isinstance(description, str):
        description = {"suffix": description}
    if not isinstance(description, Mapping):
        raise ValueError(
            f"The description of {name!r} must be a dict or a string, got {description!r}."
        )
    return as_description({"name": str(name), **description})


def apply_descriptions(
    class_names: Sequence[str], descriptions: Union[None, Sequence, Mapping]
) -> List[VocabularyEntry]:
    """The vocabulary of a dataset: its class names, each replaced by its description if any.

    Args:
        class_names: the dataset's names in label order (``thing_classes``).
        descriptions: a list with one entry per class (by position; its name may rename the
            class in the prompt, like the official CAPTION_PROMPT), or a mapping class name ->
            description (classes without one keep their plain name; a description is read as
            by :func:`load_descriptions`: a string is the suffix, a dict without "name" keeps
            the class name), or None.

    Raises:
        ValueError: if a list's length differs from the number of classes, or a mapping names a
            class the dataset does not have.
    """
    if descriptions is None:
        return list(class_names)
    if isinstance(descriptions, Mapping):
        unknown = sorted(set(descriptions) - set(class_names))
        if unknown:
            raise ValueError(
                f"Class descriptions for {unknown} match no class name of the dataset "
                f"({_listing(class_names)}); key them by the dataset's thing_classes."
            )
        return [
            _keyed_description(n, descriptions[n]) if n in descriptions else n for n in class_names
        ]
    if len(descriptions) != len(class_names):
        raise ValueError(
            f"{len(descriptions)} class descriptions for {len(class_names)} classes "
            f"({_listing(class_names)}); give one entry per class in label order, or a mapping "
            "name -> description."
        )
    return [d if isinstance(d, str) else as_description(d, i) for i, d in enumerate(descriptions)]


def _listing(class_names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` class names, for a message ("..." only when there are more)."""
    names = list(class_names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(map(repr, names[:limit])) + more
