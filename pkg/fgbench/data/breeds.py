"""BREEDS class sets (Santurkar, Tsipras & Madry, "BREEDS: Benchmarks for Subpopulation Shift", 2020).

A reimplementation of ``robustness.tools.breeds_helpers`` (MadryLab/robustness, file identical in
PyPI ``robustness==1.2.1.post2`` and git HEAD a9541241), reproducing its class lists exactly: the
same string sorts, the same ``numpy.random.RandomState(2)`` draws in the same order, the same
return values. It reads the three files of the BREEDS "modified" hierarchy
(MadryLab/BREEDS-Benchmarks ``imagenet_class_hierarchy/modified/``) that ``setup_breeds``
downloads: ``class_hierarchy.txt``, ``dataset_class_info.json`` and ``node_names.txt``.

``make_living17`` / ``make_nonliving26`` / ``make_entity13`` / ``make_entity30`` return
``(superclasses, subclass_split, label_map)`` like robustness; ``breeds_classes`` wraps that into
what an ImageNet loader needs (ImageNet class indices and wnids per superclass). SCGM and ANCOR
use ``split=None`` (all subclasses, no source/target split). Numpy and stdlib only.
"""

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

ROOT_WNID = "n00001740"  # "entity", the root of the BREEDS hierarchy
REQUIRED_FILES = ("dataset_class_info.json", "class_hierarchy.txt", "node_names.txt")
SPLITS = (None, "rand", "good", "bad")


# --------------------------------------------------------------------------- file reading


def _check_files(info_dir: Path) -> None:
    """Every file that ``setup_breeds`` downloads must be in ``info_dir``."""
    for name in REQUIRED_FILES:
        if not (info_dir / name).is_file():
            raise DataError(
                f"BREEDS file {info_dir / name} is missing; {info_dir} must hold {', '.join(REQUIRED_FILES)} "
                "(the 'modified' hierarchy of MadryLab/BREEDS-Benchmarks, as robustness's setup_breeds downloads)"
            )


