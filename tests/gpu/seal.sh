# Sourced by the GPU suites: `sealed CMD...` runs CMD the way a guest would see the machine:
# a private mount namespace in which every NVIDIA driver library and /dev/nvidia* node is
# hidden (bind-mounted over by /dev/null, directories by an empty tmpfs), so CMD can reach
# the GPU only through our libcuda.so.1 and the vhost-gpu daemon.
seal_script='
set -e
hidden=0
for f in $(find /usr /lib /lib64 /opt /etc -xdev \( -name "libcuda.so*" -o -name "libnvidia-*.so*" -o -name "libcudadebugger.so*" \) 2>/dev/null) /dev/nvidia*; do
  [ -e "$f" ] || continue
  if [ -d "$f" ]; then mount -t tmpfs none "$f"; else mount --bind /dev/null "$(readlink -f "$f")"; fi
  hidden=$((hidden+1))
done
for lib in /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1; do
  if [ -e "$lib" ] && [ -s "$lib" ]; then echo "SEAL BROKEN: $lib readable" >&2; exit 97; fi
done
echo "sealed: $hidden NVIDIA files and device nodes hidden" >&2
exec "$@"
'
sealed() { timeout 300 unshare -m bash -c "$seal_script" sealed "$@"; }
