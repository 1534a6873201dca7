"""torch for the tensor-valued text tools: prompts, token counts and chunking need no torch, so
glip_d2.text imports on a Python without it; ``torch`` is None there and the tools that need it
say so when called."""

try:
    import torch
except ImportError:
    torch = None


def require_torch(what: str) -> None:
    """Raise an ImportError that names the tool that needs torch, when torch is not installed.

    Args:
        what: the function that needs torch, for the message.
    """
    if torch is None:
        raise ImportError(
            f"glip_d2.text.{what} needs torch, which is not installed: pip install torch. "
            "Prompts, token counts and vocabulary chunking of glip_d2.text work without it."
        )
