"""The sandbox against attacks, in both isolation modes (bubblewrap and the fallback) where the machine allows.

Every attack runs through the sandbox; each check then looks at the *host*: nothing arrived at a socket
this test listens on at 127.0.0.1 (no other address is ever targeted), no file appeared or vanished
outside the run's directory, no secret leaked, no process outlived the run, the test process and the pool
are alive. All attacks of a mode run in parallel through one pool (a few seconds per mode).
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from gmpo.sandbox import Limits, Program, SandboxPool, SandboxUnavailable, detect, slot_uid
from gmpo.sandbox.isolation import MAX_SLOTS

REPO = Path(__file__).resolve().parents[1]
TOKEN = "gmpo-attack-" + secrets.token_hex(6)  # in every attack's argv and every file it tries to leave
SECRET = "sk-fake-" + secrets.token_hex(12)
SHORT = Limits(timeout=3.0, memory_mb=512, processes=24, output_bytes=4096)


def _mode_available(mode: str) -> str | None:
    try:
        detect(mode)
        return None
    except SandboxUnavailable as e:
        return str(e)


@pytest.fixture(scope="module", params=["bubblewrap", "fallback"])
def mode(request):
    why = _mode_available(request.param)
    if why:
        if request.param == "bubblewrap":
            pytest.skip(f"bubblewrap unavailable here ({why}); install the Debian package bubblewrap "
                        "(scripts/system-packages.sh) to test it")
        pytest.fail(f"the fallback sandbox must work everywhere the tests run: {why}")
    return request.param


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Host-side targets: a listening socket, canary files in the caller's places, paths attacks try to write."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    canary_dir = tmp_path_factory.mktemp("caller_cwd")
    canaries = [canary_dir / f"keep-{i}.txt" for i in range(3)]
    repo_canary = REPO / ".pytest_cache" / f"sandbox-canary-{TOKEN}"
    repo_canary.parent.mkdir(exist_ok=True)
    for c in [*canaries, repo_canary]:
        c.write_text("precious")
    home = Path(os.path.expanduser("~"))
    write_targets = [home / f"{TOKEN}.txt", Path("/tmp") / f"{TOKEN}.txt", REPO / f"{TOKEN}.txt",
                     canary_dir / f"{TOKEN}.txt", Path("/var/tmp") / f"{TOKEN}.txt", Path("/dev/shm") / f"{TOKEN}.txt"]
    yield {"port": srv.getsockname()[1], "srv": srv, "canaries": canaries, "repo_canary": repo_canary,
           "canary_dir": canary_dir, "writes": write_targets}
    srv.close()
    repo_canary.unlink(missing_ok=True)
    for p in write_targets:  # only reached if an attack escaped (the assertions say so first)
        if p.exists():
            p.unlink()


RESOURCE_ATTACKS = {  # exhaustion and crashes: the limits must stop them
    "fork_bomb": """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
""",
    "thread_bomb": """
import threading, time
ts = []
while True:
    try:
        t = threading.Thread(target=time.sleep, args=(100,)); t.start(); ts.append(t)
    except BaseException:
        pass
""",
    "memory_bomb": "x = []\nwhile True:\n    x.append(bytes(256 << 20))  # calloc: address space, no page touching\n",
    "infinite_loop": "while True:\n    pass\n",
    "sleep_past_limit": "import time\ntime.sleep(60)\n",
    "gigabytes_of_output": "import sys\nb = 'x' * (1 << 20)\nfor _ in range(4096):\n    sys.stdout.write(b)\n",
    "ctypes_segfault": "import ctypes\nctypes.string_at(0)\n",
    "recursion_bomb": "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n",
}


def attacks(h: dict) -> dict[str, str]:
    """name -> program source. Each tries to break out; none may succeed."""
    writes = [str(p) for p in h["writes"]]
    return {
        **RESOURCE_ATTACKS,
        "network": f"""
import socket
for fam in (socket.AF_INET,):
    try:
        s = socket.create_connection(("127.0.0.1", {h['port']}), timeout=2)
        s.sendall(b"ESCAPED {TOKEN}")
        print("connected")
    except OSError as e:
        print("blocked", e)
""",
        "write_outside": f"""
for p in {writes!r}:
    try:
        open(p, "w").write("escaped")
        print("wrote", p)
    except OSError as e:
        print("blocked", p, e)
""",
        "env_secret": f"""
