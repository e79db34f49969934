package synapse

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// PortDBDoc is Synapse's guide to moving a homeserver from SQLite to
// PostgreSQL with synapse_port_db.
const PortDBDoc = "https://element-hq.github.io/synapse/latest/postgres.html#porting-from-sqlite"

// Database is one PostgreSQL database of the homeserver.
type Database struct {
	// Name is the entry's key under `databases:`, or "master" for the
	// classic `database:` form (Synapse's own name for it).
	Name string
	// Engine is database.name: "psycopg2" (or "psycopg").
	Engine string
	// DataStores are the Synapse data stores in this database: ["main",
	// "state"] unless `data_stores` says otherwise.
	DataStores []string
	// Params are the libpq keywords psycopg2 receives: every `args` key
	// except cp_* ones, `database` renamed to `dbname`, settings of an `args.dsn`
	// merged underneath, values as the strings Python's str() makes of them
	// (port: 5432 → "5432"), null values dropped. It holds the password.
	Params map[string]string
}

// Holds reports whether the database holds the given data store.
func (d Database) Holds(store string) bool { return slices.Contains(d.DataStores, store) }

// secretParams are libpq keywords whose values are never shown.
var secretParams = map[string]bool{"password": true, "sslpassword": true}

// paramOrder puts the connection's identity first in a conninfo string.
var paramOrder = []string{"host", "hostaddr", "port", "dbname", "user", "password"}

// ConnString is the database as a libpq keyword/value conninfo string, quoted
// so that any value (spaces, quotes, backslashes, empty) survives; usable by
// pgconn.ParseConfig and libpq. It holds the password: never log it.
func (d Database) ConnString() string { return d.conninfo(false) }

// Redacted is ConnString with password values replaced by REDACTED, for logs
// and `config check`.
func (d Database) Redacted() string { return d.conninfo(true) }

func (d Database) conninfo(redact bool) string {
	keys := make([]string, 0, len(d.Params))
	for _, k := range paramOrder {
		if _, ok := d.Params[k]; ok {
			keys = append(keys, k)
		}
	}
	var rest []string
	for k := range d.Params {
		if !slices.Contains(paramOrder, k) {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	keys = append(keys, rest...)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := d.Params[k]
		if redact && secretParams[k] {
			v = "REDACTED"
		}
		parts = append(parts, k+"="+quoteConnValue(v))
	}
	return strings.Join(parts, " ")
}

// quoteConnValue quotes a conninfo value when libpq needs it to: empty, or
// holding whitespace, a quote or a backslash.
func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}

// keyword is what a libpq keyword may look like.
var keyword = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseDatabase reads one database entry (the `database:` section or an entry
// of `databases:`); key is its dotted name for messages.
func parseDatabase(name string, n *yaml.Node, file, key string) (Database, error) {
	if n.Kind != yaml.MappingNode {
		return Database{}, typeError(file, n, key, "a mapping (name, args, ...)")
	}
	db := Database{Name: name, Params: map[string]string{}}

	engineNode := lookup(n, "name")
	switch {
	case isNull(engineNode):
		return Database{}, &Error{Kind: ErrSQLite, File: file, Line: n.Line, Key: key + ".name",
			Problem: "not set, so Synapse uses SQLite (sqlite3); continuous backup needs PostgreSQL",
			Fix:     "if Synapse runs on PostgreSQL, set name: psycopg2 or give synbak every config file Synapse reads; to move from SQLite, use synapse_port_db: " + PortDBDoc}
	case scalarTag(engineNode) != "!!str":
		return Database{}, typeError(file, engineNode, key+".name", "a string (psycopg2)")
	}
	db.Engine = engineNode.Value
	switch db.Engine {
	case "psycopg2", "psycopg":
	case "sqlite3":
		return Database{}, &Error{Kind: ErrSQLite, File: file, Line: engineNode.Line, Key: key + ".name",
			Problem: "Synapse uses SQLite (sqlite3); continuous backup needs PostgreSQL",
			Fix:     "move the homeserver to PostgreSQL with synapse_port_db first: " + PortDBDoc}
	default:
		return Database{}, &Error{Kind: ErrEngine, File: file, Line: engineNode.Line, Key: key + ".name",
			Problem: fmt.Sprintf("unknown database engine %q", db.Engine),
			Fix:     "Synapse knows psycopg2 (PostgreSQL) and sqlite3; set name: psycopg2"}
	}

	stores := lookup(n, "data_stores")
	if isNull(stores) {
		db.DataStores = []string{"main", "state"}
	} else {
		list, err := stringList(file, stores, key+".data_stores", "a list of data store names (main, state)")
		if err != nil {
			return Database{}, err
		}
		db.DataStores = list
	}

	args := lookup(n, "args")
	if isNull(args) {
		return db, nil
	}
	if args.Kind != yaml.MappingNode {
		return Database{}, typeError(file, args, key+".args", "a mapping of connection settings (user, password, database, host, ...)")
	}
	explicit := map[string]string{}
	var dsn string
	hasDSN, hasDatabase, hasDBName := false, false, false
	for _, kv := range unique(entries(args)) {
		k := kv.key
		if strings.HasPrefix(k, "cp_") {
			continue // Twisted connection pool settings, not libpq's
		}
		if kv.value.Kind != yaml.ScalarNode {
			return Database{}, typeError(file, kv.value, key+".args."+k, "a single value")
		}
		v, ok := pythonString(kv.value)
		if !ok {
			continue // psycopg2 drops None
		}
		if strings.IndexByte(v, 0) >= 0 {
			return Database{}, &Error{Kind: ErrDatabase, File: file, Line: kv.value.Line, Key: key + ".args." + k,
				Problem: "the value holds a NUL character", Fix: "remove it"}
		}
		switch k {
		case "dsn":
			hasDSN, dsn = true, v
			continue
		case "database":
			hasDatabase, k = true, "dbname"
		case "dbname":
			hasDBName = true
		}
		if !keyword.MatchString(k) {
			return Database{}, &Error{Kind: ErrDatabase, File: file, Line: kv.value.Line, Key: key + ".args",
				Problem: fmt.Sprintf("%q is not a libpq connection keyword", k),
				Fix:     "args takes libpq keywords (user, password, dbname, host, port, sslmode, ...) and cp_* pool settings"}
		}
		explicit[k] = v
	}
	if hasDatabase && hasDBName {
		return Database{}, &Error{Kind: ErrDatabase, File: file, Line: args.Line, Key: key + ".args",
			Problem: "both database and dbname are set (psycopg2 refuses that too)", Fix: "keep one of them"}
	}
	if hasDSN {
		params, err := parseConnInfo(dsn)
		if err != nil {
			return Database{}, &Error{Kind: ErrDatabase, File: file, Line: args.Line, Key: key + ".args.dsn",
				Problem: "cannot parse the connection string: " + err.Error(),
				Fix:     "write it as libpq keyword=value pairs or a postgresql:// URL, or use separate args keys"}
		}
		for k, v := range params {
			db.Params[k] = v
		}
	}
	for k, v := range explicit {
		db.Params[k] = v // psycopg2: explicit arguments override the dsn's
	}
	return db, nil
}

// parseConnInfo reads a libpq connection string (keyword/value or URL form)
// into keywords. Its errors never quote the input.
func parseConnInfo(s string) (map[string]string, error) {
	if strings.HasPrefix(s, "postgresql://") || strings.HasPrefix(s, "postgres://") {
		return parseConnURL(s)
	}
	out := map[string]string{}
	s = strings.TrimLeft(s, " \t\n\r\v\f")
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, errors.New(`missing "=" after a keyword`)
		}
		k := strings.TrimSpace(s[:eq])
		if !keyword.MatchString(k) {
			return nil, errors.New("invalid keyword")
		}
		s = strings.TrimLeft(s[eq+1:], " \t\n\r\v\f")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			s = s[1:]
			closed := false
			for len(s) > 0 {
				c := s[0]
				s = s[1:]
				if c == '\\' && len(s) > 0 {
					val.WriteByte(s[0])
					s = s[1:]
					continue
				}
				if c == '\'' {
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return nil, errors.New("unterminated quoted value")
			}
		} else {
			for len(s) > 0 && !strings.ContainsRune(" \t\n\r\v\f", rune(s[0])) {
				c := s[0]
				s = s[1:]
				if c == '\\' && len(s) > 0 {
					c = s[0]
					s = s[1:]
				}
				val.WriteByte(c)
			}
		}
		if k == "database" {
			k = "dbname"
		}
		out[k] = val.String()
		s = strings.TrimLeft(s, " \t\n\r\v\f")
	}
	return out, nil
}

