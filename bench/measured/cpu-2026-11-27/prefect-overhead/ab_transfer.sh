#!/usr/bin/env bash
# A/B of the transfer stage on copies of one finished `cpu` run (/work/bfrun2/data, the bf16 100-step run):
#   A: plain `python -m notbugs transfer`; B: the same beside an idle local Prefect server;
#   C: `python -m flows transfer` with that server; N: as C with the server at nice 19.
# RUNS="C5 A5" ./ab_transfer.sh; per-thread CPU ticks of the stage process go to threads_<run>.txt (sampler.sh).
set -u
cd /work/main; export PATH=/work/main/.venv/bin:$PATH; port=4314
for d in ${RUNS:-C3 A3}; do
  mode=${d:0:1}
  rm -rf /work/ovh/t_$d; cp -a /work/bfrun2/data /work/ovh/t_$d; rm -rf /work/ovh/t_$d/models/transfer /work/ovh/t_$d/work/transfer
  if [ $mode != A ]; then
    NICE=""; [ $mode = N ] && NICE="nice -n 19"
    PREFECT_SERVER_ANALYTICS_ENABLED=false $NICE prefect server start --host 127.0.0.1 --port $port > /work/ovh/server4.log 2>&1 &
    for _ in $(seq 1 120); do curl -fs http://127.0.0.1:$port/api/health >/dev/null 2>&1 && break; sleep 0.5; done; sleep 5
  fi
  /work/ovh/sampler.sh "transfer --data-dir /work/ovh/t_$d" /work/ovh/threads_$d.txt & smp=$!
  t0=$(date +%s.%N)
  if [ $mode = C ] || [ $mode = N ]; then
    PREFECT_API_URL=http://127.0.0.1:$port/api python -m flows transfer --data-dir /work/ovh/t_$d/ > /work/ovh/t$d.log 2>&1
  else
    python -m notbugs transfer --data-dir /work/ovh/t_$d > /work/ovh/t$d.log 2>&1
  fi
  rc=$?; t1=$(date +%s.%N); kill $smp
  if [ $mode != A ]; then ps -eo pid,ni,cputime,cmd | grep -E "prefect|uvicorn" | grep -v grep | cut -c1-120 > /work/ovh/srv_$d.txt; pkill -f "prefect server start"; sleep 3; fi
  echo "$d rc=$rc wall=$(echo "$t1 - $t0" | bc)"
done
