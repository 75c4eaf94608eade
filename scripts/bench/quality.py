#!/usr/bin/env python3
"""Benchmark: autoprune's search against the policies an engineer would pick by hand.

For each task and FLOPs budget, every contender starts from the same dense checkpoint, gets
the same recovery (BN recalibration + the same fine-tune steps, optimizer and seeds) and is
evaluated on the TEST split, over several recovery seeds:

  a) autoprune: best feasible policy (search-val accuracy) of a TPE search of N trials;
  as) as a, warm-started with the sensitivity-derived policy too (--warm-start uniform,sensitivity);
  al) as a, in the ``local`` space: TPE around the sensitivity-derived policy (--space local);
  alc) as al, then ``autoprune confirm``: the search's --confirm-top best trials
      recovered exactly as below but scored on search-val, and the best of those picked;
  ar) as a, but each trial's model is refit to the dense layers' outputs (least squares) and
                scored after --refit-steps of fine-tuning (0: no fine-tune), so trials are
                several times cheaper: --refit-trials of them at about a's compute;
  b) uniform:   one keep ratio for every group, L1 importance, ratio solved for the budget;
  c) global:    Torch-Pruning's global magnitude ranking (BasePruner, global_pruning=True),
                pruning ratio solved for the budget;
  bx) uniform, equal total compute: (b) fine-tuned for as many steps as a's search spent
                (its trials and the reference curves' points at --search-steps each) plus the
                recovery: what search buys over "just fine-tune longer";
  d) random:    best of N random feasible policies (random sampler, same trials and steps as a);
  e) sensitivity: the sensitivity-derived policy that ``--warm-start sensitivity`` enqueues,
                recovered on its own (no search);
  and the dense model given the same extra training.

    python -m scripts.bench.quality --tasks smallcnn --budgets 0.1,0.2,0.5 --trials 30

(The blend-space contenders ab / abc went with ``--space blend`` on 2026-12-06; their rows stay in
results/bench_quality_m2.json.)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from scripts.bench.common import (
    ROOT,
    global_model,
    load_bench_task,
    recover,
    sensitivity_policy,
    uniform_model,
)


def search_best(config, sampler: str, trials: int, steps: int, budget: str, study: str, storage: str,
                early_stop: float = 0.0, reconstruct: bool = False, warm_start: list[str] | None = None):
    """Run (or top up) a search; return (best feasible policy, its trial, trials, trial-seconds)."""
    from autoprune.core.policy import Policy
    from autoprune.policy_search import study as studies
    from autoprune.policy_search.run import run_search
    from autoprune.task.config import SearchConfig

    cfg = SearchConfig.from_dict({**config, "budget_flops": budget, "sampler": sampler, "trials": trials,
                                  "finetune_steps": steps, "storage": storage, "study": study, "early_stop": early_stop,
                                  "reconstruct": reconstruct,
                                  "warm_start": warm_start if warm_start is not None else
                                  (["uniform"] if sampler == "tpe" else [])})
    done = 0
    names = [s.study_name for s in studies.open_storage(storage).get_all_studies()]
    def trained(s) -> int:  # fine-tuned trials: completed or stopped early
        return sum(1 for t in s.trials if t.state.name == "COMPLETE" or t.user_attrs.get("early_stopped"))

    if study in names:
        done = trained(studies.load(storage, study))
    if done < trials:
        cfg.trials = trials - done
        run_search(cfg, progress=True)
    s = studies.load(storage, study)
    best = studies.best_feasible(s)
    trials_done = [t for t in s.trials if t.state.name in ("COMPLETE", "PRUNED")]
    cpu = sum(t.user_attrs.get("seconds", {}).get("total", 0.0) for t in trials_done)
    return Policy.from_dict(best.user_attrs["policy"]), best, trained(s), cpu


def confirmed_best(storage: str, study: str, top: int, steps: int, seeds: int):
    """``autoprune confirm`` on a search's ``top`` trials (runs already stored are reused);
    return (the best confirmed policy, its trial, the confirmation seconds stored for them)."""
    from autoprune.core.policy import Policy
    from autoprune.policy_search import study as studies
    from autoprune.ship import confirm

    s = studies.load(storage, study)
    trials = confirm.candidates(s, top=top)
    confirm.confirm(s, trials, steps=steps, seeds=seeds, progress=True)  # the stored runs are read back below
    print(confirm.format_table(s, steps))
    numbers = {t.number for t in trials}
    secs = sum(r["seconds"] for n, rs in confirm.runs(s).items() if n in numbers for r in rs
               if r["steps"] == steps and r["seed"] < seeds)  # the benchmark's studies use seed 0
    best = confirm.best_confirmed(s)
    return Policy.from_dict(best.user_attrs["policy"]), best, secs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="smallcnn,resnet20")
    p.add_argument("--budgets", default="0.1,0.2,0.5")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--search-steps", type=int, default=150)
    p.add_argument("--recovery-steps", type=int, default=430, help="one epoch of 55k images at batch 128")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--keep-min", type=float, default=0.125)
    p.add_argument("--space", default="fill", help="search space of (a) and (d): fill (default) or front")
    p.add_argument("--prune-stem", action="store_true",
                   help="every contender may prune the stem's output channels too (search --prune-stem)")
    p.add_argument("--early-stop", type=float, default=0.0,
                   help="also run (a) with early stopping after this fraction of the fine-tune steps")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier on a shared 2-core box)")
    p.add_argument("--confirm-top", type=int, default=3,
                   help="contenders abc, alc: how many of the search's best trials autoprune confirm "
                        "re-scores (default 3)")
    p.add_argument("--confirm-seeds", type=int, default=1, help="contenders abc, alc: recovery seeds per confirmed trial")
    p.add_argument("--refit-trials", type=int, default=200, help="trials of contender ar")
    p.add_argument("--refit-steps", type=int, default=0, help="fine-tune steps of contender ar's trials")
    p.add_argument("--contenders", default="dense,a,b,c,d",
                   help="which of dense,a,as,al,alc,ab,abc,ar,b,bx,c,d,e to run (default all but e); split them over processes with their own "
                        "--out and --storage, then --merge the outs")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="merge the rows of these outputs (runs of different --contenders) into --out, then report")
    p.add_argument("--remeasure-latency", action="store_true",
                   help="rebuild every stored contender and measure all latencies again, side by side in this "
                        "process (for when the runs that wrote --out shared the CPU)")
    p.add_argument("--report-only", action="store_true", help="reprint the tables and redraw the plots from --out")
    p.add_argument("--storage", default="sqlite:///results/bench_quality.db",
                   help="the searches' study storage; with --remeasure-latency, several, comma-separated")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_quality.json"))
    args = p.parse_args(argv)

    out = Path(args.out)
    if args.merge:
        out.write_text(json.dumps(merge([json.loads(Path(m).read_text()) for m in args.merge]), indent=1))
        args.report_only = True
    if args.report_only:
        for task_name, task_res in json.loads(out.read_text()).items():
            for budget, res in task_res.items():
                if budget != "dense":
                    settings = argparse.Namespace(**{**vars(args), **res.get("settings", {})})
                    dense_flops = task_res["dense"]["flops"] if "dense" in task_res else 0  # 0: not run yet
                    print(format_table(task_name, budget, res["target_flops"], dense_flops, res["rows"], settings))
            if "dense" in task_res:
                print(plot(task_name, task_res, out.with_name(f"{out.stem}-{task_name}.png")))
        return 0

    import torch

    from autoprune.core.measure.flops import count_flops, count_params, latency_ms
    from autoprune.core.units import resolve_budget

    torch.set_num_threads(args.threads)
    results = json.loads(out.read_text()) if out.exists() else {}
    for task_name in args.tasks.split(","):
        base, config, task, dense, ignored, pruner = load_bench_task(task_name, args.keep_min, args.space, args.threads,
                                                                     args.prune_stem)
        example = pruner.example_input
        dense_flops = count_flops(dense, example)

        def row(name: str, model, note: str, compute: str = "", example=example, task=task, policy=None,
                steps: int = args.recovery_steps) -> dict:
            accs = [recover(model, task, seed, steps) for seed in range(args.seeds)]
            r = {"contender": name, "note": note, "test_acc_mean": statistics.mean(accs),
                 "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "accs": accs,
                 "flops": count_flops(model, example), "params": count_params(model),
                 "latency_ms": latency_ms(model, example, batch=64, repeats=30), "search": compute}
            if policy is not None:  # to rebuild the model later (--remeasure-latency)
                r["policy"] = policy.to_dict()
            return r

        def confirmed_row(label: str, study_name: str, n: int, cpu: float, pruner=pruner, row=row) -> dict:
            """A search's top --confirm-top trials confirmed (autoprune confirm), the best recovered."""
            policy, best, secs = confirmed_best(args.storage, study_name, args.confirm_top, args.recovery_steps,
                                                args.confirm_seeds)
            return row(f"{label}, its top {args.confirm_top} re-scored after a {args.recovery_steps}-step recovery on "
                       f"search-val ({args.confirm_seeds} seed(s); autoprune confirm)", pruner.apply(policy)[0],
                       f"trial {best.number}", f"{n} trials, {cpu:.0f} s + confirm {secs:.0f} s", policy=policy)

        task_res = results.setdefault(task_name, {})
        if args.remeasure_latency:
            remeasure_latency(task_name, task_res, dense, pruner, example, ignored, args.storage.split(","),
                              lambda target, p=pruner, t=task, c=config: sensitivity_policy(
                                  p, t, c, target, args.keep_min)[0])
            out.write_text(json.dumps(results, indent=1))
            continue
        which = set(args.contenders.split(","))
        if "dense" not in task_res and "dense" in which:
            task_res["dense"] = row("dense + same extra training", dense, "")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
        for budget in args.budgets.split(","):
            target = resolve_budget(budget, dense_flops)
            rows = [task_res["dense"]] if "dense" in task_res else []
            t0 = time.process_time()
            tag = f"{task_name}-{budget}-{args.space}-{args.trials}{'-stem' if args.prune_stem else ''}"
            a_trials = None  # a's fine-tuned trials, for bx
            if "a" in which:
                policy, best, n, cpu = search_best(base, "tpe", args.trials, args.search_steps, budget,
                                                   f"{tag}-tpe", args.storage)
                a_trials = n
                rows.append(row(f"a) autoprune (TPE, {args.space} space)", pruner.apply(policy)[0], f"trial {best.number}",
                                f"{n} trials, {cpu:.0f} s", policy=policy))
            if "as" in which:
                wall = time.perf_counter()
                policy, best, n, cpu = search_best(base, "tpe", args.trials, args.search_steps, budget,
                                                   f"{tag}-tpe-ws", args.storage, warm_start=["uniform", "sensitivity"])
                wall = time.perf_counter() - wall  # the trials, and the analysis unless it was cached
                rows.append(row("as) autoprune (TPE, warm start uniform + sensitivity)", pruner.apply(policy)[0],
                                f"trial {best.number}", f"{n} trials, {cpu:.0f} s; {wall:.0f} s wall with the analysis",
                                policy=policy))
            if "al" in which or "alc" in which:
                wall = time.perf_counter()
                study_name = f"{tag.replace(f'-{args.space}-', '-local-')}-tpe"
                policy, best, n, cpu = search_best({**base, "space": "local"}, "tpe", args.trials, args.search_steps,
                                                   budget, study_name, args.storage)
                wall = time.perf_counter() - wall
                if "al" in which:
                    rows.append(row("al) autoprune (TPE, local space around the sensitivity policy)",
                                    pruner.apply(policy)[0], f"trial {best.number}",
                                    f"{n} trials, {cpu:.0f} s; {wall:.0f} s wall with the analysis", policy=policy))
                if "alc" in which:
                    rows.append(confirmed_row("alc) as al", study_name, n, cpu))
            if "ar" in which:
                policy, best, n, cpu = search_best(base, "tpe", args.refit_trials, args.refit_steps, budget,
                                                   f"{task_name}-{budget}-{args.space}-{args.refit_trials}-tpe-refit"
                                                   f"{args.refit_steps}", args.storage, reconstruct=True)
                rows.append(row(f"ar) autoprune (TPE, refit proxy, {args.refit_steps} steps)", pruner.apply(policy)[0],
                                f"trial {best.number}", f"{n} trials, {cpu:.0f} s", policy=policy))
            if args.early_stop:
                policy, best, n, cpu = search_best(base, "tpe", args.trials, args.search_steps, budget,
                                                   f"{tag}-tpe-es{args.early_stop}", args.storage, args.early_stop)
                rows.append(row(f"a') autoprune (TPE), early stop at {args.early_stop}", pruner.apply(policy)[0],
                                f"trial {best.number}", f"{n} trials, {cpu:.0f} s", policy=policy))
            if "b" in which:
                model, note = uniform_model(pruner, target)
                rows.append(row("b) uniform L1", model, note, "none"))
            if "bx" in which:
                # the default search also fine-tunes the reference curves: 2 rules x 3 levels
                from autoprune.policy_search.reference import levels
                points = 2 * len(levels(target, 0.25)) if args.space == "front" else 0
                n = a_trials if a_trials is not None else args.trials
                steps = (n + points) * args.search_steps + args.recovery_steps
                model, note = uniform_model(pruner, target)
                rows.append(row(f"bx) uniform L1, {steps} fine-tune steps (a's {n} trials + {points} reference points "
                                f"x {args.search_steps}, + {args.recovery_steps})", model, note, "none", steps=steps))
            if "c" in which:
                model, note = global_model(dense, example, ignored, target)
                rows.append(row("c) global magnitude (Torch-Pruning)", model, note, "none"))
            if "e" in which:
                policy, note, secs = sensitivity_policy(pruner, task, config, target, args.keep_min)
                rows.append(row("e) sensitivity-derived L1 (no search)", pruner.apply(policy)[0], note,
                                f"sensitivity analysis {secs:.0f} s", policy=policy))
            if "d" in which:
                policy, best, n, cpu = search_best(base, "random", args.trials, args.search_steps, budget,
                                                   f"{tag}-random", args.storage)
                rows.append(row("d) random feasible (best of N)", pruner.apply(policy)[0], f"trial {best.number}",
                                f"{n} trials, {cpu:.0f} s", policy=policy))
            task_res[budget] = {"target_flops": target, "rows": rows, "bench_cpu_s": time.process_time() - t0,
                                "settings": {k: v for k, v in vars(args).items() if k not in ("out", "storage")}}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
            print(format_table(task_name, budget, target, dense_flops, rows, args))
        if "dense" in task_res:
            print(plot(task_name, task_res, out.with_name(f"{out.stem}-{task_name}.png")))
    return 0


