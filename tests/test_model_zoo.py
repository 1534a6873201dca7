"""glip_d2.model_zoo: shipped configs by name, the checkpoint cache, downloads with a checksum,
the official checkpoints' pinned digests, and configs packaged by the build (an installed package
needs no checkout)."""

import dataclasses
import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile

import pytest
import torch

from glip_d2 import model_zoo
from glip_d2.model_zoo import MODELS, OFFICIAL_URL_ROOT, ModelZooEntry
from glip_d2.model_zoo.download import DeclaredDigestError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = b"glip_d2 model zoo test payload\n" * 1000


class _HubLikeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; answers ``/hub/<sha256>/<commit>/<file>`` as the Hugging Face hub's resolve
    endpoint answers for an LFS file: a 302 to the file (the "CDN") whose headers declare the
    sha256, size and commit. ``/short/<file>`` promises more bytes than it sends."""

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "hub":
            self.send_response(302)
            self.send_header("Location", "/" + parts[3])
            self.send_header("X-Linked-Etag", f'"{parts[1]}"')
            self.send_header("X-Linked-Size", str(len(PAYLOAD)))
            self.send_header("X-Repo-Commit", parts[2])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts[0] == "portal":  # a proxy's or login page, answered with 200
            page = b"<html><body>Access denied by proxy</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif parts[0] == "short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 100))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        else:
            super().do_GET()

    def log_message(self, *args, **kwargs):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "weights.pth").write_bytes(PAYLOAD)
    handler = functools.partial(_HubLikeHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GLIP_D2_CACHE", str(folder))
    return folder


def _add_model(monkeypatch, url, sha256, name="test_model", config="demo_glip_tiny_shapes"):
    entry = ModelZooEntry(name, config, f"{name}.pth", url, sha256, "test", "a test entry")
    monkeypatch.setitem(MODELS, name, entry)
    return entry


def test_config_names_resolve_to_the_shipped_yaml():
    assert model_zoo.configs_root() == os.path.join(ROOT, "configs")
    assert model_zoo.get_config_file("glip_swin_t") == os.path.join(ROOT, "configs", "glip_swin_t.yaml")
    assert model_zoo.get_config_file("configs/two_stage/mask_rcnn_R_50_FPN_glip.yaml") == os.path.join(
        ROOT, "configs", "two_stage", "mask_rcnn_R_50_FPN_glip.yaml"
    )
    assert model_zoo.get_config_file("glip_large").endswith("glip_swin_l.yaml")  # a model name
    names = model_zoo.list_configs()
    assert {"glip_swin_t", "demo_glip_tiny_shapes", "two_stage/faster_rcnn_R_50_FPN_glip"} <= set(names)
    with pytest.raises(ValueError, match="neither a shipped config nor a model.*glip_swin_t"):
        model_zoo.get_config_file("glip_swin_xl")


def test_model_table_points_at_configs_and_official_files():
    for entry in MODELS.values():
        assert os.path.isfile(model_zoo.get_config_file(entry.config)), entry.name
    assert MODELS["glip_tiny_o365_goldg"].file_name == "glip_tiny_model_o365_goldg.pth"
    assert MODELS["glip_tiny_o365_goldg"].variant == "GLIP-T (C)"
    assert model_zoo.get_checkpoint_url("glip_large") == model_zoo.OFFICIAL_URL_ROOT + "glip_large_model.pth"
    assert model_zoo.get_checkpoint_url("glip_demo_shapes") == ""


def test_get_config_falls_back_to_cpu_and_keeps_the_solver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = model_zoo.get_config("glip_swin_t")
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.MODEL.META_ARCHITECTURE == "GLIP"
    assert cfg.MODEL.WEIGHTS == ""


def test_missing_checkpoint_says_where_to_put_it(cache):
    with pytest.raises(FileNotFoundError, match="glip_tiny_model_o365_goldg.pth.*huggingface") as e:
        model_zoo.get_checkpoint("glip_tiny_o365_goldg", download_if_missing=False)
    assert str(cache) in str(e.value)
    with pytest.raises(FileNotFoundError, match="scripts/demo.sh"):
        model_zoo.get_checkpoint("glip_demo_shapes")
    with pytest.raises(ValueError, match="not a model of the zoo"):
        model_zoo.get_checkpoint("glip_tinyy")


def test_download_with_good_checksum_then_cached(server, cache, monkeypatch):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _add_model(monkeypatch, server + "weights.pth", sha)
    path = model_zoo.get_checkpoint("test_model")
    assert path == str(cache / "test_model.pth")
    with open(path, "rb") as f:
        assert f.read() == PAYLOAD
    assert model_zoo.sha256_of(path) == sha
    # no temporary file left; the digest is recorded beside the file, as sha256sum writes it
    assert sorted(os.listdir(cache)) == ["test_model.pth", "test_model.pth.sha256"]
    assert (cache / "test_model.pth.sha256").read_text() == f"{sha}  test_model.pth\n"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    _add_model(monkeypatch, server + "gone.pth", sha)  # a second call reads the cache only
    monkeypatch.setattr(sys.modules["glip_d2.model_zoo.download"], "sha256_of", None)  # and does not hash again
    assert model_zoo.get_checkpoint("test_model") == path


def test_cached_file_is_checked_against_the_pinned_digest_once(cache, monkeypatch):
    """A file put in the cache by hand (or damaged there) is hashed on first use: a wrong one is
    an error that keeps the file; a right one is recorded and not hashed again."""
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _add_model(monkeypatch, "", sha)
    cache.mkdir()
    (cache / "test_model.pth").write_bytes(PAYLOAD[:-1] + b"?")
    with pytest.raises(ValueError, match="test_model.pth has sha256 .* but " + sha + ".*Delete it"):
        model_zoo.get_checkpoint("test_model")
    assert sorted(os.listdir(cache)) == ["test_model.pth"]
    (cache / "test_model.pth").write_bytes(PAYLOAD)
    assert model_zoo.get_checkpoint("test_model") == str(cache / "test_model.pth")
    calls = []
    monkeypatch.setattr(sys.modules["glip_d2.model_zoo.download"], "sha256_of",
                        lambda p: calls.append(p) or sha)
    model_zoo.get_checkpoint("test_model")
    assert calls == []  # the record stands for the hash
    record = cache / "test_model.pth.sha256"
    os.utime(record, ns=(1, 1))  # the file is now newer than its record: hashed again
    model_zoo.get_checkpoint("test_model")
    assert calls == [str(cache / "test_model.pth")]


def test_download_with_bad_checksum_leaves_nothing(server, cache, monkeypatch):
    _add_model(monkeypatch, server + "weights.pth", "0" * 64)
    with pytest.raises(ValueError, match="sha256 .* expected 0000"):
        model_zoo.get_checkpoint("test_model")
    assert not cache.exists() or os.listdir(cache) == []


def test_download_is_checked_against_the_digest_the_hub_declares(server, cache, monkeypatch, caplog):
    """No pinned digest: the sha256 that the hub-like redirect declares is checked."""
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _add_model(monkeypatch, server + f"hub/{sha}/abc123/weights.pth", None)
    with caplog.at_level("INFO", logger="glip_d2.model_zoo"):
        path = model_zoo.get_checkpoint("test_model")
    assert model_zoo.sha256_of(path) == sha
    assert sorted(os.listdir(cache)) == ["test_model.pth", "test_model.pth.sha256"]
    assert f"(hub commit abc123): sha256 {sha}, as the server declared" in caplog.text
    assert "without a known checksum" not in caplog.text

    os.remove(path)
    os.remove(path + ".sha256")
    wrong = hashlib.sha256(b"another file").hexdigest()
    _add_model(monkeypatch, server + f"hub/{wrong}/abc123/weights.pth", None)
    with pytest.raises(ValueError, match=f"has sha256 {sha}, the server declared {wrong}"):
        model_zoo.get_checkpoint("test_model")
    assert os.listdir(cache) == []
    # a pinned digest is checked as well as the declared one (a declared digest that is not
    # the pinned one is refused before the download: tests/test_model_zoo_pinned.py)
    _add_model(monkeypatch, server + f"hub/{sha}/abc123/weights.pth", "1" * 64)
    with pytest.raises(ValueError, match="but 1111.* is pinned"):
        model_zoo.get_checkpoint("test_model")
    assert os.listdir(cache) == []


def test_download_without_any_digest_warns_with_the_digest(server, cache, monkeypatch, caplog):
    _add_model(monkeypatch, server + "weights.pth", None)
    with caplog.at_level("INFO", logger="glip_d2.model_zoo"):
        model_zoo.get_checkpoint("test_model")
    assert f"without a known checksum; its sha256 is {hashlib.sha256(PAYLOAD).hexdigest()}" in caplog.text


def test_download_errors_are_clear_and_leave_nothing(server, cache, monkeypatch):
    _add_model(monkeypatch, server + "missing.pth", None)  # HTTP 404
    with pytest.raises(RuntimeError, match="Could not download .*missing.pth.*put it at"):
        model_zoo.get_checkpoint("test_model")
    assert os.listdir(cache) == []
    _add_model(monkeypatch, server + "short/weights.pth", None)  # the connection ends early
    with pytest.raises(RuntimeError, match=f"short/weights.pth ended after {len(PAYLOAD)} of "
                                           f"{len(PAYLOAD) + 100} bytes"):
        model_zoo.get_checkpoint("test_model")
    assert os.listdir(cache) == []


def test_a_text_page_instead_of_the_file_is_refused_and_not_cached(server, cache, monkeypatch):
    _add_model(monkeypatch, server + "portal/weights.pth", None)  # no digest to catch it
    with pytest.raises(RuntimeError, match="answered with a text/html page, not a checkpoint"):
        model_zoo.get_checkpoint("test_model")
    assert os.listdir(cache) == []


def test_trained_config_takes_the_text_encoder_from_the_checkpoint(cache, monkeypatch):
    cache.mkdir()
    (cache / "glip_tiny_model_o365_goldg_cc_sbu.pth").write_bytes(b"")
    # a placeholder for the official file: pin its digest, as the table pins the real file's
    monkeypatch.setitem(MODELS, "glip_tiny", dataclasses.replace(
        MODELS["glip_tiny"], sha256=hashlib.sha256(b"").hexdigest()))
    cfg = model_zoo.get_config("glip_tiny", trained=True)  # no bert-base-uncased needed
    assert cfg.MODEL.WEIGHTS == str(cache / "glip_tiny_model_o365_goldg_cc_sbu.pth")
    assert not cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED
    assert model_zoo.get_config("glip_tiny").MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED


def test_get_loads_the_cached_checkpoint(cache, monkeypatch, one_thread):
    random_model = model_zoo.get("demo_glip_tiny_shapes", device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in random_model.parameters():
            p.normal_()
    cache.mkdir()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in random_model.state_dict().items()}
    torch.save({"model": random_model.state_dict(), "ema": ema}, cache / "glip_demo_shapes.pth")
    loaded = model_zoo.get("glip_demo_shapes", trained=True, device="cpu")
    assert not loaded.training
    assert not model_zoo.get_config("glip_demo_shapes").TEST.USE_EMA
    # TEST.USE_EMA False (the demo config's): the raw weights, though the checkpoint has an EMA
    for (name, a), b in zip(random_model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_get_loads_the_ema_weights_when_the_config_says_so(cache, monkeypatch, tmp_path, one_thread, caplog):
    """TEST.USE_EMA True and a checkpoint with an "ema" entry: ``get`` gives the EMA weights,
    as ``train_net.py --eval-only`` evaluates them."""
    model = model_zoo.get("demo_glip_tiny_shapes", device="cpu")
    raw = model.state_dict()
    torch.manual_seed(2)
    ema = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    configs = tmp_path / "configs"
    configs.mkdir()
    base = model_zoo.get_config_file("demo_glip_tiny_shapes")
    (configs / "ema_shapes.yaml").write_text(f"_BASE_: {base}\nTEST:\n  USE_EMA: True\n")
    monkeypatch.setattr(model_zoo, "configs_root", lambda: str(configs))
    _add_model(monkeypatch, "", None, name="ema_model", config="ema_shapes")
    cache.mkdir()
    torch.save({"model": raw, "ema": ema, "iteration": 7}, cache / "ema_model.pth")
    with caplog.at_level("INFO", logger="glip_d2.model_zoo"):
        loaded = model_zoo.get("ema_model", trained=True, device="cpu")
    assert model_zoo.get_config("ema_model").TEST.USE_EMA
    assert not loaded.training
    state = loaded.state_dict()
    assert state.keys() == ema.keys()
    for name, v in ema.items():
        assert torch.equal(state[name], v), name
    assert "the EMA weights of" in caplog.text


def test_get_falls_back_to_cpu_when_cuda_is_asked_for_but_absent(monkeypatch, one_thread, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="glip_d2.device"):
        model = model_zoo.get("demo_glip_tiny_shapes", device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert "'cuda' but CUDA is not available; using CPU" in caplog.text
    # "cuda:N" too; the device the model is built on is the one the config then names
    import detectron2.modeling

    seen = []
    monkeypatch.setattr(detectron2.modeling, "build_model",
                        lambda cfg: seen.append(cfg.MODEL.DEVICE) or torch.nn.Linear(1, 1))
    model_zoo.get("demo_glip_tiny_shapes", device=torch.device("cuda", 1))
    assert seen == ["cpu"]
    assert "'cuda:1' but CUDA is not available" in caplog.text


_BUILD_EVERY_CONFIG = """
import glip_d2, os, sys
from glip_d2 import model_zoo
from detectron2.modeling import build_model
assert glip_d2.__file__.startswith(os.environ["LIB"]), glip_d2.__file__
print(model_zoo.configs_root())
names = model_zoo.list_configs()
protocols = [n for n in names if n.startswith("protocols/")]
for name in names:
    if name in protocols:  # a fragment: applied on top of a model config
        cfg = model_zoo.get_config("glip_swin_t")
        model_zoo.apply_protocol(cfg, name[len("protocols/"):])
        print(name, "protocol", len(cfg.DATASETS.TEST))
    elif name == "two_stage/regionclip_pretrain_R_50_FPN":  # a training job: needs its CLIP teacher
        cfg = model_zoo.get_config(name)
        cfg.MODEL.REGIONCLIP.TEACHER_PATH = os.environ["CLIP"]
        cfg.MODEL.REGIONCLIP.CONCEPT_FILE = os.environ["CONCEPTS"]
        cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
        print(name, type(build_model(cfg)).__name__)
    else:  # random weights, as Detectron2's model_zoo.get(trained=False)
        print(name, type(model_zoo.get(name)).__name__)
    sys.stdout.flush()
