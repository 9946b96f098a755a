"""Hostile programs against the sandbox: each must be contained, fast, and leave nothing behind.

Every bomb here is bounded twice (a small RLIMIT and a wall-clock timeout of a few seconds),
so the tests cannot hurt the shared machine.
"""

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from codellm_jax.evaluation import java_exec, python_exec, sandbox

PROJECT = Path(__file__).resolve().parents[1]
FAST = sandbox.Limits(timeout_s=3.0, cpu_s=3, address_space_bytes=512 << 20, nproc=16)


@pytest.fixture(scope='module')
def caps():
    return sandbox.probe()


@pytest.fixture(scope='module')
def python():
    return python_exec.find_interpreter()


def run_py(src, caps, python, limits=FAST):
    with sandbox.UidLease(caps) as lease:
        uid = lease.uid
        work = sandbox.make_workdir(lease.uid)
        try:
            with open(os.path.join(work, 'p.py'), 'w') as f:
                f.write(src)
            res = sandbox.run(
                [python, '-I', 'p.py'], cwd=work, limits=limits, caps=caps, uid=lease.uid
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return res, uid


def uid_processes(uid):
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/status') as f:
                line = next(x for x in f if x.startswith('Uid:'))
        except (OSError, StopIteration):
            continue
        if int(line.split()[1]) == uid:
            found.append(int(pid))
    return found


def test_probe_matches_the_machine(caps):
    unshare_ok = subprocess.run(['unshare', '--net', '--', 'true'], check=False).returncode == 0
    assert caps.network_isolated == unshare_ok
    assert caps.unprivileged == (os.geteuid() == 0)
    if not caps.network_isolated:
        assert any('network' in n for n in caps.notes)


def test_ordinary_program_runs(caps, python):
    res, _ = run_py('print("hello", 6 * 7)', caps, python)
    assert (res.returncode, res.stdout.strip(), res.timed_out) == (0, 'hello 42', False)


def test_no_network(caps, python):
    if not caps.network_isolated:
        pytest.skip('unshare --net does not work here (reported as network_isolated=False)')
    src = (
        'import os, socket\n'
        'print(sorted(name for _, name in socket.if_nameindex()))\n'
        's = socket.socket(); s.settimeout(2)\n'
        'try:\n    s.connect(("1.1.1.1", 53)); print("CONNECTED")\n'
        'except OSError as e:\n    print("blocked", e.errno)\n'
    )
    res, _ = run_py(src, caps, python)
    assert "['lo']" in res.stdout
    assert 'blocked' in res.stdout and 'CONNECTED' not in res.stdout


def test_unprivileged_scrubbed_and_outside_project(caps, python):
    if not caps.unprivileged:
        pytest.skip('not root: cannot drop to a sandbox uid')
    target = PROJECT / 'sandbox_escape_probe.txt'
    src = (
        'import os\n'
        'print(os.getuid(), os.getgid(), sorted(os.environ))\n'
        'print(os.getcwd())\n'
        f'try:\n    open({str(target)!r}, "w").write("x"); print("WROTE")\n'
        'except OSError:\n    print("denied")\n'
    )
    res, leased = run_py(src, caps, python)
    first, cwd, verdict = res.stdout.strip().splitlines()
    uid, gid, env = first.split(' ', 2)
    assert int(uid) == int(gid) == leased
    assert sandbox.BASE_UID <= leased < sandbox.BASE_UID + sandbox.NUM_UIDS
    assert env == "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    assert not cwd.startswith(str(PROJECT)) and 'codellm_sbx_' in cwd
    assert verdict == 'denied' and not target.exists()


def test_infinite_loop_times_out_fast(caps, python):
    start = time.monotonic()
    res, _ = run_py('while True:\n    pass\n', caps, python, dataclasses.replace(FAST, timeout_s=2))
    assert res.timed_out and res.returncode == -9
    assert time.monotonic() - start < 10


def test_cpu_limit_kills_busy_program(caps, python):
    limits = dataclasses.replace(FAST, timeout_s=60, cpu_s=1)
    res, _ = run_py('while True:\n    pass\n', caps, python, limits)
    # Ended by RLIMIT_CPU's soft limit (SIGXCPU), not by the wall clock (which under load
    # can take several times the CPU time); judges report it as a timeout.
    assert not res.timed_out and res.returncode == -signal.SIGXCPU
    assert res.cpu_limited and res.out_of_time
    assert sandbox.time_limit_message(res) == 'CPU time limit exceeded'


def test_fork_bomb_is_bounded_and_cleaned_up(caps, python):
    if not caps.unprivileged:
        pytest.skip('RLIMIT_NPROC is not enforced for root')
    src = (
        'import os, time\n'
        'for _ in range(1000):\n'
        '    try:\n        os.fork()\n'
        '    except OSError:\n        time.sleep(30)\n'
    )
    start = time.monotonic()
    res, uid = run_py(src, caps, python, dataclasses.replace(FAST, timeout_s=2, nproc=12))
    assert res.timed_out  # the forks that failed sleep: only the timeout ends the tree
    assert time.monotonic() - start < 15
    assert not uid_processes(uid), 'fork-bomb processes outlived their run'


def test_escaped_daemon_is_killed(caps, python):
    if not caps.unprivileged:
        pytest.skip('needs a sandbox uid')
    src = (
        'import os, time\n'
        'if os.fork() == 0:\n'
        '    os.setsid()\n'
        '    if os.fork() == 0:\n'
        '        time.sleep(60)\n'
        '    os._exit(0)\n'
        'time.sleep(0.3)\n'
        'print(os.getuid())\n'
    )
    res, _ = run_py(src, caps, python)
    uid = int(res.stdout.split()[-1])
    assert not uid_processes(uid), 'a daemonised child outlived its run'


def test_memory_bomb_fails(caps, python):
    res, _ = run_py('x = bytearray(3 << 30)\nprint("ALLOCATED")', caps, python)
    assert res.returncode != 0 and 'ALLOCATED' not in res.stdout
    assert 'MemoryError' in res.stderr


def test_output_flood_is_capped(caps, python):
    limits = dataclasses.replace(FAST, timeout_s=2, output_bytes=10_000)
    res, _ = run_py('while True:\n    print("x" * 1000)\n', caps, python, limits)
    assert res.output_truncated and len(res.stdout) < 10_000 + 4096 + 100


def test_big_file_is_refused(caps, python):
    limits = dataclasses.replace(FAST, fsize_bytes=1 << 20)
    src = 'open("big", "wb").write(b"x" * (4 << 20))\nprint("WROTE")'
    res, _ = run_py(src, caps, python, limits)
    assert res.returncode != 0 and 'WROTE' not in res.stdout


def test_python_judge_needs_the_tests_to_finish(caps):
    programs = [
        'assert 1 + 1 == 2',
        'assert 1 + 1 == 3',
        'import sys\nsys.exit(0)\nassert False',
        'import os\nos._exit(0)',
        'while True:\n    pass',
    ]
    limits = dataclasses.replace(python_exec.DEFAULT_LIMITS, timeout_s=2, cpu_s=2)
    got = [v.status for v in python_exec.judge(programs, limits=limits, caps=caps)]
    assert got == ['passed', 'failed', 'failed', 'failed', 'timeout']


JAVA_TEST = """
public class Main {
    public static void main(String[] args) {
        if (new Solution().f(2) != 3) throw new AssertionError();
    }
}
"""


@pytest.mark.skipif(not shutil.which('javac'), reason='no JDK')
def test_java_judge_hostile_candidates(caps):
    def prog(body, extra=''):
        return f'import java.util.*;\n{extra}\nclass Solution {{\n int f(int x) {{ {body} }}\n}}\n{JAVA_TEST}'

    programs = [
        prog('return x + 1;'),
        prog('return x;'),
        prog('System.exit(0); return 0;'),  # exits 0 before the test: must fail
        prog('while (true) {}'),
        prog('List<long[]> l = new ArrayList<>(); while (true) l.add(new long[1 << 20]);'),
        prog(
            'for (int i = 0; i < 500; i++) new Thread(() -> {'
            ' try { Thread.sleep(20000); } catch (Exception e) {} }).start(); return x + 1;'
        ),
        prog('return x + ;'),
        'class Solution { int f(int x) { return "no"; } }\n' + JAVA_TEST,
    ]
    limits = java_exec.JavaLimits(
        run=dataclasses.replace(java_exec.JavaLimits().run, timeout_s=3, cpu_s=3)
    )
    start = time.monotonic()
    got = [v.status for v in java_exec.judge(programs, limits=limits, caps=caps)]
    assert got[:4] == ['passed', 'failed', 'failed', 'timeout']
    assert got[4] == 'failed'  # OutOfMemoryError under -Xmx
    assert got[5] in ('failed', 'timeout')  # thread bomb: NPROC or the timeout stops it
    assert got[6:] == ['compile_error', 'compile_error']
    assert time.monotonic() - start < 60


def test_missing_java_is_named(monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')
    with pytest.raises(RuntimeError, match='java and javac'):
        java_exec.check_toolchain()


def test_missing_python_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(python_exec.os.path, 'isfile', lambda p: False)
    with pytest.raises(RuntimeError, match='python3'):
        python_exec.find_interpreter(str(tmp_path / 'python3'))


@pytest.mark.skipif(not shutil.which('javac'), reason='no JDK')
def test_planted_java_runner_is_not_trusted(tmp_path):
    first = java_exec.compile_server(str(tmp_path))
    assert java_exec.compile_server(str(tmp_path)) == first  # cached
    os.chmod(first, 0o777)  # as if a candidate could have written there
    other = java_exec.compile_server(str(tmp_path))
    assert other != first and not other.startswith(str(tmp_path))
    shutil.rmtree(os.path.dirname(other))


TAMPER = """
class Solution {
    int f(int x) {
        java.io.File parent = new java.io.File(System.getProperty("user.dir")).getParentFile();
        for (int i = 0; i < 16; i++) {
            for (String name : new String[] {"Solution.class", "Main.class"}) {
                java.io.File f = new java.io.File(parent, "c" + i + "/" + name);
                try (java.io.FileWriter w = new java.io.FileWriter(f)) {
                    w.write("broken");
                } catch (Exception e) {
                }
                f.delete();
            }
        }
        return x + 1;
    }
}
"""


@pytest.mark.skipif(not shutil.which('javac'), reason='no JDK')
def test_java_candidate_cannot_tamper_with_neighbours(caps):
    if not caps.unprivileged:
        pytest.skip('needs sandbox uids')
    good = 'class Solution {\n    int f(int x) { return x + 1; }\n}\n' + JAVA_TEST
    programs = [TAMPER + JAVA_TEST, good, good, TAMPER + JAVA_TEST, good, good, good]
    got = [v.status for v in java_exec.judge(programs, caps=caps)]
    assert got == ['passed'] * len(programs)
