"""What a run records in its workdir: resolved config, git commit, package versions, argv.

Files (rewritten at every start, plus an append-only `runs.jsonl` history of starts):
  config.json   the resolved (locked, overridden) config
  run_info.json {"git_commit", "git_dirty", "command_line", "packages", "devices", ...}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

PACKAGES = (
    'jax',
    'jaxlib',
    'flax',
    'optax',
    'orbax-checkpoint',
    'grain',
    'tensorflow-datasets',
    'sentencepiece',
    'ml-collections',
    'numpy',
    'tensorboardX',
)


def ensure_writable(workdir: str) -> str:
    """Creates `workdir` and checks it is writable; raises naming the directory otherwise."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write_probe_{os.getpid()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f'Workdir {workdir!r} is not writable ({e.strerror}); pass a --workdir you can '
            'write to.'
        ) from e
    return workdir


def git_commit(repo_dir: str | None = None) -> tuple[str, bool]:
    """(commit hash or 'unknown', whether the tree has uncommitted changes)."""
    repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=repo_dir, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ['git', 'status', '--porcelain', '--untracked-files=no'],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown', False
    return commit or 'unknown', bool(dirty)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = 'not installed'
    return out


def collect(argv: list[str] | None = None) -> dict[str, Any]:
    """The run-info record (no side effects)."""
    import jax

    commit, dirty = git_commit()
    return {
        'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'git_commit': commit,
        'git_dirty': dirty,
        'command_line': list(sys.argv if argv is None else argv),
        'python': platform.python_version(),
        'packages': package_versions(),
        'devices': [str(d) for d in jax.devices()],
        'process_count': jax.process_count(),
    }


def record(workdir: str, config: Any, argv: list[str] | None = None) -> dict[str, Any]:
    """Writes config.json, run_info.json and appends to runs.jsonl in `workdir`."""
    workdir = ensure_writable(workdir)
    info = collect(argv)
    cfg_dict = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True, default=_jsonable)
    with open(os.path.join(workdir, 'run_info.json'), 'w') as f:
        json.dump(info, f, indent=2, sort_keys=True)
    with open(os.path.join(workdir, 'runs.jsonl'), 'a') as f:
        f.write(json.dumps(info, sort_keys=True) + '\n')
    return info


def _jsonable(x: Any) -> Any:
    if isinstance(x, tuple | set | frozenset):
        return list(x)
    return str(x)
