package dump

// SetPgDumpArgs replaces pg_dump's fixed arguments (tests make a dump as
// one made by hand would be) and returns a function that puts them back.
func SetPgDumpArgs(f func([]string) []string) (undo func()) {
	old := pgDumpArgs
	pgDumpArgs = f(append([]string(nil), old...))
	return func() { pgDumpArgs = old }
}
