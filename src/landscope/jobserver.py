"""A warm process that runs the workflow's Python jobs in forked children, so that a local study pays for
``import torch`` (about 2 s on a 2-core machine) once instead of once per job.

``landscope run`` starts one server beside Snakemake (:func:`start`) and names it in the environment
variable ``LANDSCOPE_JOBSERVER`` (``<socket>:<pid of landscope run>``). Every workflow script calls
:func:`hand_over` before its imports. In a job that this Snakemake started on this machine (a descendant of
that pid), the job process then hands its script, arguments, working folder, environment and standard
streams to the server, which forks a child that runs the script exactly as the job process would have,
and returns its exit status; the job process waits and exits with it. Anywhere else (plain ``snakemake``,
a cluster job, a machine without ``/proc``, a server that does not answer) ``hand_over()`` returns and the
script runs where it is. Snakemake still sees one job per rule with its own log and benchmark file (whose
wall time is the job's; its CPU and memory columns are the waiting job process's, not the child's).

Fork safety: the server imports only the modules it is given (``landscope run`` gives torch, numpy, pyarrow
and landscope's torch-side modules: landscope.progress.PRELOAD), which must start no thread that a forked
child would miss, and runs no torch operation itself.
polars starts its thread pool at import, so each child imports it for itself. Each child runs in its own
process group; the server ends it when its job process goes away (Snakemake stopping a job), and ends
all of them when it stops. Standard library only: this module must stay light, since every job imports it.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import random
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ENV = "LANDSCOPE_JOBSERVER"  # set to "off" before `landscope run` to run every job as its own process
MAX_MESSAGE = 1 << 20
_in_child = False  # True in a child the server forked: hand_over() then returns at once


# ----------------------------------------------------------------------------------- the job's side
def hand_over() -> None:
    """Run this script in the warm server when one serves this job (see the module text), then exit with
    the script's status; otherwise return, and the script goes on here."""
    if _in_child or not os.environ.get(ENV):
        return
    path, _, pid = os.environ[ENV].rpartition(":")
    if not pid.isdigit() or not _descends_from(int(pid)):
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
        request = json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(sock, [request], [0, 1, 2])
    except OSError as err:
        sock.close()
        print(f"landscope job server at {path} did not take the job ({err}); running it here", file=sys.stderr)
        return
    reply = sock.recv(4096)
    if not reply:
        print("landscope job server stopped before the job ended (was `landscope run` stopped?)", file=sys.stderr)
        sys.exit(1)
    sys.exit(json.loads(reply)["status"])


def _descends_from(pid: int) -> bool:
    """Whether ``pid`` is an ancestor of this process (from /proc; False where there is none)."""
    me = os.getpid()
    for _ in range(64):
        try:
            with open(f"/proc/{me}/stat", "rb") as f:
                me = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if me == pid:
            return True
        if me <= 1:
            return False
    return False


# ----------------------------------------------------------------------------------- the server
def serve(path: str, parent: int, preload: tuple[str, ...] = (), ready=None) -> None:
    """Listen on the Unix socket ``path``, import ``preload``, and run each job a client hands over in a
    forked child until SIGTERM/SIGINT or until ``parent`` is no longer this process's parent. ``ready``
    (a file) gets one line once the socket listens, before the imports: jobs that connect meanwhile wait."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    if ready is not None:
        print("listening", file=ready, flush=True)
        if ready is sys.stdout:  # its reader stops reading here
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
    for name in preload:
        importlib.import_module(name)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("accept", None))
    children: dict[int, tuple[int, socket.socket | None]] = {}  # pid -> (pidfd, client or None)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while os.getppid() == parent:
            for key, _ in sel.select(timeout=1.0):
                kind, data = key.data
                if kind == "accept":
                    conn, _ = listener.accept()
                    try:
                        conn.settimeout(10)
                        msg, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
                        request = json.loads(msg)
                    except (OSError, ValueError):
                        conn.close()
                        continue
                    pid = _fork(request, fds, sel)
                    for fd in fds:
                        os.close(fd)
                    pidfd = os.pidfd_open(pid)
                    children[pid] = (pidfd, conn)
                    sel.register(conn, selectors.EVENT_READ, ("client", pid))
                    sel.register(pidfd, selectors.EVENT_READ, ("child", pid))
                elif kind == "client":  # the job process went away (it sends nothing else): end its child
                    pidfd, conn = children[data]
                    sel.unregister(conn)
                    conn.close()
                    children[data] = (pidfd, None)
                    _kill(data)
                else:
                    pidfd, conn = children.pop(data)
                    sel.unregister(pidfd)
                    os.close(pidfd)
                    _, status = os.waitpid(data, 0)
                    if conn is not None:
                        sel.unregister(conn)
                        code = os.waitstatus_to_exitcode(status)
                        try:
                            conn.send(json.dumps({"status": code if code >= 0 else 128 - code}).encode())
                        except OSError:
                            pass
                        conn.close()
    finally:
        _end(list(children))
        try:
            os.unlink(path)
        except OSError:
            pass


def _kill(pid: int, signum=signal.SIGTERM) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def _end(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each child's process group, SIGKILL what is left after ``grace`` seconds, reap them all."""
    for pid in pids:
        _kill(pid)
    deadline = time.monotonic() + grace
    for pid in pids:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                _kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)


def _fork(request: dict, fds: list[int], sel) -> int:
    """Fork a child that runs the request's script (argv[0]) as ``__main__`` and exits with its status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        global _in_child
        _in_child = True
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handlers, back to a fresh interpreter's
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for key in list(sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
            else:
                os.close(key.fd)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        random.seed()  # as a fresh interpreter would be
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = _exit_code(exit_.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------- starting one
class Server:
    """A running server (:func:`start`); ``env`` is what to add to the jobs' environment; ``stop()`` ends it."""

    def __init__(self, proc, folder: str, env: dict[str, str]):
        self.proc, self.folder, self.env = proc, folder, env

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(preload: tuple[str, ...] = ()) -> Server | None:
    """Start a server that imports ``preload`` (module names) for the jobs of this process's descendants; None
    where it cannot run (no fork, no pidfd, no Unix sockets: not Linux), when LANDSCOPE_JOBSERVER is "off", or
    when it did not come up (the jobs then run as plain processes)."""
    linux = hasattr(os, "fork") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds") and os.path.isdir("/proc")
    if os.environ.get(ENV) == "off" or not linux:
        return None
    folder = tempfile.mkdtemp(prefix="landscope-jobs-", dir="/tmp" if os.path.isdir("/tmp") else None)
    path = os.path.join(folder, "socket")
    proc = subprocess.Popen([sys.executable, "-m", "landscope.jobserver", path, str(os.getpid()), ",".join(preload)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    server = Server(proc, folder, {ENV: f"{path}:{os.getpid()}"})
    line = proc.stdout.readline()  # "listening", or "" when it failed to start
    proc.stdout.close()
    if line.strip() != "listening":
        server.stop()
        return None
    return server


if __name__ == "__main__":  # run the package's module, whose _in_child the children's hand_over() reads
    from landscope import jobserver

    jobserver.serve(sys.argv[1], int(sys.argv[2]), tuple(m for m in sys.argv[3].split(",") if m), ready=sys.stdout)