def merge(outputs: list[dict]) -> dict:
    """One result from runs that each ran some contenders: the dense row from whichever has it,
    each budget's rows in contender order (a later output's row replaces an earlier one of the
    same name), and the benchmark CPU-seconds of all runs summed."""
    merged: dict = {}
    for res in outputs:
        for task_name, task_res in res.items():
            m = merged.setdefault(task_name, {})
            if "dense" in task_res:
                m["dense"] = task_res["dense"]
            for budget, b in task_res.items():
                if budget == "dense":
                    continue
                mb = m.setdefault(budget, {"target_flops": b["target_flops"], "rows": [], "bench_cpu_s": 0.0,
                                           "settings": b.get("settings", {})})
                rows = {r["contender"]: r for r in mb["rows"]}
                rows.update({r["contender"]: r for r in b["rows"] if not r["contender"].startswith("dense")})
                # (a) first, as format_table measures it against the rest; then by label
                mb["rows"] = sorted(rows.values(), key=lambda r: (not r["contender"].startswith("a)"), r["contender"]))
                mb["bench_cpu_s"] += b.get("bench_cpu_s", 0.0)
    for m in merged.values():
        for budget, b in m.items():
            if budget != "dense" and "dense" in m:
                b["rows"] = [m["dense"], *b["rows"]]
    return merged


