#!/usr/bin/env bash
# sampler.sh PATTERN OUT: per-thread cpu ticks of the newest process matching PATTERN, every 2 s
pat=$1; out=$2
while true; do
  pid=$(pgrep -n -f "$pat") || { sleep 0.5; continue; }
  snap=""
  for t in /proc/$pid/task/*; do
    tid=${t##*/}; read -r -a f < $t/stat 2>/dev/null || continue
    # fields: 14 utime, 15 stime (index 13,14); comm may contain spaces, fine for python
    snap+="$tid $(cat $t/comm 2>/dev/null) ${f[13]} ${f[14]} $(grep -h ctxt $t/status | awk '{print $2}' | tr '\n' ' ')\n"
  done
  [ -n "$snap" ] && printf "$snap" > $out.tmp && mv $out.tmp $out
  sleep 2
done
