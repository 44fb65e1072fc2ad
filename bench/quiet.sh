# quiet.sh - sourced by the bench/run-*.sh scripts (from the repository root):
# wait_quiet SECONDS waits, up to SECONDS, for the 1-minute load average to drop
# below 0.5, so that a recorded run does not start on a busy machine. It says
# once that it waits, and returns 0 either way (the run records the load).
load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
    local i
    for ((i = 0; i < $1; i += 5)); do
        awk -v l="$(load1)" 'BEGIN { exit !(l < 0.5) }' && return 0
        [ "$i" = 0 ] && echo "waiting up to ${1}s for load < 0.5 (now $(load1))" >&2
        sleep 5
    done
    return 0
}
