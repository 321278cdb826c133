"""Make PyPI's torchvision importable beside the CPU build of torch (CPU environments only).

torchvision's CUDA-linked C++ ops do not load beside torch's CPU build, and two
``torch.library.register_fake`` calls in ``torchvision/_meta_registrations.py`` are not guarded
by ``torchvision.extension._has_ops()`` like the others, so ``import torchvision`` fails with
"operator torchvision::nms does not exist". transformers' video processors (Qwen2-VL, 2.5-VL,
Omni) need torchvision importable; nothing here uses its C++ ops (nms, roi_align).

This guards those two calls. It is idempotent, touches nothing if torchvision imports already,
and is run by the Makefile for the CPU test environment only: GPU installs get a torchvision
that matches their torch and need no patch.
"""

from __future__ import annotations

import importlib.util
import py_compile
import subprocess
import sys
from pathlib import Path

MARK = "# streamagent: guarded register_fake"
GUARD = (
    f"{MARK}\n"
    "def _register_fake(name):\n"
    "    if torchvision.extension._has_ops():\n"
    "        return torch.library.register_fake(name)\n"
    "    return lambda fn: fn\n\n\n"
)


def imports() -> bool:
    return subprocess.run([sys.executable, "-c", "import torchvision"],
                          capture_output=True).returncode == 0


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed: nothing to patch")
        return 0
    if imports():
        print("torchvision imports: nothing to patch")
        return 0
    path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
    text = path.read_text()
    if MARK not in text:
        anchor = "@functools.lru_cache(None)\ndef get_meta_lib():"
        if anchor not in text:
            print(f"unexpected {path}: not patched", file=sys.stderr)
            return 1
        text = text.replace(anchor, GUARD + anchor, 1)
        text = text.replace('@torch.library.register_fake("torchvision::',
                            '@_register_fake("torchvision::')
        path.write_text(text)
        py_compile.compile(str(path), doraise=True)  # its bytecode, as compileall made the rest
    if not imports():
        print(f"patched {path}, but torchvision still does not import", file=sys.stderr)
        return 1
    print(f"patched {path}: torchvision imports (its C++ ops stay unavailable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
