"""BREEDS class sets (fgbench.data.breeds) against the robustness construction and its published example."""

import json
import shutil
from pathlib import Path

import pytest

from fgbench.data import breeds
from fgbench.errors import DataError

BREEDS_DIR = Path(__file__).resolve().parents[2] / "shared/data/breeds"
pytestmark = pytest.mark.skipif(
    not all((BREEDS_DIR / f).is_file() for f in breeds.REQUIRED_FILES),
    reason=f"BREEDS hierarchy files not found in {BREEDS_DIR} (see shared/data/breeds/SOURCE.md)",
)

# dataset -> (number of superclasses, subclasses per superclass), Santurkar et al. 2020 Table 1
SIZES = {"living17": (17, 4), "nonliving26": (26, 4), "entity13": (13, 20), "entity30": (30, 8)}
# Superclass wnids in label order (shared/reference/datasets.md 1.6)
LIVING17 = (
    "n01629276 n01662784 n01674464 n01726692 n01772222 n01795088 n01816887 n01976957 n02084071 "
    "n02114100 n02118333 n02121808 n02131653 n02164464 n02274259 n02470325 n02484322"
).split()
NONLIVING26 = (
    "n02773037 n02778669 n02858304 n02862048 n02876657 n02924116 n02958343 n03001627 n03057021 n03196324 "
    "n03259505 n03327234 n03497657 n03614532 n03748162 n03859280 n03915437 n03990474 n04105068 n04194289 "
    "n04230808 n04338517 n04437953 n04490091 n04586932 n07715561"
).split()
ENTITY13 = (
    "dummy32 n01503061 n01661091 n01767661 n01861778 n02671780 n03125870 n03294048 n03405725 n03574816 "
    "n04341686 n04576211 n07705711"
).split()
ENTITY30 = (
    "dummy9 n01524359 n01674216 n01769347 n01844917 n01974773 n02075296 n02159955 n02370806 n02469914 "
    "n02514825 n02796623 n02913152 n03278248 n03381126 n03419014 n03502509 n03528263 n03621049 n03733925 "
    "n03791235 n03800933 n03816005 n04285146 n04381994 n04451818 n04530566 n07557434 n07707451 n13134947"
).split()
SUPERCLASSES = {"living17": LIVING17, "nonliving26": NONLIVING26, "entity13": ENTITY13, "entity30": ENTITY30}


@pytest.fixture(scope="module")
def hierarchy():
    return breeds.ClassHierarchy(BREEDS_DIR)


@pytest.fixture(scope="module")
def built(hierarchy):
    """Every dataset with every split, built once: {(name, split): (superclasses, (source, target), label_map)}."""
    return {(n, s): f(hierarchy, split=s) for n, f in breeds.BREEDS.items() for s in breeds.SPLITS}


def test_hierarchy_shape(hierarchy):
    """The 'modified' tree: 1328 nodes with the published depth histogram, 890 ImageNet classes in it."""
    levels = {}
    for lvl in hierarchy.node_to_level.values():
        levels[lvl] = levels.get(lvl, 0) + 1
    assert levels == {0: 1, 1: 2, 2: 10, 3: 29, 4: 128, 5: 466, 6: 591, 7: 98, 8: 3}
    assert sum(w in hierarchy.node_to_level for w in hierarchy.LEAF_IDS) == 890
    assert hierarchy.node_name("dummy32") == "garment"
    assert hierarchy.node_name("not-a-node") == "not-a-node"


@pytest.mark.parametrize("name", list(breeds.BREEDS))
def test_split_none_sizes_and_superclasses(built, hierarchy, name):
    superclasses, (source, target), label_map = built[name, None]
    n_super, n_sub = SIZES[name]
    assert superclasses == SUPERCLASSES[name]
    assert len(source) == n_super and all(len(s) == n_sub for s in source)
    assert target == []
    assert label_map == {i: hierarchy.node_name(w) for i, w in enumerate(superclasses)}
    flat = [c for s in source for c in s]
    assert len(set(flat)) == len(flat) and all(type(c) is int and 0 <= c < 1000 for c in flat)
    for sc, classes in zip(superclasses, source):  # every subclass lies below its superclass
        below = hierarchy.leaves_reachable(sc)
        assert {hierarchy.LEAF_IDS[c] for c in classes} <= below


def test_living17_rand_published_example(built):
    """The published living17 rand split: salamander and spider, in robustness's draw order."""
    superclasses, (source, target), label_map = built["living17", "rand"]
    sal, spi = superclasses.index("n01629276"), superclasses.index("n01772222")
    assert (label_map[sal], source[sal], target[sal]) == ("salamander", [27, 29], [26, 28])
    assert (label_map[spi], source[spi], target[spi]) == ("spider", [76, 72], [74, 77])


