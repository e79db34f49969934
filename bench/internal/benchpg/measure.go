package benchpg

import (
	"io/fs"
	"path/filepath"
	"slices"
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
