"""The listing of a scoring run (score/listing.py): directory walk, CSV listing, chunked manifest.

Invariants: only image files (any extension case) or --glob matches are listed, each exactly once;
a CSV listing needs --images and is validated; the manifest holds exactly the listed files minus
the done ones (--incremental), however the listing is chunked, and (listed, new) count them.
"""

import numpy as np
import pyarrow.parquet as pq
import pytest

from vehicle_ray.data import open_root
from vehicle_ray.errors import InputError
from vehicle_ray.score.done_index import path_hashes
from vehicle_ray.score.listing import ListingStats, chunked, iter_listing, listing_key, walk, write_manifest
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.store import OutputStore

IMAGES = ["z.JPG", "0.webp", "a/2.jpg", "a/1.PNG", "a/sub/3.Jpeg", "b/4.png", "b/5.tif", "c/6.bmp"]
OTHERS = ["notes.txt", "a/readme.md", "b/4.png.bak", "c/.hidden", "a/sub/x.jpg.tmp"]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    for name in IMAGES + OTHERS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "empty_dir").mkdir()
    return root


def test_walk_lists_every_image_once_in_any_extension_case(tree):
    names = list(walk(open_root(tree), None))
    assert sorted(names) == sorted(IMAGES)
    assert names == list(walk(open_root(tree), None))  # deterministic


def test_walk_is_a_stream(tree):
    """One directory listing at a time: the first name arrives before the tree has been walked."""
    it = walk(open_root(tree), None)
    assert next(it) in IMAGES


def test_walk_yields_names_in_byte_order_of_the_whole_name(tree):
    """The order S3 lists keys in: what the watermark compares against."""
    assert list(walk(open_root(tree), None)) == sorted(IMAGES, key=lambda n: n.encode())
    (tree / "a.jpg").write_bytes(b"x")  # "a.jpg" < "a/..." < "a0.jpg": '.' < '/' < '0'
    (tree / "a0.jpg").write_bytes(b"x")
    names = list(walk(open_root(tree), None))
    assert names.index("a.jpg") < names.index("a/1.PNG") < names.index("a/sub/3.Jpeg") < names.index("a0.jpg")


def night_tree(root, nights: int, per_night: int):
    for night in range(nights):
        for cam in ("cam1", "cam2"):
            d = root / f"2026-12-{night + 1:02d}" / cam
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_night // 2):
                (d / f"{i:04d}.jpg").write_bytes(b"x")


def test_a_walk_from_a_watermark_lists_only_names_above_it_and_skips_older_subtrees(tmp_path):
    night_tree(tmp_path, nights=20, per_night=10)
    root = open_root(tmp_path)
    everything = list(walk(root, None))
    assert len(everything) == 200
    full = ListingStats()
    assert list(walk(root, None, None, full)) == everything and full.last == everything[-1]
    after = "2026-12-18/cam2/0004.jpg"  # the last file of night 18
    stats = ListingStats()
    assert list(walk(root, None, after, stats)) == [n for n in everything if n > after]
    # the root, night 18 (an ancestor of the watermark) and its cam2, nights 19 and 20 with their cams:
    # never the 17 older nights
    assert stats.requests == 1 + 2 + 2 * 3 and stats.entries < 60 < full.entries
    assert list(walk(root, None, everything[-1])) == []  # nothing new
    (tmp_path / "2026-12-02" / "cam1" / "late.jpg").write_bytes(b"x")  # a late file under an old prefix
    assert "2026-12-02/cam1/late.jpg" not in list(walk(root, None, after))  # found by --relist only
    assert "2026-12-02/cam1/late.jpg" in list(walk(root, None))


def test_iter_listing_lists_from_the_watermark_unless_told_to_relist(tmp_path):
    night_tree(tmp_path, nights=3, per_night=4)
    after = "2026-12-02/cam2/0001.jpg"
    keys = []

    def watermark(key):
        keys.append(key)
        return after

    root, chunks, stats = iter_listing(tmp_path, None, ScoreOptions(incremental=True), watermark=watermark)
    assert [n for c in chunks for n in c] == [n for n in walk(root, None) if n > after]
    assert stats.after == after and keys == [listing_key(root, None)]
    _, chunks, stats = iter_listing(tmp_path, None, ScoreOptions(incremental=True, relist=True), watermark=watermark)
    assert len([n for c in chunks for n in c]) == 12 and stats.after is None
    assert listing_key(root, None) != listing_key(root, "*.png")  # one watermark per root and glob


