package basebackup

import "strconv"

func partAttrs(id, archive string) func(int) map[string]string {
	return func(n int) map[string]string {
		return map[string]string{"kind": "basebackup", "backup_id": id, "archive": archive, "part": strconv.Itoa(n)}
	}
}
