#!/bin/bash
# The agent's *live* heap at the end of a benchmark, by allocation site (agent memory,
# issue 7). heaptrack reports what is still allocated when the process exits, and the
# agent frees everything on SIGTERM; so this wrapper runs heaptrack in its own session
# (the bench's SIGTERM to its process group reaches only this script) and on SIGTERM
# makes the agent call exit(3) from gdb: heaptrack's exit handler writes its data and no
# Rust destructor runs, so heaptrack's "leaked" is the heap live at that moment.
#
# Needs heaptrack and gdb (Debian: apt-get install heaptrack gdb). Usage:
#   target/release/skiff-agent-bench --services 10000 --endpoints 10 --changes 200 \
#     --skip-cni --settle-secs 20 --agent-wrapper tests/scripts/heaptrack-live-heap.sh,/tmp/ht
#   heaptrack_print -f /tmp/ht.zst --print-leaks 1 --print-peaks 0 --print-allocators 0 \
#     --print-temporary 0 -n 2000 -s 200
set -u
out=$1
shift
setsid heaptrack -o "$out" "$@" &
hp=$!
trap 'gdb -p "$(pgrep -x skiff-agent)" -batch -ex "call (void)exit(0)" >/dev/null 2>&1; wait $hp; exit 0' TERM
wait $hp
