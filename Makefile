# The README's commands (demo, test; bench for the benchmark suite). They work on a fresh machine with Rust and Python 3.11+.
.PHONY: demo test bench

demo:  ## build glassloop and run the demo service on it
	scripts/demo.sh

test:  ## build glassloop and run every test suite
	scripts/test.sh

bench:  ## build glassloop (release profile) and run the whole benchmark suite (QUICK=1: a smoke run)
	scripts/bench.sh
