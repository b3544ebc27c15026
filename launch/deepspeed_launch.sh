#!/usr/bin/env bash
# DeepSpeed runs with the `deepspeed` launcher.
#
#   DS_CONFIG=launch/deepspeed/zero3.json launch/deepspeed_launch.sh RECIPE [--set section.key=value ...]
#
# One node (no HOSTFILE): every GPU of this machine, no ssh. Several nodes: HOSTFILE=launch/hostfile (see
# hostfile.example); the launcher then reaches every host by ssh, so run it on the head node, with the same
# checkout and environment at the same path on every node. DS_CONFIG defaults to launch/deepspeed/zero3.json.
set -euo pipefail
cd "$(dirname "$0")/.."

DS_CONFIG=${DS_CONFIG:-launch/deepspeed/zero3.json}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ $# -lt 1 ]]; then
    echo "usage: [HOSTFILE=...] [DS_CONFIG=...] $0 RECIPE [--set section.key=value ...]" >&2
    exit 2
fi
HOSTS=()
if [[ -n "${HOSTFILE:-}" ]]; then
    if [[ ! -f "$HOSTFILE" ]]; then
        echo "HOSTFILE=$HOSTFILE not found (copy launch/hostfile.example)" >&2
        exit 2
    fi
    HOSTS=(--hostfile "$HOSTFILE")
fi

# The deepspeed launcher starts `python -m plait.train` on every slot; the recipe trains under the
# DeepSpeed config given here (Trainer fills its "auto" values from the recipe).
exec deepspeed "${HOSTS[@]}" --master_port "$MASTER_PORT" \
    --module plait.train "$@" --set "engine.deepspeed=$DS_CONFIG"
