package benchpg

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// VmHWM returns a live process's peak resident set in kB (VmHWM of
// /proc/PID/status; 0 when the process is gone). wait4's ru_maxrss is no
// substitute: exec keeps the high-water mark of the address space it
// replaces, the benchmark's own with Go's vfork-style spawn.
func VmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
