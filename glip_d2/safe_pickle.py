"""A restricted unpickler for Detectron2 / Detectron-1 model-zoo `.pkl` weights.

A plain ``pickle.load`` runs whatever callable the file names (a ``__reduce__`` payload), so a
`.pkl` given as ``MODEL.WEIGHTS`` could run code. Model-zoo files only ever hold plain
containers (dict, list, tuple, str, numbers), ``collections.OrderedDict`` and numpy arrays and
scalars; :class:`WeightsUnpickler` resolves exactly those globals and refuses every other one
before it is called, so nothing in the file is executed.

It is a leaf module (nothing of glip_d2 imported) because two sides use it: the checkpointer
(`.pkl` weights) and the dataset loaders' annotation cache (`data/datasets/_utils.py`), which
must not import the checkpoint package and, through it, the model.
"""

import functools
import pickle
from typing import Any, Dict

__all__ = [
    "ALLOWED_GLOBALS",
    "UnsafePickleError",
    "WeightsUnpickler",
    "load_pickle_weights",
    "restricted_load",
]

# (module, name) pairs a weights pickle may reference. numpy 1.x and 2.x spell the array
# reconstruction helpers in different modules; `_codecs.encode` turns the latin-1 text that
# protocol-2 pickles use for raw bytes back into bytes, and `bytes` makes an empty one. All of
# them are wrapped (see `WeightsUnpickler.find_class`): numpy only builds plain numeric arrays,
# `_codecs.encode` only decodes latin-1, `bytes` only copies bytes.
ALLOWED_GLOBALS = frozenset(
    [
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),
        ("builtins", "bytes"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    ]
)


# Protocol-2 pickles spell an empty bytes object as a call of ``bytes`` without arguments.
_EMPTY_BYTES = frozenset([("__builtin__", "bytes"), ("builtins", "bytes")])


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that a weights file has no reason to contain."""


# Array kinds a weights file may hold: numbers, booleans, dates, fixed-width strings and raw
# bytes. Never objects ("O": the raw bytes would be PyObject pointers) nor numpy 2 strings ("T").
_PLAIN_KINDS = frozenset("biufcmMSUV")


def _plain_dtype(dtype) -> "Any":
    """``dtype`` itself if it is a plain (non-structured, object-free) numpy dtype whose flags are
    those numpy gives that type, else :class:`UnsafePickleError`.

    A dtype's pickled state (``dtype.__setstate__``, the BUILD opcode) sets its fields and flags
    without checking them against each other: a crafted state gives a structured dtype with an
    object field whose flags say "no objects", and an array of it turns the file's raw bytes into
    PyObject pointers (a crash, or worse, when read). Weights need neither structured nor object
    dtypes, so both are refused, as is any dtype whose flags differ from a fresh one's.
    """
    import numpy as np

    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"the pickle gives {type(dtype).__name__} where a dtype belongs")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"the pickle builds a structured numpy dtype {dtype!r}")
    if dtype.kind not in _PLAIN_KINDS or dtype.hasobject:
        raise UnsafePickleError(f"the pickle builds an array of Python objects (dtype {dtype!r})")
    if dtype.flags != np.dtype(dtype.str).flags:
        raise UnsafePickleError(
            f"the pickle builds a numpy dtype {dtype!r} with inconsistent flags {dtype.flags}"
        )
    return dtype


@functools.lru_cache(maxsize=None)
def _checked_array_type():
    """An ndarray subclass whose ``__setstate__`` (BUILD) checks the dtype of the state first;
    made on first use so that importing this module does not import numpy."""
    import numpy as np

    class _CheckedArray(np.ndarray):
        def __setstate__(self, state):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise UnsafePickleError("the pickle gives an array an unexpected state")
            _plain_dtype(state[-3])
            super().__setstate__(state)

    return _CheckedArray


class _ArrayClass:
    """What the name ``numpy.ndarray`` resolves to: only an argument of ``_reconstruct`` (how
    numpy pickles an array); calling it (an array over a buffer of the file) is refused."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("the pickle calls numpy.ndarray directly")


