"""Meta-World v3 environments: task names and sets, single env with chunked execution, parallel rollouts."""
