#!/bin/sh
# Test engine that hangs: a child process and itself sleep far past any timeout. The child's pid
# goes to $PID_FILE so the test can check it was killed with the group.
sleep 600 &
echo $! > "$PID_FILE"
echo "loading weights..." >&2
sleep 600
