"""Experiment configs, launch scripts and data-conversion scripts of the paper's datasets."""
import importlib.util
import json
import os
import subprocess

import pytest
from lavis.common.registry import registry
from omegaconf import OmegaConf

import _dataset_files as files
from conftest import REPO_ROOT

PROJECTS = {
    "msvd_qa": ("msvd_qa_icl", "qa"), "msrvtt_qa": ("msrvtt_qa_icl", "qa"), "vqav2": ("vqav2_icl", "qa"),
    "msvd_caption": ("msvd_caption_icl", "caption"), "msrvtt_caption": ("msrvtt_caption_icl", "caption"),
    "coco_caption": ("coco_caption_icl", "caption"),
}


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_project_config_names_registered_parts_and_the_reference_hyper_parameters(name):
    builder, kind = PROJECTS[name]
    cfg = OmegaConf.load(os.path.join(REPO_ROOT, "projects", "mmict", f"{name}.yaml"))
    assert list(cfg.datasets) == [builder] and registry.get_builder_class(builder) is not None
    assert registry.get_model_class(cfg.model.arch) is not None
    assert cfg.model.model_type == "pretrain_flant5xl"
    assert registry.get_runner_class(cfg.run.runner) is not None
    run = cfg.run
    assert (run.init_lr, run.min_lr, run.warmup_steps, run.weight_decay, run.max_epoch, run.amp) == (
        1e-5, 0, 1000, 0.05, 5, True)
    assert run.lr_sched == "linear_warmup_cosine_lr"
    dataset = cfg.datasets[builder]
    assert dataset.vis_processor.train.name == "blip2_image_train"
    assert dataset.vis_processor.train.image_size == dataset.vis_processor.eval.image_size == 224
    if kind == "qa":
        assert (cfg.model.max_txt_len, cfg.model.prompt, run.max_len, run.min_len) == (
            100, "Question: {} Short answer:", 10, 1)
        assert run.task == "icl_vqa"
    else:
        assert (cfg.model.max_txt_len, run.num_beams, run.max_len, run.min_len) == (32, 5, 30, 8)
        assert run.task == "icl_captioning"
        defaults = OmegaConf.load(registry.get_builder_class(builder).default_config_path()).datasets[builder]
        assert len(defaults.caption_prompts) == 6
    if registry.get_task_class(run.task) is None:
        pytest.skip(f"task {run.task} is not registered in this branch (another module)")


