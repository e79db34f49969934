package pgsource

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// Params parses a libpq connection string — keyword=value pairs or a
// postgres:// URL — into its keywords, as libpq reads them. Tools run as
// child processes (pg_dump, pg_restore) get these back as a conninfo
// without the password (ToolArgs), so that no secret is in their arguments.
func Params(cs string) (map[string]string, error) {
	if strings.HasPrefix(cs, "postgres://") || strings.HasPrefix(cs, "postgresql://") {
		return urlParams(cs)
	}
	return kvParams(cs)
}

func kvParams(cs string) (map[string]string, error) {
	out := map[string]string{}
	i := 0
	skipSpace := func() {
		for i < len(cs) && strings.ContainsRune(" \t\n\r\v\f", rune(cs[i])) {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(cs) {
			return out, nil
		}
		start := i
		for i < len(cs) && cs[i] != '=' && !strings.ContainsRune(" \t\n\r\v\f", rune(cs[i])) {
			i++
		}
		key := cs[start:i]
		skipSpace()
		if i >= len(cs) || cs[i] != '=' {
			return nil, fmt.Errorf("invalid connection string: missing \"=\" after %q", key)
		}
		i++
		skipSpace()
		var val strings.Builder
		if i < len(cs) && cs[i] == '\'' {
			i++
			closed := false
			for i < len(cs) {
				c := cs[i]
				if c == '\\' && i+1 < len(cs) {
					val.WriteByte(cs[i+1])
					i += 2
					continue
				}
				if c == '\'' {
					i++
					closed = true
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("invalid connection string: unterminated quoted value of %q", key)
			}
		} else {
			for i < len(cs) && !strings.ContainsRune(" \t\n\r\v\f", rune(cs[i])) {
				if cs[i] == '\\' && i+1 < len(cs) {
					i++
				}
				val.WriteByte(cs[i])
				i++
			}
		}
		out[key] = val.String()
	}
}

func urlParams(cs string) (map[string]string, error) {
	u, err := url.Parse(cs)
	if err != nil {
		return nil, fmt.Errorf("invalid connection URL (not shown: it may hold a password)")
	}
	out := map[string]string{}
	if u.User != nil {
		if n := u.User.Username(); n != "" {
			out["user"] = n
		}
		if p, ok := u.User.Password(); ok {
			out["password"] = p
		}
	}
	// host:port[,host:port...]
	if u.Host != "" {
		var hosts, ports []string
		for _, hp := range strings.Split(u.Host, ",") {
			h, p := hp, ""
			if strings.HasPrefix(hp, "[") {
				if end := strings.Index(hp, "]"); end > 0 {
					h = hp[1:end]
					p = strings.TrimPrefix(hp[end+1:], ":")
				}
			} else if k := strings.LastIndex(hp, ":"); k >= 0 {
				h, p = hp[:k], hp[k+1:]
			}
			hosts = append(hosts, h)
			ports = append(ports, p)
		}
		if slices.ContainsFunc(hosts, func(s string) bool { return s != "" }) {
			out["host"] = strings.Join(hosts, ",")
		}
		if slices.ContainsFunc(ports, func(s string) bool { return s != "" }) {
			out["port"] = strings.Join(ports, ",")
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		out["dbname"] = db
	}
	for k, v := range u.Query() {
		if len(v) > 0 {
			out[k] = v[len(v)-1]
		}
	}
	return out, nil
}

// secretKeywords are libpq keywords whose values never go into a child's
// arguments.
var secretKeywords = []string{"password", "sslpassword"}

// ToolArgs splits connection parameters for a libpq tool run as a child
// process: conninfo (for --dbname) holds every keyword but the secrets, and
// env holds the password as PGPASSWORD, so that it appears neither in the
// process's arguments (ps) nor in logs. sslpassword has no environment
// variable: a connection string with one is refused.
func ToolArgs(params map[string]string) (conninfo string, env []string, err error) {
	if _, ok := params["sslpassword"]; ok {
		return "", nil, fmt.Errorf("the connection settings use sslpassword, which cannot be passed to pg_dump/pg_restore without showing it in their arguments: use an unencrypted client key file readable only by synbak's user instead")
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		if !slices.Contains(secretKeywords, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+quoteValue(params[k]))
	}
	if p, ok := params["password"]; ok {
		env = append(env, "PGPASSWORD="+p)
	}
	return strings.Join(parts, " "), env, nil
}

// ConnString formats params as a keyword=value connection string (secrets
// included: for pgx in this process, never for arguments or logs).
func ConnString(params map[string]string) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+quoteValue(params[k]))
	}
	return strings.Join(parts, " ")
}

func quoteValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Explain turns an error of an ordinary connection made with s's settings
// (by pgx, say) into the same advice Connect gives.
func (s Source) Explain(err error) error {
	c, perr := s.Config()
	if perr != nil {
		return perr
	}
	return s.explain(err, c, false)
}
