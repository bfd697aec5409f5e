"""Every failure a user can cause ends in one ``error: …`` line and exit status 2, with nothing half-written.

Most cases fail at validation, so they run in-process (``cli.main``, stderr captured); the ones where the exit
status, a traceback, a hang or child processes matter run as subprocesses. After each case no hidden temporary
(``.*.tmp``) may be left anywhere, and an output folder may hold at most its lock file.
"""
from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain_data import write_dataset
from sodp_fast import cli
from sodp_fast.checkpoint import load_tensors, save_planner, save_tensors
from sodp_fast.nn.unet import preset
from sodp_fast.policy import DiffusionPlanner, PlannerConfig
from test_data_mtdiff import episode, fixture_tree

REPO = Path(__file__).resolve().parents[1]
ROOT_USER = os.geteuid() == 0


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Shared inputs: a dataset, a checkpoint, a plain file, a read-only place, an absurd checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_planner(root / "tiny.safetensors", DiffusionPlanner(PlannerConfig(unet=preset("tiny"))))
    tensors, meta = load_tensors(root / "tiny.safetensors")
    meta["planner_config"]["unet"]["down_dims"] = [10**6, 10**6]  # ≈ 1e13 parameters, if it were built
    save_tensors(root / "absurd.safetensors", tensors, meta)
    (root / "file.txt").write_text("not a folder")
    bad_manifest = root / "listmanifest"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text("[1, 2, 3]")
    if ROOT_USER:  # chmod does not stop root; sysfs refuses new files to everyone
        readonly = Path("/sys")
    else:
        readonly = root / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
    rng = np.random.default_rng(0)
    strings = root / "mtdiff-strings" / "reach-v2"
    strings.mkdir(parents=True)
    np.savez(strings / "0.npz", **{**episode(rng, 5), "observations": np.array([["x"] * 39] * 5)})
    huge = root / "mtdiff-huge" / "reach-v2"
    huge.mkdir(parents=True)
    _npz_with_lying_header(huge / "0.npz", episode(rng, 5), rows=10**11)
    fixture_tree(root / "mtdiff-ok", rng)
    return {"root": root, "data": write_dataset(root / "data"), "ckpt": root / "tiny.safetensors",
            "absurd": root / "absurd.safetensors", "file": root / "file.txt", "listmanifest": bad_manifest,
            "readonly": readonly, "strings": root / "mtdiff-strings", "huge": root / "mtdiff-huge",
            "mtdiff": root / "mtdiff-ok"}


