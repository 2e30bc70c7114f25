#!/bin/sh
# test/vm/run.sh bench, inside the VM: ADD+DEL of a PF with 7 VFs, and the
# DEL after a kind-sriov job re-created its VFs (BenchmarkRestore), the
# plugin next to the in-process netlink minimum and, when the harness was
# given one (BENCH_FLOOR), an external floor program run like a plugin,
# and another build of the plugin when given one (BENCH_PLUGIN_BASE).
[ -x /opt/sriovpt/floor ] && export E2E_FLOOR=/opt/sriovpt/floor
[ -x /opt/sriovpt/plugin-base ] && export E2E_PLUGIN_BASE=/opt/sriovpt/plugin-base
exec ./e2e.test -test.run '^$' -test.bench 'AddDel|Restore' -test.benchtime "${BENCH_ROUNDS:-10}x" -test.benchmem=false
