"""Cluster behaviour on real Ray: job submission to a running head node, an engine actor killed
mid-batch, and a worker node removed mid-run.

Nothing here shares Ray ports with the session cluster of conftest.py: the head node of the job test
is a separate `ray start --head` on loopback with its own free ports and temp dir, and RAY_ADDRESS /
the auth token only go into the environments of the subprocesses. It is never stopped with
`ray stop` (that stops every Ray cluster on the machine, including the session cluster and other
users' clusters): we kill the process group of our own `ray start --block`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).parent.parent
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _clean_env(**extra) -> dict:
    """The test process's environment without any Ray address or auth settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (our head node's unique temp dir)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(int(p.name))
    return out


@pytest.fixture
def head_node():
    """A local head node on 127.0.0.1 with the dashboard (job server) and token auth."""
    ports = dict(zip(["port", "dashboard", "client", "agent_http", "agent_grpc", "rt_agent", "metrics",
                      "node_manager", "object_manager"], _free_ports(9)))
    lo, hi = 20000 + (os.getpid() % 200) * 100, 20000 + (os.getpid() % 200) * 100 + 99
    temp_dir = tempfile.mkdtemp(prefix="sf-ray-", dir="/tmp")  # short: Unix socket paths are <108 bytes
    token = uuid.uuid4().hex
    # Ray 2.60 rewrites --node-ip-address=127.0.0.1 to the machine's routable IP
    # (services.resolve_ip_for_localhost) unless "clusters" are disabled, as on macOS/Windows, by
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: then the node IP, GCS address and job RAY_ADDRESS are loopback.
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
                     RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ports['port']}",
           "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={ports['client']}",
           f"--dashboard-agent-listen-port={ports['agent_http']}",
           f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['rt_agent']}",
           f"--metrics-export-port={ports['metrics']}", f"--node-manager-port={ports['node_manager']}",
           f"--object-manager-port={ports['object_manager']}", f"--min-worker-port={lo}",
           f"--max-worker-port={hi}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           "--object-store-memory=200000000"]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # the job server answers once the dashboard is up
            assert proc.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()[-3000:]
            r = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True,
                               text=True, timeout=60)
            if r.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("head node's job server never came up:\n" + (Path(temp_dir) / "ray-start.log").read_text()[-3000:])
        yield {"address": address, "env": env, "temp_dir": temp_dir, "gcs": f"127.0.0.1:{ports['port']}"}
    finally:
        # Our own cluster only: the process group of `ray start --block`, then anything left over
        # that runs in our unique temp dir (workers, agents that started their own sessions).
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            t = time.time()
            while time.time() - t < wait and (proc.poll() is None or _pids_using(temp_dir)):
                time.sleep(0.5)
            for pid in _pids_using(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=10)
        log.close()
        leftover = _pids_using(temp_dir)
        assert not leftover, f"head node processes survived teardown: {leftover}"
        shutil.rmtree(temp_dir, ignore_errors=True)  # kept above when teardown fails: its logs


