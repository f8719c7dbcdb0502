"""COCO-format caption ground truth is read with pycocotools' COCO (the oracle), not parsed by hand."""
import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO

from lavis_mmict.tasks.icl_captioning import load_ground_truth_file


def test_coco_format_ground_truth_matches_pycocotools_index(tmp_path):
    gt = {"images": [{"id": 9}, {"id": 4}], "annotations": [
        {"image_id": 9, "caption": "one", "id": 1}, {"image_id": 4, "caption": "four", "id": 2},
        {"image_id": 9, "caption": "two", "id": 3}]}
    path = tmp_path / "coco_karpathy_test_gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        oracle = COCO(str(path))
    expected = {image_id: [a["caption"] for a in anns] for image_id, anns in oracle.imgToAnns.items()}
    assert load_ground_truth_file(str(path)) == expected == {9: ["one", "two"], 4: ["four"]}


def test_coco_format_annotation_without_image_id_is_named(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "x"}, {"caption": "y", "id": 2}]}))
    with pytest.raises(ValueError, match=r"gt.json: annotation 1 is missing \['image_id'\]"):
        load_ground_truth_file(str(path))
