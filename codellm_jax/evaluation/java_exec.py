"""Judging Java programs: compile many in one JVM, run each in its own sandboxed JVM.

Why this split (and what hostile code can do):
- Compiling does not run candidate code: javac runs with `-proc:none` (no annotation
  processors), so the only risks are pathological inputs (slow or memory-hungry compiles).
  One compile-server JVM per worker (`CodellmCompileServer`, our own small program, compiled
  at first use into a cache dir) compiles each `Main.java` in isolation with
  `javax.tools.JavaCompiler`, so one broken file fails alone and the JVM/javac warm-up is paid
  once. The server itself runs sandboxed; if it times out or dies, the file it was on is
  marked failed and a fresh server goes on with the rest.
- Running DOES execute candidate code, so every candidate gets its own `java -ea` process in
  the sandbox (own leased uid, own private dir, limits, no network, killed with all its
  processes afterwards). A shared runner JVM would let one candidate's `System.exit`, static
  state, threads, or heap exhaustion change a neighbour's verdict, so we do not use one.
  Exit 0 is not enough: our wrapper `CodellmMain` runs `Main.main` and then echoes a nonce
  given on stdin, so a candidate calling `System.exit(0)` before the tests fails.
  Cheap JVM flags (`-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto`) keep one run at
  ~0.1 s, and `workers` runs go in parallel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile

from codellm_jax.evaluation import sandbox

_SERVER_CLASS = 'CodellmCompileServer'
_SERVER_SOURCE = r"""
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;
import javax.tools.*;

/** Reads lines "index<TAB>dir"; compiles dir/Main.java into dir; prints "index<TAB>OK|ERR<TAB>msg". */
public class CodellmCompileServer {
  public static void main(String[] args) throws IOException {
    JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
    if (javac == null) {
      System.err.println("No system Java compiler: install a JDK, not only a JRE.");
      System.exit(3);
    }
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
    StandardJavaFileManager files = javac.getStandardFileManager(null, null, StandardCharsets.UTF_8);
    String line;
    while ((line = in.readLine()) != null) {
      int tab = line.indexOf('\t');
      if (tab < 0) continue;
      String index = line.substring(0, tab);
      File dir = new File(line.substring(tab + 1));
      DiagnosticCollector<JavaFileObject> diags = new DiagnosticCollector<>();
      StringWriter log = new StringWriter();
      boolean ok;
      try {
        // One file manager for all files: it caches the platform class index (the slow part).
        List<String> options = Arrays.asList(
            "-proc:none", "-implicit:none", "-nowarn", "-encoding", "UTF-8",
            "-d", dir.getPath(), "-classpath", dir.getPath());
        ok = javac.getTask(log, files, diags, options, null,
            files.getJavaFileObjects(new File(dir, "Main.java"))).call();
      } catch (Throwable t) {
        ok = false;
        log.write("compiler crashed: " + t);
      }
      StringBuilder msg = new StringBuilder(log.toString());
      for (Diagnostic<? extends JavaFileObject> d : diags.getDiagnostics()) {
        if (d.getKind() == Diagnostic.Kind.ERROR) {
          msg.append("line ").append(d.getLineNumber()).append(": ")
              .append(d.getMessage(Locale.ROOT)).append(" | ");
        }
        if (msg.length() > 1000) break;
      }
      String text = msg.toString().replace('\n', ' ').replace('\r', ' ').replace('\t', ' ');
      if (text.length() > 1000) text = text.substring(0, 1000);
      out.println(index + "\t" + (ok ? "OK" : "ERR") + "\t" + text);
    }
  }
}
"""

_WRAPPER_CLASS = 'CodellmMain'
_WRAPPER_SOURCE = r"""
import java.io.*;
import java.lang.reflect.InvocationTargetException;
import java.nio.charset.StandardCharsets;

