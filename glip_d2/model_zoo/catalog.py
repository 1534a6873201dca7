"""The model zoo's table: model name -> config, checkpoint file, download URL, checksum."""
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["ModelZooEntry", "MODELS", "OFFICIAL_URL_ROOT"]

# The official GLIP checkpoints are distributed on the Hugging Face hub (microsoft/GLIP README).
OFFICIAL_URL_ROOT = "https://huggingface.co/GLIPModel/GLIP/resolve/main/"


@dataclass(frozen=True)
class ModelZooEntry:
    """One downloadable model.

    Attributes:
        name: the zoo name (``glip_d2.model_zoo.get(name)``).
        config: config name, a yaml path relative to ``configs/`` without ".yaml".
        file_name: the checkpoint's file name in the cache directory.
        url: where to download it from; "" = not downloadable (put the file in the cache).
        sha256: hex digest the download must have; None = not pinned (the download is checked
            against the digest the server declares, if any, and the digest is logged).
        variant: the architecture, as the paper names it.
        description: training data and notes.
    """

    name: str
    config: str
    file_name: str
    url: str
    sha256: Optional[str]
    variant: str
    description: str


def _official(name, config, file_name, variant, description):
    # sha256 None: no session of this project could download the official files to pin their
    # digests (no internet); a download is checked against the sha256 the hub declares
    # (X-Linked-Etag) and logs it.
    return ModelZooEntry(name, config, file_name, OFFICIAL_URL_ROOT + file_name, None, variant,
                         description)


MODELS: Dict[str, ModelZooEntry] = {
    e.name: e
    for e in (
        _official("glip_a_tiny_o365", "glip_A_swin_t", "glip_a_tiny_o365.pth", "GLIP-T (A)",
                  "Swin-T, no deep fusion, Objects365"),
        _official("glip_tiny_o365", "glip_B_swin_t", "glip_tiny_model_o365.pth", "GLIP-T (B)",
                  "Swin-T, deep fusion, Objects365"),
        _official("glip_tiny_o365_goldg", "glip_swin_t", "glip_tiny_model_o365_goldg.pth",
                  "GLIP-T (C)", "Swin-T, deep fusion, Objects365 + GoldG (the parity model)"),
        _official("glip_tiny", "glip_swin_t", "glip_tiny_model_o365_goldg_cc_sbu.pth", "GLIP-T",
                  "Swin-T, deep fusion, Objects365 + GoldG + CC3M + SBU"),
        _official("glip_large", "glip_swin_l", "glip_large_model.pth", "GLIP-L",
                  "Swin-L, deep fusion, FourODs + GoldG + CC3M + SBU + 24M web pairs"),
        ModelZooEntry("glip_demo_shapes", "demo_glip_tiny_shapes", "glip_demo_shapes.pth", "",
                      None, "demo GLIP (tiny Swin, MiniLM)",
                      "the embedded shapes demo; train it with scripts/demo.sh and copy "
                      "output/demo_shapes/model_final.pth into the cache under this file name"),
    )
}
