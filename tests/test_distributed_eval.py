"""Two processes (gloo): every rank's predictions gathered, each id exactly once, with the
DistributedSampler's padded shards and with shards of different lengths."""
import json
import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler

NUM_QUESTIONS = 7  # odd: 2 ranks get 4 + 3 items (the sampler pads rank 1 with a repeat)
# "sampler": the runner's DistributedSampler (equal shards, padded); "uneven": 4 and 3 items
SHARDINGS = ("sampler", "uneven")

pytestmark = pytest.mark.slow  # spawns two worker processes


class _Questions:
    name = "toy_qa/test"

    def __len__(self):
        return NUM_QUESTIONS

    def __getitem__(self, index):
        return {"question_id": index, "text_output": "yes"}


def _collate(items):
    return {"question_id": [item["question_id"] for item in items],
            "text_output": [item["text_output"] for item in items]}


class _AnswersYesOnEvenIds:
    def predict_answers(self, samples, **kwargs):
        return ["yes" if qid % 2 == 0 else "no" for qid in samples["question_id"]]


def _worker(rank, world_size, tmp_dir):
    from lavis.common.registry import registry

    import lavis_mmict  # noqa: F401

    store = dist.FileStore(os.path.join(tmp_dir, "store"), world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        registry.register_path("output_dir", tmp_dir)
        registry.register_path("result_dir", tmp_dir)
        for sharding in SHARDINGS:
            _evaluate(rank, world_size, tmp_dir, sharding)
    finally:
        dist.destroy_process_group()


def _evaluate(rank, world_size, tmp_dir, sharding):
    from lavis_mmict.tasks.icl_vqa import ICLVQATask

    dataset = _Questions()
    if sharding == "sampler":  # what the runner does
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=_collate)
    else:
        shard = list(range(rank, NUM_QUESTIONS, world_size))
        loader = DataLoader([dataset[i] for i in shard], batch_size=3, collate_fn=_collate)
    task = ICLVQATask()
    task.before_evaluation(model=None, dataset=dataset)
    results = task.evaluation(_AnswersYesOnEvenIds(), loader, cuda_enabled=False)
    with open(os.path.join(tmp_dir, f"local{rank}_{sharding}.json"), "w") as f:
        json.dump(results, f)
    metrics = task.after_evaluation(val_result=results, split_name="test", epoch=sharding)
    with open(os.path.join(tmp_dir, f"metrics{rank}_{sharding}.json"), "w") as f:
        json.dump(metrics, f)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """One 2-process run (spawning is the slow part) evaluating both shardings."""
    tmp_dir = tmp_path_factory.mktemp("two_ranks")
    mp.start_processes(_worker, args=(2, str(tmp_dir)), nprocs=2, start_method="spawn")
    return tmp_dir


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_two_ranks_each_question_once(two_rank_run, sharding):
    tmp_path = two_rank_run

    local = [json.loads((tmp_path / f"local{rank}_{sharding}.json").read_text()) for rank in range(2)]
    local_ids = [[r["question_id"] for r in records] for records in local]
    if sharding == "sampler":
        assert local_ids == [[0, 2, 4, 6], [1, 3, 5, 0]]  # rank 1 padded with question 0 again
    else:
        assert local_ids == [[0, 2, 4, 6], [1, 3, 5]]

    merged = json.loads((tmp_path / f"test_epoch{sharding}.json").read_text())
    assert sorted(r["question_id"] for r in merged) == list(range(NUM_QUESTIONS))  # each exactly once
    assert not list(tmp_path.glob("*_rank*.json"))

    metrics = json.loads((tmp_path / f"metrics0_{sharding}.json").read_text())
    assert metrics["num_questions"] == NUM_QUESTIONS
    assert metrics["agg_metrics"] == pytest.approx(100 * 4 / 7)  # ids 0, 2, 4, 6 answered right
    assert json.loads((tmp_path / f"metrics1_{sharding}.json").read_text()) is None  # only rank 0 scores