/** Runs Main.main, then echoes the nonce read from stdin: exit 0 alone (System.exit(0)) fails. */
public class CodellmMain {
  public static void main(String[] args) throws Throwable {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String nonce = in.readLine();
    try {
      Class.forName("Main").getMethod("main", String[].class).invoke(null, (Object) new String[0]);
    } catch (InvocationTargetException e) {
      throw e.getCause();
    }
    System.out.println();
    System.out.println(nonce);
    System.out.flush();
  }
}
"""

RUN_FLAGS = (
    '-ea',
    '-Xmx256m',
    '-Xss4m',
    '-XX:TieredStopAtLevel=1',
    '-XX:+UseSerialGC',
    '-Xshare:auto',
    '-XX:-UsePerfData',
    '-XX:ActiveProcessorCount=1',
    '-Djava.io.tmpdir=.',
)
# C1 only: javac over ~100 small files spends more CPU in C2 than C2 wins back (measured:
# 154 files, 11.1 -> 5.5 CPU-seconds).
_SERVER_FLAGS = (
    '-Xmx768m',
    '-XX:TieredStopAtLevel=1',
    '-XX:+UseSerialGC',
    '-Xshare:auto',
    '-XX:-UsePerfData',
)


@dataclasses.dataclass(frozen=True)
class JavaLimits:
    """Sandbox limits for the candidate JVMs and for the compile server."""

    run: sandbox.Limits = sandbox.Limits(
        timeout_s=10.0, cpu_s=10, address_space_bytes=None, data_bytes=1 << 30, nproc=64
    )
    compile_per_file_s: float = 10.0
    compile: sandbox.Limits = sandbox.Limits(
        timeout_s=60.0,
        cpu_s=600,
        address_space_bytes=None,
        data_bytes=2 << 30,
        nproc=128,
        output_bytes=4 << 20,
    )


def check_toolchain() -> tuple[str, str]:
    """Paths of `java` and `javac`; a clear error naming the missing tool."""
    found = {tool: shutil.which(tool) for tool in ('java', 'javac')}
    missing = [tool for tool, path in found.items() if not path]
    if missing:
        raise RuntimeError(
            f'Java evaluation needs {" and ".join(missing)} on PATH, which is missing; '
            'install a JDK 17 (e.g. `apt-get install openjdk-17-jdk-headless`).'
        )
    return found['java'], found['javac']


def compile_server(cache_dir: str | None = None) -> str:
    """Compiles our compile server + run wrapper once into a cache dir; returns that dir.

    The shared cache lives in the temp dir, where candidates can write too: a cached copy is
    used only when owned by us and not writable by others; otherwise a private one is built.
    """
    check_toolchain()
    digest = hashlib.sha256((_SERVER_SOURCE + _WRAPPER_SOURCE).encode()).hexdigest()[:16]
    cache_dir = cache_dir or os.environ.get('CODELLM_JAVA_CACHE') or tempfile.gettempdir()
    target = os.path.join(cache_dir, f'codellm_jax_java_{digest}_{os.geteuid()}')
    if _trusted(target):
        return target
    if not os.path.lexists(target):
        os.makedirs(cache_dir, exist_ok=True)
        staging = _build_server(tempfile.mkdtemp(prefix='codellm_jax_java_build_', dir=cache_dir))
        try:
            os.rename(staging, target)  # atomic: a concurrent builder's copy is as good
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        if _trusted(target):
            return target
    private = tempfile.mkdtemp(prefix='codellm_jax_java_private_')
    os.chmod(private, 0o755)
    return _build_server(os.path.join(private, 'server'), make=True)


def _build_server(out_dir: str, make: bool = False) -> str:
    if make:
        os.mkdir(out_dir)
    sources = []
    for name, text in ((_SERVER_CLASS, _SERVER_SOURCE), (_WRAPPER_CLASS, _WRAPPER_SOURCE)):
        sources.append(os.path.join(out_dir, f'{name}.java'))
        with open(sources[-1], 'w') as f:
            f.write(text)
    javac = shutil.which('javac')
    proc = subprocess.run(
        [javac, '-d', out_dir, *sources], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise RuntimeError(f'Could not compile the Java compile server:\n{proc.stderr}')
    os.chmod(out_dir, 0o755)
    return out_dir


def _trusted(target: str) -> bool:
    classes = [os.path.join(target, f'{c}.class') for c in (_SERVER_CLASS, _WRAPPER_CLASS)]
    paths = [target, *classes]
    return all(os.path.lexists(p) for p in paths) and all(_owned_and_private(p) for p in paths)


def _owned_and_private(path: str) -> bool:
    st = os.lstat(path)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022 and not os.path.islink(path)


def _compile_chunk(
    dirs: list[tuple[int, str]], server_dir: str, limits: JavaLimits, caps, uid
) -> dict[int, sandbox.Verdict]:
    """Compiles `dirs` with restarts; a server that stops early fails the file it was on."""
    verdicts: dict[int, sandbox.Verdict] = {}
    todo = list(dirs)
    while todo:
        for _, d in todo:
            if uid is not None:
                sandbox.chown_tree(d, uid)
        work = sandbox.make_workdir(uid, prefix='codellm_javac_')
        budget = limits.compile.timeout_s + limits.compile_per_file_s * len(todo)
        run_limits = dataclasses.replace(limits.compile, timeout_s=budget)
        stdin = ''.join(f'{i}\t{d}\n' for i, d in todo).encode()
        argv = ['java', *_SERVER_FLAGS, '-cp', server_dir, _SERVER_CLASS]
        try:
            res = sandbox.run(
                argv, cwd=work, limits=run_limits, caps=caps, uid=uid, stdin_data=stdin
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if res.returncode == 3:
            raise RuntimeError(f'Java compile server failed: {res.stderr.strip()}')
        for line in res.stdout.splitlines():
            parts = line.split('\t', 2)
            if len(parts) == 3 and parts[0].isdigit():
                ok = parts[1] == 'OK'
                verdicts[int(parts[0])] = sandbox.Verdict(
                    'compiled' if ok else 'compile_error', parts[2]
                )
        remaining = [(i, d) for i, d in todo if i not in verdicts]
        if remaining:
            why = 'timed out' if res.timed_out else f'exited {res.returncode}'
            verdicts[remaining[0][0]] = sandbox.Verdict(
                'compile_error', f'compiler {why} on this file: {res.stderr[-300:]}'
            )
            remaining = remaining[1:]
        todo = remaining
    return verdicts


def judge(
    sources: list[str],
    *,
    limits: JavaLimits = JavaLimits(),
    workers: int = 2,
    caps: sandbox.Capabilities | None = None,
    cache_dir: str | None = None,
) -> list[sandbox.Verdict]:
    """Compiles and runs each complete `Main.java` source; exit 0 = 'passed'.

    Args:
      sources: whole `Main.java` files (a `public class Main` with `main`).
      limits: sandbox limits for compile server and candidate runs.
      workers: parallel compile servers / candidate JVMs.
      caps: sandbox capabilities (`sandbox.probe()` when None).
      cache_dir: where the compile server is built (env CODELLM_JAVA_CACHE, else temp dir).
    Returns:
      One verdict per source, in order.
    """
    if not sources:
        return []
    check_toolchain()
    caps = caps or sandbox.probe()
    server_dir = compile_server(cache_dir)
    root = tempfile.mkdtemp(prefix='codellm_java_batch_')
    os.chmod(root, 0o711)  # sandbox uids may enter their own subdir, not list the others
    try:
        dirs = []
        for i, src in enumerate(sources):
            d = os.path.join(root, f'c{i}')
            os.mkdir(d, 0o700)
            with open(os.path.join(d, 'Main.java'), 'w', encoding='utf-8') as f:
                f.write(src)
            dirs.append((i, d))
        # A compile server costs a cold JVM + javac warm-up (~2 s): a second one only pays
        # off for larger batches.
        n = max(1, min(workers, len(dirs) // 24))
        chunks = [dirs[s::n] for s in range(n)]
        compiled: dict[int, sandbox.Verdict] = {}
        jobs = [(lambda uid, c=c: _compile_chunk(c, server_dir, limits, caps, uid)) for c in chunks]
        for part in sandbox.run_many(jobs, workers=n, caps=caps):
            compiled.update(part)
        if caps.unprivileged:
            # Back to us: a run uid may equal a compile uid, and must not reach the class files
            # of candidates that have not run yet. Each dir goes to its run uid just before.
            for _, d in dirs:
                sandbox.chown_tree(d, os.geteuid())

        def run_one(i: int, d: str, uid) -> sandbox.Verdict:
            if uid is not None:
                sandbox.chown_tree(d, uid)
            nonce = secrets.token_hex(16)
            res = sandbox.run(
                ['java', *RUN_FLAGS, '-cp', f'{server_dir}:.', _WRAPPER_CLASS],
                cwd=d,
                limits=limits.run,
                caps=caps,
                uid=uid,
                stdin_data=(nonce + '\n').encode(),
            )
            if res.out_of_time:
                return sandbox.Verdict('timeout', sandbox.time_limit_message(res), res.wall_s)
            if res.returncode == 0 and not sandbox.ended_with(res.stdout, nonce):
                return sandbox.Verdict('failed', 'exited 0 before the tests finished', res.wall_s)
            if res.returncode == 0:
                return sandbox.Verdict('passed', '', res.wall_s)
            return sandbox.Verdict('failed', res.stderr[:500], res.wall_s)

        to_run = [(i, d) for i, d in dirs if compiled[i].status == 'compiled']
        run_jobs = [(lambda uid, i=i, d=d: run_one(i, d, uid)) for i, d in to_run]
        ran = sandbox.run_many(run_jobs, workers=workers, caps=caps)
        out = [compiled[i] for i in range(len(sources))]
        for (i, _), verdict in zip(to_run, ran, strict=True):
            out[i] = verdict
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
