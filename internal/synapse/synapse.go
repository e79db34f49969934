// Package synapse reads a Synapse homeserver's configuration the way Synapse
// does and reports what a backup needs: the databases, the media store, the
// signing key and every file the configuration depends on.
//
// Synapse takes one or more -c arguments, each a file or a directory whose
// *.yaml files are read in sorted order (Debian: -c homeserver.yaml -c
// conf.d/). Files are read in order and merged with a shallow update: a later
// file replaces a whole top-level key. Relative paths in the configuration are
// relative to Synapse's working directory; the default signing key lives in
// the directory of the last config file.
package synapse

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Homeserver is what synbak needs to know about a Synapse homeserver.
type Homeserver struct {
	// Files are the config files read, absolute, in the order Synapse reads them.
	Files []string
	// ConfigDir is the directory of the last config file, where Synapse keeps
	// files whose path the configuration does not give (the signing key).
	ConfigDir string
	// Workdir is Synapse's working directory, which relative paths are
	// relative to (absolute).
	Workdir string
	// ServerName is server_name.
	ServerName string
	// Databases are the PostgreSQL databases: one for the classic `database:`
	// section, one per entry of `databases:` in the file's order.
	Databases []Database
	// MediaStorePath is media_store_path, absolute (default "media_store" in Workdir).
	MediaStorePath string
	// EnableLocalMediaStorage is enable_local_media_storage (default true);
	// when false, media live only in the storage providers.
	EnableLocalMediaStorage bool
	// DynamicThumbnails is dynamic_thumbnails (default false): when true,
	// Synapse makes thumbnails on demand and local_thumbnails need no backup.
	DynamicThumbnails bool
	// MediaStorageProviders are media_storage_providers (and the legacy
	// backup_media_store_path), extra copies of the media.
	MediaStorageProviders []MediaStorageProvider
	// SigningKeyPath is signing_key_path, absolute (default
	// <ConfigDir>/<server_name>.signing.key); "" when SigningKeyInline.
	SigningKeyPath string
	// SigningKeyInline is true when the key is given inline (signing_key) and
	// so is backed up with the config file.
	SigningKeyInline bool
	// OldSigningKeys are old_signing_keys, by key id ("ed25519:a_jFMJ").
	OldSigningKeys map[string]OldSigningKey
	// LogConfig is log_config, absolute, or "".
	LogConfig string
	// AppServiceConfigFiles are app_service_config_files, absolute.
	AppServiceConfigFiles []string
	// SecretFiles are the file-valued secrets and keys the configuration names.
	SecretFiles []SecretFile
}

// OldSigningKey is a signing key the server no longer uses.
type OldSigningKey struct {
	// Key is the unpadded base64 Ed25519 public key.
	Key string
	// ExpiredTS is when it stopped being used, in milliseconds since the epoch.
	ExpiredTS int64
}

// SecretFile is a setting whose value is the path of a file holding a
// secret or key (form_secret_path, tls_private_key_path, redis.password_path ...).
type SecretFile struct {
	// Key is the setting's dotted name (macaroon_secret_key_path, redis.password_path).
	Key string
	// Path is the file, absolute.
	Path string
	// Secret is false for the settings that name public material
	// (tls_certificate_path, recaptcha_public_key_path).
	Secret bool
}

// MediaStorageProvider is an entry of media_storage_providers.
type MediaStorageProvider struct {
	// Module is the provider's module as written ("file_system",
	// "s3_storage_provider.S3StorageProviderBackend", ...).
	Module string
	// StoreLocal, StoreRemote and StoreSynchronous are the entry's store_* flags.
	StoreLocal, StoreRemote, StoreSynchronous bool
	// Config is the entry's config mapping. It may hold credentials (an S3
	// secret key): never print it.
	Config map[string]any
	// Directory is, for a file_system provider, its directory, absolute; "" otherwise.
	Directory string
}

// IsFileSystem reports whether the provider is Synapse's file_system one.
func (p MediaStorageProvider) IsFileSystem() bool { return isFileSystemModule(p.Module) }

// String describes the provider without any of its config values.
func (p MediaStorageProvider) String() string {
	var flags []string
	if p.StoreLocal {
		flags = append(flags, "store_local")
	}
	if p.StoreRemote {
		flags = append(flags, "store_remote")
	}
	if p.StoreSynchronous {
		flags = append(flags, "store_synchronous")
	}
	s := p.Module
	if p.Directory != "" {
		s += " " + p.Directory
	}
	if len(flags) > 0 {
		s += " (" + strings.Join(flags, ", ") + ")"
	}
	return s
}

