"""Demonstration Bank: cached demo features are reused (memory and safetensors on disk), and a
different model, checkpoint or layer never reuses them."""
import glob
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from _aim_model import build
from _batches import aim_batch as make_batch
from lavis_mmict.models.demo_bank import BANK_FORMAT, DemoBank, demo_content_key


def counting_reads(model):
    """Wrap model.read_demos to record how many demos it reads per call."""
    calls = []
    original = model.read_demos

    def read_demos(visual, texts):
        calls.append(len(texts))
        return original(visual, texts)

    model.read_demos = read_demos
    return calls


def test_second_pass_computes_no_demo_features_and_gives_identical_outputs(caplog):
    model = build(demo_bank={"enabled": True, "log_every": 1}).eval()
    calls = counting_reads(model)
    batch = make_batch()
    with torch.no_grad():
        first_loss = model(batch)["loss"]
        first_answers = model.predict_answers(batch, num_beams=1, max_len=4)
    assert calls == [3]  # the 3 real demos, read once; generation found them in the bank
    with caplog.at_level(logging.INFO):
        with torch.no_grad():
            second_loss = model(batch)["loss"]
            second_answers = model.predict_answers(batch, num_beams=1, max_len=4)
    assert calls == [3]
    assert torch.equal(first_loss, second_loss) and first_answers == second_answers
    assert model.demo_bank.stats()["misses"] == 3 and model.demo_bank.stats()["hits"] == 9
    assert "demo bank: hits" in caplog.text  # hit/miss counts reach the logs

    uncached = build(demo_bank={"enabled": False}).eval()
    with torch.no_grad():
        assert torch.allclose(uncached(batch)["loss"], first_loss, atol=1e-6)


def test_bank_serves_training_before_the_projection():
    model = build()
    calls = counting_reads(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    batch = make_batch()
    for _ in range(2):
        model(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert calls == [3]  # features are cached before the projection, which did change


def test_disk_bank_is_safetensors_and_survives_a_new_process(tmp_path):
    bank_cfg = {"enabled": True, "disk_dir": str(tmp_path / "bank")}
    batch = make_batch()
    writer = build(seed=0, demo_bank=bank_cfg).eval()
    with torch.no_grad():
        expected = writer(batch)["loss"]
    files = glob.glob(str(tmp_path / "bank" / "*" / "*" / "*.safetensors"))
    assert len(files) == 3
    with safe_open(files[0], framework="pt") as f:
        assert f.metadata()["fingerprint"] == writer.fingerprint()
        assert f.metadata()["format"] == BANK_FORMAT

    reader = build(seed=0, demo_bank=bank_cfg).eval()  # same weights, empty memory
    calls = counting_reads(reader)
    with torch.no_grad():
        assert torch.equal(reader(batch)["loss"], expected)
    assert calls == [] and reader.demo_bank.stats()["disk_hits"] == 3


@pytest.mark.parametrize("change", ["layer", "weights", "projection_only"])
def test_changing_the_layer_or_the_model_invalidates_the_cache(tmp_path, change):
    bank_cfg = {"enabled": True, "disk_dir": str(tmp_path / "bank")}
    batch = make_batch()
    first = build(seed=0, demo_bank=bank_cfg).eval()
    with torch.no_grad():
        first(batch)
    if change == "layer":
        second = build(seed=0, demo_bank=bank_cfg, fusion_layer=1).eval()
    elif change == "weights":
        second = build(seed=0, demo_bank=bank_cfg).eval()
        with torch.no_grad():
            second.opt_model.model.decoder.layers[0].fc1.weight.mul_(1.5)
    else:  # the projection is not part of the fingerprint: entries are before it
        second = build(seed=0, demo_bank=bank_cfg).eval()
        with torch.no_grad():
            second.projection.weight.add_(1.0)
    # the shared in-memory bank object is not shared here; a stale disk entry must not be used
    calls = counting_reads(second)
    with torch.no_grad():
        second(batch)
    if change == "projection_only":
        assert second.fingerprint() == first.fingerprint() and calls == []
    else:
        assert second.fingerprint() != first.fingerprint()
        assert calls == [3] and second.demo_bank.stats()["disk_hits"] == 0


def test_in_memory_entries_are_dropped_when_the_weights_change():
    model = build().eval()
    calls = counting_reads(model)
    batch = make_batch()
    with torch.no_grad():
        model(batch)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["ln_vision.weight"].add_(0.5)
        model.load_state_dict(state)
        model(batch)
    assert calls == [3, 3]


def test_entries_with_foreign_metadata_or_garbage_are_ignored(tmp_path):
    bank = DemoBank(disk_dir=str(tmp_path))
    key, fingerprint = "ab" * 32, "f" * 64
    path = bank.entry_path(fingerprint, key)
    import os

    os.makedirs(os.path.dirname(path))
    save_file({"features": torch.ones(2, 4)}, path, metadata={"format": BANK_FORMAT, "fingerprint": "0" * 64, "key": key})
    assert bank.lookup(fingerprint, [key]) == [None] and bank.stale == 1
    with open(path, "wb") as f:
        f.write(b"not a safetensors file")
    assert bank.lookup(fingerprint, [key]) == [None] and bank.stale == 2
    bank.store(fingerprint, [key], [torch.arange(6.0).reshape(3, 2)])
    fresh = DemoBank(disk_dir=str(tmp_path))
    assert torch.equal(fresh.lookup(fingerprint, [key])[0], torch.arange(6.0).reshape(3, 2))


def test_content_key_and_memory_limit():
    pixels = torch.zeros(1, 3, 4, 4)
    key = demo_content_key(pixels, "a cat")
    assert key == demo_content_key(pixels.clone(), "a cat")
    assert key != demo_content_key(pixels, "a dog")
    assert key != demo_content_key(pixels + 1e-3, "a cat")
    bank = DemoBank(max_items=2)
    for i in range(3):
        bank.store("fp", [str(i)], [torch.zeros(1, 1)])
    assert bank.lookup("fp", ["0", "1", "2"])[0] is None and bank.stats()["entries"] == 2


def test_media_keys_replace_pixel_hashing_with_identical_entries_and_outputs(monkeypatch):
    from lavis_mmict.models import demo_bank

    hashed = []
    original = demo_bank.demo_content_key
    monkeypatch.setattr(demo_bank, "demo_content_key", lambda pixels, text: hashed.append(text) or original(pixels, text))
    by_pixels, by_media = build(demo_bank={"enabled": True}).eval(), build(demo_bank={"enabled": True}).eval()
    calls = counting_reads(by_media)
    keyed = make_batch()
    keyed["demo_media_key"] = [["clipA", "clipB", ""], ["clipC", "", ""]]  # the 3 real demos keyed
    with torch.no_grad():
        reference = by_pixels(make_batch())["loss"]
        assert len(hashed) == 3  # without media keys, every demo's pixels are hashed
        hashed.clear()
        assert torch.equal(by_media(keyed)["loss"], reference)
        assert hashed == [] and calls == [3]  # keyed: no pixel read for the key
        assert torch.equal(by_media(keyed)["loss"], reference)
        assert hashed == [] and calls == [3] and by_media.demo_bank.stats()["hits"] == 3
    # the same entries (values) under the new keys
    assert sorted(v.sum().item() for v in by_media.demo_bank._memory.values()) == \
        sorted(v.sum().item() for v in by_pixels.demo_bank._memory.values())
    # a demo without a media key ("") falls back to its pixels: only that one is hashed
    keyed["demo_media_key"][0][1] = ""
    with torch.no_grad():
        assert torch.equal(by_media(keyed)["loss"], reference)
    assert hashed == ["a red square"]
