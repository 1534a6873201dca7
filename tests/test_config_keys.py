"""The config keys glip_d2 adds (``add_glip_config``, with the dataset and two-stage keys): each is
read by some code, each has its comment, and none changes a key of Detectron2's own.

"Read" is decided from the syntax trees of glip_d2/ (its config package excepted: it defines the
keys), train_net.py, tools/ and scripts/: an attribute load such as ``cfg.MODEL.ATSS.NMS_TH``,
``a.NMS_TH`` after ``a = cfg.MODEL.ATSS``, ``node.get("NMS_TH")`` / ``getattr(node, "NMS_TH")``, or
the bare string ``"NMS_TH"`` (keys looked up by name). A read whose node is known counts only for
that node (``cfg.MODEL.ATSS.NMS_TH`` does not read ``MODEL.GLIP.LOSSES.NMS_TH``); one through a
function argument or another unknown object counts for every key with that ending. Assignments
(``cfg.MODEL.X = ...``) and text in docstrings, comments and messages are not reads.
"""

import ast
import re
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import pytest
from detectron2.config import get_cfg

from glip_d2.config import add_glip_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PACKAGE = ROOT / "glip_d2" / "config"
CONFIG_SOURCES = [CONFIG_PACKAGE / f for f in ("glip.py", "two_stage.py", "datasets.py")]

# Keys that are read although no attribute or string of their name occurs in the code (e.g. a loop
# over a node's items, or a name built at run time), each with where it is read. Everything glip_d2
# adds is read by name today, so this stays empty; an entry needs its reader named here.
READ_GENERICALLY: Dict[str, str] = {}

Chain = Tuple[str, ...]
Read = Tuple[Chain, bool]  # (upper-case key path, whether it starts at the config's root)


