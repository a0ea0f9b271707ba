"""`vllm-helix profile`: measure the partial-layer worker on this machine and write a planner profile.

`sweep.py` says what to measure, `measure.py` times the real worker, `profile_file.py` turns the timings
into the planner's profile JSON (the bundled profiles' schema plus metadata).
"""
