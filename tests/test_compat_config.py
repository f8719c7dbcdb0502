"""LAVIS 1.0.2's Config with ``--options model.model_type=X`` loads X's default model config."""
import os
from types import SimpleNamespace

from lavis.common.config import Config

from conftest import REPO_ROOT


def test_model_type_option_selects_that_types_defaults():
    cfg_path = os.path.join(REPO_ROOT, "projects", "mmict", "msvd_qa.yaml")  # model_type: pretrain_flant5xl
    model = Config(SimpleNamespace(cfg_path=cfg_path, options=["model.model_type=pretrain_opt2.7b"])).config.model
    assert (model.model_type, model.llm_model) == ("pretrain_opt2.7b", "facebook/opt-2.7b")  # LAVIS: flan-t5-xl
    tiny = Config(SimpleNamespace(cfg_path=cfg_path, options=["model.model_type=tiny"])).config.model
    assert tiny.vit_model == "tiny" and tiny.image_size == 224  # the file's own keys still win over defaults
    plain = Config(SimpleNamespace(cfg_path=cfg_path, options=None)).config.model
    assert (plain.model_type, plain.llm_model) == ("pretrain_flant5xl", "google/flan-t5-xl")