def remeasure_latency(task_name: str, task_res: dict, dense, pruner, example, ignored, storages: list[str], sensitivity_at,
                      rounds: int = 12) -> None:
    """Every stored contender's model rebuilt and timed again in this process: from the
    policy stored in its row; for rows written before rows stored their policy, searched ones
    from their study (looked up in each of ``storages``), b and c solved again for the budget,
    e by deriving the sensitivity policy again. The models are timed in ``rounds`` shuffled
    round-robin passes of 5 forward passes each, and each gets the median of its 5 x
    ``rounds`` times."""
    from autoprune.core.measure.flops import latency_ms
    from autoprune.core.policy import Policy
    from autoprune.policy_search import study as studies

    for budget, res in task_res.items():
        if budget == "dense":
            continue
        for r in res["rows"][1:]:
            note = r["note"]
            if "policy" in r:
                r["_model"] = pruner.apply(Policy.from_dict(r["policy"]))[0]
            elif note.startswith("trial "):
                name = r.get("study") or guess_study(task_name, budget, r, res.get("settings", {}))
                found = [s for s in storages if name in [x.study_name for x in studies.open_storage(s).get_all_studies()]]
                if not found:
                    print(f"latency not re-measured for {r['contender']} at {budget}: no study {name} in {storages}")
                    continue
                trial = studies.load(found[0], name).trials[int(note.split()[1])]
                r["study"] = name
                r["_model"] = pruner.apply(Policy.from_dict(trial.user_attrs["policy"]))[0]
            elif note.startswith("keep "):  # solved again: the note's ratio is rounded
                r["_model"] = uniform_model(pruner, res["target_flops"])[0]
            elif note.startswith("global ratio "):
                r["_model"] = global_model(dense, example, ignored, res["target_flops"])[0]
            elif note.startswith("keeps "):
                r["_model"] = pruner.apply(sensitivity_at(res["target_flops"]))[0]
    timed = [(task_res["dense"], dense)] + [
        (r, r["_model"]) for budget, res in task_res.items() if budget != "dense" for r in res["rows"][1:] if "_model" in r]
    samples: dict[int, list[float]] = {id(r): [] for r, _ in timed}
    order = list(timed)
    rng = random.Random(0)
    for round_ in range(rounds + 1):  # round-robin, so a slow spell of a shared machine hits every model alike
        rng.shuffle(order)
        for r, model in order:
            ms = latency_ms(model, example, batch=64, repeats=5)
            if round_:  # round 0 only warms up
                samples[id(r)].append(ms)
    for r, _ in timed:
        r["latency_ms"] = statistics.median(samples[id(r)])
    for budget, res in task_res.items():
        if budget != "dense":
            res["rows"][0]["latency_ms"] = task_res["dense"]["latency_ms"]
            for r in res["rows"]:
                r.pop("_model", None)
            res["latency"] = "re-measured side by side in one process (--remeasure-latency)"