@pytest.mark.slow
@pytest.mark.parametrize("llm, model_type", [("opt2.7b", "pretrain_opt2.7b"), ("flant5xl", "pretrain_flant5xl")])
def test_launch_script_builds_a_multi_node_torchrun_command(llm, model_type):
    env = dict(os.environ, DRY_RUN="1", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.1.2.3",
               MASTER_PORT="29611", NPROC_PER_NODE="8")
    out = subprocess.run([os.path.join(REPO_ROOT, "run_scripts", "mmict", "msrvtt_qa.sh"), llm, "run.max_epoch=1"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["python", "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--nproc_per_node=8", "--master_addr=10.1.2.3",
            "--master_port=29611"} <= set(out)
    assert out[out.index("--cfg-path") + 1] == "projects/mmict/msrvtt_qa.yaml"
    options = out[out.index("--options") + 1:]
    assert options == [f"model.model_type={model_type}", f"run.output_dir=output/mmict/msrvtt_qa_{llm}",
                       "run.max_epoch=1"]
    for name in PROJECTS:
        assert os.access(os.path.join(REPO_ROOT, "run_scripts", "mmict", f"{name}.sh"), os.X_OK)
    bad = subprocess.run([os.path.join(REPO_ROOT, "run_scripts", "mmict", "vqav2.sh"), "gpt4"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown LLM 'gpt4'" in bad.stderr


# --- conversion scripts ----------------------------------------------------------------------

def load_script(name):
    path = os.path.join(REPO_ROOT, "run_scripts", "data", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_from(builder, annotations, media, data_type):
    builder_cls = registry.get_builder_class(builder)
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets[builder]
    cfg.build_info.annotations = {split: {"storage": path} for split, path in annotations.items()}
    cfg.build_info[data_type] = {"storage": media}
    cfg.vis_processor = {"train": {"name": "blip_image_eval", "image_size": 32},
                         "eval": {"name": "blip_image_eval", "image_size": 32}}
    cfg.num_frames = 2
    cfg.demonstrations.num = 1
    return builder_cls(cfg).build_datasets()


def test_msvd_qa_conversion_reads_the_official_files_and_builds(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "youtube_mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\nabc_1_2 vid2\n")
    for split, first in (("train", 0), ("val", 10), ("test", 20)):
        files.write_json(str(raw / f"{split}_qa.json"), [
            {"answer": "dog", "id": first, "question": "what is running?", "video_id": 1},
            {"answer": "man", "id": first + 1, "question": "who sings?", "video_id": 2}])
    written = load_script("convert_msvd_qa").convert(str(raw), str(tmp_path / "ann"))
    records = json.load(open(written["val"]))
    assert records[0] == {"video": "-4wsuPCjDBc_5_15.avi", "question": "what is running?", "answer": "dog",
                          "question_id": 10, "question_type": "what"}
    for clip in ("-4wsuPCjDBc_5_15", "abc_1_2"):
        files.write_frame_folder(str(tmp_path / "frames" / clip), seed=1)  # .avi absent: frame folders
    datasets = build_from("msvd_qa_icl", written, str(tmp_path / "frames"), "videos")
    assert datasets["test"][1]["text_output"] == "man" and datasets["test"][1]["question_type"] == "who"
    assert datasets["test"][1]["image"].shape == (2, 3, 32, 32)


def test_msvd_qa_conversion_names_an_unknown_video_id(tmp_path):
    (tmp_path / "youtube_mapping.txt").write_text("clip vid1\n")
    for split in ("train", "val", "test"):
        files.write_json(str(tmp_path / f"{split}_qa.json"), [{"answer": "a", "id": 1, "question": "q", "video_id": 7}])
    with pytest.raises(ValueError, match=r"train_qa.json: record 0: video_id 7"):
        load_script("convert_msvd_qa").convert(str(tmp_path), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # nothing written half-way


def test_msrvtt_qa_conversion(tmp_path):
    for split in ("train", "val", "test"):
        files.write_json(str(tmp_path / f"{split}_qa.json"), [
            {"answer": "cook", "category_id": 2, "id": 5, "question": "how is food made?", "video_id": 7010}])
    written = load_script("convert_msrvtt_qa").convert(str(tmp_path), str(tmp_path / "ann"))
    assert json.load(open(written["test"])) == [{"video": "video7010.mp4", "question": "how is food made?",
                                                "answer": "cook", "question_id": 5, "question_type": "how",
                                                "category_id": 2}]


def test_vqav2_conversion_keeps_answer_lists_and_unlabelled_test(tmp_path):
    questions = {"data_subtype": "val2014", "questions": [{"image_id": 42, "question": "what?", "question_id": 420}]}
    annotations = {"annotations": [{"question_id": 420, "answer_type": "other", "question_type": "what color",
                                    "answers": [{"answer": "red", "answer_id": i} for i in range(10)]}]}
    q_path = files.write_json(str(tmp_path / "q.json"), questions)
    a_path = files.write_json(str(tmp_path / "a.json"), annotations)
    convert = load_script("convert_vqav2").convert
    record = json.load(open(convert(q_path, a_path, str(tmp_path / "vqa_val.json"))))[0]
    assert record == {"question_id": 420, "question": "what?", "image": "val2014/COCO_val2014_000000000042.jpg",
                      "image_id": 42, "answer": ["red"] * 10, "question_type": "what color",
                      "answer_type": "other"}
    test_q = files.write_json(str(tmp_path / "t.json"), dict(questions, data_subtype="test-dev2015"))
    test_record = json.load(open(convert(test_q, None, str(tmp_path / "vqa_test.json"))))[0]
    assert "answer" not in test_record and test_record["image"].startswith("test2015/COCO_test2015_")


def test_coco_karpathy_conversion_builds_with_coco_caption_icl(tmp_path):
    images = []
    for n, split in enumerate(["train", "restval", "val", "test", "train"]):
        images.append({"filepath": "val2014", "filename": f"COCO_val2014_{n:012d}.jpg", "split": split,
                       "cocoid": n, "sentences": [{"raw": f"thing {n} A "}, {"raw": f"thing {n} B"}]})
        files.write_image(str(tmp_path / "images" / "val2014" / f"COCO_val2014_{n:012d}.jpg"), seed=n)
    source = files.write_json(str(tmp_path / "dataset_coco.json"), {"images": images})
    written = load_script("convert_coco_karpathy").convert(source, str(tmp_path / "ann"))
    datasets = build_from("coco_caption_icl", written, str(tmp_path / "images"), "images")
    assert len(datasets["train"]) == 3 * 2 and len(datasets["val"]) == 1 and len(datasets["test"]) == 1
    assert datasets["val"].captions_by_image_id == {2: ["thing 2 A", "thing 2 B"]}


def test_extract_frames_writes_one_folder_per_clip_and_reports_bad_videos(tmp_path):
    files.write_video(str(tmp_path / "videos" / "video1.mp4"), seed=1, num_frames=10)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"nope")
    failures = load_script("extract_frames").extract_all(str(tmp_path / "videos"), str(tmp_path / "frames"),
                                                         num_frames=4, size=16)
    assert list(failures) == [str(tmp_path / "videos" / "broken.mp4")]
    assert sorted(os.listdir(tmp_path / "frames")) == ["video1"]  # no temporary folder left
    assert sorted(os.listdir(tmp_path / "frames" / "video1")) == [f"frame_{i:04d}.jpg" for i in range(4)]
    from lavis_mmict.datasets.media import load_video_frames

    assert load_video_frames(str(tmp_path / "frames" / "video1.mp4"), 2)[0].size == (16, 16)
