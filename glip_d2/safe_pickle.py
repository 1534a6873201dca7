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
# Python-2 pickles use for raw bytes back into bytes (it can only build a bytes object).
ALLOWED_GLOBALS = frozenset(
    [
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
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


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that a weights file has no reason to contain."""


class WeightsUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves :data:`ALLOWED_GLOBALS` (see the module doc), plus
    the ``(module, name)`` pairs of ``extra_globals``."""

    def __init__(self, file, *, extra_globals=(), **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = ALLOWED_GLOBALS | frozenset(extra_globals)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise UnsafePickleError(
                f"the pickle references {module}.{name}, which is neither a numpy array nor a "
                "plain container"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):  # torch-style persistent ids are not weights pickles
        raise UnsafePickleError(f"the pickle uses persistent id {pid!r} (not a plain pickle)")


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
