#!/usr/bin/env bash
# Print the hosts an elastic horovodrun may use, one `host:slots` line each.
#
#   echo "node1:4" > hosts; echo "node2:4" >> hosts
#   HVDL_HOSTS_FILE=hosts horovodrun -np 8 --min-np 4 --max-np 8 \
#       --host-discovery-script launch/discover-hosts.sh python -m hvdl.train --model lenet5 --elastic
#
# horovodrun runs this every second: edit the hosts file while the job runs to add or remove
# workers (a host dropped from it loses its workers; one added gets new ones, up to --max-np).
# Without a hosts file it prints this machine with HVDL_SLOTS slots. More in README.md,
# "Elastic training".
#
# Environment:
#   HVDL_HOSTS_FILE  a file of `host:slots` lines; blank lines and # comments skipped (default: none)
#   HVDL_SLOTS       slots on localhost when there is no hosts file                    (default: 2)
set -euo pipefail
if [[ -n ${HVDL_HOSTS_FILE:-} ]]; then
    grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$HVDL_HOSTS_FILE" || true
else
    echo "localhost:${HVDL_SLOTS:-2}"
fi
