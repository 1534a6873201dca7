"""The restricted `.pkl` unpickler (glip_d2/safe_pickle.py) must not let a crafted file use the
allowed numpy globals to build memory-unsafe objects (a dtype whose state claims no objects
while a field holds PyObject pointers: the array's raw bytes become pointers), nor import
modules through `_codecs.encode` with another codec; model-zoo files still load.

Each crafted file is read in a child process: on a vulnerable unpickler it crashes the
interpreter (SIGSEGV), which must fail the test rather than the test run."""

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from glip_d2 import safe_pickle
from glip_d2.safe_pickle import UnsafePickleError, load_pickle_weights, restricted_load

_RECONSTRUCT = np.core.multiarray._reconstruct
_SCALAR = np.core.multiarray.scalar
# A structured dtype with an object field whose state says "holds no objects" (flags 0).
_EVIL_DTYPE_STATE = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)
_POINTER_BYTES = (0x4141414141414141).to_bytes(8, "little")


class _EvilDtype:
    def __reduce__(self):
        return (np.dtype, ("V8", False, True), _EVIL_DTYPE_STATE)


class _ArrayViaReconstruct:
    def __reduce__(self):
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), _EvilDtype(), False, _POINTER_BYTES))


class _ArrayViaConstructor:
    def __reduce__(self):
        return (np.ndarray, ((1,), _EvilDtype(), _POINTER_BYTES))


class _ScalarViaScalar:
    def __reduce__(self):
        return (_SCALAR, (_EvilDtype(), _POINTER_BYTES))


class _ObjectArray:
    def __reduce__(self):
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (2,), np.dtype("O"), False, [1, "x"]))


class _OtherCodec:
    def __reduce__(self):
        import _codecs

        return (_codecs.encode, ("abc", "mac_arabic"))


# The child loads glip_d2/safe_pickle.py by its path: the module imports nothing of glip_d2, and
# importing the package (torch, Detectron2) would cost each child seconds.
_IMPORT = textwrap.dedent(
    f"""
    import importlib.util
    _spec = importlib.util.spec_from_file_location("safe_pickle", {safe_pickle.__file__!r})
    safe_pickle = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(safe_pickle)
    load_pickle_weights = safe_pickle.load_pickle_weights
    """
)


def _read_in_child(path):
    """Exit status and output of a child that loads ``path`` and prints every value."""
    code = _IMPORT + textwrap.dedent(
        f"""
        import sys
        try:
            data = load_pickle_weights({str(path)!r})
        except RuntimeError as e:
            print("REFUSED", e)
            sys.exit(3)
        print("LOADED", repr(data))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "payload",
    [_ArrayViaReconstruct, _ArrayViaConstructor, _ScalarViaScalar],
    ids=["reconstruct_build", "ndarray_buffer", "scalar"],
)
def test_a_dtype_state_claiming_no_objects_is_refused_without_a_crash(tmp_path, payload):
    path = tmp_path / "evil_dtype.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": payload()}}, protocol=2))
    rc, out = _read_in_child(path)
    assert rc == 3, f"exit status {rc} (-11: the child crashed reading pointers): {out}"
    assert "REFUSED" in out and "refused to unpickle" in out, out


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _ObjectArray()}}, protocol=2))
    with pytest.raises(RuntimeError, match="refused to unpickle"):
        load_pickle_weights(str(path))


def test_a_codec_other_than_latin1_is_refused_and_imports_nothing(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "x": _OtherCodec()}, protocol=2))
    code = _IMPORT + textwrap.dedent(
        f"""
        import sys
        assert "encodings.mac_arabic" not in sys.modules
        try:
            load_pickle_weights({str(path)!r})
        except RuntimeError as e:
            print("REFUSED", e)
        print("IMPORTED" if "encodings.mac_arabic" in sys.modules else "NOT_IMPORTED")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED" in proc.stdout and "NOT_IMPORTED" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numeric_arrays_scalars_and_python2_bytes_still_load(tmp_path, protocol):
    data = {
        "model": {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
            "c": np.zeros((0, 4), dtype=np.float16),
            "d": np.array([True, False]),
        },
        "iteration": np.int64(7),
        "lr": np.float32(0.5),
        "names": ["x", ("y", 1)],
        "raw": b"\x00\xffbytes",
        "__author__": "Detectron2 Model Zoo",
    }
    path = tmp_path / "zoo.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    out = load_pickle_weights(str(path))
    for k, v in data["model"].items():
        assert type(out["model"][k]) is np.ndarray, k
        assert out["model"][k].dtype == v.dtype and np.array_equal(out["model"][k], v), k
    assert out["iteration"] == 7 and isinstance(out["iteration"], np.int64)
    assert out["lr"] == np.float32(0.5)
    assert out["names"] == ["x", ("y", 1)] and out["raw"] == b"\x00\xffbytes"
    with open(path, "rb") as f:
        assert restricted_load(f)["__author__"] == "Detectron2 Model Zoo"


def test_a_global_outside_the_allowed_ones_is_still_refused(tmp_path):
    path = tmp_path / "os.pkl"
    path.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with open(path, "rb") as f, pytest.raises(UnsafePickleError):
        restricted_load(f)


def test_containers_shared_in_the_pickle_stay_shared(tmp_path):
    """As with plain pickle: a tuple holding an array, referenced twice, is one object after
    loading (the checked arrays inside are unwrapped once)."""
    shared = (np.ones(2, np.float32), "x")
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": shared, "b": shared}}, protocol=4))
    with open(path, "rb") as f:
        out = restricted_load(f)["model"]
    assert out["a"] is out["b"] and type(out["a"][0]) is np.ndarray