func isFileSystemModule(m string) bool {
	switch m {
	case "file_system", "synapse.rest.media.v1.storage_provider",
		"synapse.media.storage_provider.FileStorageProviderBackend",
		"synapse.rest.media.v1.storage_provider.FileStorageProviderBackend":
		return true
	}
	return false
}

// File is a file a config snapshot must hold.
type File struct {
	// Path is the file, absolute.
	Path string
	// Role says why it is needed: "config", "log_config", "appservice",
	// "signing_key" or "secret:<setting>" (secret:form_secret_path).
	Role string
	// Secret is true for files that hold credentials or keys (config files
	// included: homeserver.yaml holds the database password).
	Secret bool
}

// MainDatabase is the database that holds the "main" data store.
func (h *Homeserver) MainDatabase() Database { return h.databaseHolding("main") }

// StateDatabase is the database that holds the "state" data store.
func (h *Homeserver) StateDatabase() Database { return h.databaseHolding("state") }

func (h *Homeserver) databaseHolding(store string) Database {
	for _, d := range h.Databases {
		if d.Holds(store) {
			return d
		}
	}
	return Database{} // Load guarantees there is one
}

// BackupFiles lists every file a config snapshot must hold, each once, in a
// stable order: the config files, log_config, the app service files, the
// signing key (unless inline) and the secret files. It does not check that
// they exist.
func (h *Homeserver) BackupFiles() []File {
	var out []File
	seen := map[string]bool{}
	add := func(path, role string, secret bool) {
		if path == "" || seen[path] {
			return
		}
		seen[path] = true
		out = append(out, File{Path: path, Role: role, Secret: secret})
	}
	for _, f := range h.Files {
		add(f, "config", true)
	}
	add(h.LogConfig, "log_config", false)
	for _, f := range h.AppServiceConfigFiles {
		add(f, "appservice", true)
	}
	if !h.SigningKeyInline {
		add(h.SigningKeyPath, "signing_key", true)
	}
	for _, s := range h.SecretFiles {
		add(s.Path, "secret:"+s.Key, s.Secret)
	}
	return out
}

// secretPathKeys are the settings whose value is a file holding a secret or
// key, as Synapse reads them (synapse/config/*.py). Nested ones are dotted.
var secretPathKeys = []struct {
	key    string
	secret bool
}{
	{"registration_shared_secret_path", true},
	{"macaroon_secret_key_path", true},
	{"form_secret_path", true},
	{"worker_replication_secret_path", true},
	{"turn_shared_secret_path", true},
	{"recaptcha_private_key_path", true},
	{"recaptcha_public_key_path", false},
	{"tls_certificate_path", false},
	{"tls_private_key_path", true},
	{"key_server_signing_keys_path", true},
	{"redis.password_path", true},
	{"matrix_authentication_service.secret_path", true},
	{"experimental_features.msc3861.client_secret_path", true},
	{"experimental_features.msc3861.admin_token_path", true},
}

// Load reads Synapse's configuration from paths (files or directories, in the
// order Synapse's -c arguments give them; relative ones are relative to the
// current directory) and resolves the relative paths inside it against
// workdir, Synapse's working directory ("" means the current directory).
//
// Every error is an *Error (IsInvalid is true) matching one of the package's
// sentinels; none holds a password.
func Load(paths []string, workdir string) (*Homeserver, error) {
	if len(paths) == 0 {
		return nil, &Error{Kind: ErrNotFound, Problem: "no Synapse config file given",
			Fix: "set --homeserver or synapse.config to the homeserver.yaml (or conf.d directory) Synapse is started with (its -c arguments)"}
	}
	if workdir == "" {
		workdir = "."
	}
	wd, err := filepath.Abs(workdir)
	if err != nil {
		return nil, fmt.Errorf("resolve synapse.workdir: %w", err)
	}
	files, err := findConfigFiles(paths)
	if err != nil {
		return nil, err
	}

	top := map[string]entry{}
	for _, f := range files {
		n, err := readYAML(f)
		if err != nil {
			return nil, err
		}
		for _, kv := range entries(n) {
			top[kv.key] = entry{node: kv.value, file: f}
		}
	}
	c := &cfg{top: top, files: files, workdir: wd}
	h := &Homeserver{
		Files:     files,
		ConfigDir: filepath.Dir(files[len(files)-1]),
		Workdir:   wd,
	}
	if err := c.read(h); err != nil {
		return nil, err
	}
	return h, nil
}

