"""The prefill bound beside decoding sequences (swiftops.engines.pt.step_budget): its arithmetic, the scheduler
keeping to it, the setting (off by default). The start-up timing runs on CUDA graphs (test_pt_engine_gpu.py)."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.lmdeploy import args as lmdeploy_args
from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.scheduler import Scheduler
from swiftops.engines.pt.sequence import SamplingParams, Sequence
from swiftops.engines.pt.step_budget import MIN_PREFILL_TOKENS, SERVING_ITL_RATIO, PrefillBound
from swiftops.engines.vllm import args as vllm_args
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, ModelSettings


def test_the_bound_grows_with_the_decode_rows_and_lands_on_the_nearest_graph_bucket():
    bound = PrefillBound(ratio=2.0, fixed_tokens=1000.0, bucket=256)
    # (2 - 1) * (1000 + 128) = 1128 prompt tokens; 128 + 1128 = 1256 is nearest the 1,280-token bucket
    assert bound.prefill_tokens(128) == 1280 - 128
    assert bound.prefill_tokens(256) == 1536 - 256  # 1256 + 256 = 1512 -> 1536
    assert PrefillBound(2.0, 1000.0).prefill_tokens(128) == 1128  # no graphs: no rounding
    assert PrefillBound(2.0, 1100.0, bucket=256).prefill_tokens(128) == 1280 - 128  # 1356 rounds down
    # the smallest bucket costs the same whatever fills it: a step may always fill it
    assert PrefillBound(1.5, 100.0, bucket=256).prefill_tokens(8) == 256 - 8  # 54 wanted
    assert PrefillBound(1.5, 100.0).prefill_tokens(8) == MIN_PREFILL_TOKENS  # 54 -> the floor
    assert PrefillBound(1.5, 10.0, bucket=256).prefill_tokens(250) == 130  # the 256 bucket would leave 6: unrounded
    sizes = [PrefillBound(1.75, 800.0, 256).prefill_tokens(d) + d for d in (1, 32, 64, 128, 256)]
    assert sizes == sorted(sizes) and all(size % 256 == 0 for size in sizes)


def _seq(n_prompt: int, start: int = 1) -> Sequence:
    ids = list(range(start, start + n_prompt))
    return Sequence(prompt_ids=ids, params=SamplingParams(max_tokens=64), sink=print)


def _decoding(sched: Scheduler, count: int) -> list[Sequence]:
    seqs = [_seq(4, 10 * i + 1) for i in range(count)]
    for seq in seqs:
        sched.add(seq)
    plan = sched.schedule()
    for seq, chunk in plan.prefill:
        seq.num_computed += chunk
        seq.output_ids.append(7)
    return seqs


def test_the_scheduler_prefills_within_the_bound_only_beside_decode_rows():
    blocks = BlockManager(num_blocks=200, block_size=16, max_seqs=16, max_model_len=4096, device=torch.device("cpu"))
    sched = Scheduler(blocks, max_num_seqs=16, max_num_batched_tokens=2048)
    sched.prefill_bound = PrefillBound(ratio=1.5, fixed_tokens=200.0)  # (0.5 * (200 + d)) tokens
    decoding = _decoding(sched, 4)
    assert all(s.num_computed == 4 for s in decoding)  # the first step had no decode rows: the whole budget
    long_prompt = _seq(1500, 1000)
    sched.add(long_prompt)
    plan = sched.schedule()
    assert plan.decode == decoding
    assert plan.prefill == [(long_prompt, 102)]  # int(0.5 * 204)
    long_prompt.num_computed += 102
    for seq in plan.decode:
        seq.num_computed += 1
        seq.output_ids.append(7)
    sched.prefill_bound = None  # off: the token budget alone
    plan = sched.schedule()
    assert plan.prefill == [(long_prompt, 1500 - 102)]


def test_the_ratio_is_zero_or_above_one_and_refused_where_the_backend_schedules_itself():
    with pytest.raises(ValidationError, match="0 turns the bound off"):
        EngineSettings(max_itl_ratio=0.8)
    assert EngineSettings(max_itl_ratio=0).max_itl_ratio == 0
    model = ModelSettings(model="org/m")
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        vllm_args.engine_args_kwargs(model, EngineSettings(max_itl_ratio=2.0))
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        lmdeploy_args.backend_config_kwargs(model, EngineSettings(max_itl_ratio=2.0), "pytorch")
    assert vllm_args.engine_args_kwargs(model, EngineSettings(max_itl_ratio=0))["model"] == "org/m"  # 0: off


def test_the_bound_is_on_when_serving_off_for_the_python_api_and_settable(tiny_model_dir):
    model = ModelSettings(model=str(tiny_model_dir), torch_dtype="float32")
    served = PtEngine.from_settings(model, EngineSettings(kv_cache_memory_gb=0.01), serving=True)
    library = PtEngine.from_settings(model, EngineSettings(kv_cache_memory_gb=0.01))
    chosen = PtEngine.from_settings(model, EngineSettings(kv_cache_memory_gb=0.01, max_itl_ratio=3), serving=True)
    off = PtEngine.from_settings(model, EngineSettings(kv_cache_memory_gb=0.01, max_itl_ratio=0), serving=True)
    try:
        assert served.max_itl_ratio == SERVING_ITL_RATIO == 1.75 and library.max_itl_ratio == 0
        assert chosen.max_itl_ratio == 3 and off.max_itl_ratio == 0
        # On CPU no step graphs are timed: the token budget alone, and the engine still answers.
        assert chosen._core is not None and chosen._core.scheduler.prefill_bound is None
        answer = chosen.infer([InferRequest(prompt=[5, 6, 7])], RequestConfig(max_tokens=3, temperature=0))[0]
        assert answer.usage.completion_tokens == 3
    finally:
        for engine in (served, library, chosen, off):
            engine.close()


def test_a_bounded_engine_chunks_prefill_beside_decodes_and_answers_the_same(tiny_model_dir):
    # a 128-token step budget: long prompts are chunked, so later chunks and admissions run beside decode rows
    # (no prefix caching: the second run prefills every prompt again)
    engine = PtEngine(str(tiny_model_dir), torch_dtype="float32", max_batch_size=4, max_num_batched_tokens=128,
                      kv_cache_memory_gb=0.01, enable_prefix_caching=False)
    requests = [InferRequest(prompt=list(range(5 + i, 5 + i + n))) for i, n in enumerate((3, 200, 7, 150, 9, 120))]
    config = RequestConfig(max_tokens=12, temperature=0, ignore_eos=True)
    runs: dict[str, list[tuple[int, int]]] = {"free": [], "bounded": []}
    try:
        assert engine._core is not None
        scheduler = engine._core.scheduler
        plans = runs["free"]

        def recorded(planner):
            def recording(*args):
                plan = planner(*args)
                plans.append((len(plan.decode), sum(chunk for _, chunk in plan.prefill)))
                return plan
            return recording

        # plans come from both: `schedule_beside` plans the steps launched while the previous one runs
        scheduler.schedule = recorded(scheduler.schedule)
        scheduler.schedule_beside = recorded(scheduler.schedule_beside)
        free = [r.choices[0].message.content for r in engine.infer(requests, config, use_tqdm=False)]
        scheduler.prefill_bound = PrefillBound(ratio=1.5, fixed_tokens=60.0)  # 30 + d / 2 tokens, the floor 64
        plans = runs["bounded"]
        bounded = [r.choices[0].message.content for r in engine.infer(requests, config, use_tqdm=False)]
    finally:
        engine.close()
    assert bounded == free
    beside = {name: [tokens for decode, tokens in plans if decode and tokens] for name, plans in runs.items()}
    assert max(beside["free"]) > MIN_PREFILL_TOKENS  # the token budget alone: larger chunks beside decode rows
    assert beside["bounded"] and max(beside["bounded"]) <= MIN_PREFILL_TOKENS  # every one kept to the bound


def _calibrated(ratio=1.75):
    """The fit of the 0.5B shape on an H100 (1.35 ms + 1.56 us a token), its graphs' buckets."""
    return PrefillBound(ratio, 1.35 / 0.00156, 256, fixed_ms=1.35, per_token_ms=0.00156,
                        mixed_buckets=(256, 512, 768, 1024, 1280), decode_buckets=(64, 96, 112, 128, 160))


