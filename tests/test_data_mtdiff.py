import numpy as np
import pytest

from sodp_fast.data.format import DataFormatError, load_dataset
from sodp_fast.data.mtdiff import find_episode_files, import_mtdiff
from sodp_fast.envs.tasks import UnknownTaskError


def episode(rng, t, extra_obs=False, dones=False, obs_dim=39):
    d = {"observations": rng.normal(size=(t + extra_obs, obs_dim)), "actions": rng.uniform(-1, 1, (t, 4)),
         "rewards": rng.random(t)}
    d["dones" if dones else "terminals"] = np.eye(1, t, t - 1)[0].astype(bool)
    return d


def fixture_tree(root, rng):
    """reach-v2 in the flat layout (files 0..10, to check natural order), push-v2 in the nested one."""
    eps = {"reach-v3": [episode(rng, 5 + i) for i in range(11)],
           "push-v3": [episode(rng, 4, extra_obs=True, dones=True), episode(rng, 6)]}
    (root / "reach-v2").mkdir(parents=True)
    for i, e in enumerate(eps["reach-v3"]):
        np.savez(root / "reach-v2" / f"{i}.npz", **e)
    nested = root / "push-v2" / "sac_seed0" / "dataset"
    nested.mkdir(parents=True)
    for i, e in enumerate(eps["push-v3"]):
        np.savez(nested / f"ep_{i}.npz", **e)
    return eps


def test_import_both_layouts_maps_v2_to_v3(tmp_path):
    eps = fixture_tree(tmp_path / "src", np.random.default_rng(0))
    manifest = import_mtdiff(tmp_path / "src", tmp_path / "out", progress=False)
    assert sorted(manifest["tasks"]) == ["push-v3", "reach-v3"]
    ds = load_dataset(tmp_path / "out")
    reach = ds.tasks["reach-v3"]
    assert reach.episode_ends.tolist() == np.cumsum([5 + i for i in range(11)]).tolist()
    want = np.concatenate([e["observations"] for e in eps["reach-v3"]]).astype(np.float32)
    assert np.array_equal(reach.observations, want)
    push = ds.tasks["push-v3"]
    assert push.num_transitions == 10 and np.array_equal(push.observations[:4],
                                                         eps["push-v3"][0]["observations"][:4].astype(np.float32))
    assert not push.success.any()
    assert manifest["tasks"]["push-v3"]["transitions"] == 10


@pytest.mark.parametrize("break_it,message", [
    (lambda p, rng: np.savez(p, **episode(rng, 5, obs_dim=12)), "observations have shape"),
    (lambda p, rng: np.savez(p, **{**episode(rng, 5), "rewards": np.full(5, np.nan)}), "rewards: NaN"),
    (lambda p, rng: np.savez(p, observations=np.zeros((5, 39)), actions=np.zeros((5, 4))), "missing key"),
    (lambda p, rng: p.write_bytes(p.read_bytes()[:100]), "unreadable or truncated"),
    (lambda p, rng: np.savez(p, **{**episode(rng, 5), "observations": np.array([None] * 5, dtype=object)}),
     "unreadable"),
])
def test_bad_episode_files_are_named_and_nothing_is_written(tmp_path, break_it, message):
    rng = np.random.default_rng(1)
    fixture_tree(tmp_path / "src", rng)
    bad = tmp_path / "src" / "reach-v2" / "3.npz"
    break_it(bad, rng)
    with pytest.raises(DataFormatError, match=message) as e:
        import_mtdiff(tmp_path / "src", tmp_path / "out", progress=False)
    assert "3.npz" in str(e.value)
    assert not (tmp_path / "out" / "reach-v3" / "task.json").exists()


def test_unknown_task_folder_suggests_a_name(tmp_path):
    (tmp_path / "reech-v2").mkdir()
    np.savez(tmp_path / "reech-v2" / "0.npz", **episode(np.random.default_rng(0), 3))
    with pytest.raises(UnknownTaskError, match="did you mean 'reach'"):
        find_episode_files(tmp_path)
