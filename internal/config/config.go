// Package config holds synbak's typed configuration: the struct every
// command receives, its defaults, and its validation. Reading the YAML file,
// the SYNBAK_* environment and the flags into it is cmd/synbak's job (viper
// lives only there); this package knows nothing about where values came from.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is synbak's whole configuration. The mapstructure tags are the keys
// of synbak.yaml (dotted paths for nested keys).
type Config struct {
	Synapse    Synapse    `mapstructure:"synapse"`
	Repository Repository `mapstructure:"repository"`
	Postgres   Postgres   `mapstructure:"postgres"`
	WAL        WAL        `mapstructure:"wal"`
	HTTP       HTTP       `mapstructure:"http"`
	StateDir   string     `mapstructure:"state_dir"`
	// ShutdownTimeout is the shutdown budget of `agent` and `wal stream`:
	// after SIGTERM they store what they can of the WAL spool within it
	// (what is left stays fsynced in the spool for the next start) and
	// exit 0. Keep it below systemd's TimeoutStopSec.
	ShutdownTimeout Duration   `mapstructure:"shutdown_timeout"`
	Basebackup      Basebackup `mapstructure:"basebackup"`
	Retention       Retention  `mapstructure:"retention"`
	Dump            Dump       `mapstructure:"dump"`
	Log             Log        `mapstructure:"log"`
	Media           Media      `mapstructure:"media"`
	Health          Health     `mapstructure:"health"`
	Drill           Drill      `mapstructure:"drill"`
	Notify          Notify     `mapstructure:"notify"`
}

// Synapse says where the homeserver's configuration is.
type Synapse struct {
	// Config lists homeserver.yaml files or conf.d directories, in the
	// order Synapse's -c options take them.
	Config []string `mapstructure:"config"`
	// Workdir is Synapse's working directory: relative paths in
	// homeserver.yaml are relative to it.
	Workdir string `mapstructure:"workdir"`
}

// Repository says where backups are stored.
type Repository struct {
	// Path is a local directory.
	Path string `mapstructure:"path"`
	// URL is a repository URL: s3://bucket[/prefix], with the server and
	// credentials in S3.
	URL string `mapstructure:"url"`
	// S3 configures the S3-compatible server of an s3:// URL.
	S3 S3 `mapstructure:"s3"`
	// Encryption encrypts the repository at rest (age).
	Encryption Encryption `mapstructure:"encryption"`
	// Compression is "zstd" (smallest), "s2" (fastest: for WAL-heavy
	// servers on few cores) or "none".
	Compression string `mapstructure:"compression"`
	// ZstdLevel is the zstd level, 1 (fastest) to 22 (smallest), mapped to
	// the nearest klauspost/compress encoder level.
	ZstdLevel int `mapstructure:"zstd_level"`
}

// S3 says how to reach the S3-compatible server of repository.url.
type S3 struct {
	// Endpoint is host[:port] or http(s)://host[:port] (s3.amazonaws.com,
	// minio.example.org:9000); required.
	Endpoint string `mapstructure:"endpoint"`
	// Region is the bucket's region ("" means us-east-1).
	Region string `mapstructure:"region"`
	// AccessKeyID and SecretAccessKey are the credentials; each may
	// instead be read from a file (*File), or from AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY when neither is set.
	AccessKeyID         string `mapstructure:"access_key_id"`
	AccessKeyIDFile     string `mapstructure:"access_key_id_file"`
	SecretAccessKey     string `mapstructure:"secret_access_key"`
	SecretAccessKeyFile string `mapstructure:"secret_access_key_file"`
	// Insecure selects plain HTTP (test servers on loopback only).
	Insecure bool `mapstructure:"insecure"`
	// PathStyle addresses buckets as endpoint/bucket (self-hosted servers,
	// IP endpoints); false selects virtual-hosted bucket.endpoint.
	PathStyle bool `mapstructure:"path_style"`
	// RetryTimeout is how long an operation (a part of an upload
	// included) is retried while the server is unreachable or failing,
	// counted from its first failure: outages shorter than this pass
	// unnoticed. 0 means the default (2m).
	RetryTimeout Duration `mapstructure:"retry_timeout"`
}

