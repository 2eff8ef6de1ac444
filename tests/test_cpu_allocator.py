"""pvt_d2.cpu_allocator: the glibc malloc tuning that train_net.py, predict and the benchmark apply."""
import os
import platform
import subprocess
import sys

import pytest

_PROBE = "import pvt_d2.cpu_allocator as a; print(a.keep_freed_memory(), a.keep_freed_memory())"


def _untuned_env(**extra):
    """This environment without the tuning's variables (PVT_D2_KEEP_FREED_MEMORY, GLIBC_TUNABLES), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PVT_D2_KEEP_FREED_MEMORY", "GLIBC_TUNABLES")}
    return {**env, **extra}


def _run_python(code, env_value=None):
    """stdout words of ``code`` run in a fresh interpreter (the tuning is process-wide), with
    PVT_D2_KEEP_FREED_MEMORY unset or set to ``env_value``."""
    env = _untuned_env() if env_value is None else _untuned_env(PVT_D2_KEEP_FREED_MEMORY=env_value)
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


_GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc only")


@_GLIBC
def test_tuned_env_adds_the_tcache_tunable_after_the_users_own():
    from pvt_d2.cpu_allocator import TCACHE_TUNABLE, tuned_malloc_env

    assert tuned_malloc_env({"HOME": "/h"}) == {"HOME": "/h", "GLIBC_TUNABLES": TCACHE_TUNABLE}
    own = "glibc.malloc.arena_max=2"
    assert tuned_malloc_env({"GLIBC_TUNABLES": own})["GLIBC_TUNABLES"] == f"{own}:{TCACHE_TUNABLE}"


@_GLIBC
@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"},  # the user's choice is kept
                                 {"PVT_D2_KEEP_FREED_MEMORY": "0"}])
def test_tuned_env_is_none_when_set_already_or_switched_off(env):
    from pvt_d2.cpu_allocator import tuned_malloc_env

    assert tuned_malloc_env(env) is None


_RESTART = """
import os, sys
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES", "none"), flush=True)
import pvt_d2.cpu_allocator as a
if len(sys.argv) > 1:
    sys.settrace(lambda *args: None)  # as under a debugger
a.restart_with_tuned_malloc()
print("work", os.getpid(), os.environ.get("GLIBC_TUNABLES", "none"))
"""


@_GLIBC
def test_restart_runs_the_command_again_in_place_once_with_the_tunable():
    out = subprocess.run([sys.executable, "-c", _RESTART], env=_untuned_env(), capture_output=True, text=True,
                         check=True).stdout.split("\n")
    pid = out[0].split()[1]
    assert out[:3] == [f"start {pid} none", f"start {pid} glibc.malloc.tcache_count=0",
                       f"work {pid} glibc.malloc.tcache_count=0"]


@_GLIBC
def test_restart_is_skipped_under_a_debugger_or_when_switched_off():
    traced = subprocess.run([sys.executable, "-c", _RESTART, "traced"], env=_untuned_env(), capture_output=True,
                            text=True, check=True).stdout.split()
    assert traced[0::3] == ["start", "work"] and traced[2::3] == ["none", "none"]
    off = subprocess.run([sys.executable, "-c", _RESTART], env=_untuned_env(PVT_D2_KEEP_FREED_MEMORY="0"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert off[0::3] == ["start", "work"] and off[2::3] == ["none", "none"]


@_GLIBC
def test_new_processes_get_the_tunable_and_this_environment_is_restored(monkeypatch):
    from pvt_d2.cpu_allocator import tuned_malloc_for_new_processes

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("PVT_D2_KEEP_FREED_MEMORY", raising=False)
    probe = [sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES', 'none'))"]
    with tuned_malloc_for_new_processes():
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert inside == "glibc.malloc.tcache_count=0"
    assert "GLIBC_TUNABLES" not in os.environ
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    with tuned_malloc_for_new_processes():
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert inside == "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
