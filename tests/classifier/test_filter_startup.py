"""What keeps postward-filter's start at the interpreter's own (Postfix starts it per message),
checked as behaviour, never as wall time: on every path a message takes it imports nothing
beyond what ``python -I -S -c pass`` loads, the C module _socket and its own module; that
module comes from the .pyc the package compiled, also for the pipe user, who cannot write one;
and the rare paths (the in-process fallback, the console script) still load what they need."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.classifier.daemon_fixture import PYTHON, ClassifierDaemon
from tests.classifier.test_pipe_filter import install_as_packaged

pytestmark = pytest.mark.integration

USER = "bob@receiver.test"
MESSAGE = (b"From: someone@sender.test\nTo: bob@receiver.test\nSubject: agenda\n"
           b"Message-ID: <startup@sender.test>\n\nproject meeting agenda tuesday\n")
# The modules the client may add to the interpreter's own start: nothing from os.py, socket.py
# (selectors, enum, collections) or anything else written in Python.
OWN = {"_socket", "filter_client"}
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.M)


@pytest.fixture
def installed_filter() -> Iterator[Path]:
    """The client installed and compiled as the package does, in a world-readable directory
    of root's (the pipe user can read it, not write to it), like /opt/postward/lib."""
    directory = Path(tempfile.mkdtemp(prefix="pwf-"))
    directory.chmod(0o755)
    try:
        yield install_as_packaged(directory / "lib")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def as_pipe_user(argv: list[str], stdin: bytes = MESSAGE) -> subprocess.CompletedProcess[bytes]:
    """As Postfix's pipe(8) runs it: user= (here mail) and that user's group."""
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, user="mail",
                          group="mail", extra_groups=[])


def imported(stderr: bytes) -> set[str]:
    """The modules ``-X importtime`` reports as imported."""
    return set(IMPORT_LINE.findall(stderr.decode("utf-8", "replace")))


def interpreter_start() -> set[str]:
    done = as_pipe_user([PYTHON, "-I", "-S", "-X", "importtime", "-c", "pass"], b"")
    modules = imported(done.stderr)
    assert "encodings" in modules, done.stderr  # the report was parsed
    return modules


def test_every_message_path_imports_only_socket_and_its_own_module(
        make_classifierd, redis_server, installed_filter) -> None:  # type: ignore[no-untyped-def]
    daemon: ClassifierDaemon = make_classifierd(redis_url=redis_server.url,
                                                delivery_agent="/bin/cat")
    start = interpreter_start()
    base = [PYTHON, "-I", "-S", "-X", "importtime", str(installed_filter),
            f"--socket={daemon.socket_path}"]
    paths = {
        "stdout": ["--stdout", "--mode=toe", "--user", USER],
        "deliver": ["--deliver=innocent,spam", "--user", USER, "-i", "-f",
                    "someone@sender.test", "--", USER],
        "classify": ["--classify", "--user", USER],
        "retrain": ["--user", USER, "--deliver=", "--class=spam", "--source=corpus"],
    }
    for name, args in paths.items():
        done = as_pipe_user([*base, *args])
        assert done.returncode == 0, (name, done.stderr)
        assert imported(done.stderr) - start == OWN, (name, done.stderr)
    delivered = as_pipe_user([*base, *paths["deliver"]]).stdout
    assert delivered.startswith(b"X-DSPAM-Result: ") and delivered.endswith(MESSAGE)
    daemon.stop()  # the deferral costs no more than a delivery
    done = as_pipe_user([*base, *paths["stdout"]])
    assert done.returncode == 75 and b"cannot reach postward-classifierd" in done.stderr
    assert imported(done.stderr) - start == OWN, done.stderr
    # A bad argument in master.cf is deferred on the same modules.
    done = as_pipe_user([*base, "--no-such-option"])
    assert done.returncode == 75 and imported(done.stderr) - start == OWN, done.stderr


def _verbose_run(launcher: Path) -> subprocess.CompletedProcess[bytes]:
    # -v reports, for each module imported from a source file, whether its cached bytecode
    # "matches" and was loaded, or could not be written.
    return as_pipe_user([PYTHON, "-I", "-S", "-v", str(launcher),
                         f"--socket={launcher.parent}/no-daemon.sock", "--user", USER])


