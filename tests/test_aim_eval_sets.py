"""AIM's evaluation sets (okvqa_icl, vizwiz_icl, hateful_memes_icl, flickr30k_caption_icl) and the
icl_classification task: metrics against values computed by hand on known predictions, the
models' answer scoring against their own training loss, and docs/data.md's walkthroughs run on
miniatures of each release with evaluate.py on 2 processes (tiny aim_opt, 2 demonstrations)."""
import json
import os
import re
import shlex
import sys

import pytest
import torch
from lavis.common.registry import registry

import _aim_release_files as releases
from _aim_model import build as build_aim
from _batches import aim_batch
from lavis_mmict.errors import DataError
from lavis_mmict.tasks.binary_metrics import average_precision, f1_score, roc_auc
from lavis_mmict.tasks.icl_classification import answer_label, classification_metrics
from lavis_mmict.tasks.icl_vqa import unanswerability_metrics, vqa_accuracy
from test_data_walkthroughs import run_commands
from test_datasets_projects import build_from, load_script

# ------------------------------------------------------------------ registered names


def test_the_sets_and_the_task_are_registered():
    import lavis_mmict  # noqa: F401

    for name in ("okvqa_icl", "vizwiz_icl", "hateful_memes_icl", "flickr30k_caption_icl"):
        builder = registry.get_builder_class(name)
        assert builder is not None and builder.dataset_name == name
        assert os.path.isfile(builder.DATASET_CONFIG_DICT["default"])
    assert registry.get_builder_class("flickr30k_caption_icl").task_kind == "caption"
    assert registry.get_task_class("icl_classification") is not None


# ------------------------------------------------------------------ metrics, known predictions

def okvqa_records():
    """OK-VQA's two miniature questions, 10 answers each, and predictions matching m of them."""
    red = ["red"] * 7 + ["blue"] * 3
    animals = ["dog"] * 4 + ["cat"] * 2 + ["horse"] + ["bird"] * 3
    return [{"question_id": 1, "answer": "Red.", "gt_answer": red},        # m = 7: 1
            {"question_id": 2, "answer": "blue", "gt_answer": red},        # m = 3: (3*2/3 + 7*1)/10 = 0.9
            {"question_id": 3, "answer": "a cat", "gt_answer": animals},   # m = 2: (2*1/3 + 8*2/3)/10 = 0.6
            {"question_id": 4, "answer": "horse", "gt_answer": animals},   # m = 1: (1*0 + 9*1/3)/10 = 0.3
            {"question_id": 5, "answer": "fish", "gt_answer": animals}]    # m = 0: 0


def test_okvqa_accuracy_over_ten_answers_by_hand():
    metrics = vqa_accuracy(okvqa_records())
    assert metrics["num_questions"] == 5
    assert metrics["agg_metrics"] == pytest.approx(100 * (1 + 0.9 + 0.6 + 0.3 + 0) / 5)  # 56.0
    assert "unanswerable_ap" not in metrics  # no `answerable`: not a VizWiz split


def test_vizwiz_accuracy_per_answer_type_and_unanswerability_by_hand():
    unans = ["unanswerable"] * 6 + ["coffee"] * 4
    yes = ["yes"] * 8 + ["no"] * 2
    records = [  # (prediction, answers, answer_type, answerable)
        ("unanswerable", unans, "unanswerable", 0),  # acc 1,   predicted unanswerable, truly
        ("coffee", unans, "unanswerable", 0),        # acc 1,   predicted answerable,   unanswerable
        ("yes", yes, "yes/no", 1),                   # acc 1,   predicted answerable,   answerable
        ("Unanswerable.", yes, "yes/no", 1),         # acc 0,   predicted unanswerable, answerable
        ("no", yes, "yes/no", 1),                    # m = 2: 0.6
    ]
    records = [{"question_id": f"VizWiz_val_{i:08d}", "answer": p, "gt_answer": a, "answer_type": t, "answerable": ok}
               for i, (p, a, t, ok) in enumerate(records)]
    metrics = vqa_accuracy(records)
    assert metrics["acc"] == pytest.approx(100 * 3.6 / 5)
    assert metrics["acc_answer_type_unanswerable"] == pytest.approx(100.0)
    assert metrics["acc_answer_type_yes/no"] == pytest.approx(100 * 1.6 / 3)
    # unanswerable is the positive class: truth [1, 1, 0, 0, 0], predicted [1, 0, 0, 1, 0]
    # TP 1, FP 1, FN 1: F1 = 2/(2+2) = 50; AP = R1*P1 + (1-R1)*share = 0.5*0.5 + 0.5*0.4 = 45
    assert metrics["unanswerable_f1"] == pytest.approx(50.0)
    assert metrics["unanswerable_ap"] == pytest.approx(45.0)
    assert unanswerability_metrics(records[:1] * 3) == {"unanswerable_ap": 100.0, "unanswerable_f1": 100.0}


