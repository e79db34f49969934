package benchpg

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// DirSize sums the apparent sizes of the files under dir whose path
// relative to dir passes keep (all files when keep is nil).
func DirSize(dir string, keep func(rel string) bool) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if keep != nil {
			if rel, _ := filepath.Rel(dir, p); !keep(rel) {
				return nil
			}
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		return nil
	})
	return n, err
}

// Median is the middle value of v (of the two middle ones, the greater); v
// must not be empty.
func Median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// WaitIOQuiet syncs and then waits until the kernel's I/O pressure (the
// "some" share of the last 10 s in /proc/pressure/io) is below threshold
// percent, or until limit has passed; it returns how long it waited, so
// that no run starts while the previous one's gigabytes are still being
// written back. (It does not remove the slower runs that follow large
// frees on this VM: bench/README.md, "A slow window after big frees".)
func WaitIOQuiet(threshold float64, limit time.Duration) time.Duration {
	start := time.Now()
	_ = exec.Command("sync").Run()
	for time.Since(start) < limit {
		b, err := os.ReadFile("/proc/pressure/io")
		if err != nil {
			break // no PSI: nothing to wait for
		}
		var avg10 float64
		if _, err := fmt.Sscanf(string(b), "some avg10=%f", &avg10); err != nil || avg10 < threshold {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	return time.Since(start)
}
