"""`make demo`'s AIM part (run_scripts/aim/demo.py): the base learns in context on the evaluation
task with raw demonstrations; AIM's projection trains on web pairs only, with that base frozen;
the evaluation sweeps none / raw / fused over K on the test split."""
import importlib.util
import os

import torch
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from lavis_mmict.models.aim_opt import AIMOpt


def load_demo():
    spec = importlib.util.spec_from_file_location("aim_demo", os.path.join(REPO_ROOT, "run_scripts", "aim", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_config(step):
    """The step's config as its run sees it: the YAML with the step's --options applied."""
    cfg = OmegaConf.load(os.path.join(REPO_ROOT, step["cfg_path"]))
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(step["options"]))


def test_the_demo_steps_train_the_base_on_the_eval_task_and_the_projection_on_web_pairs_only():
    demo = load_demo()
    base_step, aim_step, eval_step = demo.demo_steps("BASE.pth", "AIM.pth")
    base, aim, evaluation = (step_config(step) for step in (base_step, aim_step, eval_step))

    # 1. the base: raw demonstrations of the evaluation task's own clips, its train split, base trainable
    assert base_step["script"] == "train.py"
    assert set(base.datasets) == set(evaluation.datasets) == {"synthetic_videoqa_icl"}
    assert base.model.demo_format == "raw"
    assert base.model.freeze_qformer is False and base.model.freeze_llm is False
    demos = base.datasets.synthetic_videoqa_icl.demonstrations
    assert demos.strategy == "same_source" and demos.num >= 1
    assert list(base.run.train_splits) == ["train"] and "pretrained" not in base.model

    # 2. AIM: web pairs only (never the evaluation set), on the base of step 1, fused
    assert aim_step["script"] == "train.py"
    assert set(aim.datasets) == {"web_pairs_icl"}
    assert aim.model.pretrained == "BASE.pth" and aim.model.demo_format == "fused"
    assert aim.model.num_query_token == base.model.num_query_token == evaluation.model.num_query_token

    # 3. evaluation: the same base, the projection of step 2, K = 0..4, three formats, test split
    assert eval_step["script"] == "evaluate.py"
    assert eval_step["args"] == ["--shots", "0", "1", "2", "3", "4", "--demo-formats", "none", "raw", "fused"]
    assert evaluation.model.pretrained == "BASE.pth" and evaluation.run.eval_ckpt_path == "AIM.pth"
    assert list(evaluation.run.test_splits) == ["test"]
    assert list(evaluation.run.train_splits) == []
    # the demo template is the base's, so raw demonstrations read as the base learnt them
    assert (evaluation.datasets.synthetic_videoqa_icl.demonstrations.get("template")
            == demos.get("template"))


def test_the_projection_step_builds_a_model_whose_base_is_frozen():
    """Step 2's model config (without the base file): only the projection and the separator train."""
    demo = load_demo()
    _, aim_step, _ = demo.demo_steps("BASE.pth", "AIM.pth")
    cfg = OmegaConf.merge(OmegaConf.load(AIMOpt.default_config_path("tiny")).model, step_config(aim_step).model)
    cfg.pretrained = None
    torch.manual_seed(0)
    model = AIMOpt.from_config(cfg)
    assert model.base_is_frozen()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == {"separator_embed", "projection.weight", "projection.bias"}
    assert model.query_tokens.shape[1] == demo.num_query_token()


def test_recovery_table_at_the_largest_k():
    demo = load_demo()
    rows = [{"demo_format": f, "shots": k, "split": "test", "metrics": {"agg_metrics": v}}
            for f, k, v in [("none", 4, 20.0), ("raw", 4, 60.0), ("fused", 4, 52.0), ("fused", 0, 20.0)]]
    table = demo.recovery_rows(rows, {"none": 0.0, "raw": 40.0, "fused": 10.0})
    assert table == [["none", "20.0", "+0.0", "0%", "0.0", "0.00"],
                     ["raw", "60.0", "+40.0", "100%", "40.0", "1.00"],
                     ["fused", "52.0", "+32.0", "80%", "10.0", "0.25"]]


def test_a_base_trained_by_the_runner_loads_as_the_frozen_base(tmp_path):
    """Step 1 writes a runner checkpoint (trainable parameters only, no buffers such as the
    Q-Former's position_ids); steps 2 and 3 load it as model.pretrained, strictly."""
    from _aim_model import build
    from lavis_mmict.checkpoints import trainable_state_dict

    trained = build(seed=1, demo_format="raw", freeze_qformer=False, freeze_llm=False)
    state = trainable_state_dict(trained)
    assert not any(name.endswith("position_ids") for name in state)
    path = tmp_path / "checkpoint_best.pth"
    torch.save({"model": state}, path)

    frozen = build(seed=0, pretrained=str(path))
    assert frozen.base_is_frozen()
    for name, value in state.items():
        if name not in frozen.aim_parameter_names():
            assert torch.equal(frozen.state_dict()[name], value), name
