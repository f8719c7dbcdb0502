"""Table 6 (benchmarks/loading.py) runs at the tiny size on real mp4 clips; timings are never asserted."""
from benchmarks.loading import loader_speed


def test_loader_table_runs_with_and_without_the_store(tmp_path):
    table = loader_speed("tiny", "cpu", rounds=1, root=str(tmp_path), batch=2, batches=1, step_batch=2, steps=1)
    assert [row[0] for row in table.rows] == ["K=0", "K=4", "K=4, store"]
    assert all(len(row) == len(table.columns) for row in table.rows)
    assert table.targets and "store of 32 clips" in table.notes[0]
