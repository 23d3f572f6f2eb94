"""Run directories on object storage: `output_dir=s3://bucket/runs/x` (any pyarrow.fs URI: s3://,
gs://, hdfs://, file://).

Object stores have no atomic rename, and the run's commit points are renames. So a run works in a
local staging copy (SEEDFORGE_STAGING, default ~/.cache/seedforge/staging/<hash of the URI>) and
mirrors it to the URI after every commit: new and changed files first, then deletions, then
manifest.json last, so the remote manifest never names work whose files are not there yet. A rerun
on any machine first makes its staging copy equal to the remote one, then resumes from it.
Ray Train writes its checkpoints to {URI}/ray_train itself, so they are never mirrored.
A POSIX shared file system (NFS, Lustre) needs none of this: give its path as a plain output_dir.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
RAY_TRAIN = "ray_train/"  # written by Ray Train straight to the URI


def is_uri(path) -> bool:
    return "://" in str(path)


def staging_dir(uri: str) -> Path:
    root = Path(os.environ.get("SEEDFORGE_STAGING") or Path.home() / ".cache" / "seedforge" / "staging")
    return root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def _fs(uri: str):
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # unknown scheme, no credentials, bad bucket name
        raise OSError(f"output_dir {uri}: {e}") from None
    return fs, root.rstrip("/")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _local_files(local: Path) -> dict[str, list[int]]:
    out = {}
    for p in local.rglob("*"):
        rel = p.relative_to(local).as_posix()
        if p.is_file() and not _hidden(rel) and not rel.startswith(RAY_TRAIN):
            st = p.stat()
            out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _remote_files(fs, root: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    out = {}
    for i in infos:
        rel = i.path[len(root):].lstrip("/")
        if i.type == pafs.FileType.File and not _hidden(rel) and not rel.startswith(RAY_TRAIN):
            out[rel] = i.size
    return out


def _upload(fs, src: Path, dst: str) -> None:
    fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    # An object appears whole when its upload closes; a file system needs a temp name and a move.
    target = dst if fs.type_name != "local" else dst.rsplit("/", 1)[0] + "/.tmp-" + dst.rsplit("/", 1)[1]
    with open(src, "rb") as f, fs.open_output_stream(target) as out:
        shutil.copyfileobj(f, out, 8 << 20)
    if target != dst:
        fs.move(target, dst)


def push(local: Path, uri: str) -> int:
    """Mirror the committed files of `local` to `uri`; returns the number of files uploaded."""
    fs, root = _fs(uri)
    state_path = local / ".pushed.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    files, remote = _local_files(local), _remote_files(fs, root)
    sent = 0
    for rel, stat in sorted(files.items()):
        if rel != MANIFEST and (state.get(rel) != stat or rel not in remote):
            _upload(fs, local / rel, f"{root}/{rel}")
            sent += 1
    for rel in remote:
        if rel not in files:  # a replaced stage directory's old shards
            fs.delete_file(f"{root}/{rel}")
    if MANIFEST in files:
        _upload(fs, local / MANIFEST, f"{root}/{MANIFEST}")
        sent += 1
    state_path.write_text(json.dumps(files))
    return sent


def pull(uri: str, local: Path) -> int:
    """Make `local` a copy of the remote run: fetch what is missing or differs, delete what the
    remote lacks (work staged here but never mirrored is redone). Returns the files fetched."""
    fs, root = _fs(uri)
    remote = _remote_files(fs, root)
    if MANIFEST not in remote:
        return 0  # a new run (or one that never committed): keep whatever is staged locally
    mine = _local_files(local) if local.is_dir() else {}
    fetched = 0
    for rel, size in remote.items():
        if rel not in mine or mine[rel][0] != size or rel == MANIFEST:
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            tmp = (local / rel).with_name(f".tmp-{(local / rel).name}")
            with fs.open_input_stream(f"{root}/{rel}") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            os.replace(tmp, local / rel)
            fetched += rel != MANIFEST
    for rel in mine:
        if rel not in remote:
            (local / rel).unlink()
            # An emptied directory must go too: a round directory's presence is its commit.
            d = (local / rel).parent
            while d != local and not any(d.iterdir()):
                d.rmdir()
                d = d.parent
    (local / ".pushed.json").write_text(json.dumps(_local_files(local)))
    return fetched


def clear(uri: str) -> None:
    """--overwrite on a remote run: delete everything under the URI, checkpoints included."""
    fs, root = _fs(uri)
    fs.delete_dir_contents(root, missing_dir_ok=True)


def check_writable(uri: str) -> None:
    fs, root = _fs(uri)
    probe = f"{root}/.probe-{os.getpid()}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"")
        fs.delete_file(probe)
    except OSError as e:
        raise OSError(f"output_dir {uri}: not writable ({e})") from None