def _leaves(node, prefix: Chain = ()) -> Dict[Chain, object]:
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(_leaves(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def glip_added_keys(add=add_glip_config) -> List[str]:
    """Leaf keys `add` puts into Detectron2's `get_cfg()`, dotted."""
    stock = _leaves(get_cfg())
    cfg = get_cfg()
    add(cfg)
    return [".".join(k) for k in _leaves(cfg) if k not in stock]


def _is_key_name(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", s))


class _Reads(ast.NodeVisitor):
    """Key reads of one module (see the module docstring)."""

    def __init__(self, tree: ast.AST, roots: Set[str]):
        self.roots = roots
        self.aliases: Dict[str, Set[Read]] = {}
        self.reads: List[Read] = []
        self._lookup_keys: Set[int] = set()  # the "KEY" of obj.get("KEY"): read through obj
        self._collect_aliases(tree)
        self.visit(tree)

    def _collect_aliases(self, tree: ast.AST) -> None:
        # every binding of a name in the module; a name bound anywhere to something other than a
        # config node (an argument, a loop variable, a call's result) may also be unknown
        unknown: Read = ((), False)
        for n in ast.walk(tree):
            if isinstance(n, ast.Assign):
                for target in n.targets:
                    pairs = []
                    if isinstance(target, ast.Name):
                        pairs = [(target, n.value)]
                    elif isinstance(target, ast.Tuple) and isinstance(n.value, ast.Tuple):
                        pairs = list(zip(target.elts, n.value.elts))
                    elif isinstance(target, ast.Tuple):
                        pairs = [(t, None) for t in target.elts]
                    for name, value in pairs:
                        if isinstance(name, ast.Name):
                            got = self._resolve(value, {}) if value is not None else [unknown]
                            self.aliases.setdefault(name.id, set()).update(got)
            elif isinstance(n, ast.arg):
                self.aliases.setdefault(n.arg, set()).add(unknown)
            elif isinstance(n, (ast.For, ast.comprehension, ast.withitem)):
                target = n.optional_vars if isinstance(n, ast.withitem) else n.target
                for name in ast.walk(target) if target is not None else ():
                    if isinstance(name, ast.Name):
                        self.aliases.setdefault(name.id, set()).add(unknown)

    def _resolve(self, node, aliases) -> List[Read]:
        """The config paths `node` may stand for; ((), False) = an unknown object."""
        if isinstance(node, ast.Name):
            return sorted(aliases.get(node.id, {((), False)}))
        if isinstance(node, ast.Attribute):
            return self._child(self._resolve(node.value, aliases), node.attr)
        lookup = self._named_lookup(node)
        if lookup is not None:
            obj, key = lookup
            return self._child(self._resolve(obj, aliases), key.value)
        return [((), False)]

    def _child(self, parents: Iterable[Read], name: str) -> List[Read]:
        if not _is_key_name(name):
            return [((), False)]
        return sorted(
            {(p + (name,), rooted or (not p and name in self.roots)) for p, rooted in parents}
        )

    @staticmethod
    def _named_lookup(node):
        """(obj, the "KEY" node) of ``obj.get("KEY", ...)`` or ``getattr(obj, "KEY", ...)``."""
        if not isinstance(node, ast.Call) or not node.args:
            return None
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "get":
            obj, key = f.value, node.args[0]
        elif isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2:
            obj, key = node.args[0], node.args[1]
        else:
            return None
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and _is_key_name(key.value):
            return obj, key
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load) and _is_key_name(node.attr):
            self.reads += self._resolve(node, self.aliases)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        lookup = self._named_lookup(node)
        if lookup is not None:
            self.reads += self._resolve(node, self.aliases)
            self._lookup_keys.add(id(lookup[1]))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if (
            isinstance(node.value, str)
            and _is_key_name(node.value)
            and id(node) not in self._lookup_keys
        ):
            self.reads.append(((node.value,), False))


def reader_files() -> List[Path]:
    files = [ROOT / "train_net.py"]
    for folder in ("glip_d2", "tools", "scripts"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if CONFIG_PACKAGE not in f.parents]


def key_reads(files: Iterable[Path]) -> Set[Read]:
    roots = set(get_cfg().keys())
    reads: Set[Read] = set()
    for path in files:
        reads.update(_Reads(ast.parse(path.read_text(), str(path)), roots).reads)
    return reads


def unread(keys: Iterable[str], reads: Set[Read]) -> List[str]:
    """The keys no read matches, less READ_GENERICALLY."""
    exact = {chain for chain, rooted in reads if rooted}
    endings = {chain for chain, rooted in reads if not rooted and chain}
    out = []
    for key in keys:
        parts = tuple(key.split("."))
        if parts in exact or key in READ_GENERICALLY:
            continue
        if any(parts[-i:] in endings for i in range(1, len(parts) + 1)):
            continue
        out.append(key)
    return out


@pytest.fixture(scope="module")
def reads() -> Set[Read]:
    return key_reads(reader_files())


def test_every_key_glip_d2_adds_is_read(reads):
    keys = glip_added_keys()
    assert len(keys) > 150  # the whole set, datasets and two-stage keys included
    missing = unread(keys, reads)
    assert missing == [], (
        f"Config keys nothing reads: {missing}. A user would set them and nothing would happen: "
        "wire each to its module, remove it, or (read by a name built at run time) list it in "
        "READ_GENERICALLY with its reader."
    )


def test_a_key_added_without_a_reader_is_caught(reads):
    def add_with_unread_keys(cfg):
        add_glip_config(cfg)
        cfg.MODEL.GLIP.UNREAD_PROBE_KEY = 1
        # a leaf that is read, but only under another node (cfg.MODEL.ATSS.NMS_TH)
        cfg.MODEL.GLIP.LOSSES.NMS_TH = 0.5

    keys = glip_added_keys(add_with_unread_keys)
    assert "MODEL.GLIP.UNREAD_PROBE_KEY" in keys and "MODEL.ATSS.NMS_TH" in keys
    assert sorted(unread(keys, reads)) == [
        "MODEL.GLIP.LOSSES.NMS_TH",
        "MODEL.GLIP.UNREAD_PROBE_KEY",
    ]


def test_the_scan_tells_reads_from_writes_and_text(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        '"""Set MODEL.ATSS.DOC_ONLY to ..."""\n'
        "def f(cfg, node):\n"
        "    cfg.MODEL.ATSS.WRITTEN = 1  # MODEL.ATSS.COMMENTED\n"
        "    a, b = cfg.MODEL.ATSS, cfg.MODEL.GLIP\n"
        "    x = a.BY_ALIAS + b.LOSSES.NESTED + node.BY_ARGUMENT\n"
        "    y = cfg.SOLVER.get('BY_GET', 0) + getattr(cfg.TEST, 'BY_GETATTR')\n"
        "    raise ValueError(f'MODEL.ATSS.IN_MESSAGE is {x}')\n"
    )
    keys = [
        "MODEL.ATSS." + k for k in ("DOC_ONLY", "WRITTEN", "COMMENTED", "BY_ALIAS", "IN_MESSAGE")
    ]
    keys += [
        "MODEL.GLIP.LOSSES.NESTED",
        "MODEL.GLIP.BY_ALIAS",
        "MODEL.ANY.BY_ARGUMENT",
        "SOLVER.BY_GET",
        "TEST.BY_GETATTR",
        "TEST.BY_GET",
    ]
    assert unread(keys, key_reads([src])) == [
        "MODEL.ATSS.DOC_ONLY",
        "MODEL.ATSS.WRITTEN",
        "MODEL.ATSS.COMMENTED",
        "MODEL.ATSS.IN_MESSAGE",
        "MODEL.GLIP.BY_ALIAS",
        "TEST.BY_GET",
    ]


@pytest.mark.parametrize("path", CONFIG_SOURCES, ids=lambda p: p.name)
def test_every_key_has_its_comment(path):
    """House style: a comment right above each key (a node's keys each get their own)."""
    lines = path.read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*_C\.([A-Z0-9_.]+)\s*=(?!\s*CN\(\))", line)  # nodes need none
        if m and not lines[i - 1].strip().startswith("#"):
            bare.append(m.group(1))
    assert bare == []


def test_add_glip_config_leaves_detectron2_keys_alone():
    stock = _leaves(get_cfg())
    cfg = get_cfg()
    add_glip_config(cfg)
    after = _leaves(cfg)
    changed = {
        k: (v, after[k]) for k, v in stock.items() if after[k] != v or type(after[k]) is not type(v)
    }
    assert changed == {}
    # no assignment in the config package targets a stock key, even with the stock default
    assigned = [
        m
        for p in CONFIG_SOURCES
        for m in re.findall(r"^\s*_C\.([A-Z0-9_.]+)\s*=", p.read_text(), re.M)
    ]
    stock_nodes = {".".join(k[:i]) for k in stock for i in range(1, len(k) + 1)}
    assert len(assigned) > 150
    assert [k for k in assigned if k in stock_nodes] == []


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "configs").glob("*.yaml"))
    + sorted((ROOT / "configs" / "two_stage").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_configs_merge(path):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(path))  # an unknown or mistyped key raises