def _read_class_info(path: Path) -> list:
    """``dataset_class_info.json``: a list of ``[class_number, wnid, name]`` for the ImageNet classes."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"BREEDS file {path} is not valid JSON ({e}); expected a list of [number, wnid, name]") from e
    ok = isinstance(info, list) and len(info) > 0
    ok = ok and all(
        isinstance(c, list) and len(c) == 3 and type(c[0]) is int and isinstance(c[1], str) and isinstance(c[2], str)
        for c in info
    )
    if not ok:
        raise DataError(f"BREEDS file {path} is malformed: expected a JSON list of [class_number, wnid, name] triples")
    for col, what in ((0, "class number"), (1, "wnid")):
        values = [c[col] for c in info]
        if len(set(values)) != len(values):
            dup = next(v for v in values if values.count(v) > 1)
            raise DataError(f"BREEDS file {path} is malformed: {what} {dup!r} appears more than once")
    return info


def _read_edges(path: Path) -> list:
    """``class_hierarchy.txt``: one ``parent child`` edge per line (blank lines ignored)."""
    edges = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.strip().split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"BREEDS file {path} line {lineno}: expected 'parent_wnid child_wnid', got {line!r}")
        edges.append((fields[0], fields[1]))
    return edges


def _read_node_names(path: Path) -> dict:
    """``node_names.txt``: one ``wnid<TAB>name`` per line (robustness keeps the 2nd tab field)."""
    names = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) < 2:
            raise DataError(f"BREEDS file {path} line {lineno}: expected 'wnid<TAB>name', got {line!r}")
        names[fields[0]] = fields[1]
    return names


# --------------------------------------------------------------------------- ClassHierarchy


def _prune_to_leaves(edges, leaf_ids) -> dict:
    """The part of the graph above the ImageNet leaves (robustness ``_make_parent_graph``).

    From the leaves present in the edge list, walk upwards and keep every ``parent -> child``
    edge met; ImageNet ids absent from the edge list are skipped. Returns ``{node: [children]}``.
    """
    parents, nodes = {}, set()
    for p, c in edges:
        parents.setdefault(c, []).append(p)
        nodes.update((p, c))
    children, seen = {}, set()
    frontier = [n for n in leaf_ids if n in nodes]
    seen.update(frontier)
    while frontier:
        nxt = []
        for child in frontier:
            for p in parents.get(child, ()):
                if child not in children.setdefault(p, []):
                    children[p].append(child)
                if p not in seen:
                    seen.add(p)
                    nxt.append(p)
        frontier = nxt
    return children


def _levels(children: dict, root: str, path: Path) -> dict:
    """Level of each node below ``root``: the longest path from the root (the depth, in a tree).

    robustness computes it breadth-first from the root, keeping the largest distance; on a DAG
    that is the longest path, found here in topological order. A cycle is a data error.
    """
    reach, stack = {root}, [root]
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in reach:
                reach.add(c)
                stack.append(c)
    indeg = {n: 0 for n in reach}
    for n in reach:
        for c in children.get(n, ()):
            indeg[c] += 1
    level, queue, done = {root: 0}, deque([root]), 0
    while queue:
        n = queue.popleft()
        done += 1
        for c in children.get(n, ()):
            level[c] = max(level.get(c, 0), level[n] + 1)
            indeg[c] -= 1
            if indeg[c] == 0:
                queue.append(c)
    if done != len(reach):
        raise DataError(f"BREEDS file {path} is inconsistent: the hierarchy below {root} has a cycle")
    return level


class ClassHierarchy:
    """The BREEDS class hierarchy (robustness ``breeds_helpers.ClassHierarchy``).

    Reads the three files in ``info_dir``; every node of ``class_hierarchy.txt`` must be named in
    ``node_names.txt`` and the root ``n00001740`` must be in the hierarchy (else ``DataError``).
    """

    def __init__(self, info_dir, root_wnid: str = ROOT_WNID):
        info_dir = Path(info_dir)
        _check_files(info_dir)
        class_info = _read_class_info(info_dir / "dataset_class_info.json")
        self.LEAF_IDS = [c[1] for c in class_info]
        self.LEAF_ID_TO_NAME = {c[1]: c[2] for c in class_info}
        self.LEAF_ID_TO_NUM = {c[1]: c[0] for c in class_info}
        self.LEAF_NUM_TO_NAME = {c[0]: c[2] for c in class_info}
        self._leaf_set = set(self.LEAF_IDS)
        hier_path = info_dir / "class_hierarchy.txt"
        edges = _read_edges(hier_path)
        self.HIER_NODE_NAME = _read_node_names(info_dir / "node_names.txt")
        self._check_names(edges, hier_path)
        self.children = _prune_to_leaves(edges, self.LEAF_IDS)
        self.parents = {}
        for p, cs in self.children.items():
            for c in cs:
                self.parents.setdefault(c, []).append(p)
        if root_wnid not in self.children:
            raise DataError(f"BREEDS file {hier_path} is inconsistent: root {root_wnid} has no ImageNet class below it")
        self.node_to_level = _levels(self.children, root_wnid, hier_path)
        self.level_to_nodes = {}
        for n, lvl in self.node_to_level.items():
            self.level_to_nodes.setdefault(lvl, []).append(n)

    def _check_names(self, edges, hier_path: Path) -> None:
        """Every wnid in ``class_hierarchy.txt`` needs a ``node_names.txt`` entry."""
        for edge in edges:
            for n in edge:
                if n not in self.HIER_NODE_NAME:
                    raise DataError(
                        f"BREEDS files inconsistent: wnid {n} of {hier_path} (edge {edge[0]} {edge[1]}) "
                        f"is missing from {hier_path.with_name('node_names.txt')}"
                    )

    def successors(self, n: str) -> list:
        """Children of ``n`` in the pruned graph (insertion order; callers sort)."""
        return list(self.children.get(n, ()))

    def is_leaf(self, n: str) -> bool:
        """Whether ``n`` is an ImageNet class."""
        return n in self._leaf_set

    def leaves_reachable(self, n: str) -> set:
        """ImageNet classes below ``n`` (``n`` itself if it is one); descent stops at the first leaf."""
        leaves, stack = set(), [n]
        while stack:
            cur = stack.pop()
            if self.is_leaf(cur):
                leaves.add(cur)
            else:
                stack.extend(self.children.get(cur, ()))
        return leaves

    def node_name(self, n: str) -> str:
        """The ``node_names.txt`` name of ``n``, or ``n`` itself when there is none."""
        return self.HIER_NODE_NAME.get(n, n)

    def traverse(self, nodes, direction: str = "down", depth: int = 100) -> list:
        """Nodes reachable from ``nodes`` (included) going ``down`` or ``up``, at most ``depth`` hops."""
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
        graph = self.children if direction == "down" else self.parents
        seen, frontier = list(nodes), list(nodes)
        for _ in range(depth):
            frontier = [c for n in frontier for c in graph.get(n, ())]
            frontier = [c for c in dict.fromkeys(frontier) if c not in seen]
            if not frontier:
                break
            seen.extend(frontier)
        return seen

    def get_nodes_at_level(self, L: int, ancestor: str | None = None) -> set:  # noqa: N803 (robustness name)
        """Nodes at level ``L``, optionally only those below ``ancestor`` (the ancestor included)."""
        nodes = set(self.level_to_nodes.get(L, ()))
        if ancestor is not None:
            if ancestor not in self.node_to_level:
                raise DataError(f"BREEDS ancestor {ancestor} is not in the hierarchy")
            nodes &= set(self.traverse([ancestor], direction="down"))
        return nodes


# --------------------------------------------------------------------------- splits


def _split_size(n_subclasses: int, n_leaves: int, balanced: bool) -> int:
    """Classes per side: ``Nsubclasses / 2`` if balanced, else all leaves (made even) / 2."""
    total = n_subclasses if balanced else n_leaves - (n_leaves % 2)
    assert total % 2 == 0 and total >= 2, f"a split needs an even number >= 2 of subclasses, got {total}"
    return total // 2


def _split_rand(subtrees: dict, nh: int, rng) -> tuple:
    """``rand``: draw ``2 Nh`` from the sorted pooled leaves; first ``Nh`` draws = source, rest = target."""
    pool = sorted(leaf for leaves in subtrees.values() for leaf in leaves)
    drawn = list(rng.choice(pool, 2 * nh, replace=False))
    return drawn[:nh], drawn[nh:]


def _by_size(subtrees: dict) -> list:
    """Subtree leaf lists, largest first; ties keep id order (stable sort of id-sorted keys)."""
    return [subtrees[k] for k in sorted(sorted(subtrees), key=lambda k: -len(subtrees[k]))]


def _split_good(subtrees: dict, nh: int) -> tuple:
    """``good``: spread every subtree over both sides (about half each), so the shift is mild."""
    source, target = [], []
    for leaves in _by_size(subtrees):
        if len(leaves) == 1:
            # Reading of the reference: a one-leaf subtree goes to source while it has room,
            # otherwise to target while *it* has room (else dropped), keeping both sides <= Nh.
            if len(source) < nh:
                source.extend(leaves)
            elif len(target) < nh:
                target.extend(leaves)
            continue
        ns = min(len(leaves) // 2, nh - len(source))
        source.extend(leaves[:ns])
        nt = min(len(leaves) - ns, nh - len(target))
        target.extend(leaves[ns : ns + nt])
    return source, target


def _split_bad(subtrees: dict, nh: int) -> tuple:
    """``bad``: each whole subtree goes to one side, so the shift is adversarial."""
    source, target, spare = [], [], []
    for leaves in _by_size(subtrees):
        if len(source) < nh and len(source) <= len(target):
            side = source
        elif len(target) < nh:
            side = target
        else:
            continue  # both sides full: the subtree is dropped, not kept as spare
        room = nh - len(side)
        side.extend(leaves[:room])
        spare.extend(leaves[room:])
    for side in (source, target):
        if len(side) < nh:
            side.extend(spare[: nh - len(side)])
    return source, target


# --------------------------------------------------------------------------- generator


class BreedsDatasetGenerator:
    """Superclass selection and splits (robustness ``breeds_helpers.BreedsDatasetGenerator``)."""

    def __init__(self, info_dir, root_wnid: str = ROOT_WNID):
        self.hierarchy = info_dir if isinstance(info_dir, ClassHierarchy) else ClassHierarchy(info_dir, root_wnid)

    def _descend(self, wnid: str) -> list:
        """Children (sorted) of the first node at or below ``wnid`` that has not exactly one child."""
        desc = sorted(self.hierarchy.successors(wnid))
        while len(desc) == 1:
            desc = sorted(self.hierarchy.successors(desc[0]))
        return desc

    def split_superclass(
        self, superclass_wnid: str, Nsubclasses: int, balanced: bool, split_type: str, rng  # noqa: N803
    ) -> tuple:
        """Source and target ImageNet class numbers of one superclass (``rand``, ``good`` or ``bad``).

        ``rand`` consumes ``rng`` (one ``choice`` call); ``good``/``bad`` are deterministic.
        """
        h = self.hierarchy
        subtrees = {d: sorted(h.leaves_reachable(d)) for d in self._descend(superclass_wnid)}
        nh = _split_size(Nsubclasses, sum(len(v) for v in subtrees.values()), balanced)
        if split_type == "rand":
            source, target = _split_rand(subtrees, nh, rng)
        elif split_type == "good":
            source, target = _split_good(subtrees, nh)
        elif split_type == "bad":
            source, target = _split_bad(subtrees, nh)
        else:
            raise ValueError(f"split must be one of rand, good, bad; got {split_type!r}")
        assert len(source) == len(target) and not set(source) & set(target), "source/target not balanced/disjoint"
        return [h.LEAF_ID_TO_NUM[s] for s in source], [h.LEAF_ID_TO_NUM[t] for t in target]

    def get_superclasses(
        self,
        level: int,
        Nsubclasses: int | None = None,  # noqa: N803 (robustness name)
        split: str | None = None,
        ancestor: str | None = None,
        balanced: bool = True,
        random_seed: int = 2,
        verbose: bool = False,
    ) -> tuple:
        """Superclasses at ``level`` (below ``ancestor``) and their subclasses, as robustness builds them.

        Returns ``(superclass_wnids, (source, target), label_map)``; ``source``/``target`` hold one
        list of ImageNet class numbers per superclass, ``target`` is ``[]`` when ``split`` is None.
        One ``RandomState(random_seed)`` is consumed superclass by superclass in label order.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of None, rand, good, bad; got {split!r}")
        h = self.hierarchy
        rng = np.random.RandomState(random_seed)
        rel_nodes = sorted(h.get_nodes_at_level(level, ancestor=ancestor))
        in_desc = [sorted(h.leaves_reachable(n)) for n in rel_nodes]
        if not in_desc:
            raise DataError(f"BREEDS: no node at level {level} below {ancestor or 'the root'}")
        if Nsubclasses is None:
            Nsubclasses = _auto_nsubclasses(in_desc, balanced, split)
        keep = [i for i, d in enumerate(in_desc) if len(d) >= Nsubclasses]
        superclasses, all_subclasses = [rel_nodes[i] for i in keep], [in_desc[i] for i in keep]
        label_map = {i: h.node_name(s) for i, s in enumerate(superclasses)}
        if verbose:
            print(f"{len(superclasses)} of {len(rel_nodes)} superclasses at level {level} have >= {Nsubclasses} leaves")
        if split is None:
            ns = [Nsubclasses if balanced else len(d) for d in all_subclasses]
            wnids = [list(rng.choice(d, n, replace=False)) for n, d in zip(ns, all_subclasses)]
            return superclasses, ([[h.LEAF_ID_TO_NUM[w] for w in c] for c in wnids], []), label_map
        source, target = [], []
        for sc in sorted(superclasses):
            s, t = self.split_superclass(sc, Nsubclasses=Nsubclasses, balanced=balanced, split_type=split, rng=rng)
            source.append(s)
            target.append(t)
        return superclasses, (source, target), label_map