// String describes the settings with the secret redacted, so that printing
// a Config (%v, %+v) never shows it.
func (s S3) String() string {
	secret := ""
	if s.SecretAccessKey != "" {
		secret = "REDACTED"
	}
	return fmt.Sprintf("{Endpoint:%s Region:%s AccessKeyID:%s AccessKeyIDFile:%s SecretAccessKey:%s SecretAccessKeyFile:%s Insecure:%t PathStyle:%t RetryTimeout:%s}",
		s.Endpoint, s.Region, s.AccessKeyID, s.AccessKeyIDFile, secret, s.SecretAccessKeyFile, s.Insecure, s.PathStyle, s.RetryTimeout)
}

// GoString is String, for %#v.
func (s S3) GoString() string { return "config.S3" + s.String() }

// Encryption configures age encryption of the repository.
type Encryption struct {
	// Recipients are age public keys ("age1..."); what is written is
	// encrypted to all of them (an offline key can be one). Set when the
	// repository is created, it makes the repository encrypted for good.
	Recipients []string `mapstructure:"recipients"`
	// IdentityFile holds the age identity (secret key) that reads the
	// repository (restore, wal-fetch, verify, drill).
	IdentityFile string `mapstructure:"identity_file"`
}

// Postgres overrides or complements the connection found in homeserver.yaml.
type Postgres struct {
	// DSN is a libpq conninfo string or URL; when set it replaces the
	// database section of homeserver.yaml for every connection synbak makes.
	DSN string `mapstructure:"dsn"`
	// DSNFile names a file holding the DSN (so that a password in it stays
	// out of synbak.yaml and the environment).
	DSNFile string `mapstructure:"dsn_file"`
	// Slot is the physical replication slot.
	Slot string `mapstructure:"slot"`
}

// WAL configures the WAL receiver.
type WAL struct {
	// StatusInterval is how often the receiver sends a standby status
	// update (and fsyncs what it has received) when nothing else prompts it.
	StatusInterval Duration `mapstructure:"status_interval"`
	// Synchronous makes the receiver fsync and report flush after every
	// message, so that it can be listed in synchronous_standby_names.
	Synchronous bool `mapstructure:"synchronous"`
	// PartialInterval is how often the open partial segment is stored in
	// the repository when it has changed (bounds the RPO on a quiet server).
	PartialInterval Duration `mapstructure:"partial_interval"`
	// PrefetchSegments is how many segments wal-fetch fetches ahead.
	PrefetchSegments int `mapstructure:"prefetch"`
}

// HTTP configures the agent's HTTP endpoint.
type HTTP struct {
	Listen string `mapstructure:"listen"`
	// AuthTokenFile and BasicAuthFile guard the endpoint (notify.go).
	AuthTokenFile  string   `mapstructure:"auth_token_file"`
	BasicAuthFile  string   `mapstructure:"basic_auth_file"`
	OverviewMaxAge Duration `mapstructure:"overview_max_age"`
}

// Basebackup configures scheduled base backups.
type Basebackup struct {
	Interval Duration `mapstructure:"interval"`
	// FullInterval: the agent's backups are incremental (PostgreSQL 17+
	// with summarize_wal on) on top of the newest complete backup while
	// the newest full backup is younger than this; 0 makes every backup
	// full.
	FullInterval Duration `mapstructure:"full_interval"`
	// Checkpoint is BASE_BACKUP's checkpoint mode: fast or spread.
	Checkpoint string `mapstructure:"checkpoint"`
	// ServerCompression is none, lz4 or zstd (the server compresses; for
	// slow links). synbak restores plain and zstd archives.
	ServerCompression string `mapstructure:"server_compression"`
	// WALTimeout bounds the wait for the backup's WAL to be archived.
	WALTimeout Duration `mapstructure:"wal_timeout"`
	// PartSizeMB bounds each stored object of an archive, in MiB.
	PartSizeMB int `mapstructure:"part_size_mb"`
	// CompressWorkers is how many goroutines compress an archive (0: one
	// per CPU).
	CompressWorkers int `mapstructure:"compress_workers"`
}

// Retention configures what prune keeps.
type Retention struct {
	Backups int      `mapstructure:"backups"`
	Window  Duration `mapstructure:"window"`
	Dumps   int      `mapstructure:"dumps"`
}

