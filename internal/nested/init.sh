#!/bin/busybox sh
# PID 1 of the nested harness's L1 (built into the initramfs by l1.go).
# It loads the modules listed in /etc/thaw-modules (kvm_amd with npt=0,
# shadow paging, when the kernel command line has thaw_npt=0), waits for
# /dev/kvm, reports the paging mode L1's KVM uses ("paging" marker),
# mounts the payload disk read-only at /payload and the results disk at
# /results, runs /payload/run with THAW_RESULTS=/results/out, and powers off.
# Every step prints a "thaw-nested-mark" line on the serial console; the
# host times each step by them and names the step that hung.
/bin/busybox mount -t proc proc /proc # --install resolves /proc/self/exe
/bin/busybox --install -s
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp

mark() { echo "thaw-nested-mark $*"; }
fail() {
	mark error "$*"
	dmesg | tail -n 20
	shell
	poweroff -f
}
# shell gives the person debugging a prompt when thaw_shell=1 is on the
# kernel command line (thaw-nested -shell); it returns when they exit.
shell() {
	grep -qw thaw_shell=1 /proc/cmdline || return 0
	echo "thaw-nested: L1 shell; payload at /payload, results at /results; exit to power off"
	setsid cttyhack sh -l
}
mark init

while read -r m; do
	args=
	if [ "$m" = kvm_amd ] && grep -qw thaw_npt=0 /proc/cmdline; then
		args=npt=0
	fi
	insmod "/lib/modules/$m.ko" $args || fail "insmod $m $args failed"
done </etc/thaw-modules
mark modules
for i in $(seq 50); do
	[ -c /dev/kvm ] && break
	sleep 0.1
done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm_amd (does the QEMU CPU model have svm?)"
mark kvm-ready
case "$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)" in
Y) mark paging nested ;;
N) mark paging shadow ;;
*) fail "cannot read /sys/module/kvm_amd/parameters/npt" ;;
esac

# Disks are found by their virtio serial, not by probe order.
for b in /sys/block/vd*; do
	case "$(cat "$b/serial" 2>/dev/null)" in
	thaw-payload) payload=/dev/${b##*/} ;;
	thaw-results) results=/dev/${b##*/} ;;
	esac
done
[ -n "$payload" ] && [ -n "$results" ] || fail "payload or results disk missing (found: $(ls /sys/block))"
mkdir -p /payload /results
mount -t ext4 -o ro "$payload" /payload || fail "mounting payload disk $payload"
mount -t ext4 "$results" /results || fail "mounting results disk $results"
mkdir -p /results/out /results/harness
[ -x /payload/run ] || fail "payload has no executable run script"

mark payload-start
# run's output goes to the results disk and the console through a fifo, so
# that what run leaves running in the background cannot keep us waiting.
mkfifo /tmp/output
tee /results/harness/output </tmp/output &
tee_pid=$!
(cd /payload && THAW_RESULTS=/results/out THAW_NESTED=1 exec ./run) >/tmp/output 2>&1
rc=$?
# Leftovers of run must not hold the fifo open or /results busy.
for p in /proc/[0-9]*; do
	pid=${p#/proc/}
	[ "$pid" = 1 ] || [ "$pid" = "$tee_pid" ] || kill -KILL "$pid" 2>/dev/null
done
wait "$tee_pid"
mark payload-exit "$rc"
shell
umount /results || fail "unmounting results disk"
sync
mark done
poweroff -f
