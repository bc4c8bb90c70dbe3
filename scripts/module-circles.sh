#!/usr/bin/env bash
# Checks that the proxy's top-level modules form layers: lists pairs of modules that import each
# other (A uses crate::B and B uses crate::A), then any longer loop (tsort). Modules are the files
# and directories right under src/; lib.rs, the root that wires them, is left out; comment lines
# are ignored, test code is not. Exits 1 if any circle is found.
# Usage: scripts/module-circles.sh [crate src dir]  (default: crates/trellis-proxy/src)
set -u
cd "$(dirname "$0")/.."
src="${1:-crates/trellis-proxy/src}"
edges=$(
  cd "$src" || exit 2
  find . -name '*.rs' ! -path ./lib.rs | sort | while read -r f; do
    m=${f#./}; m=${m%%/*}; m=${m%.rs}
    grep -vE '^\s*//' "$f" | grep -oE 'crate::[a-z_]+' | sed 's/crate:://' | sort -u |
      while read -r dep; do
        # `crate::Type` (a root item) is not a module edge.
        if [ "$dep" != "$m" ] && { [ -f "$dep.rs" ] || [ -d "$dep" ]; }; then echo "$m $dep"; fi
      done
  done | sort -u
)
found=0
while read -r a b; do
  [ -z "$a" ] && continue
  if [[ "$a" < "$b" ]] && grep -qx "$b $a" <<<"$edges"; then
    echo "circle: $a <-> $b"
    found=1
  fi
done <<<"$edges"
loops=$(tsort <<<"$edges" 2>&1 >/dev/null)
if [ -n "$loops" ]; then
  echo "$loops"
  found=1
fi
[ "$found" = 0 ] && echo "no module pair imports each other, and no longer loop"
exit "$found"
