#!/bin/sh
ls -l /sys/class/net/
for d in /sys/class/net/*; do echo "$(basename $d) $(readlink $d/device) $(cat $d/address) $(cat $d/device/sriov_totalvfs 2>/dev/null)"; done
