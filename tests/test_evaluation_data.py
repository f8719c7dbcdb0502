"""Evaluation data that would give wrong scores silently is refused when the split is loaded:
repeated question ids, empty answers, and an unlabelled split used for validation in training."""
from types import SimpleNamespace

import pytest
from lavis import tasks
from lavis.common.config import Config
from omegaconf import OmegaConf

import _dataset_files as files
from lavis_mmict.datasets.records import load_qa_records
from lavis_mmict.errors import DataError, UserError
from lavis_mmict.tasks.evaluation import check_validation_labelled
from lavis_mmict.tasks.icl_vqa import vqa_accuracy


def qa(question_id, answer="red"):
    return {"video": "a.mp4", "question": "what?", "answer": answer, "question_id": question_id}


def test_repeated_question_ids_in_an_evaluation_split_are_named(tmp_path):
    records = [qa(i) for i in range(15)] + [qa(7)]  # 16 records, 15 ids: one would not be scored
    path = files.write_json(str(tmp_path / "val.json"), records)
    with pytest.raises(DataError) as excinfo:
        load_qa_records([path], "videos", is_train=False)
    message = str(excinfo.value)
    assert f"question_id 7 in {path} record 7, {path} record 15" in message and "\n" not in message
    assert len(load_qa_records([path], "videos", is_train=True)) == 16  # training: fine


def test_repeated_ids_across_the_files_of_one_split(tmp_path):
    first = files.write_json(str(tmp_path / "a.json"), [qa("x1"), qa("x2")])
    second = files.write_json(str(tmp_path / "b.json"), [qa("x2")])
    with pytest.raises(DataError, match=rf"question_id 'x2' in {first} record 1, {second} record 0"):
        load_qa_records([first, second], "videos", is_train=False)


@pytest.mark.parametrize("answer, is_train", [("", False), ("  ", True), ([], False),
                                              (["red", ""], False), (["", ""], True)])
def test_an_empty_answer_is_named(tmp_path, answer, is_train):
    path = files.write_json(str(tmp_path / "val.json"), [qa(1), qa(2, answer=answer)])
    with pytest.raises(DataError, match=rf"{path}: record 1 \(question_id=2\) has an empty answer"):
        load_qa_records([path], "videos", is_train=is_train)


def test_why_empty_answers_are_refused():
    # a ground truth of "" scores any prediction that normalises to nothing as correct
    assert vqa_accuracy([{"question_id": 1, "answer": "!!!", "gt_answer": ""}])["acc"] == 100.0


def test_training_answer_lists_may_hold_one_empty_annotator_answer(tmp_path):
    path = files.write_json(str(tmp_path / "train.json"), [qa(1, answer=["red", "red", ""])])
    assert load_qa_records([path], "videos", is_train=True)[0]["answer"] == ["red", "red", ""]


def _config(tmp_path, val_labelled, evaluate=False):
    made = files.make_videoqa(str(tmp_path / "data"), clips={"train": 2, "val": 1, "test": 1})
    val = made["annotations"]["val"]
    if not val_labelled:
        records = [{k: v for k, v in r.items() if k != "answer"} for r in OmegaConf.to_container(OmegaConf.load(val))]
        files.write_json(val, records)
    config = {
        "model": {"arch": "mmict_blip2", "model_type": "tiny"},
        "datasets": {"videoqa_icl": {
            "build_info": {"annotations": {s: {"storage": p} for s, p in made["annotations"].items()},
                           "videos": {"storage": made["media"]}},
            "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 32},
                              "eval": {"name": "blip_image_eval", "image_size": 32}},
            "demonstrations": {"num": 1, "strategy": "random", "pool": "train"}}},
        "run": {"task": "icl_vqa", "output_dir": str(tmp_path / "out"), "train_splits": ["train"],
                "valid_splits": ["val"], "test_splits": ["test"], "evaluate": evaluate},
    }
    path = tmp_path / "cfg.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    return Config(SimpleNamespace(cfg_path=str(path), options=None))


def test_an_unlabelled_validation_split_of_a_training_run_is_refused(tmp_path):
    cfg = _config(tmp_path, val_labelled=False)
    datasets = tasks.setup_task(cfg).build_datasets(cfg)
    with pytest.raises(DataError) as excinfo:
        check_validation_labelled(cfg.run_cfg, datasets)
    assert isinstance(excinfo.value, UserError)
    assert str(excinfo.value).startswith(
        "datasets.videoqa_icl split 'val' has no answers (an unlabelled split) but is in run.valid_splits")


def test_unlabelled_validation_split_is_fine_when_only_evaluating(tmp_path):
    cfg = _config(tmp_path, val_labelled=False, evaluate=True)
    datasets = tasks.setup_task(cfg).build_datasets(cfg)
    check_validation_labelled(cfg.run_cfg, datasets)
    assert not datasets["videoqa_icl"]["val"].labelled and datasets["videoqa_icl"]["train"].labelled
