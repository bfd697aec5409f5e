"""Generate the cpu-mt10 data with a less random noise schedule (calibration of the pre-trained success)."""
import sys
from sodp_fast.data import generate as g
from sodp_fast.envs.tasks import resolve_tasks

S = g.NoiseSchedule
g.SCHEDULES.update({"easy": S(0.8, 0.2, 1.0, 0.3), "medium": S(0.7, 0.0, 1.0, 0.2), "hard": S(0.6, 0.0, 1.0, 0.1),
                    "very-hard": S(0.6, 0.0, 1.0, 0.1)})
g.TASK_SCHEDULES.clear()

if __name__ == "__main__":
    g.generate(resolve_tasks("paper-mt10"), sys.argv[1], 50_000, seed=0, workers=2, progress=True)