def _numpy_global(module: str, name: str, original):
    """The allowed numpy global ``module.name`` (``original``), wrapped to check its dtypes."""
    import numpy as np

    if name == "ndarray":
        return _ArrayClass()
    if name == "dtype":

        def dtype(*args, **kwargs):
            return _plain_dtype(np.dtype(*args, **kwargs))

        return dtype
    if name == "_reconstruct":
        checked = _checked_array_type()

        def _reconstruct(subtype, shape, typecode):
            if not isinstance(subtype, _ArrayClass):
                raise UnsafePickleError("the pickle reconstructs an array of another type")
            return original(checked, shape, _plain_dtype(np.dtype(typecode)))

        return _reconstruct
    if name == "scalar":

        def scalar(dtype, *args):
            return original(_plain_dtype(dtype), *args)

        return scalar
    if name == "_frombuffer":

        def _frombuffer(buf, dtype, shape, order):
            return original(buf, _plain_dtype(dtype), shape, order)

        return _frombuffer
    return original  # a numpy name the caller allowed in extra_globals


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as pickles of bytes use it (protocol < 3): latin-1 text to bytes only.
    Another codec name would make Python import (and run) the module of that codec."""
    if not isinstance(obj, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"the pickle encodes with codec {encoding!r} (only latin1 is used)")
    import _codecs

    return _codecs.encode(obj, "latin1", errors)


def _bytes(*args):
    """``bytes`` as pickles of an empty bytes object use it (protocol < 3: ``bytes()``)."""
    if args and not isinstance(args[0], (bytes, bytearray)):
        raise UnsafePickleError("the pickle calls bytes() with something other than bytes")
    return bytes(*args[:1])


# Values _unwrap_arrays never needs to look into (most of a parse cache: numbers and names).
_LEAVES = (str, bytes, int, float, bool, type(None))


def _unwrap_arrays(obj, seen=None):
    """``obj`` with every checked array in its containers turned into a plain ndarray (a view of
    the same data; dicts and lists are updated in place), and every dtype in them checked.
    Scalars and strings are skipped without a call: a parse cache holds millions of them."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj if type(obj) is np.ndarray else obj.view(np.ndarray)
    if isinstance(obj, np.dtype):
        return _plain_dtype(obj)
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return seen[id(obj)]
    seen[id(obj)] = obj
    if isinstance(obj, tuple):
        new = tuple(v if isinstance(v, _LEAVES) else _unwrap_arrays(v, seen) for v in obj)
        if any(a is not b for a, b in zip(new, obj)):
            seen[id(obj)] = new  # keyed by the original: a tuple shared in the pickle stays shared
            obj = new
        return obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        if not isinstance(v, _LEAVES):
            new = _unwrap_arrays(v, seen)
            if new is not v:
                obj[k] = new
    return obj


class WeightsUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves :data:`ALLOWED_GLOBALS` (see the module doc), plus
    the ``(module, name)`` pairs of ``extra_globals``. The numpy ones are wrapped so that they
    only build arrays and scalars of plain numeric dtypes (see :func:`_plain_dtype`);
    ``_codecs.encode`` only decodes latin-1 text."""

    def __init__(self, file, *, extra_globals=(), **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = ALLOWED_GLOBALS | frozenset(extra_globals)
        self._numpy_used = False

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise UnsafePickleError(
                f"the pickle references {module}.{name}, which is neither a numpy array nor a "
                "plain container"
            )
        if (module, name) in _EMPTY_BYTES:
            return _bytes
        original = super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module == "numpy" or module.startswith("numpy."):
            self._numpy_used = True
            return _numpy_global(module, name, original)
        return original

    def persistent_load(self, pid):  # torch-style persistent ids are not weights pickles
        raise UnsafePickleError(f"the pickle uses persistent id {pid!r} (not a plain pickle)")

    def load(self):
        data = super().load()
        return _unwrap_arrays(data) if self._numpy_used else data


def restricted_load(file, extra_globals=()) -> Any:
    """Unpickle ``file`` (an open binary file) with :class:`WeightsUnpickler`.

    Raises:
        UnsafePickleError: on any global outside the allowed ones (nothing has been called).
    """
    return WeightsUnpickler(file, extra_globals=extra_globals).load()


def load_pickle_weights(path: str, trust_pickle: bool = False) -> Dict:
    """Read a Detectron2 / Detectron-1 model-zoo `.pkl` without running code from it.

    Args:
        path: a local `.pkl` file.
        trust_pickle: use a plain ``pickle.load`` (runs any code pickled in the file); only for
            files from a source you trust, e.g. once in ``python -m glip_d2.checkpoint.convert
            --trust-pickle`` to produce a safe `.pth`.

    Returns:
        the unpickled dict (numpy arrays for the weights).

    Raises:
        RuntimeError: when the file references anything but numpy arrays and plain containers
            (nothing from it has been run), is corrupt, or does not hold a dict.
    """
    with open(path, "rb") as f:
        try:
            if trust_pickle:
                data = pickle.load(f, encoding="latin1")
            else:
                data = WeightsUnpickler(f, encoding="latin1").load()
        except UnsafePickleError as e:
            raise RuntimeError(
                f"{path}: glip_d2 refused to unpickle this .pkl because {e}; loading it would "
                "run code from the file. Detectron2 model-zoo weights hold only numpy arrays. "
                "If you trust the file, convert it once with `python -m glip_d2.checkpoint.convert "
                f"{path} OUT.pth --trust-pickle` and use OUT.pth."
            ) from e
        except Exception as e:  # truncated / corrupt pickles raise many types
            raise RuntimeError(
                f"Could not read {path} as a pickled weights file ({type(e).__name__}: {e}); the "
                "file is corrupt, truncated, or not a Detectron2 .pkl."
            ) from e
    if not isinstance(data, dict):
        raise RuntimeError(
            f"{path} holds a {type(data).__name__}, not a dict: expected Detectron2 model-zoo "
            'weights ({"model": {...}} or {"blobs": {...}}).'
        )
    return data
