"""glip_d2: GLIP (Grounded Language-Image Pre-training) as a Detectron2 extension.

Importing the package registers its components (meta-architecture "GLIP", Swin backbones,
language backbones, fusion towers, the grounding head) and the builtin shapes datasets.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by the install test in a subprocess
    raise ImportError(
        "glip_d2 needs Detectron2, which is not installed. Build it from source "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) or, on CPython 3.10 "
        "with torch 2.3, install the registry build: pip install -r requirements.txt "
        "(or pip install -e .[stack])."
    ) from e

from . import data, modeling, regionclip  # noqa: F401,E402  (registrations)
from .config import add_glip_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_glip_config"]
