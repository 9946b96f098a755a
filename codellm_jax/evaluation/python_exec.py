"""Judging Python programs: each one in its own sandboxed `python3 -I` process.

Pass = exit 0 AND the nonce sent on stdin echoed as the last line (see `_ECHO_NONCE`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys

from codellm_jax.evaluation import sandbox

DEFAULT_LIMITS = sandbox.Limits(
    timeout_s=10.0, cpu_s=10, address_space_bytes=1 << 30, nproc=32, output_bytes=64 << 10
)

# Appended to every program: echo the nonce given on stdin, so that `sys.exit(0)` or
# `os._exit(0)` before the tests does not count as a pass.
_ECHO_NONCE = (
    '\n\nimport sys as _codellm_sys\n\nprint()\nprint(_codellm_sys.stdin.readline().strip())\n'
)


def find_interpreter(explicit: str | None = None) -> str:
    """A `python3` that an unprivileged sandbox uid can execute; names what is missing.

    The project's venv usually lives under a private home, so the system interpreter is
    preferred. Override with `explicit` or env CODELLM_SANDBOX_PYTHON.
    """
    candidates = [explicit or os.environ.get('CODELLM_SANDBOX_PYTHON')]
    candidates += ['/usr/bin/python3', shutil.which('python3'), sys.executable]
    for path in candidates:
        if path and os.path.isfile(path) and _world_executable(os.path.realpath(path)):
            return path
    raise RuntimeError(
        'Python evaluation needs a python3 executable by an unprivileged user (tried '
        f'{[c for c in candidates if c]}); install python3 (e.g. `apt-get install python3`) or '
        'set CODELLM_SANDBOX_PYTHON.'
    )


def _world_executable(path: str) -> bool:
    """True when every dir above `path` is world-searchable and the file world-executable."""
    if not os.stat(path).st_mode & 0o001:
        return False
    parent = os.path.dirname(path)
    while parent and parent != os.path.dirname(parent):
        if not os.stat(parent).st_mode & 0o001:
            return False
        parent = os.path.dirname(parent)
    return True


def judge(
    programs: list[str],
    *,
    limits: sandbox.Limits = DEFAULT_LIMITS,
    workers: int = 2,
    caps: sandbox.Capabilities | None = None,
    interpreter: str | None = None,
) -> list[sandbox.Verdict]:
    """Runs each complete program (solution + tests); exit 0 = 'passed'. One verdict each."""
    if not programs:
        return []
    python = find_interpreter(interpreter)
    caps = caps or sandbox.probe()

    def run_one(src: str, uid) -> sandbox.Verdict:
        work = sandbox.make_workdir(uid)
        try:
            path = os.path.join(work, 'program.py')
            with open(path, 'w', encoding='utf-8') as f:
                f.write(src + _ECHO_NONCE)
            if uid is not None:
                os.chown(path, uid, uid)
            nonce = secrets.token_hex(16)
            res = sandbox.run(
                [python, '-I', '-B', 'program.py'],
                cwd=work,
                limits=limits,
                caps=caps,
                uid=uid,
                stdin_data=(nonce + '\n').encode(),
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if res.out_of_time:
            return sandbox.Verdict('timeout', sandbox.time_limit_message(res), res.wall_s)
        if res.returncode == 0 and not sandbox.ended_with(res.stdout, nonce):
            return sandbox.Verdict('failed', 'exited 0 before the tests finished', res.wall_s)
        if res.returncode == 0:
            return sandbox.Verdict('passed', '', res.wall_s)
        return sandbox.Verdict('failed', res.stderr[-500:], res.wall_s)

    jobs = [(lambda uid, s=s: run_one(s, uid)) for s in programs]
    return sandbox.run_many(jobs, workers=workers, caps=caps)
