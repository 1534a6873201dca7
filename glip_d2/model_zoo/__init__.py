"""glip_d2's model zoo: name -> config -> weights, like ``detectron2.model_zoo``.

::

    from glip_d2 import model_zoo
    cfg = model_zoo.get_config("glip_swin_t")                 # a shipped config, by name
    model = model_zoo.get("glip_tiny", trained=True)          # config + official weights
    path = model_zoo.get_checkpoint("glip_tiny")              # cached or downloaded checkpoint

Config names are the yaml files of ``configs/`` without ".yaml" ("glip_swin_t",
"two_stage/faster_rcnn_R_50_FPN_glip", "protocols/lvis_minival"); they ship inside the package,
so an installed wheel needs no checkout. Model names (:data:`MODELS`) pair a config with a
checkpoint, found in the cache directory (``$GLIP_D2_CACHE``, default ``~/.cache/glip_d2``) or
downloaded there once, with a progress bar and a sha256 check (the table's digest, the server's
declared one, or both).
"""
import logging
import os
from typing import List

from .catalog import MODELS, OFFICIAL_URL_ROOT, ModelZooEntry
from .download import cache_dir, download, download_lock, sha256_of, verify_cached
from .protocols import apply_protocol, get_protocol_file, list_protocols

__all__ = [
    "MODELS",
    "OFFICIAL_URL_ROOT",
    "ModelZooEntry",
    "apply_protocol",
    "cache_dir",
    "configs_root",
    "download",
    "get",
    "get_checkpoint",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "get_protocol_file",
    "list_configs",
    "list_protocols",
    "resolve_config_file",
    "sha256_of",
    "verify_cached",
]

logger = logging.getLogger(__name__)

_PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def configs_root() -> str:
    """The folder of the shipped configs: inside the installed package, else the checkout's
    ``configs/`` (editable installs and source trees)."""
    for root in (_PACKAGED, _CHECKOUT):
        if os.path.isfile(os.path.join(root, "Base-GLIP.yaml")):
            return root
    raise FileNotFoundError(
        f"glip_d2's configs are neither in the package ({_PACKAGED}) nor in a checkout "
        f"({_CHECKOUT}); reinstall glip_d2 (pip install .) so that they are packaged."
    )


def list_configs() -> List[str]:
    """Names of every shipped config (relative yaml paths without ".yaml"), sorted."""
    root = configs_root()
    names = []
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".yaml"):
                names.append(_config_name(os.path.join(folder, f)))
    return sorted(names)


def _check_name(name) -> None:
    # a list or None would fail deep inside with an AttributeError / "unhashable type"
    if not isinstance(name, str):
        raise TypeError(
            f"A model zoo name must be a string, a model ({sorted(MODELS)}) or a config name "
            f"(model_zoo.list_configs()), got {type(name).__name__} {name!r}."
        )


def _entry(name: str) -> ModelZooEntry:
    _check_name(name)
    if name in MODELS:
        return MODELS[name]
    try:
        config = _config_name(get_config_file(name))
    except ValueError:  # neither a model nor a config: a typo
        raise ValueError(
            f"{name!r} is not a model of the zoo; known models: {sorted(MODELS)}."
        ) from None
    models = [m for m, e in MODELS.items() if e.config == config]
    which = (f"the zoo's models with this config are {models}: pass one of them"
             if models else "no model of the zoo has this config: set MODEL.WEIGHTS yourself")
    raise ValueError(
        f"{name!r} is a config, which has no checkpoint of its own; {which}, or trained=False "
        "for random weights."
    )


def _config_name(path: str) -> str:
    """The config name of a shipped yaml path ("two_stage/faster_rcnn_R_50_FPN_glip")."""
    rel = os.path.relpath(path, configs_root())
    return rel[: -len(".yaml")].replace(os.sep, "/")