def _steps(bound, kind, size, *times):
    for ms in times:
        bound.observe(kind, size, ms)


def test_measured_steps_replace_the_fit_once_a_bucket_has_enough_of_them():
    bound = _calibrated()
    fitted = bound.prefill_tokens(100)
    assert fitted == 768 - 100  # the fit: (0.75 * (865 + 100)) = 723 prompt tokens, nearest bucket 768
    _steps(bound, "decode", 112, 9.0, 1.78, 1.78, 1.78)  # the first step of a bucket (cold) is not counted
    assert bound.measured.get(("decode", 112)) == pytest.approx(1.78)
    _steps(bound, "mixed", 768, 30.0, 4.5, 4.7)
    assert bound.prefill_tokens(100) == fitted  # not yet MEASURED_AFTER steps after the first
    _steps(bound, "mixed", 768, 4.6)
    assert bound.measured.get(("mixed", 768)) == pytest.approx(4.6)
    # 1.75 * 1.78 = 3.115 ms; the 768 bucket takes 4.6. Below it nothing is measured: the search climbs from the
    # 256 bucket, predicted at the 768 bucket's scale (4.6 / 2.548 = 1.81): 1.75 * 1.81 = 3.16, within 1.25x
    assert bound.prefill_tokens(100) == 256 - 100
    _steps(bound, "mixed", 256, 2.68, 2.68, 2.68, 2.68)
    # the 256 bucket measured within the limit; the 512 bucket, at the 256's scale (1.53): 3.29 ms, tried
    assert bound.prefill_tokens(100) == 512 - 100
    _steps(bound, "mixed", 512, 2.6, 2.6, 2.6, 2.6)
    assert bound.prefill_tokens(100) == 512 - 100  # measured within the limit, and the 768 bucket over it
    _steps(bound, "mixed", 512, *[3.9] * 8)  # the 512 bucket slows down (longer contexts): its running mean follows
    assert bound.measured.get(("mixed", 512)) > 3.115
    assert bound.prefill_tokens(100) == 256 - 100  # the 256 bucket is predicted at the 512's scale: 1.75 * 1.8