// parseConnURL reads postgresql://user:password@host:port,host2:port2/dbname?k=v.
func parseConnURL(s string) (map[string]string, error) {
	out := map[string]string{}
	rest := s[strings.Index(s, "://")+3:]
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		q, err := url.ParseQuery(rest[i+1:])
		if err != nil {
			return nil, errors.New("invalid query parameters")
		}
		for k, v := range q {
			if !keyword.MatchString(k) || len(v) == 0 {
				return nil, errors.New("invalid query parameter")
			}
			out[k] = v[len(v)-1]
		}
		rest = rest[:i]
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		db, err := url.PathUnescape(rest[i+1:])
		if err != nil {
			return nil, errors.New("invalid database name encoding")
		}
		if db != "" {
			out["dbname"] = db
		}
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		userinfo := rest[:i]
		rest = rest[i+1:]
		user, pass, hasPass := strings.Cut(userinfo, ":")
		u, err := url.PathUnescape(user)
		if err != nil {
			return nil, errors.New("invalid user name encoding")
		}
		if u != "" {
			out["user"] = u
		}
		if hasPass {
			p, err := url.PathUnescape(pass)
			if err != nil {
				return nil, errors.New("invalid password encoding")
			}
			out["password"] = p
		}
	}
	if rest != "" {
		var hosts, ports []string
		anyPort := false
		for _, hp := range strings.Split(rest, ",") {
			host, port := hp, ""
			if strings.HasPrefix(hp, "[") {
				end := strings.IndexByte(hp, ']')
				if end < 0 {
					return nil, errors.New("unterminated IPv6 address")
				}
				host = hp[1:end]
				port = strings.TrimPrefix(hp[end+1:], ":")
			} else if i := strings.LastIndexByte(hp, ':'); i >= 0 {
				host, port = hp[:i], hp[i+1:]
			}
			h, err := url.PathUnescape(host)
			if err != nil {
				return nil, errors.New("invalid host encoding")
			}
			hosts = append(hosts, h)
			ports = append(ports, port)
			anyPort = anyPort || port != ""
		}
		if strings.Join(hosts, "") != "" {
			out["host"] = strings.Join(hosts, ",")
		}
		if anyPort {
			out["port"] = strings.Join(ports, ",")
		}
	}
	return out, nil
}

// stringList reads a list of non-empty strings.
func stringList(file string, n *yaml.Node, key, want string) ([]string, error) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		return nil, typeError(file, n, key, want)
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		c = deref(c)
		if scalarTag(c) != "!!str" || c.Value == "" {
			return nil, typeError(file, c, fmt.Sprintf("%s[%d]", key, i), "a non-empty string")
		}
		out = append(out, c.Value)
	}
	return out, nil
}