def _auto_nsubclasses(in_desc: list, balanced: bool, split) -> int:
    """Default ``Nsubclasses``: smallest leaf count made even (>= 2) if balanced, else 1 or 2."""
    if balanced:
        n = int(np.min([len(d) for d in in_desc]))
        return max(2, n - 1) if n % 2 else n
    return 1 if split is None else 2


# --------------------------------------------------------------------------- the four datasets


def _make(info_dir, split, level, ancestor, n_subclasses) -> tuple:
    """``get_superclasses`` with the arguments every robustness ``make_*`` uses."""
    gen = BreedsDatasetGenerator(info_dir)
    return gen.get_superclasses(
        level=level, ancestor=ancestor, Nsubclasses=n_subclasses, split=split, balanced=True, random_seed=2
    )


def make_entity13(info_dir, split=None) -> tuple:
    """ENTITY-13: level 3, 13 superclasses x 20 subclasses (robustness ``make_entity13``)."""
    return _make(info_dir, split, level=3, ancestor=None, n_subclasses=20)


def make_entity30(info_dir, split=None) -> tuple:
    """ENTITY-30: level 4, 30 superclasses x 8 subclasses (robustness ``make_entity30``)."""
    return _make(info_dir, split, level=4, ancestor=None, n_subclasses=8)


