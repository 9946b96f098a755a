"""Process-level sandbox for running untrusted, model-written programs.

Each program runs as its own process tree with:
- a fresh network namespace (`unshare --net`: no interface but a down loopback), when the
  kernel allows it; `probe()` finds out at run time and the results carry the flag;
- an unprivileged, leased uid/gid (`setpriv`), so the project, the other candidates' files and
  root's processes are out of reach and RLIMIT_NPROC is enforced (it is not for root). A uid
  is leased through a lock file in the temp dir, so concurrent evaluations (pytest workers,
  other engineers) never share one; after each run every process still owned by the leased
  uid is killed, which also catches daemons that left the process group;
- resource limits (`prlimit`): CPU seconds, address space or data segment, processes, file
  size, open files; a wall-clock timeout that kills the whole process group;
- a scrubbed environment, stdin from /dev/null, cwd = a fresh temp dir outside the project
  owned by the leased uid, and stdout/stderr read with a size cap.

Only the standard wrappers from util-linux are used (no preexec_fn, so it is safe to run
many sandboxes from threads). When not root the sandbox still applies the limits but runs as
the current user with the network on; `probe()` warns loudly and the flags say so.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar('T')

# Leased uids come from [BASE_UID, BASE_UID + NUM_UIDS): unused by any real account here.
BASE_UID = 61000
NUM_UIDS = 512


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits for one sandboxed process tree.

    Attributes:
      timeout_s: wall-clock seconds before the process group is killed.
      cpu_s: RLIMIT_CPU seconds (per process): SIGXCPU then, SIGKILL one second later.
      address_space_bytes: RLIMIT_AS, or None (the JVM reserves far more virtual memory than
        it uses; bound it with -Xmx and `data_bytes` instead).
      data_bytes: RLIMIT_DATA (private writable memory), or None.
      nproc: RLIMIT_NPROC, processes + threads of the sandbox uid (enforced only when not root).
      fsize_bytes: RLIMIT_FSIZE, largest file the program may write.
      nofile: RLIMIT_NOFILE.
      output_bytes: stdout and stderr are each kept up to this many bytes.
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    address_space_bytes: int | None = 2 << 30
    data_bytes: int | None = None
    nproc: int = 64
    fsize_bytes: int = 16 << 20
    nofile: int = 256
    output_bytes: int = 64 << 10


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What isolation this machine allows; reported next to every result."""

    network_isolated: bool
    unprivileged: bool
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed run. `returncode` is negative for a signal (-9 on timeout).

    `timed_out`: the wall-clock timeout killed the process group. `cpu_limited`: RLIMIT_CPU
    ended the process (SIGXCPU at `Limits.cpu_s`); under load this often comes first.
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    output_truncated: bool = False

    @property
    def cpu_limited(self) -> bool:
        return self.returncode == -signal.SIGXCPU

    @property
    def out_of_time(self) -> bool:
        """Ended by either time limit: what a judge reports as 'timeout'."""
        return self.timed_out or self.cpu_limited


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Judgement of one candidate program.

    `status`: 'passed' | 'failed' (non-zero exit) | 'timeout' | 'compile_error' | 'syntax_error'
    | 'empty' | 'not_code'. Only 'passed' counts as correct.
    """

    status: str
    message: str = ''
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == 'passed'


def _works(argv: Sequence[str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return proc.returncode == 0, proc.stderr.decode(errors='replace').strip()


def probe() -> Capabilities:
    """Finds out at run time which isolation works here; warns loudly about what does not."""
    notes = []
    net_ok, net_err = _works(['unshare', '--net', '--', 'true'])
    if not net_ok:
        notes.append(
            f'network isolation unavailable (`unshare --net` failed: {net_err or "not found"}); '
            'candidate programs can reach the network.'
        )
    uid_ok = False
    if os.geteuid() != 0:
        notes.append('not root: candidates run as the current user, RLIMIT_NPROC not enforced.')
    else:
        uid_ok, uid_err = _works(
            [
                'setpriv',
                f'--reuid={BASE_UID}',
                f'--regid={BASE_UID}',
                '--clear-groups',
                '--',
                'true',
            ]
        )
        if not uid_ok:
            notes.append(f'cannot drop to an unprivileged uid (setpriv: {uid_err or "not found"}).')
    if not shutil.which('prlimit'):
        raise RuntimeError('The sandbox needs `prlimit` (util-linux); install util-linux.')
    for note in notes:
        logging.warning('SANDBOX WEAKENED: %s', note)
    return Capabilities(network_isolated=net_ok, unprivileged=uid_ok, notes=tuple(notes))


class UidLease:
    """Exclusive use of one sandbox uid across processes, held through an flock'ed file.

    Use as a context manager; `uid` is None when `caps.unprivileged` is False.
    """

    def __init__(self, caps: Capabilities, start: int = 0):
        self._caps = caps
        self._start = start
        self._fd: int | None = None
        self.uid: int | None = None

    def __enter__(self) -> UidLease:
        if not self._caps.unprivileged:
            return self
        lock_dir = tempfile.gettempdir()
        for i in range(NUM_UIDS):
            uid = BASE_UID + (self._start + i) % NUM_UIDS
            path = os.path.join(lock_dir, f'codellm_jax_sandbox_uid_{uid}.lock')
            try:  # no symlinks, and only our own file: a candidate may plant one in /tmp
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError:
                continue
            if os.fstat(fd).st_uid != os.geteuid():
                os.close(fd)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._fd, self.uid = fd, uid
            kill_uid_processes(uid)  # leftovers of a crashed earlier holder
            return self
        raise RuntimeError(f'All {NUM_UIDS} sandbox uids are in use; too many concurrent runs.')

    def __exit__(self, *exc) -> None:
        if self.uid is not None:
            kill_uid_processes(self.uid)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.uid = None, None


def kill_uid_processes(uid: int, wait_s: float = 5.0) -> int:
    """SIGKILLs every process whose real uid is the sandbox `uid`; returns how many.

    Waits (up to `wait_s`) until they are gone from the process table, zombies included, so
    that they no longer count against the uid's RLIMIT_NPROC for the next candidate.
    """
    if not BASE_UID <= uid < BASE_UID + NUM_UIDS:
        raise ValueError(f'Refusing to kill processes of uid {uid}: not a sandbox uid.')
    killed, deadline, pause = 0, time.monotonic() + wait_s, 0.005
    while True:
        pids = _uid_pids(uid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not pids or time.monotonic() > deadline:
            return killed
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _uid_pids(uid: int) -> list[int]:
    pids = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/status') as f:
                uid_line = next(line for line in f if line.startswith('Uid:'))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) == uid:
            pids.append(int(name))
    return pids


def make_workdir(uid: int | None, prefix: str = 'codellm_sbx_') -> str:
    """A fresh private dir in the system temp dir (outside the project), owned by `uid`."""
    path = tempfile.mkdtemp(prefix=prefix)
    if uid is not None:
        chown_tree(path, uid)
    return path


def chown_tree(path: str, uid: int) -> None:
    """Gives `path` and everything under it to `uid` (same gid)."""
    os.chown(path, uid, uid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _prefix(caps: Capabilities, uid: int | None, limits: Limits) -> list[str]:
    argv = []
    if caps.network_isolated:
        argv += ['unshare', '--net', '--']
    if uid is not None:
        argv += ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups']
        argv += ['--no-new-privs', '--']
    # Soft limit: SIGXCPU (a recognisable exit); hard limit a second later: SIGKILL.
    argv += ['prlimit', f'--cpu={limits.cpu_s}:{limits.cpu_s + 1}']
    if uid is not None:  # as a shared user, NPROC would count all of that user's processes
        argv.append(f'--nproc={limits.nproc}')
    argv += [f'--fsize={limits.fsize_bytes}', f'--nofile={limits.nofile}', '--core=0']
    if limits.address_space_bytes:
        argv.append(f'--as={limits.address_space_bytes}')
    if limits.data_bytes:
        argv.append(f'--data={limits.data_bytes}')
    return argv + ['--']


def _read_capped(stream, cap: int, out: list, truncated: list) -> None:
    """Keeps the first `cap` bytes and the last 4 KiB; drains the rest so the child never blocks."""
    head, tail, dropped = bytearray(), bytearray(), False
    while chunk := stream.read(65536):
        room = cap - len(head)
        head += chunk[:room]
        rest = chunk[room:] if room > 0 else chunk
        if rest:
            tail = (tail + rest)[-4096:]
            dropped = True
    if dropped:
        truncated.append(True)
        head += b'\n...[output truncated]...\n' + tail
    out.append(bytes(head))


def ended_with(stdout: str, nonce: str) -> bool:
    """True when the last non-empty line of `stdout` is `nonce` (the judge's pass sentinel)."""
    lines = stdout.strip().splitlines()
    return bool(lines) and lines[-1].strip() == nonce


def scrubbed_env(home: str) -> dict[str, str]:
    """The only environment a candidate sees."""
    return {'PATH': '/usr/local/bin:/usr/bin:/bin', 'HOME': home, 'LANG': 'C.UTF-8', 'TMPDIR': home}


def run(
    argv: Sequence[str],
    *,
    cwd: str,
    limits: Limits,
    caps: Capabilities,
    uid: int | None,
    stdin_data: bytes | None = None,
) -> ExecResult:
    """Runs `argv` sandboxed in `cwd` (see module docstring); never raises for the child's sake."""
    full = _prefix(caps, uid, limits) + list(argv)
    start = time.monotonic()
    proc = subprocess.Popen(
        full,
        cwd=cwd,
        env=scrubbed_env(cwd),
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    outs: dict[str, list] = {'out': [], 'err': []}
    truncated: list = []
    readers = [
        threading.Thread(
            target=_read_capped, args=(s, limits.output_bytes, outs[k], truncated), daemon=True
        )
        for k, s in (('out', proc.stdout), ('err', proc.stderr))
    ]
    for t in readers:
        t.start()
    if stdin_data is not None:
        try:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        except OSError:
            pass
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(proc.pid)
    proc.wait()  # reap it first: the uid sweep waits for zombies to go
    if uid is not None:
        kill_uid_processes(uid)
    for t in readers:
        t.join(timeout=5)
    wall = time.monotonic() - start
    decode = lambda parts: (parts[0] if parts else b'').decode('utf-8', errors='replace')
    return ExecResult(
        returncode=-9 if timed_out else proc.returncode,
        stdout=decode(outs['out']),
        stderr=decode(outs['err']),
        timed_out=timed_out,
        wall_s=wall,
        output_truncated=bool(truncated),
    )


def time_limit_message(res: ExecResult) -> str:
    """Why a run that is `out_of_time` was stopped, for a verdict."""
    return 'killed after timeout' if res.timed_out else 'CPU time limit exceeded'


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(
    jobs: Sequence[Callable[[int | None], T]], *, workers: int, caps: Capabilities
) -> list[T]:
    """Runs `jobs[i](uid)` on `workers` threads, each thread holding its own leased uid.

    Two candidates never run at the same time under the same uid, and every process of a uid
    is killed after each run (`run`), so one candidate cannot reach or starve a neighbour.
    """
    results: list = [None] * len(jobs)
    todo: queue.Queue = queue.Queue()
    for i in range(len(jobs)):
        todo.put(i)
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            with UidLease(caps, start=slot + os.getpid()) as lease:
                while True:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    results[i] = jobs[i](lease.uid)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
