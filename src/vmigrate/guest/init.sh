#!/bin/sh
# vmigrate guest /init (busybox ash, PID 1 of the initramfs).
#
# Mounts the pseudo filesystems, loads the virtio modules listed (dependencies first) in
# /lib/modules/<kernel>/vmigrate.load, configures lo and eth0 from the kernel command line and
# runs the agent, whose stdout/stderr are the serial console.  PID 1 stays alive after the
# agent exits (or after a fatal error) so the kernel never panics; the host watches the
# console for these lines:
#   VMIGRATE-AGENT-READY boot_id=<uuid>    (printed by the agent)
#   VMIGRATE-INIT-ERROR <what went wrong>  (printed here; the guest is not usable)
#   VMIGRATE-AGENT-EXITED rc=<n>           (the agent died)
#
# Kernel command line keys (all optional except vmigrate.ip):
#   vmigrate.ip=10.241.0.100/24  vmigrate.gw=<ipv4>  vmigrate.workload=idle|web|memory
#   vmigrate.working_set_mib=64  vmigrate.dirty_rate_mib_s=0  vmigrate.integrity_mib=32

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1

log() { echo "vmigrate-init: $*"; }
fail() { echo "VMIGRATE-INIT-ERROR $*"; }
halt_here() { # keep PID 1 alive: the kernel must not panic, the host reads the console
    while :; do
        sleep 3600
    done
}

kver=$(uname -r)
moddir=/lib/modules/$kver
if [ -f "$moddir/vmigrate.load" ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        insmod "$moddir/$mod.ko" || fail "insmod $mod failed"
    done <"$moddir/vmigrate.load"
else
    fail "no module list $moddir/vmigrate.load (image built for another kernel?)"
fi

ip_cidr=
gw=
workload=idle
working_set_mib=64
dirty_rate_mib_s=0
integrity_mib=32
for kv in $(cat /proc/cmdline); do
    case "$kv" in
    vmigrate.ip=*) ip_cidr=${kv#*=} ;;
    vmigrate.gw=*) gw=${kv#*=} ;;
    vmigrate.workload=*) workload=${kv#*=} ;;
    vmigrate.working_set_mib=*) working_set_mib=${kv#*=} ;;
    vmigrate.dirty_rate_mib_s=*) dirty_rate_mib_s=${kv#*=} ;;
    vmigrate.integrity_mib=*) integrity_mib=${kv#*=} ;;
    esac
done

hostname vmigrate-guest
ip link set lo up
# virtio_net probes synchronously, but give udev-less device registration a moment.
tries=0
while [ ! -e /sys/class/net/eth0 ] && [ "$tries" -lt 50 ]; do
    usleep 100000
    tries=$((tries + 1))
done
if [ -z "$ip_cidr" ]; then
    fail "vmigrate.ip= is missing from the kernel command line"
    halt_here
fi
if [ ! -e /sys/class/net/eth0 ]; then
    fail "no eth0 (is a virtio-net-pci device attached?)"
    halt_here
fi
if ! ip addr add "$ip_cidr" dev eth0 || ! ip link set eth0 up; then
    fail "cannot configure eth0 with $ip_cidr"
    halt_here
fi
if [ -n "$gw" ] && ! ip route add default via "$gw"; then
    fail "ip route add default via $gw failed"
    halt_here
fi
log "eth0 $ip_cidr $(cat /sys/class/net/eth0/address)"

/bin/vmigrate-agent --http-port 80 --control-port 7000 --echo-port 7 \
    --workload "$workload" --working-set-mib "$working_set_mib" \
    --dirty-rate-mib-s "$dirty_rate_mib_s" --integrity-mib "$integrity_mib" &
agent=$!
wait "$agent"
echo "VMIGRATE-AGENT-EXITED rc=$?"
halt_here
