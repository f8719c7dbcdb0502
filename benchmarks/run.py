"""``python -m benchmarks``: print the five benchmark tables (markdown) and save them.

    python -m benchmarks                          # what `make bench` runs: CPU, small size
    python -m benchmarks --size real --device cuda --tables 1,2,3,4,5   # real shapes on a GPU
    python -m benchmarks --size tiny --rounds 1   # a quick look

Each table's variants run interleaved on one model in this process; figures are medians over
``--rounds`` rounds (after one warm-up call each), ratios medians of per-round ratios.
"""
import argparse
import os
import platform
import sys
import time

import torch

TARGETS = {  # table 1 speed-up at B=16, K=4, per size; none at tiny (32 px: it times the interpreter)
    "small": 2.0, "real": 5.0,
}


def machine(device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    if torch.device(device).type == "cuda":
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def run_tables(runs, header, started, path, after_each=None):
    """Run each table function of ``runs`` in turn, print its markdown as it comes, then write
    ``header``, every table and the total time to ``path`` (its folder created)."""
    outputs = []
    for run in runs:
        table_started = time.perf_counter()
        table = run()
        table.notes.append(f"measured in {time.perf_counter() - table_started:.0f} s")
        text = table.markdown()
        print(text, flush=True)
        outputs.append(text)
        if after_each is not None:
            after_each()
    footer = f"Total time: {time.perf_counter() - started:.0f} s\n"
    print(footer)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as file:
        file.write(header + "\n" + "\n".join(outputs) + "\n" + footer)
    print(f"saved {path}")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small", "real"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tables", default="1,2,3,4,5,6", help="comma-separated table numbers")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine, OpenMP threads waiting for a "
                             "core another process holds make per-call times swing 10-100x)")
    parser.add_argument("--out", default=os.path.join("output", "bench"),
                        help="folder of the saved markdown (relative to the current directory)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    from benchmarks import loading, tables

    wanted = {int(t) for t in args.tables.split(",") if t.strip()}
    started = time.perf_counter()
    header = (f"Machine: {machine(args.device)}\n"
              f"Command: python -m benchmarks {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(header, flush=True)
    runs = []
    if 1 in wanted:
        runs.append(lambda: tables.training_speedup(args.size, args.device, args.rounds, target=TARGETS.get(args.size)))
    if 2 in wanted:
        runs.append(lambda: tables.demo_cost(args.size, args.device, args.rounds))
    if 3 in wanted:
        runs.append(lambda: tables.aim_inference(args.size, args.device, args.rounds))
    if 4 in wanted:
        runs.append(lambda: tables.aim_bank(args.size, args.device, args.rounds))
    if 5 in wanted:
        runs.append(lambda: tables.batched_generation(args.size, args.device, args.rounds))
    if 6 in wanted:  # benchmarks/loading.py: data loading with demonstrations, pool feature store
        runs.append(lambda: loading.loader_speed(args.size, args.device, args.rounds, os.path.join(args.out, "loader_data")))
    path = os.path.join(args.out, f"bench_{args.size}_{torch.device(args.device).type}.md")
    run_tables(runs, header, started, path)


if __name__ == "__main__":
    main()
