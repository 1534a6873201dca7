"""glip_d2: GLIP (Grounded Language-Image Pre-training) as a Detectron2 extension.

Importing the package registers its components (meta-architecture "GLIP", Swin backbones,
language backbones, fusion towers, the grounding head) and the builtin shapes datasets.

Without Detectron2 only :mod:`glip_d2.text` (prompts, tokenization, positive maps, chunking) is
usable, so tools that only build prompts run on any Python; everything else raises an
ImportError that says how to install Detectron2.
"""
_NO_DETECTRON2 = (
    "glip_d2 needs Detectron2, which is not installed. Build it from source "
    "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) or, on CPython 3.10 "
    "with torch 2.3, install the registry build: pip install -r requirements.txt "
    "(or pip install -e .[stack]). Without it only glip_d2.text works."
)

__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError:
    detectron2 = None

if detectron2 is None:
    __all__ = []

    def __getattr__(name):
        if name == "text":  # `from glip_d2 import text` asks for the attribute before importing
            import importlib

            return importlib.import_module(".text", __name__)
        if name.startswith("__"):  # probes such as getattr(module, "__wrapped__", None)
            raise AttributeError(f"module 'glip_d2' has no attribute {name!r}")
        raise ImportError(f"{_NO_DETECTRON2} (needed for glip_d2.{name})")

else:
    from . import data, modeling, regionclip  # noqa: F401  (registrations)
    from .config import add_glip_config

    __all__ = ["add_glip_config"]
