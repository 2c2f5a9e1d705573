#!/usr/bin/env bash
# Wall time of the tiny preset (gppo + ERC, 100 steps) with 1 thread vs all cores, twice each, alternating.
# Usage: bash bench/threads.sh [quiet|loaded]   (loaded: one busy Python loop per core runs beside it)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quiet}
hogs=()
if [ "$mode" = loaded ]; then
  for _ in $(seq "$(nproc)"); do python -c "while True: pass" & hogs+=($!); done
fi
trap '[ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}"' EXIT
TIMEFORMAT="%R s"
for threads in 1 "$(nproc)" 1 "$(nproc)"; do
  echo -n "$mode, --threads $threads: "
  time python erc_minimal.py --preset tiny --algo gppo --erc --steps 100 --threads "$threads" \
    --out "runs/threads_$threads" --overwrite > /dev/null 2>&1
done