import os, glob
print(dict(os.environ))
for p in ["/proc/%d/environ" % os.getppid(), "/proc/1/environ"] + glob.glob("/proc/*/environ"):
    try:
        print(p, open(p, "rb").read())
    except OSError as e:
        pass
""",
        "detached_child": f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)", "{TOKEN}"])
    os._exit(0)
time.sleep(0.2)
print("parent done")
""",
        "kill_parent": f"""
import os, signal
for pid in (os.getppid(), {os.getpid()}, -1):
    try:
        os.kill(pid, signal.SIGKILL)
        print("sent", pid)
    except OSError as e:
        print("blocked", pid, e)
""",
        "shell_spawn": f"""
import os, subprocess
os.system("echo escaped > {writes[2]}; id")
subprocess.run(["sh", "-c", "echo escaped > {writes[1]}; rm -rf {h['canary_dir']}"])
print("shell ran")
""",
        "delete_caller_files": f"""
import os, shutil
for p in [{str(h['canary_dir'])!r}, {str(h['repo_canary'])!r}]:
    try:
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        print("deleted", p)
    except OSError as e:
        print("blocked", p, e)
""",
        "import_repo": f"""
import sys
try:
    import gmpo
    print("imported implicitly", gmpo.__file__)
except ImportError as e:
    print("blocked implicit", e)
sys.path.insert(0, {str(REPO)!r})
try:
    import gmpo
    print("imported", gmpo.__file__)
except ImportError as e:
    print("blocked explicit", e)
""",
    }


@pytest.fixture(scope="module")
def outcome(mode, host):
    """Run every attack of this mode in parallel; return (results by name, wall seconds, pool)."""
    os.environ["GMPO_FAKE_SECRET"] = SECRET  # a secret in the parent's environment
    try:
        pool = SandboxPool(workers=4, isolation=mode, limits=SHORT)
        progs = attacks(host)
        t0 = time.monotonic()
        results = pool.map([Program(src, argv=(TOKEN,)) for src in progs.values()])
        wall = time.monotonic() - t0
    finally:
        del os.environ["GMPO_FAKE_SECRET"]
    yield dict(zip(progs, results)), wall, pool
    pool.close()


def _leftover_processes() -> list[str]:
    """Live processes carrying the attack token in their argv or running under one of this process's slot uids
    (zombies are dead: killed processes the host's init has not reaped yet)."""
    uids = {str(slot_uid(s)) for s in range(MAX_SLOTS)}
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                status = (d / "status").read_text().splitlines()
                uid = next(ln.split()[1] for ln in status if ln.startswith("Uid:"))
                dead = any(ln.startswith("State:") and ln.split()[1] in ("Z", "X") for ln in status)
                if not dead and (TOKEN.encode() in (d / "cmdline").read_bytes() or uid in uids):
                    found.append(d.name)
            except (OSError, StopIteration):
                pass
    return found