"""


@pytest.mark.heavy(75)
def test_every_shipped_config_builds_from_an_installed_wheel(tmp_path):
    """A wheel built with pip (`pip wheel`) holds every config, and from that wheel installed
    (`pip install --target`, no checkout left) every shipped model config builds its model and
    every protocol applies on top of one."""
    from tests.helpers import save_tiny_clip

    src = tmp_path / "src"
    src.mkdir()
    for item in ("setup.py", "MANIFEST.in", "glip_d2", "configs"):
        copy = shutil.copytree if os.path.isdir(os.path.join(ROOT, item)) else shutil.copy
        copy(os.path.join(ROOT, item), src / item)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                          str(src)], cwd=tmp_path, check=True, capture_output=True)
    shutil.rmtree(src)  # no checkout left to fall back on
    (wheel,) = (tmp_path / "dist").glob("glip_d2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n.split("/configs/", 1)[1] for n in archive.namelist() if n.endswith(".yaml"))
    checkout = os.path.join(ROOT, "configs")
    assert shipped == sorted(os.path.relpath(os.path.join(d, f), checkout)
                             for d, _, files in os.walk(checkout) for f in files if f.endswith(".yaml"))
    lib = tmp_path / "lib"
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(lib), str(wheel)],
                   cwd=tmp_path, check=True, capture_output=True)
    clip = save_tiny_clip(str(tmp_path / "clip"), ["cat", "dog"])
    (tmp_path / "concepts.txt").write_text("cat\ndog\n")
    env = dict(os.environ, PYTHONPATH=str(lib), LIB=str(lib), CLIP=clip,
               CONCEPTS=str(tmp_path / "concepts.txt"), OMP_NUM_THREADS="1", GLIP_D2_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", _BUILD_EVERY_CONFIG], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == str(lib / "glip_d2" / "model_zoo" / "configs")
    built = dict(line.split(" ", 1) for line in lines[1:])
    names = model_zoo.list_configs()
    assert sorted(built) == names and len(names) >= 30
    expected = {"GLIP": 0, "LanguageAwareRCNN": 0, "RegionCLIPPretrainer": 0}
    for name, what in built.items():
        if name.startswith("protocols/"):
            assert what.startswith("protocol ") and int(what.split()[1]) >= 1, (name, what)
        else:
            assert what in expected, (name, what)
            expected[what] += 1
    assert expected["RegionCLIPPretrainer"] == 1
    assert expected["GLIP"] >= 10 and expected["LanguageAwareRCNN"] >= 6, expected


def test_a_file_replaced_with_an_old_modification_time_is_hashed_again(cache, monkeypatch):
    """``wget`` / ``cp -p`` / ``rsync -t`` keep the source's (old) modification time: a file put
    in the cache that way, after a record was written, is checked again, not trusted."""
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _add_model(monkeypatch, "", sha)
    cache.mkdir()
    path = cache / "test_model.pth"
    path.write_bytes(PAYLOAD)
    assert model_zoo.get_checkpoint("test_model") == str(path)  # verified and recorded
    other = cache / "download.tmp"
    other.write_bytes(PAYLOAD[:-1] + b"?")  # another file, e.g. a different release
    os.utime(other, ns=(10**9, 10**9))  # its server's Last-Modified, as wget sets it
    os.replace(other, path)
    with pytest.raises(ValueError, match="test_model.pth has sha256 .* but " + sha):
        model_zoo.get_checkpoint("test_model")


# The official checkpoints' digests are pinned; a server that declares another digest for a
# pinned file is refused before its body is downloaded.
_DOWNLOAD = sys.modules["glip_d2.model_zoo.download"]


def test_every_official_checkpoint_has_a_pinned_sha256():
    official = [e for e in MODELS.values() if e.url.startswith(OFFICIAL_URL_ROOT)]
    assert {e.name for e in official} == {
        "glip_a_tiny_o365", "glip_tiny_o365", "glip_tiny_o365_goldg", "glip_tiny", "glip_large"}
    for entry in official:
        assert entry.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
    assert len({e.sha256 for e in official}) == len(official)  # five files, five digests
    # the parity model's file, as its hub LFS pointer names it
    assert MODELS["glip_tiny_o365_goldg"].sha256.startswith("4274770c817b9666")


def test_a_cached_official_file_with_another_digest_is_refused(cache):
    cache.mkdir()
    (cache / "glip_large_model.pth").write_bytes(PAYLOAD)
    with pytest.raises(ValueError, match="glip_large_model.pth has sha256 .* but dcb01782.*Delete it"):
        model_zoo.get_checkpoint("glip_large", download_if_missing=False)
    assert (cache / "glip_large_model.pth").read_bytes() == PAYLOAD  # the user's file is kept


def _spy_progress_bars(monkeypatch):
    bars = []
    real = _DOWNLOAD.tqdm

    def spy(*args, **kwargs):
        bars.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_DOWNLOAD, "tqdm", spy)
    return bars


def test_a_declared_digest_that_is_not_the_pinned_one_is_refused_before_downloading(
        server, cache, monkeypatch):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    pinned = "1" * 64
    _add_model(monkeypatch, server + f"hub/{sha}/abc123/weights.pth", pinned)
    bars = _spy_progress_bars(monkeypatch)
    with pytest.raises(DeclaredDigestError,
                       match=f"declared by the server to have sha256 {sha}, but {pinned} is pinned"
                             ".*Nothing was downloaded.*MODEL.WEIGHTS"):
        model_zoo.get_checkpoint("test_model")
    assert bars == []  # refused on the headers: the body was never read
    assert os.listdir(cache) == []


def test_pinned_and_declared_digests_that_agree_download(server, cache, monkeypatch):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _add_model(monkeypatch, server + f"hub/{sha.upper()}/abc123/weights.pth", sha)
    bars = _spy_progress_bars(monkeypatch)
    path = model_zoo.get_checkpoint("test_model")
    assert bars == ["test_model.pth"]
    assert model_zoo.sha256_of(path) == sha
    assert sorted(os.listdir(cache)) == ["test_model.pth", "test_model.pth.sha256"]


def test_a_download_never_changes_the_process_umask(server, cache, monkeypatch):
    """The downloaded file's mode came from os.umask(0) + os.umask(old): for that moment every
    file another thread created was world-writable. The kernel now applies the umask."""
    def no_umask(*args):
        raise AssertionError("os.umask is process-wide: another thread may create files meanwhile")

    _add_model(monkeypatch, server + "weights.pth", hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setattr(os, "umask", no_umask)
    path = model_zoo.get_checkpoint("test_model")
    assert open(path, "rb").read() == PAYLOAD


def test_every_command_line_takes_a_shipped_config_by_name_where_no_file_is(tmp_path, monkeypatch):
    """From an installed wheel there is no configs/ folder: train_net.py, the data-efficiency
    runner, pseudo-labelling and convert take a shipped config by name or by its checkout path,
    as the demo CLI does; a file of that path, where there is one, is used as before."""
    import argparse

    from glip_d2 import data_efficiency
    from glip_d2.checkpoint import convert
    from glip_d2.pseudo_label import build_teacher, parse_args
    from tests.reliability.helpers import load_train_net

    monkeypatch.chdir(tmp_path)  # no configs/ here
    train_net = load_train_net()
    args = train_net.argument_parser().parse_args(["--config-file", "configs/glip_swin_t.yaml",
                                                   "--eval-only"])
    cfg = train_net.load_cfg(args)
    assert args.config_file == model_zoo.get_config_file("glip_swin_t")  # what default_setup prints
    assert cfg.MODEL.SWIN.EMBED_DIM == 96 and cfg.MODEL.DYHEAD.NUM_CONVS == 6
    base = data_efficiency._base_cfg(argparse.Namespace(
        config_file="demo_glip_tiny_shapes", opts=[], weights="", train_dataset="a",
        test_dataset="b", batch_size=1))
    assert base.MODEL.SWIN.EMBED_DIM == model_zoo.get_config("demo_glip_tiny_shapes").MODEL.SWIN.EMBED_DIM
    teacher_args = parse_args(["--input", "c.json", "--output", "out", "--config-file",
                               "two_stage/demo_faster_rcnn_shapes"])
    build_teacher(teacher_args)
    assert teacher_args.config_file == model_zoo.get_config_file("two_stage/demo_faster_rcnn_shapes")
    model = model_zoo.get("demo_glip_tiny_shapes")
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    assert convert.main([str(tmp_path / "m.pth"), str(tmp_path / "o.pth"),
                         "--config", "demo_glip_tiny_shapes"]) == 0
    (tmp_path / "configs").mkdir()  # a file of that path is the user's own config
    (tmp_path / "configs" / "glip_swin_t.yaml").write_text(
        f'_BASE_: "{model_zoo.get_config_file("glip_swin_t")}"\nMODEL:\n  DYHEAD:\n    NUM_CONVS: 2\n')
    args = train_net.argument_parser().parse_args(["--config-file", "configs/glip_swin_t.yaml"])
    assert train_net.load_cfg(args).MODEL.DYHEAD.NUM_CONVS == 2
    assert args.config_file == "configs/glip_swin_t.yaml"
    with pytest.raises(FileNotFoundError, match="'nope' does not exist; the configs glip_d2 ships"):
        train_net.load_cfg(train_net.argument_parser().parse_args(["--config-file", "nope"]))