// Dump configures logical dumps.
type Dump struct {
	// Interval: the agent takes a dump this often (0: never).
	Interval Duration `mapstructure:"interval"`
	// PartSizeMB bounds each stored object of a dump, in MiB.
	PartSizeMB int `mapstructure:"part_size_mb"`
	// PgBindir holds pg_dump ("": the server's major version under
	// /usr/lib/postgresql, else a newer one).
	PgBindir string `mapstructure:"pg_bindir"`
}

// Media configures the agent's media watcher.
type Media struct {
	// Enabled turns the media watcher on (when homeserver.yaml is readable
	// and enable_local_media_storage is on).
	Enabled bool `mapstructure:"enabled"`
	// Thumbnails is "auto" (back up local_thumbnails unless Synapse's
	// dynamic_thumbnails is on), "always" or "never".
	Thumbnails string `mapstructure:"thumbnails"`
	// ScanInterval is the period of the reconciling full scan.
	ScanInterval Duration `mapstructure:"scan_interval"`
	// QuietPeriod is how long a file must be unmodified before it is copied
	// (when the database cannot confirm it is complete).
	QuietPeriod Duration `mapstructure:"quiet_period"`
}

// Health configures the agent's database probe and the thresholds of
// /healthz.
type Health struct {
	// ProbeInterval is how often the agent asks PostgreSQL for its WAL
	// position and the slot's lag.
	ProbeInterval Duration `mapstructure:"probe_interval"`
	// Disconnected: the WAL receiver not streaming for longer is unhealthy.
	Disconnected Duration `mapstructure:"disconnected"`
	// SlotLagMB: the slot further behind the server than this is unhealthy.
	SlotLagMB int `mapstructure:"slot_lag_mb"`
	// MediaBacklog: media pending for longer without the backlog shrinking
	// is unhealthy.
	MediaBacklog Duration `mapstructure:"media_backlog"`
	// WALBacklog: acknowledged WAL not in the repository for longer (or
	// finished segments waiting in the spool while nothing is archived for
	// longer) is unhealthy.
	WALBacklog Duration `mapstructure:"wal_backlog"`
}

// Drill configures the agent's restore drills.
type Drill struct {
	// Interval between drills; 0 turns them off.
	Interval Duration `mapstructure:"interval"`
	// ScratchDir is where a drill restores (default: the system's
	// temporary directory); it needs room for the database.
	ScratchDir string `mapstructure:"scratch_dir"`
}

// Log configures logging.
type Log struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

// Defaults returns every key's default value, keyed by its dotted name. The
// set of keys is also the set of keys synbak.yaml may contain.
func Defaults() map[string]any {
	d := map[string]any{
		"synapse.config":                []string{"/etc/matrix-synapse/homeserver.yaml"},
		"synapse.workdir":               "/var/lib/matrix-synapse",
		"repository.path":               "",
		"repository.url":                "",
		"repository.compression":        "zstd",
		"repository.zstd_level":         2,
		"postgres.dsn":                  "",
		"postgres.dsn_file":             "",
		"postgres.slot":                 "synbak",
		"wal.status_interval":           "10s",
		"wal.synchronous":               false,
		"wal.partial_interval":          "10s",
		"wal.prefetch":                  4,
		"http.listen":                   "127.0.0.1:9816",
		"state_dir":                     "/var/lib/synbak",
		"shutdown_timeout":              "90s",
		"basebackup.interval":           "24h",
		"basebackup.full_interval":      "7d",
		"basebackup.checkpoint":         "fast",
		"basebackup.server_compression": "none",
		"basebackup.wal_timeout":        "10m",
		"basebackup.part_size_mb":       1024,
		"basebackup.compress_workers":   0,
		"retention.backups":             7,
		"retention.window":              "14d",
		"retention.dumps":               7,
		"dump.interval":                 "0",
		"dump.part_size_mb":             1024,
		"dump.pg_bindir":                "",
		"log.level":                     "info",
		"log.format":                    "text",

		"media.enabled":         true,
		"media.thumbnails":      "auto",
		"media.scan_interval":   "1h",
		"media.quiet_period":    "1s",
		"health.probe_interval": "10s",
		"health.disconnected":   "1m",
		"health.slot_lag_mb":    1024,
		"health.media_backlog":  "10m",
		"health.wal_backlog":    "2m",
		"drill.interval":        "0",
		"drill.scratch_dir":     "",

		// S3 (repository.url s3://...); a block of its own, so that its
		// longer keys do not realign the others.
		"repository.s3.endpoint":               "",
		"repository.s3.region":                 "",
		"repository.s3.access_key_id":          "",
		"repository.s3.access_key_id_file":     "",
		"repository.s3.secret_access_key":      "",
		"repository.s3.secret_access_key_file": "",
		"repository.s3.insecure":               false,
		"repository.s3.path_style":             true,
		"repository.s3.retry_timeout":          "2m",
		"repository.encryption.recipients":     []string{},
		"repository.encryption.identity_file":  "",
	}
	for k, v := range notifyDefaults() {
		d[k] = v
	}
	return d
}