// findConfigFiles expands the -c arguments as Synapse's find_config_files
// does: a directory contributes its regular *.yaml files in sorted order
// (other entries are ignored).
func findConfigFiles(paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", p, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, &Error{Kind: ErrNotFound, File: abs, Problem: "Synapse config path does not exist",
					Fix: "--homeserver / synapse.config points to it: give the homeserver.yaml (or conf.d directory) Synapse is started with (its -c arguments)",
					Err: err}
			}
			return nil, &Error{Kind: ErrUnreadable, File: abs, Problem: "cannot read the Synapse config path: " + causeText(err),
				Fix: "check that the user running synbak can read it", Err: err}
		}
		if !st.IsDir() {
			files = append(files, abs)
			continue
		}
		des, err := os.ReadDir(abs)
		if err != nil {
			return nil, &Error{Kind: ErrUnreadable, File: abs, Problem: "cannot list the Synapse config directory: " + causeText(err),
				Fix: "check that the user running synbak can read it", Err: err}
		}
		var found []string
		for _, de := range des {
			full := filepath.Join(abs, de.Name())
			if !strings.HasSuffix(de.Name(), ".yaml") {
				continue
			}
			if fi, err := os.Stat(full); err != nil || !fi.Mode().IsRegular() {
				continue // Synapse skips what os.path.isfile rejects
			}
			found = append(found, full)
		}
		sort.Strings(found)
		files = append(files, found...)
	}
	if len(files) == 0 {
		return nil, &Error{Kind: ErrNotFound, File: strings.Join(paths, ", "), Problem: "no *.yaml config file found",
			Fix: "--homeserver / synapse.config points to it: give the homeserver.yaml (or conf.d directory) Synapse is started with (its -c arguments)"}
	}
	return files, nil
}

// cfg is the merged top level of the config files.
type cfg struct {
	top     map[string]entry
	files   []string
	workdir string
}

// get returns a top-level value (nil when absent or null) and its file.
func (c *cfg) get(key string) (*yaml.Node, string) {
	e, ok := c.top[key]
	if !ok || isNull(e.node) {
		return nil, ""
	}
	return e.node, e.file
}

// str reads an optional string setting; "" when absent, null or empty.
func (c *cfg) str(key string) (string, string, int, error) {
	n, file := c.get(key)
	if n == nil {
		return "", "", 0, nil
	}
	if scalarTag(n) != "!!str" {
		return "", "", 0, typeError(file, n, key, "a string")
	}
	return n.Value, file, n.Line, nil
}

// path reads an optional path setting, absolute against the working directory.
func (c *cfg) path(key string) (string, error) {
	s, _, _, err := c.str(key)
	if err != nil || s == "" {
		return "", err
	}
	return c.abs(s), nil
}

func (c *cfg) abs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(c.workdir, p)
}

// boolean reads an optional boolean setting.
func (c *cfg) boolean(key string, def bool) (bool, error) {
	n, file := c.get(key)
	if n == nil {
		return def, nil
	}
	b, ok := scalarBool(n)
	if !ok {
		return false, typeError(file, n, key, "true or false")
	}
	return b, nil
}

func (c *cfg) read(h *Homeserver) error {
	// server_name: Synapse refuses to start without it.
	n, file := c.get("server_name")
	if n == nil {
		return &Error{Kind: ErrNoServerName, File: strings.Join(c.files, ", "), Key: "server_name",
			Problem: "not set in any config file",
			Fix:     "give synbak every config file Synapse is started with (--homeserver may be repeated or name a conf.d directory)"}
	}
	if scalarTag(n) != "!!str" || n.Value == "" {
		return typeError(file, n, "server_name", "a non-empty string (the domain in user ids, e.g. example.org)")
	}
	h.ServerName = n.Value

	if err := c.readDatabases(h); err != nil {
		return err
	}

	var err error
	if h.MediaStorePath, err = c.path("media_store_path"); err != nil {
		return err
	}
	if h.MediaStorePath == "" {
		h.MediaStorePath = c.abs("media_store")
	}
	if h.EnableLocalMediaStorage, err = c.boolean("enable_local_media_storage", true); err != nil {
		return err
	}
	if h.DynamicThumbnails, err = c.boolean("dynamic_thumbnails", false); err != nil {
		return err
	}
	if err := c.readStorageProviders(h); err != nil {
		return err
	}

	if err := c.readSigningKey(h); err != nil {
		return err
	}
	if h.LogConfig, err = c.path("log_config"); err != nil {
		return err
	}
	if n, file := c.get("app_service_config_files"); n != nil {
		list, err := stringList(file, n, "app_service_config_files", "a list of file names")
		if err != nil {
			return err
		}
		for _, f := range list {
			h.AppServiceConfigFiles = append(h.AppServiceConfigFiles, c.abs(f))
		}
	}
	return c.readSecretFiles(h)
}