def guess_study(task_name: str, budget: str, row: dict, settings: dict) -> str:
    head = row.get("search", "").split()
    trials = head[0] if head and head[0].isdigit() else settings.get("trials", 30)  # "20 trials, 3544 s"
    tag = f"{task_name}-{budget}-{settings.get('space', 'fill')}-{trials}"
    c = row["contender"]
    if c.startswith("d)"):
        return f"{tag}-random"
    if c.startswith("a2)"):
        return f"{tag}-tpe1"
    if c.startswith("a3)"):
        return f"{tag}-tpe-es0.34"
    return f"{tag}-tpe"


def plot(task: str, task_res: dict, path: Path) -> Path:
    """Test accuracy against FLOPs: every contender at every budget, mean and std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = task_res["dense"]
    series: dict[str, list[tuple[float, float, float]]] = {}
    for budget, res in sorted(((b, r) for b, r in task_res.items() if b != "dense"), key=lambda kv: float(kv[0])):
        for r in res["rows"][1:]:
            name = r["contender"].split(" (")[0] if r["contender"].startswith("a") else r["contender"]
            if name.startswith("ar)"):
                name += ", refit proxy"
            if name.startswith("as)"):
                name += ", sensitivity warm start"
            if name.startswith("al)"):
                name += ", local space"
            if name.startswith("ab)"):
                name += ", blend space"
            if name.startswith("bx)"):
                name = "bx) uniform L1, equal total compute"
            if name.startswith(("abc)", "alc)")):
                name = name.split(",")[0] + ", best of its top trials confirmed"
            series.setdefault(name, []).append(
                (r["flops"] / dense["flops"], 100 * r["test_acc_mean"], 100 * r["test_acc_std"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"a": ("o", "C3"), "a2": ("x", "C7"), "ar": ("*", "C6"), "as": ("h", "C8"), "al": ("p", "C9"),
              "ab": ("X", "C3"), "abc": ("o", "C4"), "alc": ("d", "C9"), "a3": ("v", "C4"), "a'": ("v", "C4"),
              "b": ("s", "C0"), "bx": ("s", "C8"), "c": ("^", "C2"), "d": ("D", "C1"), "e": ("P", "C5")}
    for name, pts in series.items():
        marker, color = styles.get(name.split(")")[0], ("x", "C7"))
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, marker=marker, color=color, capsize=3, label=name,
                    linestyle="-" if name.startswith("a)") else ":")
    ax.axhline(100 * dense["test_acc_mean"], color="k", linestyle="--", linewidth=1,
               label=f"dense + same extra training ({100 * dense['test_acc_mean']:.2f})")
    ax.set_xscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)
    ax.set_xlabel("FLOPs (fraction of dense, log scale)")
    ax.set_ylabel("test accuracy after recovery (%)")
    ax.set_title(f"{task} on Fashion-MNIST: same dense start, same recovery, 3 seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(task: str, budget: str, target: int, dense_flops: int, rows: list[dict], args) -> str:
    from autoprune.core.units import human

    lines = [(f"\n{task} on Fashion-MNIST, budget {budget} ({human(target)} of {human(dense_flops)} FLOPs); "
              f"recovery {args.recovery_steps} steps x {args.seeds} seeds; test split"),
             "| contender | test acc (mean ± std) | FLOPs | params | latency b64 (ms) | search compute | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f} | "
                     f"{human(r['flops'])} | {human(r['params'])} | {r['latency_ms']:.2f} | {r['search']} | {r['note']} |")
    if not rows or not rows[0]["contender"].startswith("dense"):
        return "\n".join(lines)  # a partial run (see --merge): no dense row to measure the gap against
    # the baselines are b, c and d; e (autoprune's own sensitivity policy) is shown apart
    baselines = [r for r in rows[1:] if r["contender"][:2] in ("b)", "c)", "d)")]
    if not baselines:
        return "\n".join(lines)
    base = max(baselines, key=lambda r: r["test_acc_mean"])
    # the bar of issue 16 (the +1 point of the retired issue 3 is out of reach for this task family):
    # never more than 0.1 point below the best of uniform, global and random
    need = -0.001
    e = [r for r in rows[1:] if r["contender"].startswith("e)")]
    for r in rows[1:]:
        if not r["contender"].startswith("a"):
            continue
        d = r["test_acc_mean"] - base["test_acc_mean"]
        line = (f"{r['contender']}: {100 * d:+.2f} pt vs the best baseline, {base['contender']} "
                f"(bar: at most 0.10 pt below it: {'met' if d >= need - 1e-9 else 'NOT met'})")
        if e:
            line += f"; {100 * (r['test_acc_mean'] - e[0]['test_acc_mean']):+.2f} pt vs e"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