// ErrInvalid marks every validation error, so that cmd can map it to exit
// code 2.
var ErrInvalid = errors.New("invalid configuration")

// IsInvalid reports whether err is a configuration error.
func IsInvalid(err error) bool { return errors.Is(err, ErrInvalid) }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Validate checks values that each key's type alone does not constrain.
func (c *Config) Validate() error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	if c.Repository.Path != "" && c.Repository.URL != "" {
		add(invalid("repository.path and repository.url are both set: set one of them"))
	}
	if c.Repository.URL != "" {
		if err := c.Repository.validateS3(); err != nil {
			add(err)
		}
	}
	switch c.Repository.Compression {
	case "zstd", "s2", "none":
	default:
		add(invalid("repository.compression %q: must be zstd, s2 or none", c.Repository.Compression))
	}
	if c.Repository.ZstdLevel < 1 || c.Repository.ZstdLevel > 22 {
		add(invalid("repository.zstd_level %d: must be between 1 (fastest) and 22 (smallest)", c.Repository.ZstdLevel))
	}
	if c.Postgres.DSN != "" && c.Postgres.DSNFile != "" {
		add(invalid("postgres.dsn and postgres.dsn_file are both set: set one of them"))
	}
	if !validSlotName(c.Postgres.Slot) {
		add(invalid("postgres.slot %q: a slot name is 1 to 63 lower-case letters, digits and underscores", c.Postgres.Slot))
	}
	if c.Repository.S3.RetryTimeout.D() < 0 {
		add(invalid("repository.s3.retry_timeout %s is negative (default 2m)", c.Repository.S3.RetryTimeout))
	}
	if c.WAL.StatusInterval.D() < 100*time.Millisecond {
		add(invalid("wal.status_interval %s: must be at least 100ms", c.WAL.StatusInterval))
	}
	if c.WAL.PartialInterval.D() < 0 {
		add(invalid("wal.partial_interval %s: must not be negative (0 turns partial uploads off)", c.WAL.PartialInterval))
	}
	if c.WAL.PrefetchSegments < 0 || c.WAL.PrefetchSegments > 64 {
		add(invalid("wal.prefetch %d: must be between 0 and 64", c.WAL.PrefetchSegments))
	}
	switch c.Media.Thumbnails {
	case "auto", "always", "never":
	default:
		add(invalid("media.thumbnails %q: must be auto (follow dynamic_thumbnails), always or never", c.Media.Thumbnails))
	}
	if c.Media.ScanInterval.D() < 0 || c.Media.QuietPeriod.D() < 0 {
		add(invalid("media.scan_interval and media.quiet_period must not be negative"))
	}
	if c.ShutdownTimeout.D() < time.Second {
		add(invalid("shutdown_timeout %s: must be at least 1s (the time a stopping agent has to store the WAL spool)", c.ShutdownTimeout))
	}
	if c.Health.ProbeInterval.D() < 100*time.Millisecond {
		add(invalid("health.probe_interval %s: must be at least 100ms", c.Health.ProbeInterval))
	}
	if c.Health.Disconnected.D() <= 0 || c.Health.MediaBacklog.D() <= 0 || c.Health.SlotLagMB <= 0 || c.Health.WALBacklog.D() <= 0 {
		add(invalid("health.disconnected, health.media_backlog, health.wal_backlog and health.slot_lag_mb must be positive"))
	}
	if c.Drill.Interval.D() < 0 {
		add(invalid("drill.interval %s: must not be negative (0 turns drills off)", c.Drill.Interval))
	}
	if c.Basebackup.Interval.D() < 0 {
		add(invalid("basebackup.interval %s: must not be negative", c.Basebackup.Interval))
	}
	if c.Basebackup.FullInterval.D() < 0 {
		add(invalid("basebackup.full_interval %s: must not be negative (0 makes every backup full)", c.Basebackup.FullInterval))
	}
	switch c.Basebackup.Checkpoint {
	case "fast", "spread":
	default:
		add(invalid("basebackup.checkpoint %q: must be fast or spread", c.Basebackup.Checkpoint))
	}
	switch c.Basebackup.ServerCompression {
	case "none", "lz4", "zstd":
	default:
		add(invalid("basebackup.server_compression %q: must be none, lz4 or zstd", c.Basebackup.ServerCompression))
	}
	if c.Basebackup.WALTimeout.D() <= 0 {
		add(invalid("basebackup.wal_timeout %s: must be positive", c.Basebackup.WALTimeout))
	}
	if c.Basebackup.CompressWorkers < 0 || c.Basebackup.CompressWorkers > 256 {
		add(invalid("basebackup.compress_workers %d: must be 0 (one per CPU) to 256", c.Basebackup.CompressWorkers))
	}
	if c.Basebackup.PartSizeMB < 1 {
		add(invalid("basebackup.part_size_mb %d: must be at least 1", c.Basebackup.PartSizeMB))
	}
	if c.Retention.Backups < 1 {
		add(invalid("retention.backups %d: must be at least 1", c.Retention.Backups))
	}
	if c.Retention.Window.D() < 0 {
		add(invalid("retention.window %s: must not be negative", c.Retention.Window))
	}
	if c.Retention.Dumps < 0 {
		add(invalid("retention.dumps %d: must not be negative", c.Retention.Dumps))
	}
	if c.Dump.PartSizeMB < 1 {
		add(invalid("dump.part_size_mb %d: must be at least 1", c.Dump.PartSizeMB))
	}
	if c.Dump.Interval.D() < 0 {
		add(invalid("dump.interval %s: must not be negative", c.Dump.Interval))
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		add(invalid("log.level %q: must be debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add(invalid("log.format %q: must be text or json", c.Log.Format))
	}
	errs = append(errs, c.validateNotify()...)
	return errors.Join(errs...)
}

// ResolveDSN returns the configured DSN, reading postgres.dsn_file when set.
// The error never contains the file's content.
func (c *Config) ResolveDSN() (string, error) {
	if c.Postgres.DSNFile == "" {
		return c.Postgres.DSN, nil
	}
	b, err := os.ReadFile(c.Postgres.DSNFile)
	if err != nil {
		return "", fmt.Errorf("%w: postgres.dsn_file: %w", ErrInvalid, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// S3Location returns the bucket and key prefix of an s3:// repository.url.
func (r *Repository) S3Location() (bucket, prefix string, err error) {
	u, err := url.Parse(r.URL)
	if err != nil || u.Scheme != "s3" {
		return "", "", invalid("repository.url %q: want s3://bucket[/prefix] (the only kind of URL supported; use repository.path for a directory)", redactURL(r.URL))
	}
	if u.User != nil {
		return "", "", invalid("repository.url %q: credentials do not belong in the URL: set repository.s3.access_key_id and secret_access_key (or *_file)", redactURL(r.URL))
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", "", invalid("repository.url %q: want s3://bucket[/prefix], without ? or #", r.URL)
	}
	if !validBucketName(u.Host) {
		return "", "", invalid("repository.url %q: bucket %q: a bucket name is 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit", r.URL, u.Host)
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		for _, el := range strings.Split(prefix, "/") {
			if el == "" || el == "." || el == ".." {
				return "", "", invalid("repository.url %q: the prefix %q has an empty, . or .. element", r.URL, prefix)
			}
		}
	}
	return u.Host, prefix, nil
}

func validBucketName(s string) bool {
	if len(s) < 3 || len(s) > 63 {
		return false
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !alnum && (r != '-' && r != '.' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return !strings.Contains(s, "..")
}

// validateS3 checks repository.url and repository.s3.
func (r *Repository) validateS3() error {
	var errs []error
	if _, _, err := r.S3Location(); err != nil {
		errs = append(errs, err)
	}
	s := r.S3
	if s.Endpoint == "" {
		errs = append(errs, invalid("repository.url %s: set repository.s3.endpoint to the S3 server (host[:port], e.g. s3.amazonaws.com or minio.example.org:9000)", redactURL(r.URL)))
	} else if strings.HasPrefix(s.Endpoint, "https://") && s.Insecure {
		errs = append(errs, invalid("repository.s3.endpoint is https:// but repository.s3.insecure (plain HTTP) is set: set one of them"))
	} else if i := strings.Index(s.Endpoint, "://"); i >= 0 && s.Endpoint[:i] != "http" && s.Endpoint[:i] != "https" {
		errs = append(errs, invalid("repository.s3.endpoint: want host[:port] or http(s)://host[:port]"))
	} else if strings.Contains(s.Endpoint, "@") {
		errs = append(errs, invalid("repository.s3.endpoint: credentials do not belong in the endpoint: set repository.s3.access_key_id and secret_access_key"))
	}
	if s.AccessKeyID != "" && s.AccessKeyIDFile != "" {
		errs = append(errs, invalid("repository.s3.access_key_id and repository.s3.access_key_id_file are both set: set one of them"))
	}
	if s.SecretAccessKey != "" && s.SecretAccessKeyFile != "" {
		errs = append(errs, invalid("repository.s3.secret_access_key and repository.s3.secret_access_key_file are both set: set one of them"))
	}
	return errors.Join(errs...)
}

// S3Credentials returns the access key id and secret of an s3:// repository:
// repository.s3.access_key_id / secret_access_key, else the *_file ones,
// else the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment variables
// (read with lookupEnv). Errors never contain a file's content.
func (r *Repository) S3Credentials(lookupEnv func(string) (string, bool)) (id, secret string, err error) {
	get := func(value, file, key, env string) (string, error) {
		if value != "" {
			return value, nil
		}
		if file != "" {
			b, err := os.ReadFile(file)
			if err != nil {
				return "", fmt.Errorf("%w: %s_file: %w", ErrInvalid, key, err)
			}
			v := strings.TrimSpace(string(b))
			if v == "" {
				return "", invalid("%s_file %s is empty", key, file)
			}
			return v, nil
		}
		if v, ok := lookupEnv(env); ok && v != "" {
			return v, nil
		}
		return "", invalid("repository.url %s: no S3 credentials: set %s (or %s_file, or the environment variable %s)", redactURL(r.URL), key, key, env)
	}
	if id, err = get(r.S3.AccessKeyID, r.S3.AccessKeyIDFile, "repository.s3.access_key_id", "AWS_ACCESS_KEY_ID"); err != nil {
		return "", "", err
	}
	if secret, err = get(r.S3.SecretAccessKey, r.S3.SecretAccessKeyFile, "repository.s3.secret_access_key", "AWS_SECRET_ACCESS_KEY"); err != nil {
		return "", "", err
	}
	return id, secret, nil
}

// RequireRepository checks that a repository is configured.
func (c *Config) RequireRepository() error {
	if c.Repository.Path == "" && c.Repository.URL == "" {
		return invalid("no repository configured: set repository.path in synbak.yaml, SYNBAK_REPOSITORY_PATH, or pass --repo DIR")
	}
	return nil
}

func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

func redactURL(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "REDACTED@" + u[i+1:]
		}
	}
	return u
}

// Duration is a time.Duration that also accepts whole days ("14d", "7d12h")
// and a bare "0".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats the duration, using days when it is a whole number of them.
func (d Duration) String() string {
	td := time.Duration(d)
	if td != 0 && td%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(td/(24*time.Hour)), 10) + "d"
	}
	return td.String()
}

// ParseDuration parses a Go duration with an optional leading day count.
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	var days int64
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: use Go's form (90s, 10m, 24h) or days (7d)", s)
		}
		days, s = n, s[i+1:]
	}
	var rest time.Duration
	if s != "" {
		var err error
		rest, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: use Go's form (90s, 10m, 24h) or days (7d)", s)
		}
	}
	return Duration(time.Duration(days)*24*time.Hour + rest), nil
}
