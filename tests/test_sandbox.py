"""The HumanEval sandbox: good code passes; file escapes, sockets, processes, loops and memory hogs fail."""
import os
import uuid

import pytest

from hf_nanochat.evaluate.sandbox import run_python


def test_correct_program_passes_and_can_use_its_temp_dir():
    code = "import math\nopen('scratch.txt','w').write('ok')\nassert open('scratch.txt').read() == 'ok'\nprint(math.factorial(5))"
    result = run_python(code)
    assert result.success, result.stderr
    assert result.stdout.strip() == "120"


def test_failing_assertion_is_a_failure():
    result = run_python("assert 1 + 1 == 3")
    assert not result.success and "AssertionError" in result.stderr


@pytest.mark.parametrize(
    "code_template",
    [
        "open({target!r}, 'w').write('escaped')",
        "import os\nfd = os.open({target!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'escaped')",
        "import pathlib\npathlib.Path({target!r}).write_text('escaped')",
        "open('../' + {name!r}, 'w').write('escaped')",  # relative path out of the temp dir
        "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('escaped')",
    ],
)
def test_sample_cannot_write_outside_its_temp_dir(tmp_path, code_template):
    name = f"escape_{uuid.uuid4().hex}"
    target = str(tmp_path / name)
    import tempfile

    parent_target = os.path.join(tempfile.gettempdir(), name)  # where "../name" would land
    result = run_python(code_template.format(target=target, name=name))
    assert not result.success
    assert "sandbox" in result.stderr or "PermissionError" in result.stderr
    assert not os.path.exists(target) and not os.path.exists(parent_target)


def test_sample_cannot_delete_or_read_files_outside(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    assert not run_python(f"import os\nos.remove({str(victim)!r})").success
    assert victim.read_text() == "precious"
    leak = run_python(f"print(open({str(victim)!r}).read())")
    assert not leak.success and "precious" not in leak.stdout
    assert not run_python("print(open('/etc/passwd').read())").success


@pytest.mark.parametrize(
    "code",
    [
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import _socket\n_socket.socket()",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')",
    ],
)
def test_sample_cannot_open_sockets(code):
    result = run_python(code)
    assert not result.success
    assert "sandbox: socket" in result.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.system('touch /tmp/pwned_by_sandbox')",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.fork()",
        "import ctypes\nctypes.CDLL(None).system(b'true')",
    ],
)
def test_sample_cannot_start_processes_or_use_ctypes(code):
    result = run_python(code)
    assert not result.success and "sandbox:" in result.stderr
    assert not os.path.exists("/tmp/pwned_by_sandbox")


def test_time_and_memory_limits():
    slow = run_python("while True: pass", timeout=1.0)
    assert slow.timed_out and not slow.success
    hog = run_python("x = bytearray(2 * 1024**3)", memory_mb=256)
    assert not hog.success and "MemoryError" in hog.stderr