def get_config_file(name: str) -> str:
    """Absolute path of a shipped config.

    Args:
        name: a config name ("glip_swin_t", "two_stage/mask_rcnn_R_50_FPN_glip"; ".yaml" and a
            leading "configs/" are optional) or a model name of :data:`MODELS` (its config).

    Raises:
        ValueError: for an unknown name, listing the known ones.
        TypeError: if ``name`` is not a string.
    """
    _check_name(name)
    rel = MODELS[name].config if name in MODELS else name
    rel = rel[len("configs/"):] if rel.startswith("configs/") else rel
    rel = rel if rel.endswith(".yaml") else rel + ".yaml"
    path = os.path.join(configs_root(), *rel.split("/"))
    if not os.path.isfile(path):
        raise ValueError(
            f"{name!r} is neither a shipped config nor a model of the zoo. Configs: "
            f"{list_configs()}; models: {sorted(MODELS)}."
        )
    return path


def resolve_config_file(name: str) -> str:
    """What a command line's ``--config-file`` names: the yaml file when there is one, else the
    config glip_d2 ships under that name (logged). So from an installed wheel, with no checkout,
    "configs/demo_glip_tiny_shapes.yaml" (as the README writes it) and "demo_glip_tiny_shapes"
    name the packaged file.

    Raises:
        FileNotFoundError: when neither exists; for a zoo model's name, naming its config and
            checkpoint; for a protocol, saying it goes on top of a model config.
    """
    if os.path.isfile(name):
        return name
    if name in MODELS:  # a model name: its config, without the weights it pairs with
        entry = MODELS[name]
        raise FileNotFoundError(
            f"Config file {name!r} does not exist; {name!r} is a model of the zoo: give its "
            f"config, --config-file {entry.config}, and its checkpoint, MODEL.WEIGHTS "
            f"<path of {entry.file_name}>."
        )
    shipped = None
    if ".." not in name.replace(os.sep, "/").split("/"):  # nothing outside the configs' folder
        try:
            shipped = get_config_file(name)
        except ValueError:
            pass
    if shipped is None:
        raise FileNotFoundError(
            f"Config file {name!r} does not exist; the configs glip_d2 ships are named by "
            "glip_d2.model_zoo.list_configs(), e.g. 'demo_glip_tiny_shapes'."
        )
    if _config_name(shipped).startswith("protocols/"):
        raise FileNotFoundError(
            f"Config file {name!r} does not exist, and the shipped config of that name is an "
            "evaluation protocol, a fragment: give a model config as --config-file and the "
            f"protocol as train_net.py --protocol {_config_name(shipped)[len('protocols/'):]}."
        )
    logger.warning(f"Config file {name!r} is not a file here; using the config glip_d2 ships "
                   f"under that name, {shipped}.")
    return shipped


def get_checkpoint_url(name: str) -> str:
    """Download URL of a zoo model's checkpoint ("" when it is not downloadable)."""
    return _entry(name).url


def get_checkpoint(name: str, download_if_missing: bool = True) -> str:
    """Local path of a zoo model's checkpoint: from the cache, or downloaded into it.

    A cached file is checked against the table's digest, when one is pinned, the first time
    it is used (:func:`verify_cached`). Processes that ask for one missing checkpoint at once
    download it once: the others wait for that download (:func:`download_lock`).

    Raises:
        FileNotFoundError: if the file is not cached and cannot be downloaded (no URL, or
            ``download_if_missing=False``), saying where to put it.
        ValueError: if ``name`` is not a model of the zoo (for a config name: naming the zoo's
            models with that config), or a cached file's sha256 is not the pinned one.
        OSError: if the cache (``GLIP_D2_CACHE``) cannot be created; NotADirectoryError if it
            is a file.
        RuntimeError / ValueError: from :func:`download` (unreachable URL, wrong checksum).
        TypeError: if ``name`` is not a string.
    """
    entry = _entry(name)
    path = os.path.join(cache_dir(), entry.file_name)
    if os.path.isfile(path):
        return verify_cached(path, entry.sha256) if entry.sha256 else path
    if not entry.url or not download_if_missing:
        how = f"download {entry.url} and put it" if entry.url else "put it"
        raise FileNotFoundError(
            f"The checkpoint of {name!r} ({entry.file_name}) is not in the cache: {how} at "
            f"{path} (or set GLIP_D2_CACHE to the folder that holds it). {entry.description}."
        )
    _check_cache_folder()
    with download_lock(path):
        if os.path.isfile(path):  # another process downloaded it while this one waited
            return verify_cached(path, entry.sha256) if entry.sha256 else path
        return download(entry.url, path, entry.sha256)