def test_a_decode_bucket_not_measured_yet_is_predicted_at_the_measured_ones_scale():
    bound = _calibrated()
    _steps(bound, "mixed", 768, 0, 4.6, 4.6, 4.6)  # real steps 1.8x the fit
    assert bound.prefill_tokens(100) == 768 - 100  # no decode step measured yet: the fit alone, as before
    _steps(bound, "decode", 128, 0, 1.9, 1.9, 1.9)  # decode steps 1.28x the fit (1.55 ms at 128 rows)
    # 100 rows run as the 112 bucket, not measured: its limit is 1.75 * 1.525 * 1.23 = 3.27 ms (the fit alone
    # would say 2.67). The 256 bucket, at the 768's scale (1.81): 3.16 ms, tried.
    assert bound.prefill_tokens(100) == 256 - 100
    _steps(bound, "mixed", 256, 0, 2.7, 2.7, 2.7)
    assert bound.prefill_tokens(100) == 512 - 100  # the 512 bucket at the 256's scale (1.54): 3.31 ms, tried


def test_a_bucket_over_the_limit_is_tried_again_once_its_time_is_stale():
    from swiftops.engines.pt.step_budget import STALE_AFTER

    bound = _calibrated()
    _steps(bound, "decode", 112, 0, 1.78, 1.78, 1.78)
    _steps(bound, "mixed", 512, 0, 5.0, 2.6, 2.6)  # one disturbed step puts its mean over 3.115 ms
    _steps(bound, "mixed", 256, 0, 1.9, 1.9, 1.9)
    assert bound.prefill_tokens(100) == 256 - 100
    for _ in range(STALE_AFTER):  # the steps that ran meanwhile: decode steps and the 256 bucket
        bound.observe("decode", 112, 1.78)
    # stale: the 512 bucket is predicted at the 256's scale (1.9 / 1.75 = 1.09): 2.35 ms, tried again
    assert bound.prefill_tokens(100) == 512 - 100
    _steps(bound, "mixed", 512, 2.6, 2.6, 2.6, 2.6, 2.6)
    assert bound.measured.get(("mixed", 512)) < 3.115
    # within the limit now; the 768 and 1,024 buckets are not measured (predicted at the 512's scale, 1.3: 3.31
    # and 3.83 ms, both within 1.25x): the search climbs one of them, not two
    assert bound.prefill_tokens(100) == 768 - 100


def test_a_slow_bucket_ends_the_search_and_the_floor_keeps_prompts_moving():
    bound = _calibrated()
    _steps(bound, "decode", 128, 0, 1.0, 1.0, 1.0)
    _steps(bound, "mixed", 256, 0, 3.0, 3.0, 3.0)  # over 1.75 ms
    _steps(bound, "mixed", 1024, 0, 1.5, 1.5, 1.5)  # measured fast after a slow bucket: never reached
    assert bound.prefill_tokens(128) == MIN_PREFILL_TOKENS


def test_bounds_without_a_fit_in_milliseconds_measure_nothing():
    plain = PrefillBound(1.75, 800.0, 256)  # no fit in milliseconds: the start-up line alone
    _steps(plain, "mixed", 768, *[9.0] * 5)
    _steps(plain, "decode", 128, *[1.0] * 5)
    assert plain.measured.count == {}
    assert plain.prefill_tokens(100) == PrefillBound(1.75, 800.0, 256).prefill_tokens(100)
