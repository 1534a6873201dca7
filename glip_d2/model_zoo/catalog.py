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
        sha256: hex digest the file must have (a download, and a cached file on first use);
            None = not pinned (a download is checked against the digest the server declares,
            if any, and the digest is logged).
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


def _official(name, config, file_name, sha256, variant, description):
    return ModelZooEntry(name, config, file_name, OFFICIAL_URL_ROOT + file_name, sha256, variant,
                         description)


# The digests are the files' Git LFS object ids (an LFS oid is the sha256 of the file's bytes), as
# the hub's file pages show them. GLIP-T (A), GLIP-T (B) and GLIP-L: the pages of GLIPModel/GLIP at
# its commit 66ee3ae (GLIP-L's also in minghua/PartSLIP's upload of the file). GLIP-T (C) and
# GLIP-T: the LFS pointers of harold/GLIP, uploaded by a GLIP author (its third file,
# glip_tiny_model_o365_goldg_cc_sbu_lvisbest.pth, has the same oid on GLIPModel/GLIP), and, for
# GLIP-T, the same oid in haotiz/glip-zeroshot-demo. A download is also checked against the digest
# the hub declares for it (download.py).
MODELS: Dict[str, ModelZooEntry] = {
    e.name: e
    for e in (
        _official("glip_a_tiny_o365", "glip_A_swin_t", "glip_a_tiny_o365.pth",
                  "e81b13b86be3457f3c6e9ff659cd5f281d2120e980b62be83b23afa0f2f671f6",
                  "GLIP-T (A)", "Swin-T, no deep fusion, Objects365"),
        _official("glip_tiny_o365", "glip_B_swin_t", "glip_tiny_model_o365.pth",
                  "a9ee881a09b72722c4649f71e7bb2bad714beb33b21b4f0068888b8d0beb46b1",
                  "GLIP-T (B)", "Swin-T, deep fusion, Objects365"),
        _official("glip_tiny_o365_goldg", "glip_swin_t", "glip_tiny_model_o365_goldg.pth",
                  "4274770c817b966621097df306c5ae857a2bdf3dfc242afc402382d9604382d3",
                  "GLIP-T (C)", "Swin-T, deep fusion, Objects365 + GoldG (the parity model)"),
        _official("glip_tiny", "glip_swin_t", "glip_tiny_model_o365_goldg_cc_sbu.pth",
                  "3bec0a3dea804fcb278d7106c5438de5116ee888e49dfae46270e7ad7bc4ccbf",
                  "GLIP-T", "Swin-T, deep fusion, Objects365 + GoldG + CC3M + SBU"),
        _official("glip_large", "glip_swin_l", "glip_large_model.pth",
                  "dcb0178264b3193901a11560aa7f31b05821a5bf15225eeb0eeebbedaaa27791",
                  "GLIP-L", "Swin-L, deep fusion, FourODs + GoldG + CC3M + SBU + 24M web pairs"),
        ModelZooEntry("glip_demo_shapes", "demo_glip_tiny_shapes", "glip_demo_shapes.pth", "",
                      None, "demo GLIP (tiny Swin, MiniLM)",
                      "the embedded shapes demo; train it with scripts/demo.sh in a checkout of the "
                      "repository and copy "
                      "output/demo_shapes/model_final.pth into the cache under this file name"),
    )
}
