# shellcheck shell=bash
# Shared by the bench scripts; source it after defining warn().

# Removes every task, container, image, lease, blob and snapshot of a
# containerd namespace, then the namespace and its cgroups.
cleanup_namespace() { # namespace cgroup-parent-dir
  local ns=$1 cg=$2 c
  ctr namespaces ls -q 2>/dev/null | grep -qx "$ns" || { rmdir_cgroups "$cg"; return 0; }
  c=(ctr -n "$ns")
  local ids
  ids=$("${c[@]}" containers ls -q 2>/dev/null || true)
  for id in $ids; do
    "${c[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for id in $ids; do
    for _ in $(seq 1 100); do
      "${c[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
      "${c[@]}" tasks ls -q 2>/dev/null | grep -qx "$id" || break
      sleep 0.1
    done
    "${c[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
  for image in $("${c[@]}" images ls -q 2>/dev/null || true); do
    "${c[@]}" images rm --sync "$image" >/dev/null 2>&1 || true
  done
  for lease in $("${c[@]}" leases ls -q 2>/dev/null || true); do
    "${c[@]}" leases rm "$lease" >/dev/null 2>&1 || true
  done
  for blob in $("${c[@]}" content ls -q 2>/dev/null || true); do
    "${c[@]}" content rm "$blob" >/dev/null 2>&1 || true
  done
  # Snapshots go from the leaves up: repeat while any are left.
  for _ in $(seq 1 16); do
    local keys
    keys=$("${c[@]}" snapshots ls 2>/dev/null | awk 'NR > 1 { print $1 }')
    [ -n "$keys" ] || break
    for key in $keys; do "${c[@]}" snapshots rm "$key" >/dev/null 2>&1 || true; done
  done
  ctr namespaces rm "$ns" >/dev/null 2>&1 || warn "containerd namespace $ns is not empty; left it"
  rmdir_cgroups "$cg"
}

rmdir_cgroups() { # path under each hierarchy, e.g. shoal/shoal-bench
  local d
  for d in /sys/fs/cgroup/*/"$1"; do
    [ -d "$d" ] || continue
    # Children first (runc removes a container's own cgroup; this is a net).
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$d" ] && warn "could not remove cgroup $d"
  done
  return 0
}


# Releases what a shoal agent made on this host's network: the namespaces of
# its tasks (as its data dir names them), its bridge and masquerade chain.
cleanup_node_network() { # data-dir bridge
  local dir=$1 bridge=$2 task
  if [ -d "$dir/net/tasks" ]; then
    for task in "$dir"/net/tasks/*; do
      [ -e "$task" ] || continue
      ip netns delete "$bridge-$(basename "$task")" 2>/dev/null || true
    done
  fi
  ip link delete "$bridge" 2>/dev/null || true
  while iptables -t nat -D POSTROUTING -j "SHOAL-$bridge" 2>/dev/null; do :; done
  iptables -t nat -F "SHOAL-$bridge" 2>/dev/null || true
  iptables -t nat -X "SHOAL-$bridge" 2>/dev/null || true
}
