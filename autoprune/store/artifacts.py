"""The study's artifact store: where each trial's policy.json and the dense checkpoint live,
so that a worker, ``apply`` or ``confirm`` on another machine fetches the checkpoint by its
sha256 instead of looking for the creating machine's path.

A store is a folder (Optuna's ``FileSystemArtifactStore``; share it between machines as a
network folder) or an S3-compatible bucket, ``s3://bucket`` (Optuna's ``Boto3ArtifactStore``;
needs ``pip install boto3`` and the usual ``AWS_*`` settings, ``AWS_ENDPOINT_URL`` for MinIO)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna

from autoprune.core.checkpoints import file_sha256
from autoprune.errors import UserError


def default_location(storage_url: str, study_name: str) -> str:
    """Next to a SQLite file (``studies/x.db`` -> ``studies/x-artifacts/``), else ``studies/artifacts``."""
    if storage_url.startswith("sqlite:///") and ":memory:" not in storage_url:
        db = Path(storage_url[len("sqlite:///"):])
        return str(db.with_name(db.stem + "-artifacts"))
    return str(Path("studies") / "artifacts")


def store_at(location: str | Path) -> Any:
    """The artifact store at ``location``: ``s3://bucket`` or a folder (created if missing)."""
    text = str(location)
    if text.startswith("s3://"):
        bucket = text[len("s3://"):].strip("/")
        if not bucket or "/" in bucket:
            raise UserError(f"artifact store {text!r}: give an S3 bucket as s3://BUCKET (no prefix)")
        try:
            from optuna.artifacts import Boto3ArtifactStore
            return Boto3ArtifactStore(bucket)
        except ImportError:
            raise UserError(f"artifact store {text!r} needs boto3: pip install boto3") from None
    check_location(text)
    path = Path(text).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def check_location(location: str) -> None:
    """A folder store must not be a file (checked before any work, and when opened)."""
    if not location.startswith("s3://") and Path(location).expanduser().is_file():
        raise UserError(f"artifact store {location!r} is a file, not a folder; choose another --artifact-dir")


def absolute(location: str) -> str:
    """``location`` as other processes and machines can read it from the study."""
    return location if location.startswith("s3://") else str(Path(location).expanduser().resolve())


def upload_dense(study: optuna.Study, path: Path, location: str) -> str:
    """Put the dense checkpoint in the study's artifact store; returns its artifact id."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.artifacts.upload_artifact(artifact_store=store_at(location), file_path=str(path),
                                                study_or_trial=study, mimetype="application/octet-stream")


def dense_checkpoint(dense: dict[str, Any], *, checkpoint: str | None = None, artifact_dir: str | None = None,
                     cache_dir: str | Path = "studies/checkpoints") -> Path:
    """A local file holding the study's dense checkpoint (``dense``: the study's ``dense``
    attribute, with its sha256), found in this order: ``checkpoint`` (the user's override,
    refused if its sha256 differs), the path it was searched with, a copy cached under
    ``cache_dir`` by sha256, the study's artifact store (``artifact_dir`` overrides where it
    is). The file's sha256 is checked every time."""
    sha = dense["sha256"]
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"--checkpoint {checkpoint}: {'a folder' if path.is_dir() else 'no such file'}; give the "
                            "dense checkpoint file the study was searched on")
        if file_sha256(path) != sha:
            raise UserError(f"--checkpoint {checkpoint} is not the checkpoint the study was searched on (sha256 "
                            f"{file_sha256(path)[:12]}, the study's {sha[:12]})")
        return path
    tried = []
    stored = dense.get("checkpoint")
    cached = Path(cache_dir) / f"dense-{sha[:16]}.pt"
    for candidate in ([Path(stored)] if stored else []) + [cached]:
        if candidate.is_file():
            if file_sha256(candidate) == sha:
                return candidate
            tried.append(f"{candidate} (changed since the search: sha256 differs)")
        else:
            tried.append(f"{candidate} (missing)")
    artifact = dense.get("artifact") or {}
    location = artifact_dir or artifact.get("store")
    if artifact.get("id") and location:
        try:
            store = store_at(location)
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
                part = Path(tmp) / "dense.pt"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.artifacts.download_artifact(artifact_store=store, artifact_id=artifact["id"],
                                                       file_path=str(part))
                if file_sha256(part) != sha:
                    raise UserError(f"the dense checkpoint in the artifact store {location} does not match the "
                                    f"study's sha256 {sha[:12]}")
                shutil.move(str(part), cached)
            print(f"fetched the dense checkpoint from the artifact store {location} into {cached}", file=sys.stderr)
            return cached
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a missing folder or object, no access
            tried.append(f"the artifact store {location} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    else:
        tried.append("no artifact store recorded")
    raise UserError("the study's dense checkpoint (sha256 " + sha[:12] + ") is not here: tried " + "; ".join(tried)
                    + ". Pass --checkpoint FILE, or --artifact-dir with the study's artifact folder")
