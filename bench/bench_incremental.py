"""`score --incremental`'s done-check: the persisted done-index vs the old in-memory np.isin.

Synthesizes an OUT-like done-index of --history committed hashes (random 64-bit values, plus the
real path hashes of the listing's already-done files, so the check has real hits), in three layouts:

    uncompacted   one file per committed chunk (--history / --chunk-rows files)
    compacted     what vehicle_ray.score.done_index.compact (fanout 8) makes of it (also timed)
    files-1M      files of 1M hashes (40 at 40M)

then times, in a fresh process per repeat, the check a --incremental run does for a --listing-file
listing of which --new-frac are new: per listing chunk of --chunk-rows paths, hash the path strings
(store.path_hashes) and DoneIndex.contains; wall seconds and the process's peak RSS (ru_maxrss,
with the baseline after imports). Each run checks it found exactly the expected new files.

The old approach (the sorted array of every committed hash in memory, np.isin per chunk) is timed
on --old-history rows for --old-chunks chunks only (it takes seconds per chunk) and the per-chunk
figure is multiplied by the listing's chunk count: the table marks that as extrapolated. It does
not include loading the hashes from Parquet (3.8 s at 4M rows, measured before).

    .venv/bin/python bench/bench_incremental.py [--history 40000000] [--listing 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def listing_paths(start: int, stop: int) -> list[str]:
    """The synthetic listing: URI-like names as a nightly dump would list them."""
    return [f"s3://dumps/2026-12-01/cam{i % 97:03d}/img_{i:09d}.jpg" for i in range(start, stop)]


def done_positions(listing: int, new_frac: float) -> np.ndarray:
    """Which listing positions are already committed (a fixed random subset)."""
    rng = np.random.default_rng(7)
    return np.sort(rng.choice(listing, size=int(round(listing * (1 - new_frac))), replace=False))


def maxrss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries the parent's high-water mark
    over fork+exec into ru_maxrss (seen: a child of the 40M-hash setup process started at its size)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; no /proc elsewhere


# --- setup (parent) --------------------------------------------------------------------------------


def history_hashes(args: argparse.Namespace) -> np.ndarray:
    """--history hashes in commit order: random ones plus the done listing files' real hashes."""
    from vehicle_ray.score.done_index import path_hashes

    done = done_positions(args.listing, args.new_frac)
    paths = listing_paths(0, args.listing)
    real = path_hashes([paths[i] for i in done])
    rng = np.random.default_rng(11)
    hashes = np.concatenate([rng.integers(0, 2**64, args.history - len(real), dtype=np.uint64), real])
    rng.shuffle(hashes)
    return hashes


def write_layout(history: np.ndarray, index_dir: str, rows: int) -> int:
    import pyarrow.fs as pafs

    from vehicle_ray.score import done_index as di

    fs = pafs.LocalFileSystem()
    for n, start in enumerate(range(0, len(history), rows)):
        key = f"run-{n:05d}"
        di.write_index_file(fs, os.path.join(index_dir, di.index_file_name(key)), history[start : start + rows], [key])
    return n + 1


