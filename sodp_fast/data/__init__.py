"""Multi-task transition datasets: on-disk format, generation, MTDiff import, training windows."""
