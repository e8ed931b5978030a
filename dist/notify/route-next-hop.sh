#!/bin/sh
# EXAMPLE ONLY: calls a cloud CLI (AWS by default; GCP and Azure below). Read and adapt it.
#
# A dsr notify hook that moves a VIP by pointing the cloud route table's route for it at
# this instance: the "overlay VIP" of a pair in two zones, where the VIP is outside the
# subnets and no VRRP or BGP exists. In /etc/dsr/dsr.toml:
#
#   notify = "/usr/share/dsr/notify/route-next-hop.sh"
#
# dsr runs it as `route-next-hop.sh VIP NAME STATE` with DSR_VIP_ADDRESS, DSR_INSTANCE,
# DSR_VIP, DSR_USABLE_BACKENDS, DSR_EVENT_TIME set. On ANNOUNCED this node takes the route;
# on WITHDRAWN it gives the route to its peer (PEER_INSTANCE_ID), if it holds it, so a
# drained, stopped (`dsr stop`) or backend-less node hands over. A node that dies runs no
# hook: pair it with keepalived (unicast VRRP, notify_master running this with ANNOUNCED) or
# the cloud's own health checks for that.
#
# Needs: the AWS CLI with ec2:ReplaceRoute/CreateRoute/DescribeRouteTables; source/dest
# check disabled on both instances (they receive traffic for an address they do not own);
# ROUTE_TABLES (the route table ids of every client subnet) and PEER_INSTANCE_ID, e.g. in
# a systemd drop-in: Environment=ROUTE_TABLES="rtb-0a1 rtb-0b2" PEER_INSTANCE_ID=i-0123.
set -eu
[ "${1:-}" = VIP ] || exit 2
state=$3
cidr="$DSR_VIP_ADDRESS/32"
: "${ROUTE_TABLES:?set ROUTE_TABLES to the route table ids}"

self_id() {
    token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
    curl -fsS -H "X-aws-ec2-metadata-token: $token" \
        http://169.254.169.254/latest/meta-data/instance-id
}

point_at() { # instance id
    for rt in $ROUTE_TABLES; do
        aws ec2 replace-route --route-table-id "$rt" --destination-cidr-block "$cidr" \
            --instance-id "$1" 2>/dev/null ||
            aws ec2 create-route --route-table-id "$rt" --destination-cidr-block "$cidr" \
                --instance-id "$1"
    done
}

holder() { # the instance the first table's route points at
    set -- $ROUTE_TABLES
    aws ec2 describe-route-tables --route-table-ids "$1" --output text \
        --query "RouteTables[0].Routes[?DestinationCidrBlock=='$cidr'].InstanceId"
}

me=$(self_id)
case "$state" in
ANNOUNCED) point_at "$me" ;;
WITHDRAWN)
    if [ "$(holder)" = "$me" ]; then
        point_at "${PEER_INSTANCE_ID:?set PEER_INSTANCE_ID to hand the VIP over}"
    fi
    ;;
USABLE | UNUSABLE) ;; # ANNOUNCED/WITHDRAWN follow (min_usable decides)
esac

# GCP: gcloud compute routes delete "dsr-$DSR_VIP" --quiet; gcloud compute routes create
#   "dsr-$DSR_VIP" --network=NET --destination-range="$cidr" --next-hop-instance=NAME
#   --next-hop-instance-zone=ZONE   (instances need --can-ip-forward)
# Azure: az network route-table route update -g RG --route-table-name RT -n "dsr-$DSR_VIP"
#   --next-hop-type VirtualAppliance --next-hop-ip-address MY_PRIVATE_IP
#   (NICs need IP forwarding enabled)