@pytest.mark.parametrize(
    "glob, expected",
    [
        ("b/*", ["b/4.png", "b/4.png.bak", "b/5.tif"]),
        ("*.txt", ["notes.txt"]),
        ("a/*.jpg", ["a/2.jpg"]),
        ("*.gif", []),
    ],
)
def test_glob_replaces_the_extension_filter(tree, glob, expected):
    assert sorted(walk(open_root(tree), glob)) == expected


@pytest.mark.parametrize(
    "n, size, lengths", [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (0, 3, []), (2, 5, [2]), (3, 1, [1, 1, 1])]
)
def test_chunked(n, size, lengths):
    chunks = list(chunked(iter(range(n)), size))
    assert [len(c) for c in chunks] == lengths
    assert [x for c in chunks for x in c] == list(range(n))


def write_csv(tmp_path, names: list[str], header: str = "image_names,label") -> str:
    path = tmp_path / "list.csv"
    path.write_text("\n".join([header, *[f"{n},x" for n in names]]) + "\n")
    return str(path)


def test_csv_listing_keeps_the_csvs_order_in_chunks(tmp_path, tree):
    names = ["b/4.png", "z.JPG", "a/2.jpg", "0.webp", "c/6.bmp"]
    root, chunks, _ = iter_listing(write_csv(tmp_path, names), tree, ScoreOptions(), chunk=2)
    assert root.base == str(tree)
    assert list(chunks) == [["b/4.png", "z.JPG"], ["a/2.jpg", "0.webp"], ["c/6.bmp"]]


def test_csv_listing_by_column_name(tmp_path, tree):
    path = tmp_path / "named.csv"
    path.write_text("label,fn\nx,b/4.png\ny,z.JPG\n")
    _, chunks, _ = iter_listing(str(path), tree, ScoreOptions(fn_col="fn"))
    assert list(chunks) == [["b/4.png", "z.JPG"]]


@pytest.mark.parametrize(
    "names, images, message",
    [
        (["a/2.jpg"], None, "--images"),
        (["a/2.jpg", "b/4.png", "a/2.jpg"], "tree", "duplicate"),
        (["a/2.jpg", "../secret.jpg"], "tree", "escape"),
        (["/etc/passwd"], "tree", "escape"),
        (["s3://bucket/x.jpg"], "tree", "escape"),
    ],
)
def test_bad_csv_listings_are_input_errors(tmp_path, tree, names, images, message):
    with pytest.raises(InputError, match=message):
        iter_listing(write_csv(tmp_path, names), tree if images else None, ScoreOptions())


def manifest_rows(manifest: str) -> list[tuple[str, str]]:
    table = pq.read_table(manifest)
    return sorted(zip(table.column("path").to_pylist(), table.column("rel").to_pylist(), strict=True))


@pytest.mark.parametrize("done_names", [[], ["a/2.jpg"], ["z.JPG", "0.webp", "a/2.jpg"], IMAGES])
def test_manifest_is_the_listing_minus_the_done_files(tmp_path, tree, done_names):
    store = OutputStore.create(str(tmp_path / "out"))
    root, chunks, _ = iter_listing(tree, None, ScoreOptions(), chunk=3)
    done = np.sort(path_hashes([root.full_name(n) for n in done_names + ["elsewhere/not-listed.jpg"]]))
    manifest, listed, new = write_manifest(store, "run1", root, chunks, lambda h: np.isin(h, done))
    todo = sorted(set(IMAGES) - set(done_names))
    assert (listed, new) == (len(IMAGES), len(todo))
    if todo:
        assert manifest_rows(manifest) == sorted((root.full_name(n), n) for n in todo)
        assert len(list((tmp_path / "out").rglob("*.parquet"))) <= -(-len(IMAGES) // 3)  # one file per chunk at most
    else:
        assert not list((tmp_path / "out").rglob("*.parquet"))


def test_manifest_without_done_files_lists_everything(tmp_path, tree):
    store = OutputStore.create(str(tmp_path / "out"))
    root, chunks, _ = iter_listing(tree, None, ScoreOptions(), chunk=3)
    manifest, listed, new = write_manifest(store, "run1", root, chunks, None)
    assert listed == new == len(IMAGES)
    assert [p for p, _ in manifest_rows(manifest)] == sorted(str(tree / n) for n in IMAGES)
