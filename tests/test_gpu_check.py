"""``make gpu-check``'s script runs end to end on a CPU at the small size (same code as on a GPU,
smaller batches and one round) and writes every table as markdown under its output folder."""
import pytest

from benchmarks import gpu_check


@pytest.mark.slow  # about half a minute of model steps on an idle core
def test_gpu_check_small_cpu_writes_every_table(tmp_path, capsys):
    path = gpu_check.main(["--size", "small", "--device", "cpu", "--batch", "2", "--shots", "2",
                           "--gen-batch", "2", "--gen-shots", "1,2", "--aim-shots", "2", "--rounds", "1",
                           "--store", "none", "--out", str(tmp_path)])
    text = open(path).read()
    assert path.startswith(str(tmp_path)) and text == text.strip("\n") + "\n"
    for title in ("### A. mmict_blip2 training step", "### 1. mmict_blip2 training step: batched vs per-turn",
                  "### 5. mmict_blip2 batched generation", "### 3. aim_opt inference", "### E. Peak memory"):
        assert title in text, title
    for llm in ("OPT (small)", "FlanT5 (small)"):
        assert f"| {llm} | K=2, store | not measured |" in text  # --store none
        assert f"| mmict_blip2 {llm} |" in text
    assert "same loss on the same batch" in text and "saved" in capsys.readouterr().out


def test_gpu_check_refuses_cuda_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_model_memory_counts_the_published_shapes_without_weights():
    """Built on the meta device from the real configs: EVA ViT-g ~1.0 B, OPT-2.7B ~2.65 B parameters."""
    from benchmarks.model_memory import build, real_shape_config, weight_bytes

    cfg = real_shape_config("mmict_blip2", "pretrain_opt2.7b")
    model = build(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    size, parts = weight_bytes(model, cfg)
    assert 0.98e9 < parts["vit"] < 1.0e9 and 2.6e9 < parts["llm"] < 2.7e9
    assert size == 2 * parts["vit"] + 2 * parts["llm"] + 4 * parts["rest"]  # fp16 ViT and OPT, fp32 rest