def make_living17(info_dir, split=None) -> tuple:
    """LIVING-17: level 5 below n00004258 "living thing", 17 x 4 (robustness ``make_living17``)."""
    return _make(info_dir, split, level=5, ancestor="n00004258", n_subclasses=4)


def make_nonliving26(info_dir, split=None) -> tuple:
    """NON-LIVING-26: level 5 below n00021939 "non-living thing", 26 x 4 (robustness ``make_nonliving26``)."""
    return _make(info_dir, split, level=5, ancestor="n00021939", n_subclasses=4)


BREEDS = {
    "living17": make_living17,
    "nonliving26": make_nonliving26,
    "entity13": make_entity13,
    "entity30": make_entity30,
}


# --------------------------------------------------------------------------- loader-facing view


@dataclass(frozen=True)
class BreedsClasses:
    """One BREEDS dataset as an ImageNet loader needs it.

    ``source_indices[i]`` / ``target_indices[i]``: ImageNet class numbers (0-999, sorted-wnid order
    of ``dataset_class_info.json``) of superclass ``i``, in robustness's order; ``*_wnids`` the same
    classes as wnids. With ``split=None`` every subclass is in source and target is empty.
    Coarse label = superclass position; fine label = position in the flattened source lists (SCGM/ANCOR).
    """

    name: str
    split: str | None
    superclass_wnids: tuple
    superclass_names: tuple
    source_indices: tuple
    target_indices: tuple
    source_wnids: tuple
    target_wnids: tuple

    @property
    def num_superclasses(self) -> int:
        return len(self.superclass_wnids)


def breeds_classes(name: str, info_dir, split=None) -> BreedsClasses:
    """Build BREEDS dataset ``name`` (a key of ``BREEDS``) from the hierarchy files in ``info_dir``."""
    if name not in BREEDS:
        raise ValueError(f"unknown BREEDS dataset {name!r}; valid: {', '.join(BREEDS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of None, rand, good, bad; got {split!r}")
    hierarchy = ClassHierarchy(info_dir)  # read once; the make_* functions accept it in place of a folder
    superclasses, (source, target), label_map = BREEDS[name](hierarchy, split=split)
    num_to_wnid = {num: wnid for wnid, num in hierarchy.LEAF_ID_TO_NUM.items()}

    def freeze(lists, to=int):
        return tuple(tuple(to(x) for x in xs) for xs in lists)

    return BreedsClasses(
        name=name,
        split=split,
        superclass_wnids=tuple(superclasses),
        superclass_names=tuple(label_map[i] for i in range(len(superclasses))),
        source_indices=freeze(source),
        target_indices=freeze(target),
        source_wnids=freeze(source, lambda n: num_to_wnid[n]),
        target_wnids=freeze(target, lambda n: num_to_wnid[n]),
    )
