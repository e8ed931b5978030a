#!/bin/sh
# EXAMPLE ONLY: calls a cloud CLI (AWS by default; Azure and GCP below). Read and adapt it.
#
# A dsr notify hook that moves a VIP that is a secondary private IP of the subnet: on
# ANNOUNCED it reassigns the address to this instance's network interface and adds it in
# the OS; on WITHDRAWN, if this instance holds it, it removes it from the OS and reassigns
# it to the peer's interface (PEER_ENI), so a drained, stopped (`dsr stop`) or backend-less
# node hands over. A node that dies runs no hook: pair it with keepalived (unicast VRRP,
# notify_master running this with ANNOUNCED) for that. In /etc/dsr/dsr.toml:
#
#   notify = "/usr/share/dsr/notify/secondary-ip.sh"
#
# dsr's XDP program forwards the VIP's traffic before the kernel's stack sees it; the
# address in the OS makes the node answer the VIP's other traffic (ping, ARP on premises).
#
# Needs: the AWS CLI with ec2:AssignPrivateIpAddresses; ENI (this instance's interface id),
# PEER_ENI, DEV (default eth0), e.g. in a systemd drop-in. Hooks run with the daemon's
# privileges and sandbox: as the packaged unit's user dsr, with CAP_NET_ADMIN (which
# `ip addr` needs), under ProtectSystem=strict (keep their files under /var/lib/dsr).
set -eu
[ "${1:-}" = VIP ] || exit 2
state=$3
dev=${DEV:-eth0}
: "${ENI:?set ENI to this instance's network interface id}"

holds() { ip -o addr show dev "$dev" | grep -q " $DSR_VIP_ADDRESS/"; }

case "$state" in
ANNOUNCED)
    aws ec2 assign-private-ip-addresses --network-interface-id "$ENI" \
        --private-ip-addresses "$DSR_VIP_ADDRESS" --allow-reassignment
    ip addr replace "$DSR_VIP_ADDRESS/32" dev "$dev"
    ;;
WITHDRAWN)
    if holds; then
        ip addr del "$DSR_VIP_ADDRESS/32" dev "$dev"
        aws ec2 assign-private-ip-addresses --network-interface-id \
            "${PEER_ENI:?set PEER_ENI to hand the VIP over}" \
            --private-ip-addresses "$DSR_VIP_ADDRESS" --allow-reassignment
    fi
    ;;
USABLE | UNUSABLE) ;; # ANNOUNCED/WITHDRAWN follow (min_usable decides)
esac

# Azure: az network nic ip-config create -g RG --nic-name MY_NIC -n dsr-vip
#   --private-ip-address "$DSR_VIP_ADDRESS"  (after deleting it from the peer's NIC)
# GCP: gcloud compute instances network-interfaces update MY_VM --zone ZONE
#   --aliases "$DSR_VIP_ADDRESS/32"  (after removing the alias from the peer)
# On premises without VRRP: ip addr replace, then `arping -U -c 2 -I "$dev" "$DSR_VIP_ADDRESS"`
# (arping needs CAP_NET_RAW and AF_PACKET, which the packaged unit does not grant: add
# them to its CapabilityBoundingSet/AmbientCapabilities and RestrictAddressFamilies).