def _npz_with_lying_header(path: Path, arrays: dict, rows: int) -> None:
    """An episode file whose observations header declares ``rows`` rows over 5 rows of data."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            if name == "observations":
                a = np.ascontiguousarray(a, np.float64)
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                                           "shape": (rows, a.shape[1])})
                buf.write(a.tobytes())
            else:
                np.save(buf, a, allow_pickle=False)
            zf.writestr(name + ".npy", buf.getvalue())


def _no_temps(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob(".*.tmp")]


def _assert_clean(tmp_path: Path, out: Path | None) -> None:
    assert _no_temps(tmp_path) == []
    if out is not None and out.is_dir():
        assert {p.name for p in out.iterdir()} <= {".lock"}, sorted(p.name for p in out.iterdir())


def _error(capsys, argv) -> str:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


FT = ["--env-steps", "96", "--num-envs", "2", "--device", "cpu", "--no-progress"]

# (case id, argv builder (w, out) -> list, expected text in the error line)
CASES = [
    ("generate-max-episode-steps-0", lambda w, o: ["data", "generate", "--tasks", "reach", "--transitions-per-task",
                                                   "10", "--out", o, "--max-episode-steps", "0"],
     "max-episode-steps must be >= 1"),
    ("eval-max-episode-steps-0", lambda w, o: ["eval", "--ckpt", w["ckpt"], "--tasks", "reach", "--out", o,
                                               "--max-episode-steps", "0"], "max-episode-steps must be >= 1"),
    ("finetune-max-episode-steps-0", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o,
                                                   *FT, "--max-episode-steps", "0"], "max-episode-steps must be >= 1"),
    ("generate-workers-negative", lambda w, o: ["data", "generate", "--tasks", "reach", "--transitions-per-task",
                                                "10", "--out", o, "--workers", "-2"], "workers must be >= 0"),
    ("finetune-workers-negative", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o,
                                                *FT, "--num-workers", "-1"], "num-workers must be >= 0"),
    ("generate-petabytes", lambda w, o: ["data", "generate", "--tasks", "reach", "--transitions-per-task", "1e15",
                                         "--out", o], "would need"),
    ("pretrain-huge-batch", lambda w, o: ["pretrain", "--data", w["data"], "--out", o, "--preset", "tiny",
                                          "--batch-size", "1e15", "--no-progress"], "would need"),
    ("eval-huge-num-envs", lambda w, o: ["eval", "--ckpt", w["ckpt"], "--tasks", "reach", "--episodes", "1e12",
                                         "--num-envs", "1e12", "--out", o], "would need"),
    ("pretrain-device-gpu", lambda w, o: ["pretrain", "--data", w["data"], "--out", o, "--device", "gpu"],
     "'gpu' is not a device"),
    ("finetune-device-gpu", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o,
                                          "--device", "gpu"], "'gpu' is not a device"),
    ("eval-device-gpu", lambda w, o: ["eval", "--ckpt", w["ckpt"], "--tasks", "reach", "--device", "gpu"],
     "'gpu' is not a device"),
    ("finetune-eval-num-envs-0", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o, *FT,
                                               "--eval-num-envs", "0"], "eval-num-envs must be >= 1"),
    ("finetune-grad-clip-negative", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o,
                                                  *FT, "--grad-clip", "-1"], "--grad-clip > 0"),
    ("finetune-parallel-negative", lambda w, o: ["finetune", "--tasks", "reach,push", "--ckpt", w["ckpt"], "--out",
                                                 o, *FT, "--parallel", "-1"], "parallel must be >= 1"),
    ("bad-flag-value", lambda w, o: ["pretrain", "--data", w["data"], "--out", o, "--steps", "many"],
     "invalid int value"),
    ("out-is-a-file-pretrain", lambda w, o: ["pretrain", "--data", w["data"], "--out", w["file"], "--preset", "tiny"],
     "exists and is not a folder"),
    ("out-is-a-file-generate", lambda w, o: ["data", "generate", "--tasks", "reach", "--transitions-per-task", "10",
                                             "--out", w["file"]], "exists and is not a folder"),
    ("out-is-a-file-eval", lambda w, o: ["eval", "--ckpt", w["ckpt"], "--tasks", "reach", "--out", w["file"]],
     "exists and is not a folder"),
    ("out-under-a-file", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], *FT, "--out",
                                       Path(w["file"]) / "run"], "cannot create the folder"),
    ("out-read-only-pretrain", lambda w, o: ["pretrain", "--data", w["data"], "--preset", "tiny", "--out",
                                             w["readonly"] / "sodp-run"], "sodp-run"),
    ("out-read-only-repro", lambda w, o: ["repro", "--preset", "quickstart", "--out", w["readonly"] / "sodp-run"],
     "sodp-run"),
    ("data-is-a-file-pretrain", lambda w, o: ["pretrain", "--data", w["file"], "--out", o, "--preset", "tiny"],
     "is a file, not a dataset folder"),
    ("data-is-a-file-inspect", lambda w, o: ["data", "inspect", w["file"]], "is a file, not a dataset folder"),
    ("data-is-a-file-offline", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o, *FT,
                                             "--offline-data", w["file"]], "is a file, not a dataset folder"),
    ("manifest-not-an-object", lambda w, o: ["data", "inspect", w["listmanifest"]], "not a JSON object"),
    ("absurd-checkpoint-eval", lambda w, o: ["eval", "--ckpt", w["absurd"], "--tasks", "reach"], "tensor"),
    ("absurd-checkpoint-finetune", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["absurd"], "--out", o,
                                                 *FT], "tensor"),
    ("mtdiff-string-arrays", lambda w, o: ["data", "import-mtdiff", w["strings"], "--out", o], "not a number type"),
    ("mtdiff-header-1e11-rows", lambda w, o: ["data", "import-mtdiff", w["huge"], "--out", o], "declares shape"),
    ("bench-batch-sizes-text", lambda w, o: ["bench", "sampler", "--device", "cpu", "--batch-sizes", "a,b"],
     "comma list of integers"),
    ("bench-batch-sizes-zero", lambda w, o: ["bench", "sampler", "--device", "cpu", "--batch-sizes", "0"],
     "must be positive"),
    ("bench-preset-unknown", lambda w, o: ["bench", "sampler", "--device", "cpu", "--presets", "huge"],
     "unknown U-Net preset"),
    ("bench-device-gpu", lambda w, o: ["bench", "sampler", "--device", "gpu"], "'gpu' is not a device"),
    ("bench-huge-batch", lambda w, o: ["bench", "sampler", "--device", "cpu", "--batch-sizes", "1e15"],
     "would need"),
    ("plot-into-read-only", lambda w, o: ["plot", w["root"], "--out", w["readonly"] / "fig.png"], "fig.png"),
]


@pytest.mark.parametrize("case,argv,expect", CASES, ids=[c[0] for c in CASES])
def test_failure_is_one_error_line_and_nothing_is_written(w, tmp_path, capsys, case, argv, expect):
    out = tmp_path / "out"
    if case == "plot-into-read-only":  # a run folder with metrics, so only the write can fail
        (w["root"] / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_success_rate": 0.5}) + "\n")
    err = _error(capsys, argv(w, out))
    assert expect in err, err
    _assert_clean(tmp_path, out)
    assert _no_temps(w["root"]) == []


def test_import_mtdiff_refuses_to_replace_a_task(w, tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["data", "import-mtdiff", str(w["mtdiff"]), "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    err = _error(capsys, ["data", "import-mtdiff", w["mtdiff"], "--out", out])
    assert "already holds this task" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == before and _no_temps(out) == []


def test_vector_env_with_a_negative_worker_count_is_one_error(capsys):
    from sodp_fast.envs.workers import ChunkVecEnv
    from sodp_fast.errors import ConfigError

    with pytest.raises(ConfigError, match="num_workers must be >= 0"):
        ChunkVecEnv("reach", 2, num_workers=-1)
    import gc

    gc.collect()  # __del__ of the half-built env must stay quiet
    assert capsys.readouterr().err == ""


# -- subprocesses: exit codes, tracebacks, hangs, children -------------------------------------------------------
def _env():  # children run with -P, like the suite: they import the installed package, not ./sodp_fast
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _sodp(*argv, timeout=60, **kw):
    return subprocess.run([sys.executable, "-P", "-m", "sodp_fast.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=_env(), **kw)


def _one_error(proc, expect: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expect in lines[0] and "Traceback" not in proc.stderr, proc.stderr


SUBPROCESS_CASES = [
    ("eval-workers-negative", lambda w, o: ["eval", "--ckpt", w["ckpt"], "--tasks", "reach", "--workers", "-1",
                                            "--out", o], "workers must be >= 0"),
    ("finetune-parallel-negative", lambda w, o: ["finetune", "--tasks", "reach,push", "--ckpt", w["ckpt"], "--out",
                                                 o, "--parallel", "-1"], "parallel must be >= 1"),
    ("finetune-huge-num-envs", lambda w, o: ["finetune", "--task", "reach", "--ckpt", w["ckpt"], "--out", o,
                                             "--num-envs", "1e12", "--device", "cpu"], "would need"),
    ("bad-flag", lambda w, o: ["finetune", "--task", "reach", "--out", o, "--lr", "fast"], "invalid float value"),
]


@pytest.mark.parametrize("case,argv,expect", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_failure_in_a_subprocess_exits_2_with_one_line(w, tmp_path, case, argv, expect):
    out = tmp_path / "out"
    _one_error(_sodp(*argv(w, out)), expect)  # a hang would raise TimeoutExpired
    _assert_clean(tmp_path, out)


def _limit_file_size(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_task(tmp_path):
    """A file-size limit makes every write past 4 kB fail like a full disk would (EFBIG instead of ENOSPC)."""
    out = tmp_path / "ds"
    proc = _sodp("data", "generate", "--tasks", "reach", "--transitions-per-task", "200", "--max-episode-steps",
                 "20", "--workers", "0", "--out", out, preexec_fn=_limit_file_size(4096), timeout=120)
    _one_error(proc, "observations.npy: File too large")
    assert _no_temps(tmp_path) == [] and not (out / "reach-v3" / "task.json").exists()
    assert not (out / "manifest.json").exists()


def test_many_task_finetuning_shows_each_childs_error_line(w, tmp_path):
    proc = _sodp("finetune", "--tasks", "reach,push", "--ckpt", tmp_path / "missing.safetensors", "--out",
                 tmp_path / "ft", "--device", "cpu", timeout=120)
    assert proc.returncode == 1, proc.stderr
    for task in ("reach-v3", "push-v3"):
        assert f"{task}: FAILED (exit 2): error: {tmp_path / 'missing.safetensors'}: no such checkpoint" in proc.stdout
    assert "failed (exit 2)" in (tmp_path / "ft" / "summary.md").read_text()


# -- the run layer: one owner per folder, no stale temporaries, workers die with their parent ------------------
def test_a_second_process_on_a_run_folder_is_refused(w, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-P", "-c",
                               "import sys, time\nfrom sodp_fast.train.run import RunFolder\n"
                               f"f = RunFolder({str(out)!r}).open()\nprint('ready', flush=True)\ntime.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        argv = ["pretrain", "--data", w["data"], "--out", out, "--preset", "tiny", "--steps", "2", "--batch-size",
                "8", "--eval-batch", "8", "--no-progress"]
        err = _error(capsys, argv)
        assert f"is in use by another process (pid {holder.pid})" in err
        assert {p.name for p in out.iterdir()} == {".lock"}
    finally:
        holder.kill()
        holder.wait()
    assert cli.main([str(a) for a in argv]) == 0  # the kernel dropped the dead holder's lock
    assert (out / "model.safetensors").exists()


_KILLED_WHILE_WRITING = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import safetensors.torch
import sodp_fast.checkpoint as ck
calls = []
def save_then_die(tensors, path, metadata=None):
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    calls.append(path)
    if len(calls) == 3:  # the second checkpoint's state file, written to its temporary: killed before the rename
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = save_then_die
from sodp_fast.cli import main
main({argv!r})
"""