def test_binary_metrics_by_hand():
    # positives score 0.35, 0.8; negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(75.0)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(87.5)  # one tie: half a pair
    # thresholds 0.8 (P 1, R .5), 0.4 (R unchanged), 0.35 (P 2/3, R 1): .5 * 1 + .5 * 2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(100 * (0.5 + 1 / 3))
    assert f1_score([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(50.0)
    assert f1_score([1, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc_auc([2, 0], [0.1, 0.2])


def test_answer_label_rule():
    assert [answer_label(a) for a in ("yes", "Yes, it is.", "YES!", "no", "No.", "maybe", "", "yesterday")] == \
        [1, 1, 1, 0, 0, 0, 0, 0]
    assert answer_label("hateful meme", positive_answer="hateful") == 1


def test_classification_metrics_by_hand():
    records = [  # (generated answer, ground truth, P(yes))
        ("yes", "yes", 0.9), ("no", "yes", 0.3), ("no", "no", 0.2), ("yes", "no", 0.6), ("maybe", "no", 0.1),
        ("yes", "yes", 0.9),  # a repeated id (DistributedSampler padding): not counted again
    ]
    records = [{"question_id": i if i < 5 else 0, "answer": a, "gt_answer": g, "prob_positive": p}
               for i, (a, g, p) in enumerate(records)]
    metrics = classification_metrics(records)
    assert list(metrics) == ["agg_metrics", "roc_auc", "acc", "num_samples", "other_answers"]
    # positives 0.9, 0.3 vs negatives 0.2, 0.6, 0.1: won 0.9 x3, 0.3>0.2, 0.3>0.1 -> 5/6
    assert metrics["roc_auc"] == metrics["agg_metrics"] == pytest.approx(100 * 5 / 6)
    assert metrics["acc"] == pytest.approx(100 * 3 / 5)  # "maybe" counts as no: right
    assert metrics["num_samples"] == 5 and metrics["other_answers"] == pytest.approx(20.0)
    with pytest.raises(DataError, match="question_id 7: ground truth 'maybe' is neither"):
        classification_metrics([{"question_id": 7, "answer": "yes", "gt_answer": "maybe", "prob_positive": 0.5}])


# ------------------------------------------------------------------ converters -> builders (in process)

def test_vizwiz_conversion_builds_and_batches_carry_answerable(tmp_path):
    releases.make_vizwiz_release(str(tmp_path))
    written = load_script("convert_vizwiz").convert(str(tmp_path / "vizwiz" / "Annotations"), str(tmp_path / "ann"))
    assert sorted(written) == ["test", "train", "val"]
    datasets = build_from("vizwiz_icl", {s: written[s] for s in ("train", "val")}, str(tmp_path / "vizwiz"), "images")
    val = datasets["val"]
    batch = val.collater([val[i] for i in range(3)])
    assert batch["answerable"] == [1, 0, 1] and batch["question_id"][1] == "VizWiz_val_00000001"
    assert batch["text_output"][1].count("unanswerable") == 6 and batch["answer_type"][1] == "unanswerable"


def test_hateful_memes_conversion_builds_and_names_a_bad_label(tmp_path):
    releases.make_hateful_memes_release(str(tmp_path))
    data = tmp_path / "hateful_memes" / "data"
    written = load_script("convert_hateful_memes").convert(str(data), str(tmp_path / "ann"))
    datasets = build_from("hateful_memes_icl", {"train": written["train"], "val": written["dev"]}, str(data), "images")
    item = datasets["val"][0]
    assert item["text_output"] == "yes" and item["question_id"] == 201 and item["image"].shape[-1] == 32
    assert "meme number 201 says" in item["text_input"] and len(item["demo_text"]) == 1
    with open(data / "dev.jsonl", "a") as f:
        f.write(json.dumps({"id": 9, "img": "img/00009.png", "label": 2, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"dev.jsonl: line 5 \(id 9\) has label 2, not 0 or 1"):
        load_script("convert_hateful_memes").convert(str(data), str(tmp_path / "ann"))


def test_flickr30k_conversion_builds_with_flickr30k_caption_icl(tmp_path):
    releases.make_flickr30k_release(str(tmp_path))
    written = load_script("convert_flickr30k_karpathy").convert(str(tmp_path / "dataset_flickr30k.json"),
                                                                str(tmp_path / "ann"))
    datasets = build_from("flickr30k_caption_icl", written, str(tmp_path), "images")
    assert (len(datasets["train"]), len(datasets["val"]), len(datasets["test"])) == (8, 1, 2)
    assert datasets["test"].captions_by_image_id["1000092800"] == ["A dog runs in field 5.", "a dog in field 5"]


# ------------------------------------------------------------------ answer scoring (models/base.py)

@pytest.mark.parametrize("demo_format", ["fused", "raw", "none"])
def test_score_answers_is_the_training_loss_of_each_answer(demo_format):
    """score_answers (one batched LLM call per candidate) = -(mean token loss) x tokens of the same
    answer as a training target, computed one sample at a time through forward()."""
    model = build_aim(seed=3, demo_format=demo_format).eval()
    batch = aim_batch()
    candidates = ["yes", "no way"]
    scores = model.score_answers(batch, candidates)
    assert scores.shape == (2, 2) and bool((scores < 0).all())
    for i in range(2):
        one = {key: (value[i:i + 1] if isinstance(value, (torch.Tensor, list)) else value) for key, value in batch.items()}
        for c, candidate in enumerate(candidates):
            one["text_output"] = [candidate]
            prompts = model.format_prompts(one)
            tokens = int(model.target_segment([candidate], prompts).mask.sum())
            with torch.no_grad():
                loss = model(one)["loss"]
            assert float(scores[i, c]) == pytest.approx(-float(loss) * tokens, rel=1e-4, abs=1e-4)


def test_score_answers_on_an_encoder_decoder_llm():
    from omegaconf import OmegaConf

    from lavis_mmict.models.mmict_blip2 import MMICTBlip2
    from _batches import mmict_batch

    torch.manual_seed(0)
    model = MMICTBlip2.from_config(OmegaConf.load(MMICTBlip2.default_config_path("tiny_t5")).model).eval()
    batch = mmict_batch()
    scores = model.score_answers(batch, ["yes", "no"])
    for i in range(3):
        one = {key: (value[i:i + 1] if isinstance(value, (torch.Tensor, list)) else value) for key, value in batch.items()}
        one["text_output"] = ["no"]
        tokens = int(model.target_segment(["no"]).mask.sum())
        with torch.no_grad():
            loss = model(one)["loss"]
        assert float(scores[i, 1]) == pytest.approx(-float(loss) * tokens, rel=1e-4, abs=1e-4)


# ------------------------------------------------------------------ walkthroughs (evaluate.py, 2 processes)

SETS = {  # walkthrough: (builder, miniature)
    "okvqa": ("okvqa_icl", releases.make_okvqa_release),
    "vizwiz": ("vizwiz_icl", releases.make_vizwiz_release),
    "hateful_memes": ("hateful_memes_icl", releases.make_hateful_memes_release),
    "flickr30k_caption": ("flickr30k_caption_icl", releases.make_flickr30k_release),
}


def tiny_options(name, output_dir):
    builder = SETS[name][0]
    options = [
        "model.model_type=tiny", "model.image_size=32", "model.demo_bank.enabled=False",
        f"datasets.{builder}.vis_processor.train.image_size=32", f"datasets.{builder}.vis_processor.eval.image_size=32",
        f"datasets.{builder}.demonstrations.num=2", "run.device=cpu", "run.batch_size_eval=2", "run.num_workers=0",
        "run.amp=False", "run.num_beams=1", "run.max_len=4", "run.min_len=1", f"run.output_dir={output_dir}",
    ]
    if name == "flickr30k_caption":
        options += ["run.caption_metrics=[BLEU,CIDEr]", "run.caption_tokenizer=python"]
    return options


def adapt(command, name, output_dir):
    """The doc's command here: this python, 2 processes, tiny options appended; a shot sweep
    with K = 0 1 and without `run.eval_ckpt_path=$AIM_CKPT` (fused then uses a random projection)."""
    if not command.startswith("python "):
        return command
    command = shlex.quote(sys.executable) + command[len("python"):]
    if " -m torch.distributed.run " in command:
        command = re.sub(r"--nproc_per_node=\d+", "--nproc_per_node=2", command)
        command = re.sub(r"--shots( \d+)+", "--shots 0 1", command).replace(" run.eval_ckpt_path=$AIM_CKPT", "")
        options = " ".join(map(shlex.quote, tiny_options(name, output_dir)))
        command += (" " if " --options" in command else " --options ") + options
    return command


def run_walkthrough(name, tmp_path):
    data_root, raw, output_dir = tmp_path / "lavis", tmp_path / "downloads", tmp_path / "output"
    expected = SETS[name][1](str(raw))
    outputs = run_commands(name, data_root, raw, lambda command: adapt(command, name, output_dir), timeout=900)
    (job,) = os.listdir(output_dir)
    return data_root, output_dir / job, expected, outputs


def read_json(path):
    with open(path) as f:
        return json.load(f)


def logged_metrics(job_dir, split):
    """The last `<split>_agg_metrics` record of the job's log.txt, without the split prefix."""
    with open(job_dir / "log.txt") as f:
        records = [json.loads(line) for line in f if line.startswith("{") and f"{split}_agg_metrics" in line]
    return {key[len(split) + 1:]: value for key, value in records[-1].items() if key.startswith(split + "_")}


def vqa_score_by_hand(prediction, answers):
    """min(1, m/3) averaged over the 10 leave-one-out subsets, for plain lowercase predictions."""
    m = answers.count(prediction)
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(m, 1.0)


@pytest.mark.slow
def test_okvqa_walkthrough_sweeps_shots_and_demo_formats(tmp_path):
    data_root, job_dir, expected, _ = run_walkthrough("okvqa", tmp_path)
    train = read_json(data_root / "okvqa" / "annotations" / "okvqa_train.json")
    test = read_json(data_root / "okvqa" / "annotations" / "vqa_val_eval.json")
    assert (len(train), len(test)) == (expected["train2014"], expected["val2014"])
    assert all(len(r["answer"]) == 10 and os.path.isfile(data_root / "coco" / "images" / r["image"]) for r in test)
    rows = read_json(job_dir / "results.json")["rows"]
    assert [(r["demo_format"], r["shots"]) for r in rows] == [(f, k) for f in ("fused", "raw", "none") for k in (0, 1)]
    answers = {r["question_id"]: r["answer"] for r in test}
    for row in rows:
        predictions = read_json(job_dir / "result" / f"test_epoch{row['demo_format']}_{row['shots']}shot.json")
        assert sorted(p["question_id"] for p in predictions) == sorted(answers)  # both ranks' halves, once
        by_hand = 100 * sum(vqa_score_by_hand(p["answer"].strip().lower(), answers[p["question_id"]])
                            for p in predictions) / len(predictions)
        assert row["metrics"]["agg_metrics"] == pytest.approx(by_hand)


@pytest.mark.slow
def test_vizwiz_walkthrough_scores_accuracy_and_unanswerability(tmp_path):
    data_root, job_dir, expected, _ = run_walkthrough("vizwiz", tmp_path)
    for split, count in expected.items():
        records = read_json(data_root / "vizwiz" / "annotations" / f"vizwiz_{split}.json")
        assert len(records) == count and os.path.isfile(data_root / "vizwiz" / "images" / records[0]["image"])
        assert ("answerable" in records[0]) == (split != "test")
    val = {r["question_id"]: r for r in read_json(data_root / "vizwiz" / "annotations" / "vizwiz_val.json")}
    assert val["VizWiz_val_00000001"]["answer"].count("unanswerable") == 6
    (result,) = (job_dir / "result").glob("val_*.json")
    predictions = read_json(result)
    assert sorted(p["question_id"] for p in predictions) == sorted(val)
    metrics = logged_metrics(job_dir, "val")
    by_hand = 100 * sum(vqa_score_by_hand(p["answer"].strip().lower(), val[p["question_id"]]["answer"])
                        for p in predictions) / len(predictions)
    assert metrics["agg_metrics"] == pytest.approx(by_hand)
    truth = [1 - val[p["question_id"]]["answerable"] for p in predictions]
    said_unanswerable = [int(p["answer"].strip().lower() == "unanswerable") for p in predictions]
    assert metrics["unanswerable_f1"] == pytest.approx(f1_score(truth, said_unanswerable))
    assert {"unanswerable_ap", "acc_answer_type_unanswerable", "acc_answer_type_number"} <= set(metrics)


@pytest.mark.slow
def test_hateful_memes_walkthrough_scores_roc_auc_and_accuracy(tmp_path):
    data_root, job_dir, expected, _ = run_walkthrough("hateful_memes", tmp_path)
    dev = read_json(data_root / "hateful_memes" / "annotations" / "dev.json")
    assert len(dev) == expected["dev"] and {r["answer"] for r in dev} == {"yes", "no"}
    assert all(os.path.isfile(data_root / "hateful_memes" / r["image"]) for r in dev)
    labels = {r["question_id"]: r["label"] for r in dev}
    (result,) = (job_dir / "result").glob("val_*.json")
    predictions = read_json(result)
    assert sorted(p["question_id"] for p in predictions) == sorted(labels)
    assert all(0.0 < p["prob_positive"] < 1.0 for p in predictions)
    # by hand: the share of (hateful, not hateful) pairs the model orders right, ties one half
    positives = [p["prob_positive"] for p in predictions if labels[p["question_id"]] == 1]
    negatives = [p["prob_positive"] for p in predictions if labels[p["question_id"]] == 0]
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in positives for b in negatives]
    metrics = logged_metrics(job_dir, "val")
    assert metrics["agg_metrics"] == metrics["roc_auc"] == pytest.approx(100 * sum(pairs) / len(pairs))
    right = [int(p["answer"].strip().lower().split()[:1] == ["yes"]) == labels[p["question_id"]] for p in predictions]
    assert metrics["acc"] == pytest.approx(100 * sum(right) / len(right))


@pytest.mark.slow
def test_flickr30k_walkthrough_scores_captions(tmp_path):
    data_root, job_dir, expected, _ = run_walkthrough("flickr30k_caption", tmp_path)
    for split, count in expected.items():
        records = read_json(data_root / "flickr30k" / "annotations" / f"flickr30k_karpathy_{split}.json")
        assert len(records) == count
        assert os.path.isfile(data_root / "flickr30k" / "images" / records[0]["image"])
    test = read_json(data_root / "flickr30k" / "annotations" / "flickr30k_karpathy_test.json")
    assert test[0]["caption"] == ["A dog runs in field 5.", "a dog in field 5"] and test[0]["image_id"] == "1000092800"
    metrics = logged_metrics(job_dir, "test")
    assert {"CIDEr", "Bleu_4"} <= set(metrics)
    (result,) = (job_dir / "result").glob("test_*.json")
    assert sorted(p["image_id"] for p in read_json(result)) == ["1000092800", "1000092801"]
