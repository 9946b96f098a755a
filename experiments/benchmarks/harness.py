"""Wall time of judging the reference solutions (the sandboxed judges' speed).

    .venv/bin/python experiments/benchmarks/harness.py [--workers=2]

(after `make install`; in a bare checkout prefix `PYTHONPATH=.`)

Prints one JSON line: `java_ref_154_s` (the 154 py2java reference Java translations:
compile in the compile servers + one sandboxed JVM per task) and `python_ref_164_s` (the 164
HumanEval-X Python references), plus pass counts (all must pass), the CPU seconds the
sandboxed processes used (`*_cpu_s`: independent of other load on the machine; wall time on
2 idle cores is about half of it), the 1-minute load average, and the sandbox flags.
Target: java_ref_154_s <= 30 on 2 cores (one javac + java process per task: ~300 s).
"""

import argparse
import json
import os
import resource
import time

from codellm_jax.evaluation import java_exec, python_exec, sandbox
from codellm_jax.evaluation.tasks import load_task_set


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--data_dir', default=None)
    args = parser.parse_args()
    caps = sandbox.probe()
    java_exec.compile_server()  # built once per machine; not part of the timing

    py2java = load_task_set('py2java', args.data_dir).tasks
    sources = [t.reference_code + '\n' + t.test for t in py2java]
    start, cpu0 = time.monotonic(), _children_cpu_s()
    java = java_exec.judge(sources, workers=args.workers, caps=caps)
    java_s, java_cpu = time.monotonic() - start, _children_cpu_s() - cpu0

    humaneval = load_task_set('humaneval-python', args.data_dir).tasks
    programs = [t.prompt + t.reference_completion + '\n' + t.test for t in humaneval]
    start, cpu0 = time.monotonic(), _children_cpu_s()
    python = python_exec.judge(programs, workers=args.workers, caps=caps)
    python_s, python_cpu = time.monotonic() - start, _children_cpu_s() - cpu0

    print(
        json.dumps(
            {
                'java_ref_154_s': round(java_s, 2),
                'java_passed': sum(v.passed for v in java),
                'java_ref_154_cpu_s': round(java_cpu, 2),
                'python_ref_164_s': round(python_s, 2),
                'python_passed': sum(v.passed for v in python),
                'python_ref_164_cpu_s': round(python_cpu, 2),
                'workers': args.workers,
                'cpus': os.cpu_count(),
                'load_avg_1m': round(os.getloadavg()[0], 2),
                'network_isolated': caps.network_isolated,
                'unprivileged': caps.unprivileged,
            }
        )
    )


if __name__ == '__main__':
    main()