def test_a_kill_during_a_checkpoint_write_leaves_no_temporary_after_the_next_run(w, tmp_path):
    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(w["data"]), "--out", str(out), "--preset", "tiny", "--steps", "6",
            "--ckpt-every", "2", "--log-every", "2", "--batch-size", "8", "--eval-batch", "8", "--no-progress"]
    code = _KILLED_WHILE_WRITING.format(tests=str(REPO / "tests"), argv=argv)
    child = subprocess.run([sys.executable, "-P", "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    [stale] = _no_temps(out)  # a full-size hidden temporary next to the state it was replacing
    assert stale.name.startswith(".train_state.safetensors.") and stale.stat().st_size > 0
    assert load_tensors(out / "train_state.safetensors")[1]["step"] == 2  # the old state is intact
    assert cli.main(argv + ["--resume"]) == 0
    assert _no_temps(out) == [] and load_tensors(out / "train_state.safetensors")[1]["step"] == 6


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_data_generate_stops_its_workers(tmp_path):
    out = tmp_path / "ds"
    argv = ["data", "generate", "--tasks", "reach,push", "--transitions-per-task", "100000", "--workers", "2",
            "--out", out]
    proc = subprocess.Popen([sys.executable, "-P", "-m", "sodp_fast.cli", *map(str, argv)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 60, set()
        while len(workers) < 3 and time.time() < deadline:  # the forkserver and two pool workers
            time.sleep(0.2)
            workers = _descendants(proc.pid)
        assert len(workers) >= 3
        time.sleep(1.0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
    assert not (out / "manifest.json").exists()


# -- resume state is validated before it is used ----------------------------------------------------------------
def _tamper_rng(t, m):
    del t["rng.noise.0"]


def _tamper_optimizer_shape(t, m):
    key = next(k for k in t if k.startswith("optim.state.") and k.endswith(".exp_avg") and t[k].dim() > 1)
    t[key] = t[key].flatten()[:-1]


def _tamper_optimizer_record(t, m):
    del m["optimizer"]


@pytest.mark.parametrize("tamper,expect", [(_tamper_rng, "no tensor 'rng.noise.0'"),
                                           (_tamper_optimizer_shape, "optimiser state 'exp_avg' of parameter"),
                                           (_tamper_optimizer_record, "no 'optimizer' record")],
                         ids=["missing-rng-key", "wrong-shaped-optimiser-state", "missing-optimiser-record"])
def test_a_bad_resume_state_is_one_error_before_any_step(w, tmp_path, capsys, tamper, expect):
    out = tmp_path / "run"
    argv = ["pretrain", "--data", w["data"], "--out", out, "--preset", "tiny", "--steps", "2", "--batch-size", "8",
            "--eval-batch", "8", "--log-every", "1", "--no-progress"]
    assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    state = out / "train_state.safetensors"
    tensors, meta = load_tensors(state)
    tamper(tensors, meta)
    save_tensors(state, tensors, meta)
    before = state.read_bytes(), (out / "metrics.jsonl").read_text()
    assert expect in _error(capsys, [*argv, "--steps", "4", "--resume"])  # the last --steps counts
    assert (state.read_bytes(), (out / "metrics.jsonl").read_text()) == before and _no_temps(out) == []


def test_progress_writes_plain_lines_when_not_on_a_terminal():
    from sodp_fast.train.run import Progress

    stream = io.StringIO()
    bar = Progress(30, "finetune reach-v3", "env step", interval=0, stream=stream)
    bar.update(10, success=0.5)
    bar.update(20)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2
    assert lines[0].startswith("finetune reach-v3: 10/30 env steps (33 %)") and lines[0].endswith("success 0.5")