def _escapes(results: dict, host: dict) -> dict[str, str]:
    """Attack name -> what escaped (empty when contained), judged on the host."""
    esc: dict[str, str] = {}
    try:
        conn, _ = host["srv"].accept()
        esc["network"] = f"a connection reached 127.0.0.1:{host['port']}: {conn.recv(100)!r}"
        conn.close()
    except BlockingIOError:
        pass
    written = [str(p) for p in host["writes"] if p.exists()]
    if written:
        esc["write_outside"] = f"files appeared on the host: {written}"
    for name, r in results.items():
        if SECRET in r.stdout or SECRET in r.stderr:
            esc[name] = "the parent's secret leaked"
    gone = [str(c) for c in [*host["canaries"], host["repo_canary"]] if not c.exists()]
    if gone:
        esc["delete_caller_files"] = f"host files deleted: {gone}"
    deadline = time.monotonic() + 5.0  # a killed pid namespace takes a moment to reap (~0.1 s); escapees sleep 30 s
    while (left := _leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        esc["detached_child"] = f"processes outlived the run: {left}: " + "; ".join(
            (Path("/proc") / p / "stat").read_text()[:120] for p in left if (Path("/proc") / p).exists())
    if "imported" in results["import_repo"].stdout.replace("blocked", ""):
        esc["import_repo"] = results["import_repo"].stdout.strip()
    return esc


EXPECTED = {  # status the sandbox must report for attacks it stops by force
    "fork_bomb": {"timeout"}, "infinite_loop": {"timeout"}, "sleep_past_limit": {"timeout"},
    "memory_bomb": {"memory"}, "ctypes_segfault": {"crashed"}, "gigabytes_of_output": {"failed"},
    "recursion_bomb": {"crashed", "failed", "memory", "timeout"},  # 3.11 keeps Python frames off the C stack
    "thread_bomb": {"timeout", "memory", "crashed", "failed"},
}


def test_no_attack_escapes(outcome, host, mode):
    results, wall, pool = outcome
    esc = _escapes(results, host)
    n = len(results)
    print(f"\n[{mode}] {pool.isolation.describe()}\n[{mode}] {len(esc)} escapes of {n} attacks ({wall:.1f} s)")
    assert not esc, f"{mode}: {len(esc)} escapes of {n} attacks: {esc}"
    assert all(r.isolation == mode for r in results.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forced_stops_have_the_right_status(outcome, name):
    r = outcome[0][name]
    assert r.status in EXPECTED[name], (name, r.status, r.reason, r.stderr[-300:])
    assert r.wall_s < SHORT.timeout + 2.0, f"{name} held its slot {r.wall_s:.1f} s (limit {SHORT.timeout} s)"


def test_attack_details(outcome, mode):
    results = outcome[0]
    assert "blocked" in results["network"].stdout and "connected" not in results["network"].stdout
    assert results["gigabytes_of_output"].truncated and "output-limit" in results["gigabytes_of_output"].reason
    assert len(results["gigabytes_of_output"].stdout) <= SHORT.output_bytes
    assert "MemoryError" in results["memory_bomb"].reason
    assert results["ctypes_segfault"].exit_code in (-11, 139) and "SIGSEGV" in results["ctypes_segfault"].reason
    assert "blocked implicit" in results["import_repo"].stdout and "blocked explicit" in results["import_repo"].stdout
    kp = results["kill_parent"].stdout
    assert f"sent {os.getpid()}" not in kp  # the test process was never signallable from inside


def test_pool_alive_after_attacks(outcome):
    pool = outcome[2]
    rs = pool.map([Program("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()), sys.argv[1:])",
                           stdin="1 2 3", argv=("a", "b"))] * 4)
    assert [r.status for r in rs] == ["ok"] * 4
    assert rs[0].stdout.strip() == "6 ['a', 'b']"


def test_limits_and_statuses(mode):
    with SandboxPool(workers=2, isolation=mode) as pool:
        rs = pool.map(["import sys\nsys.exit(3)", "raise ValueError('boom')",
                       "open('big', 'wb').write(b'x' * (3 << 20))", "print(open('data.txt').read())"],
                      Limits(timeout=5.0, file_size_mb=1))
        collected = pool.run(Program("open('out.txt', 'w').write('hello')", files={"data.txt": "x"},
                                     collect=("out.txt", "missing.txt")))
    assert (rs[0].status, rs[0].exit_code) == ("failed", 3)
    assert rs[1].status == "failed" and "ValueError: boom" in rs[1].reason
    assert rs[2].status == "failed" and "File too large" in rs[2].stderr  # RLIMIT_FSIZE
    assert rs[3].status == "failed" and "No such file" in rs[3].stderr  # files of other runs are not there
    assert collected.ok and collected.files == {"out.txt": "hello"}


def test_pool_runs_programs_at_the_same_time(mode):
    """Four workers run four sleepers concurrently: their [start, end] wall-clock intervals overlap (a
    correctness check of the pool's parallelism; programs/s is measured in benchmarks/code_sandbox.py)."""
    progs = ["import time\nt0 = time.time()\ntime.sleep(2.0)\nprint(t0, time.time())"] * 4
    with SandboxPool(workers=4, isolation=mode) as pool:
        rs = pool.map(progs)
    assert all(r.ok for r in rs), [r.status for r in rs]
    spans = [tuple(map(float, r.stdout.split())) for r in rs]
    latest_start, earliest_end = max(s for s, _ in spans), min(e for _, e in spans)
    assert latest_start < earliest_end, f"no two programs ran at once: {spans}"


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="timeout"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="processes"):
        Limits(processes=1)
    with pytest.raises(ValueError, match="plain name"):
        Program("pass", files={"../x": ""})
    with pytest.raises(ValueError, match="isolation"):
        detect("docker")


def test_detect_reports_the_mode():
    iso = detect("auto")
    assert iso.mode in ("bubblewrap", "fallback")
    text = iso.describe()
    assert iso.mode in text and "python" in text and "-I" in text
    if os.geteuid() == 0:
        assert iso.drop_uid and "unprivileged" in text
