package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/jackc/pglogrepl"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/synbak/synbak/internal/config"
)

// rootState is what the global flags produce and every command shares.
type rootState struct {
	configFile string
	homeserver []string
	repo       string
	logLevel   string
	logFormat  string

	flagError bool
	// lookupEnv reads the environment; tests replace it.
	lookupEnv func(string) (string, bool)
	// defaultConfigFiles are tried in order when -c is not given.
	defaultConfigFiles []string
}

func newRootCommand() (*cobra.Command, *rootState) {
	st := &rootState{
		lookupEnv:          os.LookupEnv,
		defaultConfigFiles: []string{"synbak.yaml", "/etc/synbak/synbak.yaml"},
	}
	cmd := &cobra.Command{
		Use:   "synbak",
		Short: "Continuous backup of a Matrix Synapse homeserver",
		Long: `synbak backs up a Matrix Synapse homeserver continuously: the PostgreSQL
database (WAL streaming and base backups), the media store, the configuration
and the signing key, into a repository from which the whole homeserver can be
restored as of any point in time.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		st.flagError = true
		return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
	})
	pf := cmd.PersistentFlags()
	pf.StringVarP(&st.configFile, "config", "c", "", "synbak.yaml to read (default ./synbak.yaml, then /etc/synbak/synbak.yaml)")
	pf.StringArrayVar(&st.homeserver, "homeserver", nil, "Synapse's homeserver.yaml or conf.d directory (repeatable, in Synapse's -c order); sets synapse.config")
	pf.StringVar(&st.repo, "repo", "", "repository directory, or URL when it contains ://; sets repository.path or repository.url")
	pf.StringVar(&st.logLevel, "log-level", "", "debug, info, warn or error; sets log.level")
	pf.StringVar(&st.logFormat, "log-format", "", "text or json; sets log.format")

	cmd.AddCommand(
		newVersionCommand(),
		newInitCommand(st),
		newConfigCommand(st),
		newWALCommand(st),
		newWALFetchCommand(st),
		newBackupCommand(st),
		newDumpCommand(st),
		newListCommand(st),
		newPruneCommand(st),
		newMediaCommand(st),
		newRestoreCommand(st),
		newAgentCommand(st),
		newStatusCommand(st),
		newVerifyCommand(st),
		newDrillCommand(st),
	)
	cmd.AddCommand(newGenDocsCommand(cmd))
	strictArgs(cmd)
	return cmd, st
}

// strictArgs makes every wrong positional argument a usage error (exit 2):
// an unknown command under a command that only groups others (cobra would
// print the help and exit 0 for "synbak wal foo", or exit 1 for "synbak
// foo"), and a surplus argument of any command. Exit codes a command's own
// validator chose (wal-fetch: 255) stay.
func strictArgs(c *cobra.Command) {
	for _, sub := range c.Commands() {
		strictArgs(sub)
	}
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.SuggestionsMinimumDistance = 2
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf("; did you mean %q?", s[0])
			}
			return usageError{fmt.Errorf("%s (see %s --help)", msg, cmd.CommandPath())}
		}
		return
	}
	inner := c.Args
	if inner == nil {
		inner = cobra.NoArgs
	}
	c.Args = func(cmd *cobra.Command, args []string) error {
		if err := inner(cmd, args); err != nil {
			return usageError{fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())}
		}
		return nil
	}
}

// load resolves the configuration: defaults, then synbak.yaml, then SYNBAK_*
// environment variables, then the global flags; then validates it.
func (st *rootState) load() (*config.Config, error) {
	v := viper.New()
	defaults := config.Defaults()
	for k, val := range defaults {
		v.SetDefault(k, val)
	}

	file, err := st.findConfigFile()
	if err != nil {
		return nil, err
	}
	if file != "" {
		m, err := readConfigFile(file, defaults)
		if err != nil {
			return nil, err
		}
		if err := v.MergeConfigMap(m); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", config.ErrInvalid, file, err)
		}
	}

	// Environment: SYNBAK_REPOSITORY_PATH etc. Bound key by key (rather than
	// AutomaticEnv) so that only known keys are read.
	for k := range defaults {
		env := "SYNBAK_" + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
		if val, ok := st.lookupEnv(env); ok {
			v.Set(k, val)
		}
	}

	if len(st.homeserver) > 0 {
		v.Set("synapse.config", st.homeserver)
	}
	if st.repo != "" {
		if strings.Contains(st.repo, "://") {
			v.Set("repository.url", st.repo)
		} else {
			v.Set("repository.path", st.repo)
		}
	}
	if st.logLevel != "" {
		v.Set("log.level", st.logLevel)
	}
	if st.logFormat != "" {
		v.Set("log.format", st.logFormat)
	}

	var cfg config.Config
	err = v.Unmarshal(&cfg, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		durationHook,
		mapstructure.StringToSliceHookFunc(","),
	)))
	if err != nil {
		return nil, fmt.Errorf("%w: %s", config.ErrInvalid, decodeErrorText(err))
	}
	for i, p := range cfg.Synapse.Config {
		cfg.Synapse.Config[i] = strings.TrimSpace(p)
	}
	for _, p := range []*string{&cfg.Repository.Path, &cfg.StateDir, &cfg.Synapse.Workdir} {
		if *p != "" {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// findConfigFile returns the synbak.yaml to read, or "" for none.
func (st *rootState) findConfigFile() (string, error) {
	if st.configFile != "" {
		if _, err := os.Stat(st.configFile); err != nil {
			return "", fmt.Errorf("%w: config file %s: %w (check -c)", config.ErrInvalid, st.configFile, unwrapPathError(err))
		}
		return st.configFile, nil
	}
	if f, ok := st.lookupEnv("SYNBAK_CONFIG"); ok && f != "" {
		if _, err := os.Stat(f); err != nil {
			return "", fmt.Errorf("%w: config file %s: %w (check SYNBAK_CONFIG)", config.ErrInvalid, f, unwrapPathError(err))
		}
		return f, nil
	}
	for _, f := range st.defaultConfigFiles {
		if _, err := os.Stat(f); err == nil {
			return f, nil
		}
	}
	return "", nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readConfigFile parses synbak.yaml and checks that every key is known.
func readConfigFile(file string, defaults map[string]any) (map[string]any, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: config file %s: %w", config.ErrInvalid, file, unwrapPathError(err))
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %s", config.ErrInvalid, file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if m == nil {
		m = map[string]any{}
	}
	sections := map[string]bool{}
	for k := range defaults {
		parts := strings.Split(k, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	var errs []error
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			full := k
			if prefix != "" {
				full = prefix + "." + k
			}
			val := m[k]
			switch {
			case sections[full]:
				sub, ok := val.(map[string]any)
				if !ok {
					if val == nil {
						continue
					}
					errs = append(errs, fmt.Errorf("%w: %s: key %s must be a mapping, not %T", config.ErrInvalid, file, full, val))
					continue
				}
				walk(full, sub)
			case defaults[full] != nil || hasKey(defaults, full):
				if _, isMap := val.(map[string]any); isMap {
					errs = append(errs, fmt.Errorf("%w: %s: key %s must be a single value, not a mapping", config.ErrInvalid, file, full))
				}
			default:
				errs = append(errs, fmt.Errorf("%w: %s: unknown key %s", config.ErrInvalid, file, full))
			}
		}
	}
	walk("", m)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

func hasKey(m map[string]any, k string) bool { _, ok := m[k]; return ok }

// durationHook decodes "14d", "90s" or "0" into config.Duration.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(config.Duration(0)) {
		return data, nil
	}
	switch v := data.(type) {
	case string:
		return config.ParseDuration(v)
	case int:
		if v == 0 {
			return config.Duration(0), nil
		}
		return nil, fmt.Errorf("duration %d has no unit: write it like 90s, 10m, 24h or 7d", v)
	}
	return data, nil
}

var quotedKey = regexp.MustCompile(`^'([^']+)' (.*)$`)

// decodeErrorText turns mapstructure's multi-line error into "key: problem".
func decodeErrorText(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "decoding failed") || strings.HasSuffix(l, "error(s):") {
			continue
		}
		l = strings.TrimPrefix(l, "* ")
		if m := quotedKey.FindStringSubmatch(l); m != nil {
			l = m[1] + ": " + m[2]
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return err.Error()
	}
	return strings.Join(parts, "; ")
}

// logValue keeps the log's units the same everywhere, in text and JSON:
// durations in seconds (a number, not Go's nanoseconds or "1.5s"), LSNs as
// PostgreSQL writes them (X/X, never an integer).
func logValue(_ []string, a slog.Attr) slog.Attr {
	switch v := a.Value.Any().(type) {
	case time.Duration:
		return slog.Float64(a.Key, math.Round(v.Seconds()*1000)/1000)
	case pglogrepl.LSN:
		return slog.String(a.Key, v.String())
	}
	return a
}

// newLogger builds the slog logger the configuration asks for.
func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: logValue}
	w = logWriter(w)
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