def test_the_pipe_user_loads_the_bytecode_the_package_compiled(installed_filter) -> None:  # type: ignore[no-untyped-def]
    module = installed_filter.parent / "filter_client.py"
    pyc = Path(importlib.util.cache_from_source(str(module)))
    assert pyc.exists()  # written by root, as postinst does
    before = pyc.stat()
    done = _verbose_run(installed_filter)
    assert done.returncode == 75, done.stderr
    assert f"# code object from '{pyc}'".encode() in done.stderr, done.stderr
    after = pyc.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_without_the_packages_bytecode_the_pipe_user_compiles_at_every_start() -> None:
    """Why postinst compiles /opt/postward/lib: the pipe user cannot write __pycache__ there,
    so without it the module is compiled in memory at every start (correct, only slower)."""
    directory = Path(tempfile.mkdtemp(prefix="pwf-"))
    directory.chmod(0o755)
    try:
        launcher = install_as_packaged(directory / "lib", compile_=False)
        pyc = Path(importlib.util.cache_from_source(str(launcher.parent / "filter_client.py")))
        for _ in range(2):
            done = _verbose_run(launcher)
            assert done.returncode == 75, done.stderr
            assert f"# code object from '{pyc}'".encode() not in done.stderr, done.stderr
            assert b"could not create" in done.stderr, done.stderr
            assert not pyc.exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_launcher_through_a_symlink_or_without_its_module_never_bounces(
        installed_filter) -> None:  # type: ignore[no-untyped-def]
    """A symlink to the launcher (say from /usr/local/bin) still finds filter_client.py next to
    the file it points to; a launcher whose module is missing exits 75, not a traceback's 1
    (which pipe(8) bounces)."""
    link = installed_filter.parent.parent / "bin" / "postward-filter"
    link.parent.mkdir(mode=0o755)
    link.symlink_to(installed_filter)
    done = as_pipe_user([PYTHON, "-I", "-S", str(link), "--socket=/nonexistent/d.sock",
                         "--user", USER])
    assert done.returncode == 75 and b"cannot reach postward-classifierd" in done.stderr
    (installed_filter.parent / "filter_client.py").unlink()
    done = as_pipe_user([PYTHON, "-I", "-S", str(installed_filter), "--user", USER])
    assert done.returncode == 75, done.stderr
    assert b"cannot load filter_client.py" in done.stderr, done.stderr


def test_the_inprocess_fallback_still_loads_the_package(make_classifierd, redis_server,  # type: ignore[no-untyped-def]
                                                        installed_filter) -> None:
    """The rare path imports the whole package when it runs: through the launcher, the
    venv's interpreter (as /opt/postward/bin/python) adds its site-packages after -S."""
    daemon: ClassifierDaemon = make_classifierd(redis_url=redis_server.url,
                                                delivery_agent="/bin/cat")
    daemon.stop()
    venv_python = str(Path(sys.executable).absolute())  # the checkout's venv: run as root
    done = subprocess.run([venv_python, "-I", "-S", str(installed_filter),
                           f"--socket={daemon.socket_path}", "--fallback=inprocess",
                           f"--config={daemon.config}", "--stdout", "--user", USER],
                          input=MESSAGE, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"classifying in-process" in done.stderr
    assert done.stdout.startswith(b"X-DSPAM-Result: ") and done.stdout.endswith(MESSAGE)


def test_the_console_script_runs_the_same_client() -> None:
    """setup.cfg's postward-filter entry point (not what master.cf should run: see
    docs/classifier.md) keeps dspam's arguments and the exit codes."""
    script = Path(sys.executable).absolute().parent / "postward-filter"
    if not script.exists():
        pytest.skip("the package is not installed with its console scripts")
    done = subprocess.run([str(script), "--socket=/nonexistent/classifierd.sock", "--user",
                           USER], input=MESSAGE, capture_output=True, timeout=60)
    assert done.returncode == 75 and b"cannot reach postward-classifierd" in done.stderr
