"""Per-request seeds: a pure function of (step seed, seed key, phase), distinct across keys and phases."""

from rollout.seeds import SEED_BITS, cpu_scheduler_args, prompt_digest, request_seed, sampling_seed


def test_request_seeds_depend_on_step_key_and_phase_only():
    seed = request_seed(sampling_seed(3, 7), (0, 4), "sample")
    assert seed == request_seed(sampling_seed(3, 7), (0, 4), "sample")
    others = {request_seed(sampling_seed(3, 8), (0, 4), "sample"), request_seed(sampling_seed(3, 7), (4, 0), "sample"),
              request_seed(sampling_seed(3, 7), (0, 4), "answer"), request_seed(sampling_seed(3, 7), (0, 4, 0), "sample")}
    assert seed not in others and len(others) == 4
    assert 0 <= seed < 2**SEED_BITS  # vLLM adds the sample index; torch takes seeds below 2**64


def test_prompt_digest_and_the_cpu_scheduler_that_never_splits_a_prefill():
    assert prompt_digest([1, 2, 3]) == prompt_digest([1, 2, 3]) != prompt_digest([1, 2, 4])
    assert cpu_scheduler_args(1024) == {"enable_chunked_prefill": False, "max_num_batched_tokens": 4096}
    assert cpu_scheduler_args(32768)["max_num_batched_tokens"] == 32768  # the longest prompt fits one step
