#!/usr/bin/env bash
# Makes a minimal root filesystem from Debian's busybox-static: /bin/busybox
# plus one relative symlink per applet, and an /etc/passwd with root.
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
busybox=$(command -v busybox || true)
[ -x /bin/busybox ] && busybox=/bin/busybox
[ -n "$busybox" ] || { echo "busybox not found: apt-get install busybox-static" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir"/{bin,etc,tmp,proc,sys,dev,root,var/www,usr/local/bin}
cp "$busybox" "$dir/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
chmod 1777 "$dir/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
