"""The checkpoint cache and downloads with a progress bar and a sha256 check."""
import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from tqdm import tqdm

from ..atomic_file import new_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, concurrent downloads each fetch
    fcntl = None

__all__ = ["cache_dir", "download", "download_lock", "sha256_of", "verify_cached"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _KeepRedirectHeaders(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib's own handler and keeps each redirect's headers: the
    Hugging Face hub names an LFS file's sha256 and size in its redirect to the CDN
    (``X-Linked-Etag``, ``X-Linked-Size``), not in the CDN's answer."""

    def __init__(self):
        super().__init__()
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _declared(headers, name: str) -> Optional[str]:
    """The first value of header ``name`` along the redirect chain, quotes and ``W/`` removed."""
    for h in headers:
        value = h.get(name)
        if value:
            value = value.strip()
            return (value[2:] if value.startswith("W/") else value).strip('"').lower()
    return None


def cache_dir() -> str:
    """The checkpoint cache: ``$GLIP_D2_CACHE``, default ``~/.cache/glip_d2``."""
    return os.path.expanduser(os.environ.get("GLIP_D2_CACHE") or os.path.join("~", ".cache", "glip_d2"))


@contextlib.contextmanager
def download_lock(path: str):
    """Hold an exclusive lock on ``<path>.lock`` (waiting while another process holds it), so that
    processes asking for one missing checkpoint at once download it once: the others wait, then
    find the file. Once it is held no live process writes ``path``, so the temporary files of
    downloads that were killed (a signal or a crash runs no cleanup) are removed. The lock file
    is removed on release. Without file locks (Windows, a cache that refuses them) nothing is
    locked and nothing removed."""
    name = path + ".lock"
    lock = _acquire(name) if fcntl is not None else None
    if lock is not None:
        _remove_partial_downloads(path)
    try:
        yield
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):
                os.remove(name)  # while still holding it: a waiter then sees it is stale
            lock.close()  # releases the lock


def _acquire(name: str):
    """An open file of ``name`` holding its exclusive lock; None if the file system refuses."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
        while True:
            f = open(name, "a")
            try:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    logger.info(f"Waiting for another process downloading {name[:-5]} ...")
                    fcntl.flock(f, fcntl.LOCK_EX)
                try:  # the holder before removed the file it locked: lock the current one
                    if os.path.samestat(os.fstat(f.fileno()), os.stat(name)):
                        return f
                except FileNotFoundError:
                    pass
            except BaseException:
                f.close()
                raise
            f.close()
    except OSError as e:  # a read-only cache or a file system without locks
        logger.debug(f"No download lock {name} ({e}).")
        return None


def _partial_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def _remove_partial_downloads(path: str) -> None:
    """Remove the temporary files :func:`download` made for ``path`` (``.<name>.XXXXXXXX.part``,
    8 random characters), not those of another file whose name starts alike."""
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_partial_prefix(path)) + r"[a-z0-9_]{8}\.part")
    for n in os.listdir(folder):
        if pattern.fullmatch(n):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, n))
                logger.info(f"Removed {n}, the partial download of a process that was killed.")


def sha256_of(path: str) -> str:
    """Hex sha256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _record_path(path: str) -> str:
    return path + ".sha256"


def _write_record(path: str, digest: str) -> None:
    """``<path>.sha256`` in ``sha256sum`` format: the digest the file had when it was verified.

    The record only saves hashing the file again, so a cache that refuses it (a read-only shared
    folder) is logged, not an error."""
    try:
        with open(_record_path(path), "w") as f:
            f.write(f"{digest}  {os.path.basename(path)}\n")
    except OSError as e:
        logger.warning(
            f"{path} has the expected sha256, but its record {_record_path(path)} cannot be "
            f"written ({e}): the file will be hashed again on each use."
        )


def _recorded(path: str) -> Optional[str]:
    """The digest recorded for ``path``, if the record is not older than the file.

    The file's age is its last change of content (mtime) or of inode (ctime): a file moved or
    copied into the cache by a tool that keeps an old mtime (``wget``, ``cp -p``, ``rsync -t``)
    still gets a new ctime, which no tool can set back."""
    record = _record_path(path)
    try:
        st = os.stat(path)
        if os.stat(record).st_mtime_ns < max(st.st_mtime_ns, st.st_ctime_ns):
            return None  # the file changed (or was replaced) after it was verified
        with open(record) as f:
            digest = f.read().split(maxsplit=1)[0].lower()
    except (OSError, IndexError):
        return None
    return digest if _SHA256.fullmatch(digest) else None


def verify_cached(path: str, sha256: str) -> str:
    """Check a cached file against a pinned digest, hashing it only once.

    The first check hashes the file and writes ``<path>.sha256`` (``sha256sum -c`` reads it);
    later checks trust that record while the file is not newer than it (where the record cannot
    be written, e.g. a read-only cache, each check hashes the file; logged).

    Raises:
        ValueError: if the file's sha256 is not ``sha256`` (the file is kept: it may be the user's).
    """
    expected = sha256.lower()
    if _recorded(path) == expected:
        return path
    digest = sha256_of(path)
    if digest != expected:
        raise ValueError(
            f"The cached checkpoint {path} has sha256 {digest}, but {expected} is expected: it is "
            "corrupt or another file. Delete it to download it again, or put the right file there."
        )
    _write_record(path, digest)
    return path


class NotACheckpointError(RuntimeError):
    """The server answered with a text page (a proxy's or a login page, an error page) instead
    of the file."""


def _refuse_text(response, url: str, path: str) -> None:
    # a checkpoint is never text; without a known digest such a page would be cached as the
    # checkpoint and fail later, at load time, with a misleading unpickling error
    if response.headers.get("Content-Type") is None:  # get_content_type() would say text/plain
        return
    if urllib.parse.urlsplit(url).scheme == "file":  # urllib guesses the type from the file
        return  # name (text/plain for ".pth"): no server answered with a page
    kind = response.headers.get_content_type()
    if kind.startswith("text/"):
        raise NotACheckpointError(
            f"{url} answered with a {kind} page, not a checkpoint (a proxy, login or error page?). "
            f"Nothing was saved; download the file by hand and put it at {path}."
        )


class DeclaredDigestError(ValueError):
    """The server declares a sha256 for the file that is not the pinned one."""


def _declared_sha256(headers) -> Optional[str]:
    """The sha256 the server declares for the file (the hub's ``X-Linked-Etag``), if it is one."""
    declared = _declared(headers, "X-Linked-Etag")
    return declared if declared and _SHA256.fullmatch(declared) else None


def _refuse_declared_mismatch(headers, sha256: Optional[str], url: str, path: str) -> None:
    # before the body is read: a pinned checkpoint is gigabytes that would be refused anyway
    declared = _declared_sha256(headers)
    if sha256 is not None and declared is not None and declared != sha256.lower():
        raise DeclaredDigestError(
            f"{url} is declared by the server to have sha256 {declared}, but {sha256.lower()} is "
            "pinned for it: the file on the server is not the one this table was made for. "
            "Nothing was downloaded. To use the server's file anyway, download it yourself and "
            f"pass its path as the weights (MODEL.WEIGHTS) instead of the zoo name; {path} must "
            "hold the pinned file."
        )


def download(url: str, path: str, sha256: Optional[str] = None, *, timeout: float = 30.0,
             progress: bool = True) -> str:
    """Download ``url`` to ``path`` atomically, checking its sha256.

    The bytes go to a temporary file beside ``path`` that is renamed only when complete and
    equal to the expected digest; on any failure it is removed, so a partial or corrupt
    download never sits at ``path``. The digest is recorded in ``<path>.sha256``. The expected
    digest is ``sha256`` and also, when the server declares one, the sha256 it names for the
    file: the Hugging Face hub sends an LFS file's sha256 as ``X-Linked-Etag``
    (huggingface_hub checks its cache against the same header), so a hub download is verified
    even where no digest is pinned.

    Args:
        url: http(s) or file URL.
        path: destination file; its folder is created.
        sha256: expected hex digest; None = checked only against the server's declared digest
            (and logged when the server declares none).
        timeout: seconds to wait for the server.
        progress: show a tqdm progress bar.

    Returns:
        ``path``.

    Raises:
        RuntimeError: if the download fails (naming the URL and where to put the file by hand),
            ends short of the size the server declared, or is a text page
            (:class:`NotACheckpointError`).
        ValueError: if the file's sha256 differs from ``sha256`` or from the digest the server
            declared, or (before anything is downloaded) if the server declares a digest that
            is not ``sha256``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = new_file(folder, _partial_prefix(path), ".part")
    try:
        h = hashlib.sha256()
        redirects = _KeepRedirectHeaders()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.build_opener(redirects).open(url, timeout=timeout) as response:
                    chain = [*redirects.headers, response.headers]
                    _refuse_text(response, url, path)
                    _refuse_declared_mismatch(chain, sha256, url, path)
                    total = int(_declared(chain, "X-Linked-Size") or
                                response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=os.path.basename(path), disable=not progress) as bar:
                        for block in iter(lambda: response.read(_CHUNK), b""):
                            out.write(block)
                            h.update(block)
                            size += len(block)
                            bar.update(len(block))
            except DeclaredDigestError:
                raise
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                raise RuntimeError(
                    f"Could not download {url} ({type(e).__name__}: {e}). Download it by hand "
                    f"and put it at {path}."
                ) from e
        if total is not None and size != total:
            raise RuntimeError(f"The download of {url} ended after {size} of {total} bytes. "
                               "Nothing was saved; try again.")
        digest = h.hexdigest()
        declared = _declared_sha256(chain)
        for expected, source in ((sha256, "expected"), (declared, "the server declared")):
            if expected is not None and digest != expected.lower():
                raise ValueError(
                    f"The download of {url} has sha256 {digest}, {source} {expected.lower()}: "
                    "the file is corrupt or not the expected one. Nothing was saved; try again."
                )
        commit = _declared(chain, "X-Repo-Commit")
        origin = f" (hub commit {commit})" if commit else ""
        if sha256 is None and declared is None:
            logger.warning(f"Downloaded {url}{origin} without a known checksum; its sha256 is "
                           f"{digest}.")
        elif sha256 is None:
            logger.info(f"Downloaded {url}{origin}: sha256 {digest}, as the server declared.")
        os.replace(tmp, path)
        _write_record(path, digest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info(f"Saved {url} to {path}.")
    return path
