"""On CUDA, the step's host-device copies are queued behind the work in flight and never wait for it: each call
returns while a long kernel queued before it still runs (torch.tensor(list, device="cuda") does wait: the control).
Values stay right when the rings come round, grow, and when downloads are left unread."""
from __future__ import annotations

import pytest
import torch

from swiftops.engines.pt.host_staging import HostStaging
from swiftops.engines.pt.sampler import sample_on_device
from swiftops.engines.pt.sequence import SamplingParams, Sequence

pytestmark = pytest.mark.gpu
SPIN_CYCLES = 2_000_000_000  # ~1 s of a GPU's clock: far longer than any host call below


def _busy() -> torch.cuda.Event:
    """Queue a kernel that spins for about a second; the returned event completes when it does."""
    torch.cuda.synchronize()
    torch.cuda._sleep(SPIN_CYCLES)
    done = torch.cuda.Event()
    done.record()
    return done


def test_the_control_a_plain_device_tensor_waits_for_the_gpu():
    done = _busy()
    torch.tensor([1, 2, 3], device="cuda")
    assert done.query(), "torch.tensor(list, device='cuda') returned before the queued kernel finished"


def test_uploads_downloads_and_sampling_return_while_the_gpu_is_busy():
    device = torch.device("cuda")
    staging = HostStaging(device)
    inputs = torch.zeros(4, 64, dtype=torch.long, device=device)
    logits = torch.randn(8, 1000, device=device)
    params = SamplingParams(max_tokens=4, temperature=0.7, top_p=0.9, top_k=50, min_p=0.01)
    seqs = [Sequence(prompt_ids=[1, 2, 3], params=params, sink=lambda out: None) for _ in range(8)]

    def calls():
        up = staging.to_device([[1, 2], [3, 4]])
        staging.copy_into(inputs[1:, :3], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
        return staging.to_host(up), sample_on_device(logits, seqs)

    calls()[1].collect()  # once unhurried: the first launches load kernels and the rings allocate their buffers
    done = _busy()
    down, pending = calls()
    assert not done.query(), "a staging call or the sampler waited for the GPU"
    assert down.result() == [[[1, 2], [3, 4]]]
    assert inputs[1:, :3].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(0 <= t < 1000 for t in pending.collect().token_ids)


def test_values_survive_the_rings_coming_round_growing_and_unread_downloads():
    device = torch.device("cuda")
    staging = HostStaging(device)
    uploads = [staging.to_device(list(range(i, i + 5))) for i in range(100)]  # the ring comes round three times
    big = staging.to_device(list(range(40_000)))  # 320 KB: past a buffer's size, it grows
    assert staging.grown >= 1
    assert [u.tolist() for u in uploads] == [list(range(i, i + 5)) for i in range(100)]
    assert big.tolist() == list(range(40_000))
    values = [torch.full((3,), i, device=device) for i in range(20)]
    held = [staging.to_host(v) for v in values]  # 20 unread downloads: more than the ring holds
    assert [h.result() for h in held] == [[[i] * 3] for i in range(20)]
    for i in range(20):  # read at once, the ring's buffers go round again
        assert staging.to_host(values[i]).result() == [[i] * 3]
