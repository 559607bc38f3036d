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
