"""M-Hub read-out probe: can a linear read-out recover each demonstration token from its M-Hub
text feature, at each stage of the path (Q-Former embeddings, each Q-Former layer, llm_proj)?

    python run_scripts/mmict/probe_mhub.py --cfg-path output/mmict_demo_configs/mmict.yaml \
        --checkpoint output/mmict_demo/<job_id>/checkpoint_best.pth [--fit-split train] [--score-split test] \
        [--limit N] [--seed S] [--options key=value ...]

Every record of the config's first dataset becomes one demonstration text (its clip + the
demonstration template); read-outs are fitted on --fit-split and scored on --score-split. Without
--checkpoint the model has the weights its config gives it (random for the tiny type, seeded by
--seed). Prints
markdown tables (accuracy in percent): each token from its own position, and each answer from the
demo's other positions, by question type. The code is lavis_mmict/mhub_probe.py.
"""
import argparse
from types import SimpleNamespace

import torch
from lavis import tasks
from lavis.common.config import Config

import lavis_mmict  # noqa: F401  (registers models, builders, tasks)
from lavis_mmict import mhub_probe
from lavis_mmict.demo_runs import print_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--checkpoint", default=None, help="a checkpoint written by train.py (trainable parameters)")
    parser.add_argument("--fit-split", default="train")
    parser.add_argument("--score-split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="at most N records per split")
    parser.add_argument("--seed", type=int, default=0, help="seeds the built (random-init) weights")
    parser.add_argument("--options", nargs="+", default=[])
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config(SimpleNamespace(cfg_path=args.cfg_path, options=args.options))
    task = tasks.setup_task(cfg)
    splits = next(iter(task.build_datasets(cfg).values()))
    torch.manual_seed(args.seed)
    model = task.build_model(cfg).float()
    if args.checkpoint:
        model.load_trainable_checkpoint(args.checkpoint)
    fit, score = (mhub_probe.collect_stage_features(model, mhub_probe.demo_records(splits[split], args.limit))
                  for split in (args.fit_split, args.score_split))
    rows, nearest = mhub_probe.probe_table(fit, score, mhub_probe.llm_answer_embeddings(model, fit.answers + score.answers))
    print(f"\nM-Hub read-out probe ({args.checkpoint or 'built weights'}): fitted on {args.fit_split} "
          f"({len(fit.token_ids)} word tokens), scored on {args.score_split} ({len(score.token_ids)} word "
          f"tokens, {int(score.is_answer.sum())} answer tokens)")
    print_table(["stage", "word tokens %", "answer tokens %"],
                [[stage, f"{words:.1f}", f"{answer:.1f}"] for stage, words, answer in rows])
    print(f"llm_proj output at an answer's first token nearest (cosine) to the LLM embedding of that answer "
          f"(of {len(set(score.answers))} answers): {nearest:.1f}%")
    rest = mhub_probe.answer_from_rest_table(fit, score)
    types = list(rest[0][1])
    print(f"\nThe answer read out from the mean of the demo's other word positions, by question type (%):")
    print_table(["stage"] + types, [[stage] + [f"{by_type[t]:.1f}" for t in types] for stage, by_type in rest])
    return rows, nearest, rest


if __name__ == "__main__":
    main()
