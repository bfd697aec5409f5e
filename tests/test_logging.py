import json

from sodp_fast.logging import METRICS_FILE, RunLogger, plot_curves, read_metrics


def test_logger_writes_jsonl_and_curves(tmp_path):
    log = RunLogger(tmp_path)
    for step in range(0, 50, 10):
        log.log(step, loss=1.0 / (step + 1), lr=1e-4)
    log.close()
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [0, 10, 20, 30, 40] and recs[1]["loss"] == 1 / 11
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_drops_records_past_the_checkpoint_and_torn_lines(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (0, 10, 20, 30)]
    (tmp_path / METRICS_FILE).write_text("\n".join(lines) + '\n{"step": 40, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 10, 20, 30]
    log = RunLogger(tmp_path, resume_step=20)
    log.log(30, loss=0.5)
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(0, 1.0), (10, 1.0), (20, 1.0), (30, 0.5)]
    assert RunLogger(tmp_path).close() is None and read_metrics(tmp_path) == []  # a fresh run starts over


def test_disabled_logger_and_empty_plots_write_nothing(tmp_path):
    log = RunLogger(tmp_path / "rank1", enabled=False)
    log.log(1, loss=1.0)
    log.close()
    assert not (tmp_path / "rank1").exists()
    assert plot_curves([], tmp_path / "x.png") is None and not (tmp_path / "x.png").exists()
    out = plot_curves([{"step": 0, "a": 1.0, "note": "text"}, {"step": 1, "a": 2.0}], tmp_path / "y.png",
                      title="t")
    assert out.exists()
