"""skip_bad_media, runner side: batches' ``num_skipped_media`` is summed per epoch, logged and
written to log.txt, and removed before the batch reaches the model."""
import json
import logging

from test_runners import build_runner, read_log, write_config


def test_skipped_media_are_counted_logged_and_never_reach_the_model(
    tmp_path, monkeypatch, caplog, fresh_registry_paths
):
    seen_keys = tmp_path / "seen_keys.jsonl"
    monkeypatch.setenv("TOY_SEEN_KEYS_FILE", str(seen_keys))
    runner = build_runner(
        write_config(tmp_path, tmp_path / "out"), "skips",
        "datasets._toy_builder.build_info.skipped_media_every=3",  # train + val batches report skips
    )
    with caplog.at_level(logging.INFO):
        runner.train()

    records = read_log(tmp_path / "out" / "skips")
    train_logs = [r for r in records if "train_loss" in r]
    # 32 train items, batches of 4, all used: indices 0, 3, ..., 30 are "skipped" -> 11 per epoch
    assert [r["train_num_skipped_media"] for r in train_logs] == [11, 11]
    # 13 val items: 0, 3, 6, 9, 12; the test split does not report skips: no entry
    assert [r["val_num_skipped_media"] for r in records if "val_agg_metrics" in r] == [5, 5]
    assert not any("test_num_skipped_media" in r for r in records)
    messages = [r.getMessage() for r in caplog.records]
    assert "skipped 11 bad media items in epoch 0" in messages
    assert "skipped 11 bad media items in epoch 1" in messages

    forward_keys = [json.loads(line) for line in seen_keys.read_text().splitlines()]
    assert len(forward_keys) == 16  # every training step went through the model ...
    assert not any("num_skipped_media" in keys for keys in forward_keys)  # ... without the key


def test_no_skipped_media_entry_without_the_key(tmp_path, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "plain", "run.test_splits=[]")
    runner.train()
    assert not any(
        k.endswith("num_skipped_media") for r in read_log(tmp_path / "out" / "plain") for k in r
    )
