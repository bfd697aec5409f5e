import json

import numpy as np
import pytest

from sodp_fast.data.format import (DataFormatError, ObsStats, TaskData, load_dataset, save_array, write_manifest,
                                   write_task)
from sodp_fast.errors import SodpError


def make_task(name, episodes=(5, 3), obs_dim=39, seed=0):
    rng = np.random.default_rng(seed)
    t = sum(episodes)
    return TaskData(name, rng.normal(size=(t, obs_dim)).astype(np.float32),
                    rng.uniform(-1, 1, (t, 4)).astype(np.float32), rng.random(t).astype(np.float32),
                    np.cumsum(episodes).astype(np.int64), np.array([True] + [False] * (len(episodes) - 1)))


def write(root, *tasks):
    for t in tasks:
        write_task(root, t, {"source": "test"})
    return write_manifest(root, {"run": 1})


def test_roundtrip_is_memory_mapped_and_pooled_stats_are_exact(tmp_path):
    a, b = make_task("reach-v3", seed=1), make_task("push-v3", (4, 4, 2), seed=2)
    manifest = write(tmp_path, a, b)
    assert manifest["tasks"]["push-v3"]["episodes"] == 3 and manifest["obs_dim"] == 39
    ds = load_dataset(tmp_path)
    assert set(ds.tasks) == {"reach-v3", "push-v3"}
    got = ds.tasks["push-v3"]
    assert isinstance(got.observations, np.memmap) and not got.observations.flags.writeable
    for name in ("observations", "actions", "rewards", "episode_ends", "success"):
        assert np.array_equal(getattr(got, name), getattr(b, name))
    both = np.concatenate([a.observations, b.observations]).astype(np.float64)
    assert np.allclose(ds.obs_stats.mean, both.mean(0)) and np.allclose(ds.obs_stats.std, both.std(0))
    assert np.array_equal(ds.obs_stats.max, both.max(0)) and ds.obs_stats.count == 18
    only = load_dataset(tmp_path, tasks="push")
    assert list(only.tasks) == ["push-v3"] and np.allclose(only.obs_stats.mean, b.observations.mean(0))
    assert not list(tmp_path.rglob("*.tmp"))
    assert np.allclose(got.episode_returns(), [b.rewards[:4].sum(), b.rewards[4:8].sum(), b.rewards[8:].sum()])


def test_nan_is_refused_and_nothing_is_written(tmp_path):
    bad = make_task("reach-v3")
    bad.observations[6, 3] = np.inf
    with pytest.raises(DataFormatError, match="reach-v3/observations: NaN or inf at row 6"):
        write_task(tmp_path, bad)
    assert not (tmp_path / "reach-v3").exists()


@pytest.mark.parametrize("field,value,message", [
    ("episode_ends", np.array([5, 7], np.int64), "episode_ends"),
    ("actions", np.zeros((8, 4), np.float64), "dtype"),
    ("success", np.array([True]), "success"),
])
def test_inconsistent_arrays_are_refused(tmp_path, field, value, message):
    t = make_task("reach-v3")
    setattr(t, field, value)
    with pytest.raises(DataFormatError, match=message):
        write_task(tmp_path, t)


def test_truncated_and_missing_files_name_the_file(tmp_path):
    write(tmp_path, make_task("reach-v3"))
    path = tmp_path / "reach-v3" / "observations.npy"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataFormatError, match="observations.npy: unreadable or truncated"):
        load_dataset(tmp_path)
    write(tmp_path, make_task("reach-v3"))
    (tmp_path / "reach-v3" / "rewards.npy").unlink()
    with pytest.raises(SodpError, match="rewards.npy: file is missing"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataFormatError, match="manifest.json: file is missing"):
        load_dataset(tmp_path)


def test_pickled_arrays_are_never_loaded(tmp_path):
    write(tmp_path, make_task("reach-v3"))
    np.save(tmp_path / "reach-v3" / "success.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="success.npy"):
        load_dataset(tmp_path)


def test_mixed_dims_and_manifest_mismatch_are_refused(tmp_path):
    write(tmp_path, make_task("reach-v3"))
    write_task(tmp_path, make_task("push-v3", obs_dim=12))
    with pytest.raises(DataFormatError, match="mixed observation/action dims.*push-v3: 12/4"):
        write_manifest(tmp_path)
    other = tmp_path / "b"
    write(other, make_task("reach-v3"))
    save_array(other / "reach-v3" / "rewards.npy", np.zeros(8, np.float32))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tasks"]["reach-v3"]["transitions"] = 9
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="manifest says 9"):
        load_dataset(other)


def test_interrupted_task_is_not_complete(tmp_path):
    write(tmp_path, make_task("reach-v3"), make_task("push-v3"))
    (tmp_path / "push-v3" / "task.json").unlink()
    assert list(write_manifest(tmp_path)["tasks"]) == ["reach-v3"]


def test_obs_stats_pool_matches_direct():
    rng = np.random.default_rng(0)
    parts = [rng.normal(i, i + 1, (n, 3)) for i, n in enumerate((5, 9, 1))]
    pooled = ObsStats.pool([ObsStats.of(p) for p in parts])
    direct = ObsStats.of(np.concatenate(parts))
    assert np.allclose(pooled.mean, direct.mean) and np.allclose(pooled.std, direct.std)
    assert np.array_equal(pooled.min, direct.min)
