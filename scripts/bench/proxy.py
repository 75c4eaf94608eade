#!/usr/bin/env python3
"""How well does a trial's cheap score predict the fully recovered accuracy, and how much
does the policy matter at all?

Samples K random policies at a FLOPs budget (``--space fill``: random relative widths scaled
to spend the budget, as the search samples them; ``levels``: random keep levels that fit),
all L1. For each: search-val accuracy after BN recalibration alone and after short
fine-tunes of several lengths (each its own cosine schedule, as in a trial), then the TEST
accuracy after the full recovery with several seeds. Prints the Spearman rank correlation of
each proxy with the recovered accuracy (mean over seeds) and its cost, and compares the
spread of recovered accuracy *between* policies with the seed-to-seed noise *within* one:
where the first is not much larger, no search over policies can beat uniform by much.

    python -m scripts.bench.proxy --budget 0.1 --policies 12 --steps 0,50,150,300 --recovery 430 --seeds 2

``--refit-steps 0,50`` adds proxies that first refit the pruned layers to the dense outputs
(``--reconstruct``), then fine-tune that many steps. ``--known results/bench_quality.json``
adds that benchmark's b, d and e policies at the same budget, with the recovered accuracies
it stored (the recovery is deterministic, so seed s there is seed s here).

    python -m scripts.bench.proxy --model resnet20 --budget 0.15 --policies 4 --steps 0,150 \
        --refit-steps 0,50 --seeds 1 --known results/bench_quality.json

A ceiling where the full recovery of every policy costs too much: ``--recover-top K`` scores
all policies but recovers only the K best by one proxy (``--rank-by``), so it bounds what a
search with that score could ship, with far more recovery than E pays for (no rho then).
``--from FILE`` takes the policies of an earlier run instead of sampling, ranked by what that
run stored (``--rank-by test_recovered_mean``: its K best, recovered again at another E):

    python -m scripts.bench.proxy --budget 0.2 --steps 0 --refit-steps 0 --compute 4 --seeds 1 --baselines \
        --from results/bench_proxy-smallcnn-0.2-e1.json --recover-top 8 --rank-by test_recovered_mean
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--budget", default="0.1")
    p.add_argument("--space", default="fill", choices=("fill", "levels"))
    p.add_argument("--policies", type=int, default=12)
    p.add_argument("--steps", default="0,50,150,300")
    p.add_argument("--refit-steps", default="", help="comma-separated fine-tune steps after a refit (proxies)")
    p.add_argument("--known", default=None, help="a bench_quality.json whose b, d, e policies at --budget join")
    p.add_argument("--recovery", type=int, default=430)
    p.add_argument("--compute", type=float, default=None, help="recover each policy with E dense epochs of compute "
                   "instead (steps per policy from its FLOPs, as bench/compute.py gives its contenders)")
    p.add_argument("--baselines", action="store_true", help="add uniform L1 and global magnitude at the budget, "
                   "recovered and scored like the random policies (the ceiling's yardstick)")
    p.add_argument("--val-heads", default="", help="comma-separated image counts: each proxy also scored on the "
                   "first N search-val images (a cheaper score)")
    p.add_argument("--dense-epochs", type=int, default=None, help="the dense checkpoint's epochs (bench/dense.py)")
    p.add_argument("--checkpoint", default=None, help="a dense checkpoint file (as bench/compute.py --checkpoint)")
    p.add_argument("--prune-stem", action="store_true", help="policies may prune the stem (as the search's advice says)")
    p.add_argument("--recover-top", type=int, default=None, help="recover only the K random policies that rank best "
                   "by --rank-by (a ceiling for a search with that score; no rho)")
    p.add_argument("--rank-by", default=None, help="the proxy (e.g. val_refit_0) or, with --from, a stored field "
                   "(test_recovered_mean) that --recover-top ranks by (default: the last proxy)")
    p.add_argument("--from", dest="from_file", default=None, help="the random policies of an earlier run's JSON "
                   "instead of sampled ones (their stored fields kept as 'earlier')")
    p.add_argument("--seeds", type=int, default=2, help="recovery seeds per policy (>= 2 to see the noise)")
    p.add_argument("--first-seed", type=int, default=0, help="recovery seeds FIRST .. FIRST + SEEDS - 1 (more seeds "
                   "of policies an earlier run recovered; not with --known)")
    p.add_argument("--keep-min", type=float, default=0.125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default results/bench_proxy-<model>-<budget>.json")
    args = p.parse_args(argv)
    if args.first_seed and args.known:
        p.error("--first-seed: --known's stored accuracies are seeds 0 .. SEEDS - 1")

    import torch
    from scipy.stats import spearmanr

    from autoprune.core.budget import fill_budget
    from autoprune.core.compute import Ledger, dense_epoch_flops
    from autoprune.core.loops import evaluate, finetune, recalibrate_bn
    from autoprune.core.measure.flops import count_flops
    from autoprune.core.policy import GroupChoice, Policy
    from autoprune.core.reconstruct import dense_targets, reconstruct
    from autoprune.core.units import resolve_budget
    from autoprune.policy_search.space import WIDTH_RANGE, width
    from scripts.bench.common import (
        load_bench_task,
        recover,
        recover_within,
        uniform_policy,
    )

    torch.set_num_threads(args.threads)
    # the benchmark's dense model and pruner (with its calibration images, for the known
    # policies' taylor / activation groups)
    _, config, task, dense, _, pruner = load_bench_task(args.model, args.keep_min, threads=args.threads,
                                                        dense_epochs=args.dense_epochs, checkpoint=args.checkpoint,
                                                        prune_stem=args.prune_stem)
    example = pruner.example_input
    target = resolve_budget(args.budget, count_flops(dense, example))
    epoch = dense_epoch_flops(count_flops(dense, example), len(task.train))  # the unit of compute
    rng = random.Random(args.seed)
    policies = []
    earlier: list[dict] = []  # --from: the earlier run's rows, index for index with policies
    if args.from_file:
        earlier = [r for r in json.loads(Path(args.from_file).read_text())["rows"] if r["source"] == "random"]
        sizes = {g.id: g.channels for g in pruner.groups}
        for r in earlier:  # rows written before they kept their policy: L1 at their channel counts
            policy = (Policy.from_dict(r["policy"], source=f"{args.from_file} row") if "policy" in r else
                      Policy({gid: GroupChoice("l1", kept / sizes[gid]) for gid, kept in r["channels"].items()}))
            if pruner.resolve(policy, indices=False).channels() != r["channels"]:
                raise SystemExit(f"{args.from_file}: a row's channels {r['channels']} are not rebuilt here")
            policies.append(policy)
    while len(policies) < args.policies and not args.from_file:
        if args.space == "fill":
            widths = {g.id: width(rng.randint(-WIDTH_RANGE, WIDTH_RANGE)) for g in pruner.groups}
            policy = fill_budget(widths, "l1", budget=target, keep_min=args.keep_min,
                                 predict=pruner.predict_flops)
        else:
            policy = Policy({g.id: GroupChoice("l1", rng.choice(config.keep_levels)) for g in pruner.groups})
        if count_flops(pruner.apply(policy)[0], example) <= target:
            policies.append(policy)
    known: list[tuple[str, Policy, list[float] | None]] = []
    if args.baselines:
        from autoprune.core.budget import global_magnitude_policy

        known += [("uniform", uniform_policy(pruner, target)[0], None),
                  ("global", global_magnitude_policy(pruner, target), None)]
    if args.known:
        for r in json.loads(Path(args.known).read_text())[args.model][args.budget]["rows"]:
            tag = r["contender"][:2]
            if tag == "b)":  # solved again exactly as the bench solved it (its note rounds the ratio)
                known.append((tag, uniform_policy(pruner, target)[0], r["accs"]))
            elif tag in ("d)", "e)") and "policy" in r:
                known.append((tag, Policy.from_dict(r["policy"]), r["accs"]))
    steps = [int(s) for s in args.steps.split(",")]
    refit_steps = [int(s) for s in args.refit_steps.split(",") if s]
    proxies = [(f"val_after_{s}", s, False) for s in steps] + [(f"val_refit_{s}", s, True) for s in refit_steps]
    heads = [int(n) for n in args.val_heads.split(",") if n]
    cost = {name: 0.0 for name, _, _ in proxies}
    spent = {name: 0.0 for name, _, _ in proxies}  # dense epochs (autoprune.core.compute)
    targets = None
    if refit_steps:
        gen = torch.Generator().manual_seed(1)
        targets = dense_targets(dense, task.train.x[torch.randperm(len(task.train), generator=gen)[:1024]])
    rows: list[dict] = []
    recovery = f"{args.compute:g} dense epochs" if args.compute is not None else f"{args.recovery} steps"
    out = Path(args.out or ROOT / "results" / f"bench_proxy-{args.model}-{args.budget}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    rank_by = args.rank_by or proxies[-1][0]
    rankable = {f"{n}@{h}" if h else n for n, _, _ in proxies for h in [None, *heads]} | {k for r in earlier for k in r}
    if args.recover_top is not None and rank_by not in rankable:  # a typo would rank every policy alike
        p.error(f"--rank-by {rank_by!r}: choose one of {', '.join(sorted(rankable))}")

    def write(summary: dict | None) -> None:  # after every policy: a stopped run keeps what it measured
        out.write_text(json.dumps({"model": args.model, "budget": args.budget, "space": args.space,
                                   "dense_epochs": args.dense_epochs, "checkpoint": args.checkpoint,
                                   "prune_stem": args.prune_stem, "recovery": recovery, "seeds": args.seeds,
                                   "first_seed": args.first_seed,
                                   "from": args.from_file, "recover_top": args.recover_top,
                                   "rank_by": rank_by,
                                   "summary": summary, "rows": rows}, indent=1))

    todo = known + [("random", p, None) for p in policies]  # the baselines first: checked against bench/compute.py
    # the cheap scores of every policy first, then the recoveries (of the --recover-top K only)
    models = []
    for i, (source, policy, stored) in enumerate(todo):
        base, resolved = pruner.apply(policy)
        row = {"source": source, "channels": resolved.channels(), "flops": count_flops(base, example),
               "policy": resolved.to_dict()}  # to recover it again (more seeds, longer)
        if source == "random" and earlier:
            row["earlier"] = {k: v for k, v in earlier[i - len(known)].items()
                              if k not in ("source", "channels", "flops", "policy")}
        for name, s, refit in proxies:
            t = time.perf_counter()
            m = copy.deepcopy(base)
            with Ledger().watching(m, row["flops"]) as ledger:
                if refit:
                    reconstruct(m, targets, pruner.kept_outputs(resolved))
                recalibrate_bn(m, task.train, num_batches=20, seed=0)
                finetune(m, task.train, steps=s, seed=0)
                row[name] = evaluate(m, task.val)
            for n in heads:  # not charged: the whole search-val pass above covers these images
                row[f"{name}@{n}"] = evaluate(m, task.val.head(n))
            cost[name] += time.perf_counter() - t
            spent[name] += ledger.total / epoch
        rows.append(row)
        models.append((base, policy, stored))

    def rank_key(row: dict) -> float:
        if rank_by in row:
            return row[rank_by]
        value = row.get("earlier", {}).get(rank_by)  # a policy the earlier run did not recover ranks last
        return float("-inf") if value is None else value

    recovered = [r for r in rows if r["source"] == "random"]
    if args.recover_top is not None:
        recovered = sorted(recovered, key=rank_key, reverse=True)[: args.recover_top]
    chosen = {id(r) for r in recovered}
    for i, (row, (base, policy, stored)) in enumerate(zip(rows, models)):
        if row["source"] == "random" and id(row) not in chosen:
            row["test_recovered"] = None
            continue
        ranked_as = rank_key(row) if row["source"] == "random" else None  # before this run's fields join
        accs = list(stored[: args.seeds]) if stored else []
        row["recovery_dense_epochs"] = []
        for seed in range(args.first_seed + len(accs), args.first_seed + args.seeds):
            ledger = Ledger()
            if args.compute is None:
                accs.append(recover(base, task, seed, args.recovery, ledger))  # as bench_quality recovers contenders
            else:  # as bench/compute.py recovers its contenders
                try:
                    m, _ = recover_within(pruner, policy, row["flops"], task, dataclasses.replace(config, seed=seed),
                                          args.compute * epoch, ledger)
                    accs.append(evaluate(m, task.test))
                finally:
                    ledger.close()
            row["recovery_dense_epochs"].append(ledger.total / epoch)
        row["test_recovered"] = accs
        row["test_recovered_mean"] = statistics.mean(accs)
        print(f"policy {i + 1}/{len(todo)} ({row['source']}) {row['channels']} {row['flops']:,} FLOPs: "
              + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val"))
              + (f", ranked by {rank_by} {ranked_as:.4f}" if ranked_as is not None else "")
              + ", test recovered " + " ".join(f"{a:.4f}" for a in accs), file=sys.stderr, flush=True)
        write(None)
    random_rows = [r for r in rows if r["source"] == "random" and r["test_recovered"] is not None]
    final = [r["test_recovered_mean"] for r in random_rows]
    top = args.recover_top is not None and args.recover_top < len(policies)
    print(f"\n{args.model}, budget {args.budget} ({target:,} FLOPs), {len(policies)} random '{args.space}' policies; "
          f"recovery {recovery} x {args.seeds} seeds; {args.threads} thread(s)"
          + (f", plus {', '.join(k[0] for k in known)}" if known else "") + "\n")
    print("| proxy (search-val images) | Spearman rho vs recovered test acc, random policies | seconds per policy "
          "| dense epochs per policy |")
    print("|---|---|---|---|")
    summary: dict[str, object] = {}
    n_val = len(task.val)
    for name, s, refit in proxies:
        key = f"refit+{s}" if refit else str(s)
        label = "BN recalibration only" if s == 0 else f"{s} fine-tune steps"
        if refit:
            label = "refit + " + label
        for n in [n_val, *heads]:
            field = name if n == n_val else f"{name}@{n}"
            # over a top K that one proxy chose, a rank correlation says nothing about the proxies
            rho = float("nan") if top else spearmanr([r[field] for r in random_rows], final).statistic
            # a smaller head saves its forward passes (1 x the policy's FLOPs per image), nothing else
            saved = (n_val - n) * statistics.mean(r["flops"] for r in rows) / epoch
            summary[key if n == n_val else f"{key}@{n}"] = {"rho": rho, "val_images": n, "seconds": cost[name] / len(rows),
                                                         "dense_epochs": spent[name] / len(rows) - saved}
            print(f"| {label} ({n:,}) | {rho:.3f} | {cost[name] / len(rows):.1f} | "
                  f"{spent[name] / len(rows) - saved:.4f} |")
    if top:
        print(f"\n(rho not computed: only the {len(final)} best by {rank_by} of {len(policies)} were recovered)")
    between = statistics.stdev(final) if len(final) > 1 else float("nan")
    within = (statistics.mean(statistics.stdev(r["test_recovered"]) for r in random_rows) if args.seeds > 1
              else float("nan"))
    summary["spread"] = {"between_policies_std": between, "within_policy_seed_std": within,
                         "best": max(final), "worst": min(final), "median": statistics.median(final)}
    summary["recovered"] = {"random": len(final), "of": len(policies), "rank_by": rank_by if top else None}
    print(f"\nrecovered test accuracy over {len(final)} random policies: best {100 * max(final):.2f}, median "
          f"{100 * statistics.median(final):.2f}, worst {100 * min(final):.2f}; std between policies "
          f"{100 * between:.2f} pt, seed std within a policy {100 * within:.2f} pt")
    for r in rows:
        if r["source"] != "random":
            summary[r["source"]] = {"test_recovered_mean": r["test_recovered_mean"],
                                    "random_above": sum(f > r["test_recovered_mean"] for f in final)}
            print(f"{r['source']}: {100 * r['test_recovered_mean']:.2f}; random policies above it: "
                  f"{summary[r['source']]['random_above']} of {len(final)}")
    write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
