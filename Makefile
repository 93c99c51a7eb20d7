# The two commands of the README. Both work on a fresh machine with Rust and Python 3.11+.
.PHONY: demo test

demo:  ## build glassloop and run the demo service on it
	scripts/demo.sh

test:  ## build glassloop and run every test suite
	scripts/test.sh
