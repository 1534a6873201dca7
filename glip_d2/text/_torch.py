"""torch for the tensor-valued text tools, imported when one of them runs: prompts, token counts
and chunking need no torch, so glip_d2.text imports on a Python without it."""


def require_torch(what: str):
    """The ``torch`` module, or an ImportError that names the tool that needs it.

    Args:
        what: the function that needs torch, for the message.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"glip_d2.text.{what} needs torch, which is not installed: pip install torch. "
            "Prompts, token counts and vocabulary chunking of glip_d2.text work without it."
        ) from error
    return torch
