"""`make load`: many simulated devices talking to one stack at once, ramped,
with a JSON report, a Markdown summary and plots (README, "Benchmark").

It lives with the tests, not in the `parley` package, because it is made of
test support: the stack of real processes on free ports (tests/e2e/harness.py,
which can start a part of it, as the density mode needs), and the device that
speaks Xiaozhi as the firmware does (tests/support/xiaozhi_device.py). It is
a benchmark of this repository, like tests/bench/llm_bench.py, not a tool a
deployment ships."""