def build_layouts(args: argparse.Namespace, work: Path) -> dict[str, dict]:
    import pyarrow.fs as pafs

    from vehicle_ray.score import done_index as di

    t = time.perf_counter()
    history = history_hashes(args)
    layouts = {}
    files = write_layout(history, str(work / "uncompacted"), args.chunk_rows)
    layouts["uncompacted"] = {"dir": str(work / "uncompacted"), "files": files}
    print(f"wrote {files} files of {args.chunk_rows} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    if "files-1M" in args.layouts:
        layouts["files-1M"] = {
            "dir": str(work / "files-1M"),
            "files": write_layout(history, str(work / "files-1M"), 1_000_000),
        }
    del history
    if "compacted" in args.layouts:
        shutil.copytree(work / "uncompacted", work / "compacted")
        t = time.perf_counter()
        di.compact(pafs.LocalFileSystem(), str(work / "compacted"), fanout=args.fanout, base=args.chunk_rows)
        seconds = time.perf_counter() - t
        with di.DoneIndex.open(pafs.LocalFileSystem(), str(work / "compacted")) as index:
            files = sorted(f.count for f in index.files)
        layouts["compacted"] = {
            "dir": str(work / "compacted"),
            "files": len(files),
            "compact_s": seconds,
            "sizes": files,
        }
        print(f"compacted into {len(files)} files in {seconds:.1f} s", file=sys.stderr)
    return {k: v for k, v in layouts.items() if k in args.layouts}


# --- the timed checks (child processes) ------------------------------------------------------------


def check_new(args: argparse.Namespace) -> dict:
    """The new check, as write_manifest would do it: per chunk hash + DoneIndex.contains."""
    import pyarrow.fs as pafs

    from vehicle_ray.score.done_index import DoneIndex, path_hashes

    base = maxrss_mb()
    t_open = time.perf_counter()
    index = DoneIndex.open(pafs.LocalFileSystem(), args.index)
    open_s = time.perf_counter() - t_open
    hash_s = contains_s = 0.0
    new = 0
    for start in range(0, args.listing, args.chunk_rows):
        paths = listing_paths(start, min(start + args.chunk_rows, args.listing))  # the listing's own cost: untimed
        t = time.perf_counter()
        hashes = path_hashes(paths)
        hash_s += time.perf_counter() - t
        t = time.perf_counter()
        new += int((~index.contains(hashes)).sum())
        contains_s += time.perf_counter() - t
    index.close()
    return {
        "open_s": open_s,
        "hash_s": hash_s,
        "contains_s": contains_s,
        "total_s": open_s + hash_s + contains_s,
        "new": new,
        "files": len(index.files),
        "base_rss_mb": base,
        "maxrss_mb": maxrss_mb(),
    }


def check_old(args: argparse.Namespace) -> dict:
    """The old check: every committed hash sorted in memory, np.isin per chunk (first chunks only)."""
    from vehicle_ray.score.done_index import path_hashes

    base = maxrss_mb()
    done = done_positions(args.listing, args.new_frac)
    paths = listing_paths(0, args.listing)
    real = path_hashes([paths[i] for i in done])
    del paths
    rng = np.random.default_rng(11)
    committed = np.sort(np.concatenate([rng.integers(0, 2**64, args.old_history - len(real), dtype=np.uint64), real]))
    per_chunk = []
    new = 0
    for start in range(0, args.old_chunks * args.chunk_rows, args.chunk_rows):
        paths = listing_paths(start, start + args.chunk_rows)
        t = time.perf_counter()
        new += int((~np.isin(path_hashes(paths), committed)).sum())
        per_chunk.append(time.perf_counter() - t)
    expected = args.chunk_rows * args.old_chunks - int((done < args.chunk_rows * args.old_chunks).sum())
    return {
        "per_chunk_s": statistics.median(per_chunk),
        "chunks": len(per_chunk),
        "new": new,
        "expected_new": expected,
        "base_rss_mb": base,
        "maxrss_mb": maxrss_mb(),
    }


def run_child(kind: str, args: argparse.Namespace, **extra: object) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--listing",
        str(args.listing),
        "--new-frac",
        str(args.new_frac),
        "--chunk-rows",
        str(args.chunk_rows),
        "--old-history",
        str(args.old_history),
        "--old-chunks",
        str(args.old_chunks),
    ]
    for name, value in extra.items():
        cmd += [f"--{name}", str(value)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=HERE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- report ------------------------------------------------------------------------------------------


def rss(runs: list[dict]) -> str:
    base = statistics.median(r["base_rss_mb"] for r in runs)
    return f"{fmt([r['maxrss_mb'] for r in runs], 'MB', 0)} ({base:.0f})"


def fmt(values: list[float], unit: str = "s", digits: int = 2) -> str:
    each = f" ({', '.join(f'{v:.{digits}f}' for v in values)})" if len(values) > 1 else ""
    return f"{statistics.median(values):.{digits}f} {unit}{each}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=40_000_000, help="committed rows in the synthetic index")
    ap.add_argument("--listing", type=int, default=1_000_000, help="files in the listing to check")
    ap.add_argument("--new-frac", type=float, default=0.5, help="fraction of the listing not yet committed")
    ap.add_argument("--chunk-rows", type=int, default=100_000, help="listing chunk = committed chunk size")
    ap.add_argument("--layouts", default="uncompacted,compacted,files-1M")
    ap.add_argument("--fanout", type=int, default=8, help="compaction fanout")
    ap.add_argument("--old-history", type=int, default=4_000_000, help="committed rows for the old np.isin")
    ap.add_argument("--old-chunks", type=int, default=1, help="listing chunks timed for the old approach")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", help="where the index files go (default: a temporary directory, removed)")
    ap.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(check_new(args) if args.child == "new" else check_old(args)))
        return
    args.layouts = args.layouts.split(",")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        report(args, build_layouts(args, work))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, layouts: dict[str, dict]) -> None:
    chunks = -(-args.listing // args.chunk_rows)
    expected = args.listing - len(done_positions(args.listing, args.new_frac))
    print(
        f"\nhistory {args.history:,} hashes, listing {args.listing:,} ({expected:,} new) in {chunks} chunks; "
        f"medians of {args.repeats} (each repeat)\n"
    )
    print("| approach | index files | done-check wall | of which hashing | contains | peak RSS (baseline) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, layout in layouts.items():
        runs = [run_child("new", args, index=layout["dir"]) for _ in range(args.repeats)]
        assert all(r["new"] == expected for r in runs), (name, [r["new"] for r in runs], expected)
        print(
            f"| done-index, {name} | {layout['files']} | {fmt([r['total_s'] for r in runs])} | "
            f"{statistics.median(r['hash_s'] for r in runs):.2f} s | "
            f"{statistics.median(r['contains_s'] for r in runs):.2f} s | "
            f"{rss(runs)} |",
            flush=True,
        )
    if args.old_chunks:
        runs = [run_child("old", args) for _ in range(args.repeats)]
        assert all(r["new"] == r["expected_new"] for r in runs), runs
        per = [r["per_chunk_s"] for r in runs]
        print(
            f"| old np.isin, {args.old_history:,} rows in memory | - | {statistics.median(per) * chunks:.1f} s "
            f"(extrapolated: {chunks} x {fmt(per)} per chunk, {args.old_chunks} timed) | - | - | "
            f"{rss(runs)} |"
        )
    if "compacted" in layouts:
        c = layouts["compacted"]
        print(
            f"\ncompaction of {layouts.get('uncompacted', {}).get('files', '?')} files into {c['files']} "
            f"(fanout {args.fanout}): {c['compact_s']:.1f} s; sizes {c['sizes']}"
        )
        nights = [nightly_compaction(args, c["dir"], night) for night in range(args.repeats)]
        print(
            f"a night's commits ({expected:,} rows in chunk files) then compact, on the compacted layout: "
            f"{fmt([n[0] for n in nights], digits=3)}; files after: {[n[1] for n in nights]}"
        )


def nightly_compaction(args: argparse.Namespace, index_dir: str, night: int) -> tuple[float, int]:
    """The steady state: one night's chunk files land on a compacted index, then compact() runs."""
    import pyarrow.fs as pafs

    from vehicle_ray.score import done_index as di

    fs = pafs.LocalFileSystem()
    rows = args.listing - len(done_positions(args.listing, args.new_frac))
    rng = np.random.default_rng(100 + night)
    for n, start in enumerate(range(0, rows, args.chunk_rows)):
        key = f"night{night}-{n:05d}"
        hashes = rng.integers(0, 2**64, min(args.chunk_rows, rows - start), dtype=np.uint64)
        di.write_index_file(fs, os.path.join(index_dir, di.index_file_name(key)), hashes, [key])
    t = time.perf_counter()
    di.compact(fs, index_dir, fanout=args.fanout, base=args.chunk_rows)
    seconds = time.perf_counter() - t
    with di.DoneIndex.open(fs, index_dir) as index:
        return seconds, len(index.files)


if __name__ == "__main__":
    main()
