#!/usr/bin/env python3
"""Check what optuna-dashboard shows of an autoprune study, in headless Chromium.

Serves the study with optuna-dashboard (with its artifact store), asks the dashboard's API
for what it holds (the note, the custom charts, each trial's feasibility and policy.json
artifact), renders the study page in Debian's ``chromium`` and asserts on the rendered text,
and saves a screenshot of the custom charts and the note.

    python scripts/dashboard_check.py --storage sqlite:///studies/fashion-mnist-smallcnn.db \\
        --artifact-dir studies/fashion-mnist-smallcnn-artifacts --screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--virtual-time-budget=20000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def check(storage: str, artifact_dir: str, screenshot: Path | None, study: str | None = None) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    port = free_port()
    server = subprocess.Popen(["optuna-dashboard", storage, "--artifact-dir", artifact_dir, "--port", str(port),
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                summaries = get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise SystemExit("optuna-dashboard did not answer")
        chosen = [x for x in summaries if study in (None, x["study_name"])]
        if not chosen:
            raise SystemExit(f"no study {study!r} in {storage}")
        study_id = chosen[0]["study_id"]
        detail = get(f"{base}/api/studies/{study_id}")
        trials = detail["trials"]
        found = {
            "note": detail["note"]["body"],
            "charts": [json.loads(g["graph_object"])["layout"]["title"]["text"] for g in detail["plotly_graph_objects"]],
            "trials": len(trials),
            "trials_with_feasibility": sum(1 for t in trials if t["constraints"]),
            "infeasible_trials": sum(1 for t in trials if any(c > 0 for c in t["constraints"])),
            "trials_with_policy_artifact": sum(1 for t in trials if any(a["filename"] == "policy.json"
                                                                         for a in t["artifacts"])),
            "complete_trials": sum(1 for t in trials if t["state"] == "Complete"),
        }
        if chromium is None:
            found["rendered"] = None  # no browser: the API checks above still ran
            return found
        profile = tempfile.mkdtemp(prefix="autoprune-chromium-")
        page = f"{base}/dashboard/studies/{study_id}"

        def dom(url: str) -> str:
            return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,3000",
                                   "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout

        analytics, note_page, trial_page = dom(page), dom(f"{page}/note"), dom(f"{page}/trials")
        found["rendered"] = {
            "charts": "search-val accuracy against FLOPs" in analytics and "kept channels per group" in analytics,
            "note": "Dense model" in note_page and "Budget" in note_page and "autoprune apply" in note_page,
            "policy_artifacts": "policy.json" in trial_page,
        }
        if screenshot is not None:
            full = Path(profile) / "page.png"
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,3000",
                            f"--screenshot={full}", page], capture_output=True, timeout=120)
            from PIL import Image

            image = Image.open(full)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            image.crop((0, 1700, 1400, 3000)).save(screenshot)  # the custom charts and the note
        shutil.rmtree(profile, ignore_errors=True)
        return found
    finally:
        server.terminate()
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--artifact-dir", required=True)
    p.add_argument("--screenshot", help="PNG of the custom charts and the note")
    p.add_argument("--study", help="study name (default: the first in the storage)")
    args = p.parse_args(argv)
    found = check(args.storage, args.artifact_dir, Path(args.screenshot) if args.screenshot else None, args.study)
    print(json.dumps({k: v for k, v in found.items() if k != "note"}, indent=1))
    ok = (found["charts"] and found["trials_with_feasibility"] == found["trials"]
          and found["trials_with_policy_artifact"] == found["complete_trials"] and "Budget" in found["note"]
          and (found["rendered"] is None or all(found["rendered"].values())))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
