package synapse

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// testdata is the fixtures directory, absolute, as Load reports paths.
func testdata(t *testing.T, parts ...string) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join(append([]string{"testdata"}, parts...)...))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func TestLoadFull(t *testing.T) {
	h, err := Load([]string{"testdata/full.yaml"}, "/var/lib/matrix-synapse")
	if err != nil {
		t.Fatal(err)
	}
	want := &Homeserver{
		Files:      []string{testdata(t, "full.yaml")},
		ConfigDir:  testdata(t),
		Workdir:    "/var/lib/matrix-synapse",
		ServerName: "matrix.example.com",
		Databases: []Database{{
			Name:       "master",
			Engine:     "psycopg2",
			DataStores: []string{"main", "state"},
			Params: map[string]string{
				"user":            "synapse_user",
				"password":        `s3cr3t pass'word\x`,
				"dbname":          "synapse",
				"host":            "db.internal",
				"port":            "5432",
				"sslmode":         "verify-full",
				"keepalives_idle": "10",
			},
		}},
		MediaStorePath:          "/var/lib/matrix-synapse/media",
		EnableLocalMediaStorage: true,
		MediaStorageProviders: []MediaStorageProvider{
			{
				Module: "file_system", StoreLocal: true, StoreSynchronous: true,
				Config:    map[string]any{"directory": "/mnt/media-copy"},
				Directory: "/mnt/media-copy",
			},
			{
				Module: "s3_storage_provider.S3StorageProviderBackend", StoreLocal: true,
				Config: map[string]any{"bucket": "synapse-media", "secret_access_key": "AWS-SECRET"},
			},
		},
		SigningKeyPath: "/etc/matrix-synapse/homeserver.signing.key",
		OldSigningKeys: map[string]OldSigningKey{
			"ed25519:a_jFMJ": {Key: "1xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw", ExpiredTS: 1795000000000},
		},
		LogConfig: "/etc/matrix-synapse/log.yaml",
		AppServiceConfigFiles: []string{
			"/etc/matrix-synapse/appservices/telegram.yaml",
			"/etc/matrix-synapse/appservices/irc.yaml",
		},
		SecretFiles: []SecretFile{
			{Key: "registration_shared_secret_path", Path: "/etc/matrix-synapse/registration_secret", Secret: true},
			{Key: "macaroon_secret_key_path", Path: "/etc/matrix-synapse/macaroon_secret", Secret: true},
			{Key: "form_secret_path", Path: "/etc/matrix-synapse/form_secret", Secret: true},
			{Key: "turn_shared_secret_path", Path: "/etc/matrix-synapse/turn_secret", Secret: true},
			{Key: "recaptcha_private_key_path", Path: "/etc/matrix-synapse/recaptcha_private", Secret: true},
			{Key: "recaptcha_public_key_path", Path: "/etc/matrix-synapse/recaptcha_public"},
			{Key: "tls_certificate_path", Path: "/etc/matrix-synapse/tls.crt"},
			{Key: "tls_private_key_path", Path: "/etc/matrix-synapse/tls.key", Secret: true},
			{Key: "redis.password_path", Path: "/etc/matrix-synapse/redis_password", Secret: true},
		},
	}
	if diff := cmp.Diff(want, h); diff != "" {
		t.Fatalf("Load(full.yaml) mismatch (-want +got):\n%s", diff)
	}
	if got := h.MainDatabase().Name; got != "master" {
		t.Errorf("MainDatabase().Name = %q, want master", got)
	}
	if got := h.StateDatabase().Name; got != "master" {
		t.Errorf("StateDatabase().Name = %q, want master", got)
	}

	wantFiles := []File{
		{Path: testdata(t, "full.yaml"), Role: "config", Secret: true},
		{Path: "/etc/matrix-synapse/log.yaml", Role: "log_config"},
		{Path: "/etc/matrix-synapse/appservices/telegram.yaml", Role: "appservice", Secret: true},
		{Path: "/etc/matrix-synapse/appservices/irc.yaml", Role: "appservice", Secret: true},
		{Path: "/etc/matrix-synapse/homeserver.signing.key", Role: "signing_key", Secret: true},
		{Path: "/etc/matrix-synapse/registration_secret", Role: "secret:registration_shared_secret_path", Secret: true},
		{Path: "/etc/matrix-synapse/macaroon_secret", Role: "secret:macaroon_secret_key_path", Secret: true},
		{Path: "/etc/matrix-synapse/form_secret", Role: "secret:form_secret_path", Secret: true},
		{Path: "/etc/matrix-synapse/turn_secret", Role: "secret:turn_shared_secret_path", Secret: true},
		{Path: "/etc/matrix-synapse/recaptcha_private", Role: "secret:recaptcha_private_key_path", Secret: true},
		{Path: "/etc/matrix-synapse/recaptcha_public", Role: "secret:recaptcha_public_key_path"},
		{Path: "/etc/matrix-synapse/tls.crt", Role: "secret:tls_certificate_path"},
		{Path: "/etc/matrix-synapse/tls.key", Role: "secret:tls_private_key_path", Secret: true},
		{Path: "/etc/matrix-synapse/redis_password", Role: "secret:redis.password_path", Secret: true},
	}
	if diff := cmp.Diff(wantFiles, h.BackupFiles()); diff != "" {
		t.Errorf("BackupFiles mismatch (-want +got):\n%s", diff)
	}

	for _, p := range h.MediaStorageProviders {
		if s := p.String(); strings.Contains(s, "AWS-SECRET") || strings.Contains(s, "synapse-media") {
			t.Errorf("MediaStorageProvider.String() = %q shows a config value", s)
		}
	}
	if got, want := h.MediaStorageProviders[0].String(), "file_system /mnt/media-copy (store_local, store_synchronous)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// Debian starts Synapse with -c homeserver.yaml -c conf.d/: conf.d's *.yaml
// files are read in sorted order after homeserver.yaml and replace whole
// top-level keys.
func TestLoadDebianConfD(t *testing.T) {
	h, err := Load([]string{"testdata/debian/homeserver.yaml", "testdata/debian/conf.d/"}, "/var/lib/matrix-synapse")
	if err != nil {
		t.Fatal(err)
	}
	wantFiles := []string{
		testdata(t, "debian", "homeserver.yaml"),
		testdata(t, "debian", "conf.d", "00-empty.yaml"),
		testdata(t, "debian", "conf.d", "database.yaml"),
		testdata(t, "debian", "conf.d", "report_stats.yaml"),
		testdata(t, "debian", "conf.d", "server_name.yaml"),
	}
	if diff := cmp.Diff(wantFiles, h.Files); diff != "" {
		t.Errorf("Files mismatch (-want +got):\n%s", diff)
	}
	if h.ServerName != "debian.example.org" {
		t.Errorf("ServerName = %q, want the one from conf.d/server_name.yaml", h.ServerName)
	}
	if h.ConfigDir != testdata(t, "debian", "conf.d") {
		t.Errorf("ConfigDir = %q, want the directory of the last file", h.ConfigDir)
	}
	// conf.d/database.yaml replaces the whole sqlite3 database section.
	want := Database{Name: "master", Engine: "psycopg2", DataStores: []string{"main", "state"},
		Params: map[string]string{"user": "synapse", "password": "debian-pw", "dbname": "synapse", "host": "/var/run/postgresql"}}
	if diff := cmp.Diff(want, h.MainDatabase()); diff != "" {
		t.Errorf("MainDatabase mismatch (-want +got):\n%s", diff)
	}
	if h.SigningKeyPath != "/etc/matrix-synapse/homeserver.signing.key" {
		t.Errorf("SigningKeyPath = %q", h.SigningKeyPath)
	}

	// Without conf.d the same homeserver.yaml is an SQLite one.
	_, err = Load([]string{"testdata/debian/homeserver.yaml"}, "/var/lib/matrix-synapse")
	if !IsSQLite(err) {
		t.Errorf("homeserver.yaml alone: err = %v, want an SQLite error", err)
	}
}

func TestLoadSplitDatabases(t *testing.T) {
	h, err := Load([]string{"testdata/databases.yaml"}, "/srv")
	if err != nil {
		t.Fatal(err)
	}
	main, state := h.MainDatabase(), h.StateDatabase()
	wantMain := Database{Name: "main_db", Engine: "psycopg2", DataStores: []string{"main"},
		Params: map[string]string{"user": "synapse", "password": "main-pw", "dbname": "synapse_main", "host": "main.db.internal"}}
	wantState := Database{Name: "state_db", Engine: "psycopg2", DataStores: []string{"state"},
		Params: map[string]string{"user": "synapse_state", "password": "state-pw", "dbname": "synapse_state", "host": "state.db.internal", "port": "6432"}}
	if diff := cmp.Diff(wantMain, main); diff != "" {
		t.Errorf("MainDatabase mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantState, state); diff != "" {
		t.Errorf("StateDatabase mismatch (-want +got):\n%s", diff)
	}
	if len(h.Databases) != 2 || h.Databases[0].Name != "main_db" || h.Databases[1].Name != "state_db" {
		t.Errorf("Databases not in file order: %+v", h.Databases)
	}
}

func TestLoadRelativePaths(t *testing.T) {
	h, err := Load([]string{"testdata/relative.yaml"}, "/srv/synapse")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"MediaStorePath", h.MediaStorePath, "/srv/synapse/data/media"},
		{"LogConfig", h.LogConfig, "/srv/synapse/rel.log.config"},
		// No signing_key_path: <dir of the last config file>/<server_name>.signing.key.
		{"SigningKeyPath", h.SigningKeyPath, testdata(t, "rel.example.org.signing.key")},
		{"Workdir", h.Workdir, "/srv/synapse"},
		{"Engine", h.MainDatabase().Engine, "psycopg"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if diff := cmp.Diff([]string{"/srv/synapse/bridges/a.yaml", "/abs/b.yaml"}, h.AppServiceConfigFiles); diff != "" {
		t.Errorf("AppServiceConfigFiles mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]SecretFile{{Key: "form_secret_path", Path: "/srv/synapse/secrets/form", Secret: true}}, h.SecretFiles); diff != "" {
		t.Errorf("SecretFiles mismatch (-want +got):\n%s", diff)
	}
	if h.DynamicThumbnails {
		t.Error("DynamicThumbnails = true, want the default false")
	}

	// A relative workdir is taken from the current directory.
	h, err = Load([]string{"testdata/relative.yaml"}, "testdata")
	if err != nil {
		t.Fatal(err)
	}
	if want := testdata(t, "data", "media"); h.MediaStorePath != want {
		t.Errorf("MediaStorePath = %q, want %q", h.MediaStorePath, want)
	}
}

func TestLoadDefaultMediaStore(t *testing.T) {
	h, err := Load([]string{"testdata/databases.yaml"}, "/srv")
	if err != nil {
		t.Fatal(err)
	}
	if h.MediaStorePath != "/srv/media_store" {
		t.Errorf("MediaStorePath = %q, want /srv/media_store", h.MediaStorePath)
	}
	if want := testdata(t, "split.example.org.signing.key"); h.SigningKeyPath != want {
		t.Errorf("SigningKeyPath = %q, want %q", h.SigningKeyPath, want)
	}
}

func TestLoadInlineSigningKey(t *testing.T) {
	h, err := Load([]string{"testdata/inline_key.yaml"}, "/srv")
	if err != nil {
		t.Fatal(err)
	}
	if !h.SigningKeyInline || h.SigningKeyPath != "" {
		t.Errorf("SigningKeyInline = %v, SigningKeyPath = %q; want true, \"\"", h.SigningKeyInline, h.SigningKeyPath)
	}
	if !h.DynamicThumbnails {
		t.Error("DynamicThumbnails = false, want true")
	}
	for _, f := range h.BackupFiles() {
		if f.Role == "signing_key" {
			t.Errorf("BackupFiles lists a signing key file %s for an inline key", f.Path)
		}
	}
	// The legacy backup_media_store_path is a file_system provider.
	want := []MediaStorageProvider{{Module: "file_system", StoreLocal: true, StoreRemote: true, StoreSynchronous: true,
		Config: map[string]any{"directory": "backup_media"}, Directory: "/srv/backup_media"}}
	if diff := cmp.Diff(want, h.MediaStorageProviders); diff != "" {
		t.Errorf("MediaStorageProviders mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadDSNArg(t *testing.T) {
	h, err := Load([]string{"testdata/dsn.yaml"}, "/srv")
	if err != nil {
		t.Fatal(err)
	}
	// psycopg2: the explicit arguments override the dsn's.
	want := map[string]string{"host": "dsn.host", "port": "5433", "dbname": "override", "user": "dsnuser", "password": "dsn pw"}
	if diff := cmp.Diff(want, h.MainDatabase().Params); diff != "" {
		t.Errorf("Params mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadDirectoryOnly(t *testing.T) {
	// conf.d alone sets server_name and a database: it loads on its own.
	h, err := Load([]string{"testdata/debian/conf.d"}, "/srv")
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Files) != 4 {
		t.Errorf("Files = %v, want the 4 *.yaml files of conf.d (not .yml, not README, not subdir)", h.Files)
	}
}

func TestExample(t *testing.T) {
	h, err := Load([]string{"../../examples/homeserver.yaml"}, "../../examples")
	if err != nil {
		t.Fatal(err)
	}
	ex, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "example.org" {
		t.Errorf("ServerName = %q", h.ServerName)
	}
	db := h.MainDatabase()
	for k, v := range map[string]string{"user": "synapse_user", "dbname": "synapse", "host": "127.0.0.1", "port": "5432"} {
		if db.Params[k] != v {
			t.Errorf("Params[%s] = %q, want %q", k, db.Params[k], v)
		}
	}
	if db.Params["password"] == "" {
		t.Error("example has no database password")
	}
	if h.MediaStorePath != filepath.Join(ex, "media_store") || h.SigningKeyPath != filepath.Join(ex, "example.org.signing.key") ||
		h.LogConfig != filepath.Join(ex, "example.org.log.config") {
		t.Errorf("paths not resolved against the examples dir: media %s, key %s, log %s", h.MediaStorePath, h.SigningKeyPath, h.LogConfig)
	}
	if len(h.AppServiceConfigFiles) != 2 || len(h.SecretFiles) != 3 {
		t.Errorf("AppServiceConfigFiles = %v, SecretFiles = %v", h.AppServiceConfigFiles, h.SecretFiles)
	}
}

// passwords are the passwords in the bad fixtures: no error may show them.
var passwords = []string{"hunter2", "nomain-secret", "noserver-secret", "engine-secret", "port-secret", "both-secret"}

func TestLoadErrors(t *testing.T) {
	const portDB = "https://element-hq.github.io/synapse/latest/postgres.html#porting-from-sqlite"
	const typeFix = "; correct this setting (Synapse's configuration manual documents its form)"
	const confFix = "give synbak every config file Synapse is started with (--homeserver may be repeated or name a conf.d directory)"
	tests := []struct {
		name  string
		paths []string
		kind  error
		want  string // with TD for the absolute testdata directory
	}{
		{"missing file", []string{"testdata/missing.yaml"}, ErrNotFound,
			"TD/missing.yaml: Synapse config path does not exist; --homeserver / synapse.config points to it: give the homeserver.yaml (or conf.d directory) Synapse is started with (its -c arguments)"},
		{"missing among several", []string{"testdata/full.yaml", "testdata/nope.d"}, ErrNotFound,
			"TD/nope.d: Synapse config path does not exist; --homeserver / synapse.config points to it: give the homeserver.yaml (or conf.d directory) Synapse is started with (its -c arguments)"},
		{"no paths", nil, ErrNotFound,
			"no Synapse config file given; set --homeserver or synapse.config to the homeserver.yaml (or conf.d directory) Synapse is started with (its -c arguments)"},
		{"syntax error", []string{"testdata/bad/syntax.yaml"}, ErrSyntax,
			"TD/bad/syntax.yaml:6: invalid YAML: mapping values are not allowed in this context; fix the file (Synapse cannot read it either)"},
		{"two documents", []string{"testdata/bad/twodocs.yaml"}, ErrSyntax,
			"TD/bad/twodocs.yaml:2: the file holds more than one YAML document (a second ---); Synapse reads a single document per file: remove the extra --- or move it to its own file"},
		{"not a mapping", []string{"testdata/bad/notmap.yaml"}, ErrType,
			"TD/bad/notmap.yaml:1: the top level is a list, not a mapping of settings (key: value); this does not look like a Synapse config file: check the path given to --homeserver / synapse.config"},
		{"sqlite3", []string{"testdata/bad/sqlite.yaml"}, ErrSQLite,
			"TD/bad/sqlite.yaml:3: database.name: Synapse uses SQLite (sqlite3); continuous backup needs PostgreSQL; move the homeserver to PostgreSQL with synapse_port_db first: " + portDB},
		{"engine name missing", []string{"testdata/bad/noname.yaml"}, ErrSQLite,
			"TD/bad/noname.yaml:3: database.name: not set, so Synapse uses SQLite (sqlite3); continuous backup needs PostgreSQL; if Synapse runs on PostgreSQL, set name: psycopg2 or give synbak every config file Synapse reads; to move from SQLite, use synapse_port_db: " + portDB},
		{"no database section", []string{"testdata/bad/nodb.yaml"}, ErrSQLite,
			"TD/bad/nodb.yaml: database: no database section, so Synapse can only run on SQLite (its --database-path option); continuous backup needs PostgreSQL; if Synapse runs on PostgreSQL, " + confFix + "; to move from SQLite, use synapse_port_db: " + portDB},
		{"database_path", []string{"testdata/bad/dbpath.yaml"}, ErrSQLite,
			"TD/bad/dbpath.yaml:2: database_path: Synapse uses the SQLite database named here; continuous backup needs PostgreSQL; move the homeserver to PostgreSQL with synapse_port_db first: " + portDB},
		{"unknown engine", []string{"testdata/bad/engine.yaml"}, ErrEngine,
			`TD/bad/engine.yaml:3: database.name: unknown database engine "mysql"; Synapse knows psycopg2 (PostgreSQL) and sqlite3; set name: psycopg2`},
		{"databases without main", []string{"testdata/bad/nomain.yaml"}, ErrDatabase,
			`TD/bad/nomain.yaml:3: databases: no database holds the "main" data store (Synapse refuses to start too); add main to the data_stores of one database`},
		{"main twice", []string{"testdata/bad/twomain.yaml"}, ErrDatabase,
			`TD/bad/twomain.yaml:3: databases: several databases (one, two) hold the "main" data store (Synapse refuses to start too); list main in the data_stores of one database only`},
		{"database and databases", []string{"testdata/bad/both.yaml"}, ErrDatabase,
			"TD/bad/both.yaml:5: databases: both database (in TD/bad/both.yaml) and databases are set (Synapse refuses that too); keep one of them"},
		{"database and dbname", []string{"testdata/bad/dbnameboth.yaml"}, ErrDatabase,
			"TD/bad/dbnameboth.yaml:4: database.args: both database and dbname are set (psycopg2 refuses that too); keep one of them"},
		{"no server_name", []string{"testdata/bad/noserver.yaml"}, ErrNoServerName,
			"TD/bad/noserver.yaml: server_name: not set in any config file; " + confFix},
		{"server_name a list", []string{"testdata/bad/servername.yaml"}, ErrType,
			"TD/bad/servername.yaml:1: server_name: must be a non-empty string (the domain in user ids, e.g. example.org), not a list" + typeFix},
		{"app_service_config_files not a list", []string{"testdata/bad/appservice.yaml"}, ErrType,
			"TD/bad/appservice.yaml:5: app_service_config_files: must be a list of file names, not a string" + typeFix},
		{"port a list", []string{"testdata/bad/port.yaml"}, ErrType,
			"TD/bad/port.yaml:7: database.args.port: must be a single value, not a list" + typeFix},
		{"dynamic_thumbnails not a boolean", []string{"testdata/bad/dynthumb.yaml"}, ErrType,
			"TD/bad/dynthumb.yaml:5: dynamic_thumbnails: must be true or false, not a string" + typeFix},
		{"file_system provider without directory", []string{"testdata/bad/provider.yaml"}, ErrType,
			"TD/bad/provider.yaml:5: media_storage_providers[0].config.directory: not set: it must be the directory of the file_system provider; add it (Synapse's configuration manual documents its form)"},
	}
	td := testdata(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Load(tt.paths, "/srv")
			if err == nil {
				t.Fatalf("Load succeeded (%+v), want an error", h)
			}
			got := strings.ReplaceAll(err.Error(), td, "TD")
			if got != tt.want {
				t.Errorf("error:\n got %s\nwant %s", got, tt.want)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("errors.Is(err, %v) = false", tt.kind)
			}
			if !IsInvalid(err) {
				t.Error("IsInvalid(err) = false")
			}
			if IsSQLite(err) != (tt.kind == ErrSQLite) || IsNotExist(err) != (tt.kind == ErrNotFound) {
				t.Errorf("IsSQLite = %v, IsNotExist = %v for kind %v", IsSQLite(err), IsNotExist(err), tt.kind)
			}
			for _, pw := range passwords {
				if strings.Contains(err.Error(), pw) {
					t.Errorf("error shows password %q", pw)
				}
			}
		})
	}
}

func TestLoadMissingFileIsFSNotExist(t *testing.T) {
	_, err := Load([]string{"testdata/missing.yaml"}, "")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("errors.Is(err, os.ErrNotExist) = false for %v", err)
	}
}

func TestLoadUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		// root reads any file; simulate with a directory entry that is a dangling symlink instead.
		dir := t.TempDir()
		link := filepath.Join(dir, "homeserver.yaml")
		if err := os.Symlink(filepath.Join(dir, "gone"), link); err != nil {
			t.Fatal(err)
		}
		_, err := Load([]string{link}, dir)
		if !IsNotExist(err) {
			t.Errorf("dangling symlink: err = %v, want not found", err)
		}
		return
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "homeserver.yaml")
	if err := os.WriteFile(f, []byte("server_name: x\n"), 0o000); err != nil {
		t.Fatal(err)
	}
	_, err := Load([]string{f}, dir)
	if !errors.Is(err, ErrUnreadable) {
		t.Errorf("err = %v, want ErrUnreadable", err)
	}
}

// PyYAML rules: repeated keys keep the last value, merge keys are honoured,
// and plain yes/no are booleans.
func TestLoadPyYAMLSemantics(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "homeserver.yaml")
	conf := `
defaults: &pg
  name: psycopg2
  args: {user: synapse, dbname: synapse}
server_name: first.example.org
server_name: second.example.org
database:
  <<: *pg
  args:
    user: merged
    password: on
    dbname: 0x10
    port: 05432
dynamic_thumbnails: yes
`
	if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := Load([]string{f}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "second.example.org" {
		t.Errorf("ServerName = %q, want the last one", h.ServerName)
	}
	if !h.DynamicThumbnails {
		t.Error("dynamic_thumbnails: yes is not true")
	}
	// Python's str() of the values PyYAML makes: True, 16, 2842 (octal).
	want := map[string]string{"user": "merged", "password": "True", "dbname": "16", "port": "2842"}
	if diff := cmp.Diff(want, h.MainDatabase().Params); diff != "" {
		t.Errorf("Params mismatch (-want +got):\n%s", diff)
	}
}