func (c *cfg) readDatabases(h *Homeserver) error {
	single, singleFile := c.get("database")
	multi, multiFile := c.get("databases")
	// Synapse tests these for truthiness: an empty mapping counts as absent.
	if single != nil && single.Kind == yaml.MappingNode && len(single.Content) == 0 {
		single = nil
	}
	if multi != nil && multi.Kind == yaml.MappingNode && len(multi.Content) == 0 {
		multi = nil
	}
	dbPath, dbPathFile := c.get("database_path")

	switch {
	case single != nil && multi != nil:
		return &Error{Kind: ErrDatabase, File: multiFile, Line: multi.Line, Key: "databases",
			Problem: "both database (in " + singleFile + ") and databases are set (Synapse refuses that too)",
			Fix:     "keep one of them"}
	case multi != nil && dbPath != nil:
		return &Error{Kind: ErrDatabase, File: dbPathFile, Line: dbPath.Line, Key: "database_path",
			Problem: "database_path (an SQLite file) is set together with databases (Synapse refuses that too)",
			Fix:     "remove database_path"}
	case single == nil && multi == nil && dbPath != nil:
		return &Error{Kind: ErrSQLite, File: dbPathFile, Line: dbPath.Line, Key: "database_path",
			Problem: "Synapse uses the SQLite database named here; continuous backup needs PostgreSQL",
			Fix:     "move the homeserver to PostgreSQL with synapse_port_db first: " + PortDBDoc}
	case single == nil && multi == nil:
		return &Error{Kind: ErrSQLite, File: strings.Join(c.files, ", "), Key: "database",
			Problem: "no database section, so Synapse can only run on SQLite (its --database-path option); continuous backup needs PostgreSQL",
			Fix:     "if Synapse runs on PostgreSQL, give synbak every config file Synapse is started with (--homeserver may be repeated or name a conf.d directory); to move from SQLite, use synapse_port_db: " + PortDBDoc}
	}

	if single != nil {
		db, err := parseDatabase("master", single, singleFile, "database")
		if err != nil {
			return err
		}
		h.Databases = []Database{db}
	} else {
		if multi.Kind != yaml.MappingNode {
			return typeError(multiFile, multi, "databases", "a mapping from a name to a database (name, args, data_stores)")
		}
		for _, kv := range unique(entries(multi)) {
			db, err := parseDatabase(kv.key, kv.value, multiFile, "databases."+kv.key)
			if err != nil {
				return err
			}
			h.Databases = append(h.Databases, db)
		}
	}

	for _, store := range []string{"main", "state"} {
		var holders []string
		for _, d := range h.Databases {
			if d.Holds(store) {
				holders = append(holders, d.Name)
			}
		}
		file, line, key := singleFile, 0, "database.data_stores"
		if single != nil {
			line = single.Line
		} else {
			file, line, key = multiFile, multi.Line, "databases"
		}
		switch len(holders) {
		case 0:
			return &Error{Kind: ErrDatabase, File: file, Line: line, Key: key,
				Problem: fmt.Sprintf("no database holds the %q data store (Synapse refuses to start too)", store),
				Fix:     fmt.Sprintf("add %s to the data_stores of one database", store)}
		case 1:
		default:
			return &Error{Kind: ErrDatabase, File: file, Line: line, Key: key,
				Problem: fmt.Sprintf("several databases (%s) hold the %q data store (Synapse refuses to start too)", strings.Join(holders, ", "), store),
				Fix:     fmt.Sprintf("list %s in the data_stores of one database only", store)}
		}
	}
	return nil
}

