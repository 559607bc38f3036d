"""The benchmark scripts' own helpers: what they time and how they pool repeats."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import train_step  # noqa: E402


def test_pytorch_repeats_are_pooled_in_order_with_their_median():
    def run(speeds):
        return {"torch": "x", "threads": 2, "clock": "wall",
                "results": {k: {"images_per_second": v, "images_per_second_each_repeat": [v]} for k, v in speeds.items()}}

    merged = train_step.merge_torch_repeats([run({"bfloat16/nchw": 3.0, "bfloat16/channels_last": 9.0}),
                                             run({"bfloat16/nchw": 1.0, "bfloat16/channels_last": 7.0}),
                                             run({"bfloat16/nchw": 2.0, "bfloat16/channels_last": 8.0})])
    assert merged["threads"] == 2 and "interleaved" in merged
    assert merged["results"]["bfloat16/nchw"] == {"images_per_second": 2.0, "images_per_second_each_repeat": [3.0, 1.0, 2.0]}
    assert merged["results"]["bfloat16/channels_last"]["images_per_second"] == 8.0


def test_step_clock_times_each_step_inside_the_fit_call_on_an_untuned_stream():
    _, dataset = train_step.synthetic_batches(4, (8, 8, 3), 10)
    assert dataset.options().autotune.enabled is False  # no autotuning thread to wait for at the fit's end
    trainer = train_step.make_trainer("pgd-at", "small_cnn", (8, 8, 3), 10, 4, 1, False)
    ticks = iter(range(100))
    clock = train_step.StepClock(clock=lambda: next(ticks))
    trainer.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    assert clock.seconds == [1, 1, 1]  # one begin and one end reading per step, nothing between them


def test_perf_alone_counts_the_slots_where_one_core_ran_alone_and_what_it_ran():
    import perf_alone

    # perf script -F tid,cpu,time,ip,sym,dso; tid 0 is the idle task. At 1000 Hz:
    # slot 0 both busy, slots 1 and 2 core 0 alone (in relu, then in JIT code), slot 3 both idle.
    lines = ["   12 [000]   10.0001:  7f01 relu (/lib/libtf.so)", "   13 [001]   10.0002:  7f02 conv (/lib/libtf.so)",
             "   12 [000]   10.0011:  7f01 relu (/lib/libtf.so)", "    0 [001]   10.0012:  ff01 safe_halt ([kernel])",
             "   12 [000]   10.0021:  7f03 [unknown] (/tmp/perf-12.map)", "    0 [001]   10.0022:  ff01 safe_halt ([kernel])",
             "    0 [000]   10.0031:  ff01 safe_halt ([kernel])", "    0 [001]   10.0032:  ff01 safe_halt ([kernel])",
             "not a sample line"]
    report = perf_alone.summary(perf_alone.slots(lines, 0.001), cpus=2)
    assert report["slots"] == 4 and report["all_busy"] == 0.25 and report["one_alone"] == 0.5
    assert report["alone_running"] == {"relu": 0.25, "perf-12.map": 0.25}