@pytest.mark.parametrize("name", list(breeds.BREEDS))
@pytest.mark.parametrize("split", ["rand", "good", "bad"])
def test_splits_even_and_disjoint(built, name, split):
    superclasses, (source, target), _ = built[name, split]
    n_super, n_sub = SIZES[name]
    assert superclasses == SUPERCLASSES[name]
    assert len(source) == len(target) == n_super
    for s, t in zip(source, target):
        assert len(s) == len(t) == n_sub // 2
        assert not set(s) & set(t)
    flat = [c for s in source + target for c in s]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("name", list(breeds.BREEDS))
def test_split_none_equals_rand_source_plus_target(built, name):
    """Same RandomState(2) draws in the same order: None lists == rand source + target, element-wise."""
    none_lists = built[name, None][1][0]
    source, target = built[name, "rand"][1]
    assert none_lists == [s + t for s, t in zip(source, target)]


def test_good_and_bad_differ_in_subtree_spread(built, hierarchy):
    """bad keeps subtrees on one side more than good does (entity30: 8 subclasses per superclass)."""
    gen = breeds.BreedsDatasetGenerator(hierarchy)

    def shared_subtrees(split):
        superclasses, (source, target), _ = built["entity30", split]
        count = 0
        for sc, s, t in zip(superclasses, source, target):
            side = {}
            for d in gen._descend(sc):
                for leaf in hierarchy.leaves_reachable(d):
                    side[hierarchy.LEAF_ID_TO_NUM[leaf]] = d
            count += len({side[c] for c in s} & {side[c] for c in t})
        return count

    assert shared_subtrees("bad") < shared_subtrees("good")


def test_deterministic(hierarchy):
    for name, f in breeds.BREEDS.items():
        for split in breeds.SPLITS:
            assert f(BREEDS_DIR, split=split) == f(hierarchy, split=split)


def test_breeds_classes_view(hierarchy):
    bc = breeds.breeds_classes("living17", BREEDS_DIR, split="rand")
    assert bc.num_superclasses == 17 and bc.superclass_wnids[0] == "n01629276"
    assert bc.superclass_names[4] == "spider"
    assert bc.source_indices[4] == (76, 72) and bc.target_indices[4] == (74, 77)
    assert bc.source_wnids[4] == tuple(hierarchy.LEAF_IDS[i] for i in (76, 72))
    none = breeds.breeds_classes("entity13", BREEDS_DIR)
    assert none.target_indices == () and len(none.source_wnids) == 13
    assert all(len(w) == 20 for w in none.source_wnids)
    with pytest.raises(ValueError, match="unknown BREEDS dataset"):
        breeds.breeds_classes("living18", BREEDS_DIR)
    with pytest.raises(ValueError, match="split must be"):
        breeds.breeds_classes("living17", BREEDS_DIR, split="random")


# --------------------------------------------------------------------------- broken copies


def _copy(tmp_path) -> Path:
    for f in breeds.REQUIRED_FILES:
        shutil.copy(BREEDS_DIR / f, tmp_path / f)
    return tmp_path


@pytest.mark.parametrize("missing", breeds.REQUIRED_FILES)
def test_missing_file(tmp_path, missing):
    folder = _copy(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(DataError, match=f"{missing} is missing"):
        breeds.make_living17(folder)


def test_hierarchy_node_without_name(tmp_path):
    folder = _copy(tmp_path)
    names = folder / "node_names.txt"
    names.write_text("".join(line for line in names.read_text().splitlines(True) if not line.startswith("n01629276")))
    with pytest.raises(DataError, match="n01629276.*missing from .*node_names.txt"):
        breeds.ClassHierarchy(folder)


def test_hierarchy_malformed_edge_line(tmp_path):
    folder = _copy(tmp_path)
    with open(folder / "class_hierarchy.txt", "a") as f:
        f.write("n00001740 n00021939 extra\n")
    with pytest.raises(DataError, match="line 1328.*parent_wnid child_wnid"):
        breeds.ClassHierarchy(folder)


def test_hierarchy_cycle(tmp_path):
    folder = _copy(tmp_path)
    with open(folder / "class_hierarchy.txt", "a") as f:
        f.write("n01629276 n00004258\n")  # salamander -> living thing closes a cycle
    with pytest.raises(DataError, match="cycle"):
        breeds.ClassHierarchy(folder)


@pytest.mark.parametrize("content", ["not json", '{"a": 1}', '[[0, "n01440764"]]', '[[0, "a", "x"], [0, "b", "y"]]'])
def test_class_info_malformed(tmp_path, content):
    folder = _copy(tmp_path)
    (folder / "dataset_class_info.json").write_text(content)
    with pytest.raises(DataError, match="dataset_class_info.json"):
        breeds.ClassHierarchy(folder)


def test_class_info_unrelated_to_hierarchy(tmp_path):
    """No ImageNet class of the JSON in the hierarchy: the root has nothing below it."""
    folder = _copy(tmp_path)
    (folder / "dataset_class_info.json").write_text(json.dumps([[0, "n99999999", "nothing"]]))
    with pytest.raises(DataError, match="root n00001740"):
        breeds.ClassHierarchy(folder)
