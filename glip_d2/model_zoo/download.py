"""The checkpoint cache and downloads with a progress bar and a sha256 check."""
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from typing import Optional

from tqdm import tqdm

__all__ = ["cache_dir", "download", "sha256_of"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def cache_dir() -> str:
    """The checkpoint cache: ``$GLIP_D2_CACHE``, default ``~/.cache/glip_d2``."""
    return os.path.expanduser(os.environ.get("GLIP_D2_CACHE") or os.path.join("~", ".cache", "glip_d2"))


def sha256_of(path: str) -> str:
    """Hex sha256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, path: str, sha256: Optional[str] = None, *, timeout: float = 30.0,
             progress: bool = True) -> str:
    """Download ``url`` to ``path`` atomically, checking its sha256.

    The bytes go to a temporary file beside ``path`` that is renamed only when complete and
    (if ``sha256`` is given) equal to the expected digest; on any failure it is removed, so a
    partial or corrupt download never sits at ``path``.

    Args:
        url: http(s) or file URL.
        path: destination file; its folder is created.
        sha256: expected hex digest; None = not checked (the digest is logged).
        timeout: seconds to wait for the server.
        progress: show a tqdm progress bar.

    Returns:
        ``path``.

    Raises:
        RuntimeError: if the download fails (naming the URL and where to put the file by hand).
        ValueError: if the file's sha256 differs from ``sha256``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=os.path.basename(path), disable=not progress) as bar:
                        for block in iter(lambda: response.read(_CHUNK), b""):
                            out.write(block)
                            h.update(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise RuntimeError(
                    f"Could not download {url} ({type(e).__name__}: {e}). Download it by hand "
                    f"and put it at {path}."
                ) from e
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise ValueError(
                f"The download of {url} has sha256 {digest}, expected {sha256}: the file is "
                "corrupt or not the expected one. Nothing was saved; try again."
            )
        if sha256 is None:
            logger.warning(f"Downloaded {url} without a known checksum; its sha256 is {digest}.")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info(f"Saved {url} to {path}.")
    return path
