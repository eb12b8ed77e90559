#!/bin/sh
# Entry point of the compose `ray-head` service: start the Ray head (GCS, dashboard, metrics
# at :8080), then run the learner and launcher with `relaxrl train` on this cluster.
#
# A run directory that already holds checkpoints is resumed (--resume), so a restart after a
# crash continues the run and its curves instead of starting over; one without checkpoints
# starts fresh (the launcher's own rule). When training ends normally the
# container stays up (Ray, dashboards and the run directory remain available for
# `docker compose exec ray-head relaxrl eval ...`); a failure exits non-zero and the restart
# policy starts the head again.
set -eu

: "${REDIS_URL:?REDIS_URL is not set (docker-compose.yml sets it)}"
: "${RELAXRL_REDIS_PASSWORD:?RELAXRL_REDIS_PASSWORD is not set (docker-compose.yml passes REDIS_PASSWORD)}"
RUN_DIR="/runs/${RELAXRL_RUN_NAME:-compose}"
CONFIG="${RELAXRL_CONFIG:-configs/demo.toml}"

ray start --head \
    --port=6379 \
    --metrics-export-port=8080 \
    --dashboard-host=0.0.0.0 \
    --num-cpus="${RAY_HEAD_NUM_CPUS:-2}" \
    --num-gpus="${RAY_HEAD_NUM_GPUS:-0}" \
    --disable-usage-stats

if [ -d "$RUN_DIR/checkpoints" ] && [ -n "$(ls -A "$RUN_DIR/checkpoints" 2>/dev/null)" ]; then
    echo "ray-head: resuming $RUN_DIR"
    set -- --resume "$RUN_DIR"           # the run's own config.toml and stored URL
else
    echo "ray-head: new run in $RUN_DIR"
    set -- --config "$CONFIG" --run-dir "$RUN_DIR"
fi

relaxrl train --address auto --redis-url "$REDIS_URL" --no-progress "$@"

echo "ray-head: training finished; Ray stays up (docker compose down to stop)"
exec sleep infinity
