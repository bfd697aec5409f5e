import numpy as np

from sodp_fast.cli import main
from test_data_mtdiff import episode


def test_cli_generate_then_inspect(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["data", "generate", "--tasks", "reach", "--transitions-per-task", "50", "--out", str(out),
               "--workers", "0", "--max-episode-steps", "10"])
    assert rc == 0
    assert main(["data", "inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("reach-v3"))
    assert row.split()[1:3] == ["50", "5"] and row.count("|") == 1


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["data", "generate", "--tasks", "reech", "--transitions-per-task", "5", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown Meta-World task 'reech'") and "\n" not in err
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
    (tmp_path / "src" / "push-v2").mkdir(parents=True)
    np.savez(tmp_path / "src" / "push-v2" / "0.npz", **episode(np.random.default_rng(0), 4, obs_dim=7))
    assert main(["data", "import-mtdiff", str(tmp_path / "src"), "--out", str(tmp_path / "o")]) == 2
    assert "0.npz: observations have shape [4, 7]" in capsys.readouterr().err
