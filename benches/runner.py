"""Run one workload on one loop in this process and print one JSON line.

    python3 benches/runner.py --loop uvloop:new_event_loop --workload timers [--n N | --quick]
    python3 benches/runner.py --probe glassloop:new_event_loop

compare.py and callgrind.py start this in a fresh subprocess per measurement, so
no loop ever shares a process with another. Exit status: 0 measured, 1 the
workload failed (traceback on stderr), 2 the loop cannot be imported or created.
"""

import argparse
import asyncio
import faulthandler
import gc
import json
import platform
import sys
import traceback

import loopspec
import workloads

UNAVAILABLE = 2


def emit(record):
    print(json.dumps(record), flush=True)


def probe(spec):
    """Can this loop be imported and created here, and which version is it?"""
    try:
        spec.new_loop().close()
    except Exception as exc:  # ImportError, or a factory that rejects kwargs
        emit({"loop": spec.text, "available": False, "error": f"{type(exc).__name__}: {exc}"})
        return UNAVAILABLE
    emit({"loop": spec.text, "available": True, "version": spec.version(),
          "python": platform.python_version()})
    return 0


def describe(context):
    """One line for a context the loop passed to its exception handler."""
    exc = context.get("exception")
    return f"{context.get('message')}: {exc!r}" if exc is not None else str(context.get("message"))


def measure(spec, name, n, quick):
    module = workloads.load(name)
    n = n if n is not None else (module.QUICK_N if quick else module.N)
    try:
        loop = spec.new_loop()
    except Exception as exc:
        emit({"loop": spec.text, "workload": name, "available": False,
              "error": f"{type(exc).__name__}: {exc}"})
        return UNAVAILABLE
    asyncio.set_event_loop(loop)
    # An exception in a callback only reaches the loop's handler; a workload
    # waiting for that callback would then never end. Stop and fail instead.
    errors = []

    def on_error(loop, context):
        errors.append(context)
        loop.stop()

    loop.set_exception_handler(on_error)
    gc.collect()
    try:
        result = module.run(loop, n)
        if errors:
            raise workloads.WorkloadError("a callback raised")
    except Exception as exc:
        for context in errors:
            print(describe(context), file=sys.stderr)
            if context.get("exception") is not None:
                traceback.print_exception(context["exception"])
        traceback.print_exc()
        error = describe(errors[0]) if errors else f"{type(exc).__name__}: {exc}"
        emit({"loop": spec.text, "workload": name, "n": n, "ok": False, "error": error})
        return 1
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    emit({
        "workload": name,
        "loop": spec.text,
        "ok": True,
        "n": n,
        "value": result["ops"] / result["elapsed_s"],
        "unit": module.UNIT,
        **result,
        "python": platform.python_version(),
        "loop_version": spec.version(),
    })
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", help="factory path, e.g. uvloop:new_event_loop")
    parser.add_argument("--workload", choices=workloads.NAMES)
    parser.add_argument("--n", type=int, help="override the workload's size")
    parser.add_argument("--quick", action="store_true", help="use the workload's small size")
    parser.add_argument("--timeout", type=float, default=300,
                        help="dump stacks and exit if the run takes longer (s)")
    parser.add_argument("--probe", metavar="LOOP", help="only check LOOP is importable")
    args = parser.parse_args(argv)
    if args.probe:
        return probe(loopspec.parse(args.probe))
    if not (args.loop and args.workload):
        parser.error("--loop and --workload are required (or --probe)")
    if args.n is not None and args.n < 1:
        parser.error("--n must be at least 1")
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    return measure(loopspec.parse(args.loop), args.workload, args.n, args.quick)


if __name__ == "__main__":
    sys.exit(main())
