"""Table 5: batched beam-search generation of ``mmict_blip2``, today's path (each sample's prefix
pre-filled once, its key/value cache repeated per beam) side by side with the path before it
(the prefix repeated per beam before the first forward pass, ``reference.repeated_prefix_generate``),
at batch 1 and a large batch, with few and many demonstrations."""
import contextlib
import time

import torch

from benchmarks.reference import repeated_prefix_generation
from benchmarks.sizes import SIZES, build_model, image_size
from benchmarks.timing import interleaved, median, median_ratio, synchronize
from benchmarks.workloads import make_batch
from lavis_mmict.models import base
from lavis_mmict.models.feature_cache import DemoFeatureCache

PATHS = ("repeated prefix", "pre-fill once")


@contextlib.contextmanager
def timed_llm(seconds: list, device):
    """Within the block, the time spent in the LLM's generation (``llm_generate``) adds to ``seconds[0]``."""
    inner = base.llm_generate

    def timed(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        synchronize(device)
        seconds[0] += time.perf_counter() - start
        return out

    base.llm_generate = timed
    try:
        yield
    finally:
        base.llm_generate = inner


def _one_sample_each(samples, count):
    return [{key: value[i:i + 1] for key, value in samples.items()} for i in range(count)]


def batched_generation(size, device, rounds, batch=32, single=8, shots=(2, 16), long_batch=8, long_rounds=1,
                       num_beams=5, max_len=10, batch_target=None, speedup_target=2.0):
    """Samples/s per (K, batch, path). Targets: at the fewest shots, pre-fill batch / batch 1 >=
    ``batch_target`` (1.5 on CPU, 4 on a GPU); at the most shots, pre-fill / repeated prefix >=
    ``speedup_target`` at the large batch. Batch 1 runs the first ``single`` samples one by one;
    the most-shots rows use ``long_batch`` and at most ``long_rounds`` rounds (time)."""
    from benchmarks.tables import Table, _verdict, warm_demo_cache  # tables imports this module

    if batch_target is None:
        batch_target = 4.0 if torch.device(device).type == "cuda" else 1.5
    model = build_model(size, device).eval()
    frames, pixels = SIZES[size].frames, image_size(model)
    settings = dict(num_beams=num_beams, max_length=max_len, min_length=max_len)
    cache = DemoFeatureCache("memory", memory_items=100000)
    table = Table(f"5. mmict_blip2 batched generation, prefix pre-filled once vs repeated per beam ({size}, "
                  f"{device}, beam {num_beams}, {max_len} new tokens)",
                  ["K", "batch", "path", "samples/s", "LLM s / sample", "x batch 1", "x repeated prefix"])
    verdicts = {}
    for index, num_demos in enumerate(shots):
        large = batch if index == 0 else long_batch
        samples = make_batch(large, num_demos, frames, pixels, seed=5 + num_demos, device=device)
        singles = _one_sample_each(samples, min(single if index == 0 else single // 2, large))
        model.demo_feature_cache = cache  # demo clips' ViT output cached: the table times the LLM side
        warm_demo_cache(model, samples)
        llm_seconds = {}

        def variant(path, many):
            name = (path, many)
            llm_seconds[name] = []

            def run():
                spent = [0.0]
                old = repeated_prefix_generation() if path == PATHS[0] else contextlib.nullcontext()
                with old, timed_llm(spent, device):
                    if many:
                        model.generate(samples, **settings)
                    else:
                        for one in singles:
                            model.generate(one, **settings)
                llm_seconds[name].append(spent[0])
            return run

        names = [(path, many) for path in PATHS for many in (False, True)]
        seconds = interleaved({name: variant(*name) for name in names},
                              rounds=rounds if index == 0 else min(rounds, long_rounds),
                              warmup=1 if index == 0 else 0, device=device)
        counts = {False: len(singles), True: large}
        for path in PATHS:
            for many in (False, True):
                values = seconds[(path, many)]
                # timed rounds only (the warm-up's LLM time was recorded too, first)
                llm = median(llm_seconds[(path, many)][-len(values):]) / counts[many]
                per_batch1 = median_ratio([s / counts[False] for s in seconds[(path, False)]],
                                          [s / counts[many] for s in values])
                versus_old = median_ratio([s / counts[many] for s in seconds[(PATHS[0], many)]],
                                          [s / counts[many] for s in values])
                table.rows.append([num_demos, large if many else 1, path, counts[many] / median(values), llm,
                                   per_batch1, versus_old])
                if path == PATHS[1]:
                    verdicts[(num_demos, many)] = (per_batch1, versus_old)
    model.demo_feature_cache = DemoFeatureCache("none")
    fewest, most = shots[0], shots[-1]
    table.targets.append(_verdict(f"K={fewest}, pre-fill once: samples/s at batch {batch} / batch 1",
                                  verdicts[(fewest, True)][0], batch_target))
    table.targets.append(_verdict(f"K={most}, batch {long_batch}: samples/s pre-fill once / repeated prefix",
                                  verdicts[(most, True)][1], speedup_target))
    table.notes.append("tokens: the two paths generate identical tokens (tests/test_generation_prefill.py); "
                       "min_length = max_length, so every variant generates the same number of tokens")
    table.notes.append(f"batch 1 = the first {single} (K={shots[-1]}: {single // 2}) samples one by one; demo clips' frozen ViT outputs are in a "
                       "warm demo feature cache (the queries' are computed); 'LLM s / sample' is the time inside "
                       "the LLM's generate (pre-fill + beam search), the rest is encoding")
    table.notes.append(f"rounds: {rounds} for K={fewest}, {min(rounds, long_rounds)} for K={most}")
    return table
