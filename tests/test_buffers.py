import torch

from sodp_fast.train.buffers import Chunks, ReplayBuffer, TargetBuffer, Trajectory


def _chunks(m, s=3, fill=0.0):
    return Chunks(torch.randn(m, 2, 5), torch.randn(m, s + 1, 4, 2), torch.randn(m, s), torch.full((m,), fill),
                  torch.full((m,), fill), torch.arange(m))


def test_replay_keeps_recent_iterations_and_rows_match_chains():
    buf = ReplayBuffer(capacity=2)
    for i in range(3):
        buf.add(_chunks(4, fill=float(i)))
    assert len(buf) == 8 and sorted(set(buf.chunks.rewards.tolist())) == [1.0, 2.0]  # oldest dropped
    c = buf.chunks
    g = torch.Generator().manual_seed(0)
    b = buf.sample(64, torch.arange(8.0), g)
    chain = b.advantages.long()  # advantage i identifies chain i
    assert torch.equal(b.transitions[:, 0], c.latents[chain, b.steps])
    assert torch.equal(b.transitions[:, 1], c.latents[chain, b.steps + 1])
    assert torch.equal(b.old_log_probs, c.log_probs[chain, b.steps])
    assert torch.equal(b.obs, c.obs[chain]) and torch.equal(b.clean, c.latents[chain, -1])
    assert set(b.steps.tolist()) == {0, 1, 2}


def test_replay_state_roundtrip():
    buf = ReplayBuffer(2)
    buf.add(_chunks(3))
    buf.add(_chunks(5))
    t, m = buf.state()
    other = ReplayBuffer(2)
    other.load(t, m, "cpu")
    assert all(torch.equal(getattr(other.chunks, f), getattr(buf.chunks, f)) for f in ("latents", "index"))


def _traj(ret, success, length=10, value=0.0):
    return Trajectory(torch.randn(3, 2, 5), torch.full((length, 2), value), ret, success)


def test_target_keeps_successes_first_then_top_returns():
    t = TargetBuffer(capacity=2, horizon=4, n_action_steps=4)
    assert t.offer(_traj(1.0, False)) and t.offer(_traj(2.0, False))
    assert not t.offer(_traj(0.5, False))           # below the top-2 by return
    assert t.offer(_traj(0.1, True))                # a success outranks any failure
    assert [x.ret for x in t.trajectories] == [0.1, 2.0]
    assert t.offer(_traj(0.2, True))
    assert [(x.ret, x.success) for x in t.trajectories] == [(0.2, True), (0.1, True)]


def test_target_windows_are_executed_actions_padded_with_the_last():
    t = TargetBuffer(capacity=1, horizon=6, n_action_steps=4)
    actions = torch.arange(10.0)[:, None].repeat(1, 2)  # steps 0..9, chunks start at 0, 4, 8
    t.offer(Trajectory(torch.zeros(3, 2, 5), actions, 1.0, False))
    obs, act = t.pairs
    assert act.shape == (3, 6, 2)
    assert act[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert act[2, :, 0].tolist() == [8, 9, 9, 9, 9, 9]
    o, a = t.sample(7, torch.Generator().manual_seed(0))
    assert o.shape == (7, 2, 5) and a.shape == (7, 6, 2)
    tensors, meta = t.state()
    u = TargetBuffer(1, 6, 4)
    u.load(tensors, meta, "cpu")
    assert torch.equal(u.pairs[1], act)
