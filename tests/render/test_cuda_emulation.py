"""The CPU emulation of CUDA (fitting/render/native/cuda/cuda_emulation.h) that lets the CUDA
drivers run without a GPU: its warp shuffles, votes and atomics against answers computed
here, and its report of a kernel that breaks the all-lanes rule of warp collectives."""
import pytest
import torch

from fitting.render.native import _missing, cuda

pytestmark = pytest.mark.skipif(bool(_missing()), reason="no C++ compiler or ninja to build the emulation")


@pytest.fixture(scope="module")
def emulator():
    with pytest.MonkeyPatch.context() as m:
        m.setenv("FLAME_FIT_NATIVE", "1")
        m.setenv("FLAME_FIT_NATIVE_CUDA", "emulate")
        return cuda.build()


@pytest.mark.parametrize("n", [1, 31, 32, 1000, 2 * 256 + 5])
def test_shuffles_votes_and_atomics(emulator, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g)
    p = (torch.rand(n, generator=g) > 0.02).int()
    p[:32] = 1                                   # the first warp votes yes, another one no
    p[min(n - 1, 40)] = 0 if n > 40 else 1
    sums, reversed_, all_, count, max_ = emulator.emulator_check(x, p, False)

    warps = -(-n // 256) * 8                     # whole blocks of 256 threads
    padded = torch.zeros(warps * 32)
    padded[:n] = x
    torch.testing.assert_close(sums, padded.view(warps, 32).double().sum(1).float(), atol=1e-5, rtol=1e-5)
    flipped = torch.full((warps * 32,), -1.0)
    flipped[:n] = x
    assert torch.equal(reversed_, flipped.view(warps, 32).flip(1).flatten()[:n])
    votes = torch.ones(warps * 32, dtype=torch.int32)
    votes[:n] = p
    assert torch.equal(all_, votes.view(warps, 32).all(1).int())
    assert bool(all_[0]) and (n <= 40 or not bool(all_[1]))
    assert count.item() == n and max_.item() == n - 1


def test_a_collective_that_some_lanes_skip_fails_the_launch(emulator):
    x, p = torch.zeros(40), torch.ones(40, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="reached by 8 of 32 lanes"):
        emulator.emulator_check(x, p, True)       # lanes 40-63 of the second warp return first


def test_selected_by_the_flag(monkeypatch):
    monkeypatch.setenv("FLAME_FIT_NATIVE_CUDA", "emulate")
    assert cuda.enabled() and cuda.emulating()
    assert cuda.runs_on(torch.device("cpu")) and not cuda.runs_on(torch.device("cuda"))
    assert "emulated" in str(cuda.build_directory())
    monkeypatch.setenv("FLAME_FIT_NATIVE_CUDA", "1")
    assert not cuda.emulating() and not cuda.runs_on(torch.device("cpu")) and cuda.runs_on(torch.device("cuda"))
    monkeypatch.setenv("FLAME_FIT_NATIVE", "0")
    assert not cuda.enabled() and not cuda.emulating()
