"""Tables of an unfinished cpu-mt10 study: the seeds, tasks and variants whose runs have all finished (the
preset narrowed to them), through the library's own collect_results / results_markdown / plots."""
import dataclasses, json, sys
from pathlib import Path
from sodp_fast import repro

out = Path(sys.argv[1])
p = repro.CPU_MT10
done = lambda t, v, s: (out / "eval" / f"{repro.run_label(t, v, s)}.json").exists()  # noqa: E731
seeds = tuple(s for s in p.seeds if all(done(t, "bc", s) for t in p.tasks))
abl_tasks = tuple(t for t in p.ablation_tasks if all(done(t, v, s) for v in p.ablation for s in seeds))
unseen = tuple(t for t in p.unseen_tasks if all(done(t, v, s) for v in ("bc", "scratch") for s in seeds))
part = dataclasses.replace(p, seeds=seeds, ablation_tasks=abl_tasks, unseen_tasks=unseen)
pipe = repro.Pipeline(part, out, progress=False)
res = repro.collect_results(pipe)
res["partial"] = {"seeds": list(seeds), "ablation_tasks": list(abl_tasks), "unseen_tasks": list(unseen)}
dest = Path(sys.argv[2]); dest.mkdir(parents=True, exist_ok=True)
(dest / "results.json").write_text(json.dumps(res, indent=1))
(dest / "results.md").write_text(repro.results_markdown(res))
repro.plot_curves(pipe, res, dest / "curves.png")
if res["ablation"] or res["unseen"]:
    repro.plot_ablation(res, dest / "ablation.png")
print(repro.results_markdown(res))
