"""Protocol conformance with jupyter_kernel_test, for the audited kernel and the reference.

Every message is validated against the Jupyter messaging spec (v5) by the library; the
same samples run against ipykernel directly so a failure can be told apart.
"""

from __future__ import annotations

import jupyter_kernel_test as jkt
import pytest

from helpers import AUDITED, DIRECT

PNG_CODE = (
    "import struct, zlib\n"
    "from IPython.display import Image, display\n"
    "def chunk(kind, data):\n"
    "    body = kind + data\n"
    "    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))\n"
    "raw = b''.join(b'\\x00' + b''.join(bytes([x * 16, y * 16, 128]) for x in range(16))\n"
    "              for y in range(16))\n"
    "png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 16, 16, 8, 2, 0, 0, 0))\n"
    "       + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))\n"
    "display(Image(data=png, format='png'))\n"
)


class PythonSamples:
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('to stderr', file=sys.stderr)"

    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>hi</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math(r'\\frac{1}{2}'))",
         "mime": "text/latex"},
        {"code": "from IPython.display import Markdown, display; display(Markdown('# Title'))",
         "mime": "text/markdown"},
        {"code": PNG_CODE, "mime": "image/png"},
    ]
    code_execute_result = [
        {"code": "1 + 2 + 3", "result": "6"},
        {"code": "[n * n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "'a' * 3", "result": "'aaa'"},
    ]
    code_generate_error = "raise ValueError('this error is on purpose')"

    completion_samples = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import sys; sys.getrecursionl", "matches": {"getrecursionlimit"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x * 2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x += 1", "for i in range(3):"]
    invalid_code_samples = ["import = 7q", "x = )"]

    code_inspect_sample = "zip"
    code_history_pattern = "1 + 2*"
    # Not "range": ipykernel numbers the current session 0 in its replies, which
    # jupyter_kernel_test 0.7 does not expect (fails on ipykernel directly too).
    supported_history_operations = ("tail", "search")
    code_page_something = "print?"
    code_clear_output = "from IPython.display import clear_output; clear_output()"
    # jupyter_kernel_test 0.7 has no input() test: see test_stdin.py.


@pytest.mark.timeout(300)
class TestAuditedKernel(PythonSamples, jkt.KernelTests):
    kernel_name = AUDITED


@pytest.mark.timeout(300)
class TestDirectKernel(PythonSamples, jkt.KernelTests):
    kernel_name = DIRECT


@pytest.mark.timeout(60)
class TestAuditedIopubWelcome(jkt.IopubWelcomeTests):
    kernel_name = AUDITED
    support_iopub_welcome = True


@pytest.mark.timeout(60)
class TestDirectIopubWelcome(jkt.IopubWelcomeTests):
    kernel_name = DIRECT
    support_iopub_welcome = True
