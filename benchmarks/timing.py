"""Side-by-side timing: variants run interleaved (order alternating per round), each figure the
median over rounds, each ratio the median of per-round ratios, so machine noise hits both sides."""
import statistics
import time
from typing import Callable, Dict, List

import torch


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(variants: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                device="cpu") -> Dict[str, List[float]]:
    """Seconds per call of each variant, ``rounds`` times each, after ``warmup`` untimed calls."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    synchronize(device)
    seconds = {name: [] for name in names}
    for index in range(rounds):
        for name in (names if index % 2 == 0 else reversed(names)):
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values) -> float:
    return statistics.median(values)


def median_ratio(numerator: List[float], denominator: List[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))