def test_ray_job_submit_runs_the_flan_demo(head_node, tmp_path):
    """`ray job submit --working-dir . -- python -m pipelines.cli run configs/flan_demo.yaml`, with
    the output on a pyarrow.fs URI (file:// takes the path s3:// takes) and two training steps whose
    checkpoints Ray Train writes to that URI; then a rerun from another staging directory (another
    machine) fetches the committed run and does nothing."""
    out = tmp_path / "bucket" / "flan"
    uri = f"file://{out}"
    sid = f"seedforge-test-{uuid.uuid4().hex[:8]}"
    excludes = [".git", ".venv", "runs", "**/__pycache__", ".pytest_cache", "*.egg-info"]
    runtime_env = {"excludes": excludes, "env_vars": {"SEEDFORGE_STAGING": str(tmp_path / "staging-job")}}
    command = ["python", "-m", "pipelines.cli", "run", "configs/flan_demo.yaml", f"output_dir={uri}",
               "train.enabled=true", "train.max_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=1",
               "train.eval_fraction=0"]
    t = time.time()
    sub = subprocess.run(
        [RAY, "job", "submit", "--address", head_node["address"], "--submission-id", sid,
         "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--", *command],
        cwd=REPO, env=head_node["env"], capture_output=True, text=True, timeout=600)
    took = time.time() - t
    status = subprocess.run(  # the job server's own record of the job (token auth from env)
        [sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient as C; "
         "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)", head_node["address"], sid],
        env=head_node["env"], capture_output=True, text=True, timeout=60)
    logs = sub.stdout[-4000:] + sub.stderr[-4000:]
    assert status.stdout.strip().splitlines()[-1:] == ["SUCCEEDED"], f"status: {status.stdout}{status.stderr}\n{logs}"
    assert sub.returncode == 0, logs
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "done" and m["config"]["output_dir"] == uri
    rows = pq.read_table(out / "data").num_rows
    assert rows > 0 and rows == m["files"]["data_rows"]
    assert m["stages"]["generate"]["rows"] > 0 and m["stages"]["train"]["steps"] == 2
    assert (out / "model" / "config.json").exists() and list((out / "model").glob("*.safetensors"))
    assert list((out / "ray_train" / "train").glob("checkpoint_*")), "Ray Train wrote no checkpoint to the URI"
    staged = [p for p in (tmp_path / "staging-job").iterdir()]
    assert len(staged) == 1 and (staged[0] / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    # The job really ran on our head node, not on a cluster of its own.
    assert "submitted successfully" in sub.stdout + sub.stderr
    driver_log = Path(head_node["temp_dir"]) / "session_latest" / "logs" / f"job-driver-{sid}.log"
    assert f"Connecting to existing Ray cluster at address: {head_node['gcs']}" in driver_log.read_text()

    # Another machine (an empty staging directory): the rerun fetches the run and has nothing to do.
    again = subprocess.run(
        [sys.executable, *command[1:]],
        cwd=REPO, env={**_clean_env(), "SEEDFORGE_STAGING": str(tmp_path / "staging-other")},
        capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "committed files" in again.stderr and "nothing to do" in again.stderr, again.stderr[-3000:]
    other = next((tmp_path / "staging-other").iterdir())
    assert pq.read_table(other / "data").num_rows == rows
    assert json.loads((out / "manifest.json").read_text()) == m  # the rerun changed nothing remotely
    print(f"job {sid}: SUCCEEDED in {took:.0f}s, {rows} rows, output on {uri}")


# -- 2. an engine actor killed mid-batch ---------------------------------------------------------

def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields after "pid (comm)", state first


def _cpu_seconds(pid: int) -> float:
    st = _proc_stat(pid)
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK") if st else 0.0


def _children_titled(ppid: int, prefix: str, exclude: set[int]) -> dict[int, str]:
    """Child processes of `ppid` (our session's raylet) whose process title starts with `prefix`."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in exclude:
            continue
        st = _proc_stat(int(p.name))
        if not st or int(st[1]) != ppid:
            continue
        try:
            title = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            out[int(p.name)] = title
    return out


def test_engine_pool_shutdown_returns_once_ray_has_the_cpus_back(ray_session):
    """The stage after generation starts a Dataset at once: EnginePool.shutdown waits until the
    killed actors' CPUs are free again (ray.kill returns before they are)."""
    import collections

    import ray

    from pipelines.config import EngineConfig
    from pipelines.llm import EnginePool

    free = ray.available_resources().get("CPU", 0.0)
    actors = [ray.remote(num_cpus=1)(collections.Counter).remote() for _ in range(2)]  # stand-ins
    ray.get([a.__ray_ready__.remote() for a in actors])
    assert ray.available_resources().get("CPU", 0.0) == free - 2
    pool = EnginePool.__new__(EnginePool)
    pool.cfg, pool.engines = EngineConfig(num_cpus=1), actors
    pool.shutdown()
    assert pool.engines == [] and ray.available_resources().get("CPU", 0.0) == free


def test_free_cpu_check_warns_only_while_actors_hold_every_cpu(ray_session):
    """The check before curation: False and a warning naming `ray status` while stand-in actors
    hold every CPU; True, silently, once they are killed (the wait covers Ray's lagging view).
    Ray Data's own per-execution warning is spent."""
    import collections

    import ray
    from ray.util.debug import log_once

    from pipelines.stages import check_free_cpu

    free = ray.available_resources().get("CPU", 0.0)
    shares = [1.0] * int(free) + ([free - int(free)] if free > int(free) else [])
    actors = [ray.remote(num_cpus=c)(collections.Counter).remote() for c in shares]
    ray.get([a.__ray_ready__.remote() for a in actors])
    logged = []
    assert check_free_cpu(logged.append, wait_s=0.5) is False
    assert len(logged) == 1 and "no CPU free for 0.5 s" in logged[0] and "ray status" in logged[0]
    for a in actors:
        ray.kill(a)
    assert check_free_cpu(logged.append, wait_s=10) is True and len(logged) == 1
    assert not log_once("cpu_warning")


@pytest.mark.e2e
def test_engine_actor_killed_mid_batch_is_restarted_and_batch_retried(engine):
    """SIGKILL the engine actor's process while it generates: Ray restarts the actor
    (max_restarts) and retries the in-flight call (max_task_retries); every row comes back once."""
    import ray

    from pipelines.llm import request

    assert len(engine.engines) == 1 and engine.cfg.max_retries > 0
    actor = engine.engines[0]
    old_pid = ray.get(actor.pid.remote())
    raylet = int(_proc_stat(old_pid)[1])
    n = 48
    rows = [request(prompt=f"Write a short story about the number {i}.",
                    sampling=json.dumps({"max_tokens": 48, "seed": i, "ignore_eos": True}), rid=i)
            for i in range(n)]
    result: dict = {}

    def work():
        try:
            result["rows"] = engine.generate(rows)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    cpu0 = _cpu_seconds(old_pid)
    t_start = time.time()
    th = threading.Thread(target=work, daemon=True)
    th.start()
    # In flight = the engine process has burnt 2 s of CPU on generation since we started.
    deadline = time.time() + 120
    while _cpu_seconds(old_pid) - cpu0 < 2.0 and th.is_alive() and time.time() < deadline:
        time.sleep(0.1)
    assert th.is_alive(), f"generation finished before the kill ({result.get('error')!r})"
    title = (Path(f"/proc/{old_pid}/cmdline").read_bytes().split(b"\0")[0]).decode()
    assert "generate_batch" in title, f"engine not in a generate_batch call when killed: {title!r}"
    t_kill = time.time()
    os.kill(old_pid, signal.SIGKILL)
    # The restart: a new engine process under the same raylet, back in generate_batch (the retry).
    t_new = t_retry = None
    while th.is_alive() and time.time() - t_kill < 300:
        procs = _children_titled(raylet, "ray::VLLMEngine", exclude={old_pid})
        if procs and t_new is None:
            t_new = time.time()
        if any("generate_batch" in t for t in procs.values()) and t_retry is None:
            t_retry = time.time()
            break
        time.sleep(0.2)
    th.join(timeout=300)
    t_done = time.time()
    assert not th.is_alive(), "generation did not finish within 5 minutes of the kill"
    assert "error" not in result, f"generate raised after the engine was killed: {result['error']!r}"
    out = result["rows"]
    rids = [r["rid"] for r in out]
    assert sorted(rids) == list(range(n)), f"missing or duplicated rows: {len(rids)} rows, {len(set(rids))} distinct"
    assert all(r["error"] == "" and r["text"].strip() and r["output_tokens"] == 48 for r in out), \
        [(r["rid"], r["error"], r["output_tokens"]) for r in out if r["error"] or r["output_tokens"] != 48][:5]
    new_pid = ray.get(actor.pid.remote())
    assert new_pid != old_pid
    print(f"\nengine kill: in flight after {t_kill - t_start:.1f}s; new engine process after "
          f"{(t_new or float('nan')) - t_kill:.1f}s; retried batch running after "
          f"{(t_retry or float('nan')) - t_kill:.1f}s; all {n} rows back {t_done - t_kill:.1f}s after the kill")


# -- 3. a worker node removed mid-run ------------------------------------------------------------

_MULTINODE_DRIVER = r'''
import json, random, sys, threading, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

work = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                  "object_store_memory": 150_000_000})
worker = cluster.add_node(num_cpus=2, object_store_memory=150_000_000)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
ray.data.DataContext.get_current().enable_progress_bars = False
from pipelines.config import CurateConfig
from pipelines.curate import curate

rng = random.Random(7)
words = [w for w in ("river mountain engine garden market window teacher planet science music doctor "
                     "harbor bridge forest island candle winter summer castle library journey silver "
                     "copper lantern meadow orchard pepper rocket saddle thunder valley violin").split()]
rows = []
for i in range(300):
    inst = f"Explain how the {rng.choice(words)} {rng.choice(words)} changes the {rng.choice(words)} number {i}."
    out = " ".join(rng.choice(words) for _ in range(40)) + "."
    rows.append({"instruction": inst, "input": "", "output": out})
for i in range(0, 300, 6):   # exact duplicates (case and punctuation differ)
    r = rows[i]
    rows.append({"instruction": r["instruction"].upper().rstrip("."), "input": "", "output": r["output"]})
for i in range(3, 300, 6):   # near duplicates: one word of a long output changed
    r = rows[i]
    o = r["output"].split()
    o[5] = "zebra"
    rows.append({"instruction": r["instruction"], "input": "", "output": " ".join(o)})
rng.shuffle(rows)
inp = work / "input"
inp.mkdir()
for k in range(8):
    pq.write_table(pa.Table.from_pylist(rows[k::8]), inp / f"part-{k}.parquet")

def kept(d):
    return sorted(pq.read_table(d / "data", columns=["id"]).column("id").to_pylist())

def nodes_alive():
    return sum(1 for n in ray.nodes() if n["Alive"])

t = time.time()
base = curate(inp, work / "base", CurateConfig())
base_s = time.time() - t
assert nodes_alive() == 2

raylet_pid = worker.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

def busy_tasks():
    """Titles of the worker node's Ray worker processes that are running a task right now."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            st = (p / "stat").read_text()
            if int(st[st.rindex(")") + 2:].split()[1]) != raylet_pid:
                continue
            title = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ValueError):
            continue
        if title.startswith("ray::") and not title.startswith(("ray::IDLE", "ray::Dashboard", "ray::RuntimeEnv")):
            out.append(title)
    return out

removed = {}
done = threading.Event()
def remove():
    # 20% into the run, at the first moment the worker node runs a task. The rerun is faster than
    # the first run (warm workers), so a fixed upper bound on the wait could miss every task; the
    # wait ends when a task is seen or when curate returns (then the busy assertion fails).
    time.sleep(0.2 * base_s)
    busy = busy_tasks()
    while not busy and not done.is_set():
        time.sleep(0.01)
        busy = busy_tasks()
    if done.is_set():
        return
    removed["busy"] = busy
    removed["at"] = time.time() - t2
    cluster.remove_node(worker, allow_graceful=False)
t2 = time.time()
th = threading.Thread(target=remove)
th.start()
again = curate(inp, work / "again", CurateConfig())
again_s = time.time() - t2
done.set()
th.join()
print("RESULT " + json.dumps({
    "rows": len(rows), "base_s": base_s, "again_s": again_s, "removed_at": removed.get("at"),
    "busy_at_removal": removed.get("busy"),
    "nodes_alive_after": nodes_alive(), "base_kept": kept(work / "base"), "again_kept": kept(work / "again"),
    "base_funnel": {k: base[k] for k in ("rows_in", "rows_out")},
    "again_funnel": {k: again[k] for k in ("rows_in", "rows_out")}}), flush=True)
ray.shutdown()
cluster.shutdown()
'''


def test_worker_node_removed_mid_curate_gives_the_same_kept_rows(tmp_path):
    """Head (1 CPU) + worker (2 CPUs) via ray.cluster_utils.Cluster in a subprocess; curate a few
    hundred rows once undisturbed, then again removing the worker node (SIGKILL of its processes)
    while it runs a task, after 20% of the run: the second run must finish and keep the same ids."""
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex, RAY_USAGE_STATS_ENABLED="0")
    t = time.time()
    res = subprocess.run([sys.executable, "-c", _MULTINODE_DRIVER, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=420, start_new_session=True)
    took = time.time() - t
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["removed_at"] is not None and r["removed_at"] < r["again_s"], r  # removed while curate ran
    assert r["busy_at_removal"], "the worker node ran no task when it was removed"
    assert r["nodes_alive_after"] == 1
    assert r["base_kept"] and r["again_kept"] == r["base_kept"]
    assert r["again_funnel"] == r["base_funnel"]
    assert 0 < r["base_funnel"]["rows_out"] < r["rows"]  # the duplicates were really removed
    print(f"\nmulti-node: {r['rows']} rows, undisturbed {r['base_s']:.1f}s, worker removed at "
          f"{r['removed_at']:.1f}s while running {r['busy_at_removal']}, run with removal {r['again_s']:.1f}s, kept {len(r['again_kept'])}, "
          f"whole test {took:.0f}s")


def test_local_cluster_started_by_seedforge_serves_the_state_api():
    """init_ray starts a local cluster with the dashboard, whose State API Ray Train's
    placement-group cleaner polls (without it: a warning every second of training, and no cleanup
    of a dead controller's placement group)."""
    code = ("import ray; from pipelines.config import load_config; from pipelines.stages import init_ray\n"
            "init_ray(load_config('configs/demo.yaml', ['ray.address=local', 'ray.num_cpus=1']))\n"
            "from ray.util.state import list_nodes\n"
            "url = ray._private.worker._global_node.address_info['webui_url']\n"
            "print('alive nodes', sum(n.state == 'ALIVE' for n in list_nodes(address=f'http://{url}')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "alive nodes 1" in r.stdout, r.stdout + r.stderr[-2000:]
