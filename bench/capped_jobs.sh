#!/bin/bash
# Run `notbugs all` as consecutive jobs capped at CAP seconds, as on a cluster that limits job length:
# each job gets `--time-limit LIMIT` (minutes) and `timeout CAP` as the hard cap, and the next job
# starts while the last one exits 75 (stopped early, progress saved). One line per job on stdout.
#
#   bash bench/capped_jobs.sh CAP_S LIMIT_MIN [notbugs all options...]
#   bash bench/capped_jobs.sh 300 4.5 --device cpu        # the cpu profile in jobs of at most 5 minutes
#
# Logs go to $LOGS (default: data/jobs-logs/job<N>.log). PYTHON picks the interpreter.
set -u
cap=$1 limit=$2
shift 2
py=${PYTHON:-python}
logs=${LOGS:-data/jobs-logs}
mkdir -p "$logs"
start=$(date +%s)
for i in $(seq 1 1000); do
  t0=$(date +%s)
  timeout --preserve-status "$cap" "$py" -m notbugs all --time-limit "$limit" "$@" > "$logs/job$i.log" 2>&1
  rc=$?
  echo "job $i: exit $rc after $(( $(date +%s) - t0 )) s; $(grep -o 'stopped early: .*' "$logs/job$i.log" | cut -c1-160)"
  [ $rc -ne 75 ] && break
done
echo "total $(( $(date +%s) - start )) s, last exit $rc"
exit $rc
