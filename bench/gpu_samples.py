"""What nvidia-smi showed while a step of bench/gpu_smoke.sh ran, or that it could not show it.

The smoke's sampler writes one line twice a second: "UTIL MEMORY_MIB PROCESSES" (utilisation %, memory
used in MiB, and how many compute processes `nvidia-smi --query-compute-apps` lists; a field that
nvidia-smi reports as "[N/A]" stays non-numeric). Inside a container nvidia-smi often lists no compute
process at all (the processes live in another PID namespace), so "a process of the step held the GPU"
falls back to the GPU's memory rising above its first sample, taken before the step started.

    python bench/gpu_samples.py utilisation FILE    median/p90 utilisation while the step held the GPU
    python bench/gpu_samples.py stayed-off FILE     the step never created a CUDA context

Exit status: 0 pass, 1 fail, 77 (SKIP in the smoke's summary) when the samples cannot say; the last
line printed is the verdict.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

PASS, FAIL, NOT_OBSERVED = 0, 1, 77
# GPU memory growth that counts as "a process holds the GPU": a CUDA context alone takes hundreds of MiB,
# while the samples of an idle GPU differ by a few MiB at most.
MEMORY_MARGIN_MIB = 100


@dataclass(frozen=True)
class Sample:
    util: int | None  # None: nvidia-smi reported no number
    memory_mib: int | None
    processes: int


def _number(field: str) -> int | None:
    return int(field) if field.isdigit() else None


def parse(lines: list[str]) -> list[Sample]:
    """The sampler's lines; a line cut short (the sampler killed mid-write) is dropped."""
    samples = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[2].isdigit():
            samples.append(Sample(_number(fields[0]), _number(fields[1]), int(fields[2])))
    return samples


def _memory_observed(samples: list[Sample]) -> bool:
    return all(s.memory_mib is not None for s in samples)


def on_gpu(samples: list[Sample]) -> list[Sample]:
    """The samples taken while the step's processes held the GPU: those listing a compute process, or
    where nvidia-smi lists none at all, those whose memory is MEMORY_MARGIN_MIB above the first sample's."""
    listed = [s for s in samples if s.processes > 0]
    if listed or not samples or not _memory_observed(samples):
        return listed
    return [s for s in samples if s.memory_mib > samples[0].memory_mib + MEMORY_MARGIN_MIB]


def utilisation(samples: list[Sample]) -> tuple[int, str]:
    """(exit status, verdict) for a step that must use the GPU: its utilisation while it held it."""
    if not samples:
        return NOT_OBSERVED, "no nvidia-smi samples: the GPU's utilisation cannot be observed here"
    busy = on_gpu(samples)
    if not busy:
        if not _memory_observed(samples):
            return NOT_OBSERVED, "nvidia-smi lists no compute process and no memory use: utilisation cannot be observed"
        return FAIL, f"no sample while the step held the GPU ({len(samples)} samples, memory never rose)"
    utils = sorted(s.util for s in busy if s.util is not None)
    if not utils:
        return NOT_OBSERVED, "nvidia-smi reports no utilisation number: utilisation cannot be observed"
    p90 = utils[int(0.9 * (len(utils) - 1))]
    return PASS, f"GPU utilisation: median {statistics.median(utils):.0f}%, p90 {p90}% ({len(utils)} samples)"


def stayed_off(samples: list[Sample]) -> tuple[int, str]:
    """(exit status, verdict) for a step that must not touch the GPU: no compute process listed, and the
    GPU's memory never above its first sample's by MEMORY_MARGIN_MIB."""
    if not samples:
        return NOT_OBSERVED, "no nvidia-smi samples: whether the step stayed off the GPU cannot be observed here"
    most = max(s.processes for s in samples)
    if most:
        return FAIL, f"up to {most} compute process(es) on the GPU while the step ran"
    if not _memory_observed(samples):
        return NOT_OBSERVED, "nvidia-smi lists no compute process and no memory use: a CUDA context cannot be observed"
    grew = max(s.memory_mib for s in samples) - samples[0].memory_mib
    if grew > MEMORY_MARGIN_MIB:
        return FAIL, f"GPU memory grew by {grew} MiB while the step ran (a CUDA context)"
    return PASS, f"no compute process on the GPU, its memory within {grew} MiB of the start ({len(samples)} samples)"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("utilisation", "stayed-off"):
        print("usage: python bench/gpu_samples.py utilisation|stayed-off FILE", file=sys.stderr)
        return 2
    path = Path(argv[2])
    samples = parse(path.read_text().splitlines()) if path.is_file() else []
    status, verdict = (utilisation if argv[1] == "utilisation" else stayed_off)(samples)
    print(verdict)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