def _check_cache_folder() -> None:
    """Create the cache folder, or say why it cannot be one, before anything is downloaded into
    it: a raw "[Errno 17] File exists" would not name GLIP_D2_CACHE."""
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        is_file = os.path.isfile(folder)
        what = "is a file, not a folder" if is_file else f"cannot be created ({e})"
        raise (NotADirectoryError if is_file else OSError)(
            f"The checkpoint cache {folder} (GLIP_D2_CACHE, default ~/.cache/glip_d2) {what}: "
            "set GLIP_D2_CACHE to a folder you can write to."
        ) from None


def get_config(name: str, trained: bool = False):
    """A glip_d2 config (``add_glip_config`` + the shipped yaml), ready for ``build_model``.

    ``MODEL.DEVICE`` falls back to "cpu" (logged) when it asks for CUDA and CUDA is absent.

    Args:
        name: a config name or a model name (see :func:`get_config_file`); not a protocol
            (``protocols/...``: apply those with :func:`apply_protocol`).
        trained: set ``MODEL.WEIGHTS`` to the model's checkpoint (downloaded if needed); needs a
            model name. The checkpoint holds the text encoder too, so its pretrained weights
            are not loaded first (``LANGUAGE_BACKBONE.LOAD_PRETRAINED False``): a GLIP-T
            checkpoint loads without bert-base-uncased in the local Hugging Face cache.

    Raises:
        ValueError: for an unknown name, a protocol, or ``trained`` with a config name (naming
            the zoo's models that have that config).
    """
    from detectron2.config import get_cfg

    from ..config import add_glip_config
    from ..device import resolve_device

    path = get_config_file(name)
    if _config_name(path).startswith("protocols/"):
        # merged onto the bare defaults, a fragment gives Detectron2's stock R-CNN, no GLIP model
        raise ValueError(
            f"{name!r} is an evaluation protocol, a fragment applied on top of a model config, "
            "not a model config: take a model config and apply it, e.g. "
            f"model_zoo.apply_protocol(model_zoo.get_config('glip_swin_t'), "
            f"{_config_name(path)[len('protocols/'):]!r})."
        )
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint(name)
        cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
    return cfg


def get(name: str, trained: bool = False, device=None):
    """Build a zoo model in eval mode, with its weights when ``trained``.

    Args:
        name: a config name or a model name.
        trained: load the model's checkpoint (cache or download); False = random weights
            (nothing is loaded, not even the pretrained text encoder the config names). The
            model gets what ``train_net.py --eval-only`` evaluates: the checkpoint's EMA of the
            weights (its "ema" entry) when the config sets ``TEST.USE_EMA`` and it has one, else
            its raw weights.
        device: e.g. "cpu" or "cuda"; None = the config's. Either falls back to "cpu" (logged)
            when it asks for CUDA and CUDA is absent.
    """
    from detectron2.modeling import build_model

    from ..checkpoint import GLIPCheckpointer
    from ..device import resolve_device
    from ..engine import load_eval_weights

    cfg = get_config(name, trained=trained)
    if not trained:
        cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
    if device is not None:
        cfg.MODEL.DEVICE = resolve_device(str(device))
    model = build_model(cfg)
    if trained:
        checkpoint = GLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        used = load_eval_weights(model, checkpoint, cfg.TEST.USE_EMA)
        logger.info(
            f"model_zoo.get({name!r}): the {'EMA' if used == 'ema' else 'raw'} weights of "
            f"{cfg.MODEL.WEIGHTS} (TEST.USE_EMA {cfg.TEST.USE_EMA})."
        )
    return model.eval()
