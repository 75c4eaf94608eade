#!/usr/bin/env python3
"""Coverage: does autoprune prune every torchvision classifier (and a sample of timm)?

For each model, random init (nothing is downloaded), 10 classes, 64 px (224 px for ViT,
MaxViT and Inception V3, which need it), in a process of its own with a memory cap and a
time limit:

* the groups are found (or the one-line error autoprune gives is recorded);
* uniform pruning at keep 0.5 and at ``--keep-min`` with every importance method: forward
  pass, output shape; with l1 also a backward pass, FLOPs lower than dense, the FLOPs
  predictor's error against fvcore, and no layer left with zero channels;
* peak memory (RSS) and seconds.

    python scripts/zoo_coverage.py                       # all, writes results/zoo.json
    python scripts/zoo_coverage.py --models resnet18,vit_b_16 --out /tmp/zoo.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("l1", "l2", "fpgm", "taylor", "activation", "random")
#: timm families sampled when timm is installed (pip install 'autoprune[timm]')
TIMM_SAMPLE = ("timm:resnet18", "timm:efficientnet_b0", "timm:mobilenetv3_small_100", "timm:convnext_atto",
               "timm:regnetx_002")


def input_size(name: str) -> int:
    return 224 if name.startswith(("vit_", "maxvit", "inception")) else 64


def check(name: str, keep_min: float) -> dict:
    """Everything measured for one model (run in a child process)."""
    import torch

    from autoprune.core.groups import resolve_ignore
    from autoprune.core.importance import Calibration
    from autoprune.core.measure.flops import count_flops
    from autoprune.core.policy import GroupChoice, Policy
    from autoprune.core.prune import Pruner
    from autoprune.errors import UserError
    from autoprune.task.models import build_model

    torch.set_num_threads(1)
    size = input_size(name)
    t0 = time.perf_counter()
    row: dict = {"model": name, "input": size}
    gen = torch.Generator().manual_seed(0)
    calibration = Calibration(torch.randn(2, 3, size, size, generator=gen), torch.randint(0, 10, (2,), generator=gen),
                              batch_size=2)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(name, num_classes=10, in_channels=3, input_size=size).eval()
        example = torch.zeros(1, 3, size, size)
        pruner = Pruner(model, example, ignored=resolve_ignore(model, example), calibration=calibration,
                        min_channels=4)
    except UserError as exc:
        row.update(ok=False, stage="groups", error=str(exc))
        return finish(row, t0)
    dense_flops = count_flops(model, example)
    row.update(groups=len(pruner.groups), excluded=pruner.excluded, dense_flops=dense_flops, keeps={})
    x = torch.randn(2, 3, size, size, generator=gen)
    for keep in (0.5, keep_min):
        result: dict = {"methods": {}}
        for method in METHODS:
            try:
                policy = Policy({g.id: GroupChoice(method, keep) for g in pruner.groups})
                pruned, resolved = pruner.apply(policy)
                with torch.no_grad():
                    out = pruned.eval()(x)
                if tuple(out.shape) != (2, 10):
                    raise RuntimeError(f"output shape {tuple(out.shape)}, expected (2, 10)")
                if method == "l1":
                    pruned.train()
                    pruned(x).logsumexp(dim=1).sum().backward()
                    flops = count_flops(pruned, example)
                    predicted = pruner.predict_flops(policy)
                    empty = [n for n, m in pruned.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                             and min(m.weight.shape[:2]) == 0]
                    result.update(flops=flops, flops_ratio=flops / dense_flops,
                                  predictor_error=predicted / flops - 1, empty_layers=empty)
                    if flops >= dense_flops:
                        raise RuntimeError(f"FLOPs {flops} not below dense {dense_flops}")
                    if empty:
                        raise RuntimeError(f"layers with no channels: {empty[:3]}")
                result["methods"][method] = "ok"
            except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
                text = str(exc).strip().splitlines()
                result["methods"][method] = f"{type(exc).__name__}: {text[0][:200] if text else ''}"
            finally:
                pruned = None  # noqa: F841 - one pruned copy at a time
        result["ok"] = all(v == "ok" for v in result["methods"].values())
        row["keeps"][str(keep)] = result
    row["ok"] = all(k["ok"] for k in row["keeps"].values())
    return finish(row, t0)


def finish(row: dict, t0: float) -> dict:
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def all_models(with_timm: bool) -> list[str]:
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if with_timm:
        try:
            import timm  # noqa: F401

            names += list(TIMM_SAMPLE)
        except ImportError:
            pass
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: every torchvision classifier + the timm sample)")
    p.add_argument("--keep-min", type=float, default=0.25)
    p.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    p.add_argument("--memory-gb", type=float, default=12, help="address-space cap per model process")
    p.add_argument("--out", default=str(ROOT / "results" / "zoo.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: check one model, print JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(check(args.one, args.keep_min)))
        return 0

    out = Path(args.out)
    rows = {r["model"]: r for r in json.loads(out.read_text())["models"]} if out.exists() else {}
    names = args.models.split(",") if args.models else all_models(with_timm=True)
    cap = int(args.memory_gb * 2**30)
    for name in names:
        if name in rows and not args.models:
            continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, "--keep-min", str(args.keep_min)], capture_output=True,
                text=True, timeout=args.timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if lines:
                row = json.loads(lines[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": name, "ok": False, "stage": "crashed",
                       "error": f"exit {proc.returncode} ({'memory cap' if 'MemoryError' in proc.stderr or proc.returncode < 0 else tail[:200]})"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "ok": False, "stage": "timeout", "error": f"over {args.timeout} s"}
        row.setdefault("seconds", round(time.perf_counter() - t0, 1))
        rows[name] = row
        print(f"{name:28s} {'ok' if row['ok'] else 'FAIL'} {row.get('seconds', 0):7.1f} s "
              f"{row.get('peak_rss_mb', '-')} MB {'' if row['ok'] else summary(row)}", flush=True)
        write(out, rows, args)
    print(report(rows))
    return 0


def summary(row: dict) -> str:
    if "error" in row:
        return row["error"][:160]
    bad = {f"{k}/{m}": v for k, r in row["keeps"].items() for m, v in r["methods"].items() if v != "ok"}
    return "; ".join(f"{k}: {v[:80]}" for k, v in list(bad.items())[:2])


def write(out: Path, rows: dict, args: argparse.Namespace) -> None:
    ordered = [rows[k] for k in sorted(rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python scripts/zoo_coverage.py", "keep_min": args.keep_min,
                               "methods": list(METHODS), "models": ordered}, indent=1))


def report(rows: dict) -> str:
    tv = [r for r in rows.values() if not r["model"].startswith("timm:")]
    ok = [r for r in tv if r["ok"]]
    at = {k: sum(1 for r in tv if r.get("keeps", {}).get(k, {}).get("ok")) for k in ("0.5", "0.25")}
    errs = [abs(r["keeps"]["0.5"].get("predictor_error", 0)) for r in ok]
    lines = [f"torchvision: {len(ok)} of {len(tv)} prune with every method at both keeps "
             f"(keep 0.5: {at['0.5']}, keep 0.25: {at['0.25']}); predictor error max {100 * max(errs, default=0):.2f}%"]
    lines += [f"  {r['model']}: {summary(r)}" for r in sorted(tv, key=lambda r: r["model"]) if not r["ok"]]
    timm = [r for r in rows.values() if r["model"].startswith("timm:")]
    if timm:
        lines.append(f"timm: {sum(r['ok'] for r in timm)} of {len(timm)}")
        lines += [f"  {r['model']}: {summary(r)}" for r in timm if not r["ok"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