func (c *cfg) readStorageProviders(h *Homeserver) error {
	providers, file := c.get("media_storage_providers")
	legacy, legacyFile, legacyLine, err := c.str("backup_media_store_path")
	if err != nil {
		return err
	}
	if legacy != "" {
		if providers != nil && !(providers.Kind == yaml.SequenceNode && len(providers.Content) == 0) {
			return &Error{Kind: ErrConflict, File: legacyFile, Line: legacyLine, Key: "backup_media_store_path",
				Problem: "set together with media_storage_providers (Synapse refuses that too)",
				Fix:     "keep one of them"}
		}
		sync, err := c.boolean("synchronous_backup_media_store", false)
		if err != nil {
			return err
		}
		h.MediaStorageProviders = []MediaStorageProvider{{
			Module: "file_system", StoreLocal: true, StoreRemote: true, StoreSynchronous: sync,
			Config: map[string]any{"directory": legacy}, Directory: c.abs(legacy),
		}}
		return nil
	}
	if providers == nil {
		return nil
	}
	if providers.Kind != yaml.SequenceNode {
		return typeError(file, providers, "media_storage_providers", "a list of providers (module, config, store_local, ...)")
	}
	for i, item := range providers.Content {
		item = deref(item)
		key := fmt.Sprintf("media_storage_providers[%d]", i)
		if item.Kind != yaml.MappingNode {
			return typeError(file, item, key, "a mapping (module, config, store_local, ...)")
		}
		var p MediaStorageProvider
		mod := lookup(item, "module")
		if isNull(mod) {
			return missingError(file, item, key+".module", "the provider's module name (e.g. file_system)")
		}
		if scalarTag(mod) != "!!str" || mod.Value == "" {
			return typeError(file, mod, key+".module", "the provider's module name (e.g. file_system)")
		}
		p.Module = mod.Value
		for _, f := range []struct {
			name string
			dst  *bool
		}{{"store_local", &p.StoreLocal}, {"store_remote", &p.StoreRemote}, {"store_synchronous", &p.StoreSynchronous}} {
			n := lookup(item, f.name)
			if isNull(n) {
				continue
			}
			b, ok := scalarBool(n)
			if !ok {
				return typeError(file, n, key+"."+f.name, "true or false")
			}
			*f.dst = b
		}
		conf := lookup(item, "config")
		if !isNull(conf) {
			if conf.Kind != yaml.MappingNode {
				return typeError(file, conf, key+".config", "a mapping")
			}
			p.Config, _ = toValue(conf).(map[string]any)
		}
		if p.IsFileSystem() {
			dir := lookup(conf, "directory")
			if isNull(dir) {
				return missingError(file, item, key+".config.directory", "the directory of the file_system provider")
			}
			if scalarTag(dir) != "!!str" || dir.Value == "" {
				return typeError(file, dir, key+".config.directory", "the directory of the file_system provider")
			}
			p.Directory = c.abs(dir.Value)
		}
		h.MediaStorageProviders = append(h.MediaStorageProviders, p)
	}
	return nil
}

func (c *cfg) readSigningKey(h *Homeserver) error {
	if n, file := c.get("signing_key"); n != nil {
		if scalarTag(n) != "!!str" {
			return typeError(file, n, "signing_key", "a string (ed25519 <version> <base64 seed>)")
		}
		h.SigningKeyInline = true
	} else {
		p, err := c.path("signing_key_path")
		if err != nil {
			return err
		}
		if p == "" {
			p = filepath.Join(h.ConfigDir, h.ServerName+".signing.key")
		}
		h.SigningKeyPath = p
	}

	n, file := c.get("old_signing_keys")
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return typeError(file, n, "old_signing_keys", "a mapping from key id to {key, expired_ts}")
	}
	h.OldSigningKeys = map[string]OldSigningKey{}
	for _, kv := range unique(entries(n)) {
		key := "old_signing_keys." + kv.key
		if kv.value.Kind != yaml.MappingNode {
			return typeError(file, kv.value, key, "a mapping {key, expired_ts}")
		}
		k := lookup(kv.value, "key")
		if isNull(k) {
			return missingError(file, kv.value, key+".key", "the public key (unpadded base64)")
		}
		if scalarTag(k) != "!!str" {
			return typeError(file, k, key+".key", "the public key (unpadded base64)")
		}
		ts := lookup(kv.value, "expired_ts")
		if isNull(ts) {
			return missingError(file, kv.value, key+".expired_ts", "a time in milliseconds since 1970")
		}
		var v int64
		if scalarTag(ts) != "!!int" || ts.Decode(&v) != nil {
			return typeError(file, ts, key+".expired_ts", "a time in milliseconds since 1970")
		}
		h.OldSigningKeys[kv.key] = OldSigningKey{Key: k.Value, ExpiredTS: v}
	}
	return nil
}

func (c *cfg) readSecretFiles(h *Homeserver) error {
	for _, s := range secretPathKeys {
		parts := strings.Split(s.key, ".")
		n, file := c.get(parts[0])
		for i, part := range parts[1:] {
			if n == nil {
				break
			}
			if n.Kind != yaml.MappingNode {
				return typeError(file, n, strings.Join(parts[:i+1], "."), "a mapping")
			}
			n = lookup(n, part)
			if isNull(n) {
				n = nil
			}
		}
		if n == nil {
			continue
		}
		if scalarTag(n) != "!!str" {
			return typeError(file, n, s.key, "a file name")
		}
		if n.Value == "" {
			continue // Synapse ignores an empty path
		}
		h.SecretFiles = append(h.SecretFiles, SecretFile{Key: s.key, Path: c.abs(n.Value), Secret: s.secret})
	}
	return nil
}
