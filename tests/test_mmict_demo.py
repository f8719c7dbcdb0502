"""`make demo`'s MMICT part (run_scripts/mmict/demo.py): every demonstration format is trained from
the same config (only model.demo_format and run.output_dir differ), reported in one table, and
K-swept. Training and the sweep are replaced by fakes here (the real runs are torchrun jobs:
test_end_to_end.py, test_mmict_training.py)."""
import importlib.util
import os

from omegaconf import OmegaConf

from conftest import REPO_ROOT
from lavis_mmict.models.mmict_blip2 import DEMO_FORMATS

FORMATS = ("mmict", "vanilla_ict", "text_only", "none")


def load_demo_script():
    spec = importlib.util.spec_from_file_location("mmict_demo", os.path.join(REPO_ROOT, "run_scripts", "mmict", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_trains_reports_and_sweeps_all_four_formats(tmp_path, monkeypatch, capsys):
    demo = load_demo_script()
    trained, swept = [], []

    def fake_torchrun(script, cfg_path, options=()):
        cfg = OmegaConf.load(cfg_path)
        trained.append((script, cfg.model.demo_format, cfg.run.output_dir, list(options)))
        job = os.path.join(cfg.run.output_dir, "job")
        os.makedirs(job, exist_ok=True)
        score = 10.0 * (len(trained))
        with open(os.path.join(job, "log.txt"), "w") as f:
            f.write(f'{{"val_agg_metrics": {score}}}\n{{"test_agg_metrics": {score + 1}, "test_acc_code": {score + 2}}}\n')

    monkeypatch.setattr(demo, "torchrun", fake_torchrun)
    monkeypatch.setattr(demo.sweep, "main", lambda argv: swept.append(list(argv)))
    root = str(tmp_path / "out")
    demo.main(["--output-root", root, "--options", "run.max_epoch=1"])

    assert tuple(DEMO_FORMATS) == FORMATS
    assert [(s, f) for s, f, _, _ in trained] == [("train.py", f) for f in FORMATS]
    assert [d for _, _, d, _ in trained] == [os.path.join(root, "mmict_demo" + ("" if f == "mmict" else "_" + f))
                                             for f in FORMATS]
    assert all(options == ["run.max_epoch=1"] for *_, options in trained)
    # each format's config is its base project config with only demo_format and output_dir changed
    for demo_format in FORMATS:
        written = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "mmict_demo_configs", f"{demo_format}.yaml")))
        base = "demo_none.yaml" if demo_format == "none" else "demo.yaml"
        expected = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO_ROOT, "projects", "mmict", base)))
        expected["model"]["demo_format"] = demo_format
        expected["run"]["output_dir"] = os.path.join(root, "mmict_demo" + ("" if demo_format == "mmict" else "_" + demo_format))
        assert written == expected

    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == "| demo_format | val acc (best) | test acc | test code | time |"
    assert [row.split(" | ")[:4] for row in table[1:]] == [
        ["| mmict", "10.0", "11.0", "12.0"], ["| vanilla_ict", "20.0", "21.0", "22.0"],
        ["| text_only", "30.0", "31.0", "32.0"], ["| none", "40.0", "41.0", "42.0"]]

    (argv,) = swept
    assert argv[argv.index("--shots") + 1:argv.index("--shots") + 5] == ["0", "1", "2", "3"]
    runs = [argv[i + 1:i + 4] for i, a in enumerate(argv) if a == "--run"]
    assert [run[0] for run in runs] == list(FORMATS)
    assert [run[1] for run in runs] == [os.path.join(root, "mmict_demo_configs", f"{f}.yaml") for f in FORMATS]
    assert all(run[2].endswith(os.path.join("job", "checkpoint_best.pth")) for run in runs)
    assert argv[argv.index("--output-dir") + 1] == os.path.join(root, "mmict_demo_sweep")
