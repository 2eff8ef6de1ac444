"""pvt_d2.cpu_allocator: the glibc malloc tuning that train_net.py, predict and the benchmark apply."""
import os
import platform
import subprocess
import sys

import pytest

_PROBE = "import pvt_d2.cpu_allocator as a; print(a.keep_freed_memory(), a.keep_freed_memory())"


def _run_python(code, env_value=None):
    """stdout words of ``code`` run in a fresh interpreter (the tuning is process-wide), with
    PVT_D2_KEEP_FREED_MEMORY unset or set to ``env_value``."""
    env = dict(os.environ)
    env.pop("PVT_D2_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["PVT_D2_KEEP_FREED_MEMORY"] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def _probe(env_value):
    return _run_python(_PROBE, env_value)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc only")
def test_applies_on_glibc_and_is_idempotent():
    assert _probe(None) == ["True", "True"]


@pytest.mark.parametrize("value", ["0", "off"])
def test_environment_variable_turns_it_off(value):
    assert _probe(value) == ["False", "False"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc only")
def test_freed_blocks_below_the_threshold_are_reused_without_new_page_faults():
    # A "layer" allocates four 16 MiB activations and frees them together, 10 times. glibc's default gives the
    # freed heap top back to the OS each time, so every block comes back as fresh pages (measured: 163520 faults,
    # 40 blocks of 4096 pages, in 5 of 5 runs); with the tuning the blocks are reused (0-4096 faults: the host's
    # memory reclaim occasionally takes back one block).
    code = """
import resource, torch
import pvt_d2.cpu_allocator as a
assert a.keep_freed_memory()
n = 4 << 20  # float32 elements: 16 MiB
def layer():
    blocks = [torch.ones(n) for _ in range(4)]
    del blocks
layer(); layer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    layer()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = int(_run_python(code)[-1])
    assert faults < 10 * (16 << 20) // 4096  # fewer than 10 of the 40 blocks as fresh pages
