package dump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/proc"
	"github.com/synbak/synbak/internal/repo"
)

// Source is one database to dump.
type Source struct {
	// Params are its libpq connection keywords (dbname included).
	Params map[string]string
	// Origin says where they came from, for messages.
	Origin string
	// Stores are the Synapse data stores it holds.
	Stores []string
}

func (s Source) pg() pgsource.Source {
	return pgsource.Source{ConnString: pgsource.ConnString(s.Params), Origin: s.Origin}
}

// Options configure Take.
type Options struct {
	// Sources are the databases, the one holding "main" first.
	Sources []Source
	// BinDir holds pg_dump (default: FindTool's search under DebianRoot).
	BinDir string
	// PartSize bounds each stored object (0: one object per database).
	PartSize int64
	// Facts are recorded with the dump.
	Facts map[string]string
	// Progress, when set, is called as the dump advances.
	Progress func(Progress)
	// OnStart, when set, is called with pg_dump's process id once it runs
	// and before its output is read (tests look at the process).
	OnStart func(pid int)
}

// Progress is a dump's state for a progress line.
type Progress struct {
	ID       string
	Database string
	// Index and Count place Database among the databases (1-based).
	Index, Count int
	// Done is pg_dump's output so far; DatabaseSize the database's size
	// on disk (output is usually smaller: indexes are not dumped).
	Done, DatabaseSize int64
	Finished           bool
}

// pgDumpArgs are the arguments of every dump besides the connection.
var pgDumpArgs = []string{"--format=custom", "--compress=0", "--exclude-table-data=" + OneTimeKeysTable, "--no-password"}

// Take dumps every source with pg_dump into the repository and writes the
// dump's metadata last.
func Take(ctx context.Context, r *repo.Repo, opts Options, log *slog.Logger) (Dump, error) {
	if len(opts.Sources) == 0 {
		return Dump{}, errors.New("dump: no database to dump")
	}
	start := time.Now()
	d := Dump{ID: NewID(start), StartTime: start.UTC(), Facts: opts.Facts}
	for i, src := range opts.Sources {
		db, err := takeOne(ctx, r, d.ID, src, opts, i, log)
		if err != nil {
			return Dump{}, fmt.Errorf("dump %s: %w", d.ID, err)
		}
		d.Databases = append(d.Databases, db)
	}
	d.EndTime = time.Now().UTC()
	if err := storeMeta(ctx, r, d); err != nil {
		return Dump{}, fmt.Errorf("dump %s: %w", d.ID, err)
	}
	log.Info("dump complete", "id", d.ID, "databases", len(d.Databases), "size", d.Size(), "stored_size", d.StoredSize(), "seconds", d.EndTime.Sub(d.StartTime).Seconds())
	return d, nil
}

// describe reads what the metadata records about the source database.
func describe(ctx context.Context, src Source) (Database, error) {
	cfg, err := pgx.ParseConfig(src.pg().ConnString)
	if err != nil {
		return Database{}, fmt.Errorf("%s: invalid connection settings: %s", src.Origin, pgsource.Redact(err.Error()))
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return Database{}, src.pg().Explain(err)
	}
	defer conn.Close(context.Background())
	var db Database
	var ver string
	err = conn.QueryRow(ctx, `SELECT current_database(), current_setting('server_version'), current_setting('server_version_num'),
		pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, pg_database_size(d.oid)
		FROM pg_database d WHERE d.datname = current_database()`).Scan(
		&db.Name, &db.ServerVersion, &ver, &db.Owner, &db.Encoding, &db.Collate, &db.Ctype, &db.DatabaseSize)
	if err != nil {
		return Database{}, fmt.Errorf("%s: read the database's description: %w", src.Origin, err)
	}
	db.ServerVersionNum, _ = strconv.Atoi(ver)
	// Only superusers and pg_read_all_settings... may call it; best effort.
	var sysid int64
	if err := conn.QueryRow(ctx, `SELECT system_identifier FROM pg_control_system()`).Scan(&sysid); err == nil {
		db.SystemID = strconv.FormatUint(uint64(sysid), 10)
	}
	db.Stores = src.Stores
	return db, nil
}

func takeOne(ctx context.Context, r *repo.Repo, id string, src Source, opts Options, i int, log *slog.Logger) (Database, error) {
	db, err := describe(ctx, src)
	if err != nil {
		return Database{}, err
	}
	tool, err := FindTool(ctx, "pg_dump", MajorOf(db.ServerVersionNum), opts.BinDir, DebianRoot)
	if err != nil {
		return Database{}, err
	}
	conninfo, env, err := pgsource.ToolArgs(src.Params)
	if err != nil {
		return Database{}, fmt.Errorf("%s: %w", src.Origin, err)
	}
	args := append(append([]string{}, pgDumpArgs...), "--dbname="+conninfo)
	db.PgDump = tool.Version
	db.Command = append([]string{tool.Path}, args...)
	db.ExcludedTableData = []string{OneTimeKeysTable}
	db.Compression = r.Codec().String() + " (synbak; pg_dump --compress=0)"

	pr, pw, err := os.Pipe()
	if err != nil {
		return Database{}, err
	}
	defer pr.Close()
	stderr := &tail{max: 16 << 10}
	cmd := exec.Command(tool.Path, args...)
	cmd.Env = toolEnv(env)
	cmd.Stdout, cmd.Stderr = pw, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	db.StartTime = time.Now().UTC()
	log.Info("dumping", "id", id, "database", db.Name, "server", db.ServerVersion, "pg_dump", tool.Path)
	done, err := proc.Start(cmd)
	pw.Close()
	if err != nil {
		return Database{}, fmt.Errorf("%w: start %s: %v", ErrTool, tool.Path, err)
	}
	kill := func() {
		_ = cmd.Process.Kill()
		<-done
	}
	// A cancelled dump kills pg_dump even while it waits for a lock and
	// writes nothing (the read below then ends).
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
		case <-done:
		}
	}()
	if opts.OnStart != nil {
		opts.OnStart(cmd.Process.Pid)
	}

	w := r.NewPartWriter(ctx, func(n int) string { return PartName(id, db.Name, n) },
		func(n int) map[string]string {
			return map[string]string{"kind": "dump", "dump_id": id, "database": db.Name, "part": strconv.Itoa(n)}
		}, opts.PartSize, repo.FastChecksum())
	prog := Progress{ID: id, Database: db.Name, Index: i + 1, Count: len(opts.Sources), DatabaseSize: db.DatabaseSize}
	buf := make([]byte, 1<<20)
	for {
		n, rerr := pr.Read(buf)
		if n > 0 {
			if err := w.Write(buf[:n]); err != nil {
				kill()
				return Database{}, err
			}
			prog.Done += int64(n)
			if opts.Progress != nil {
				opts.Progress(prog)
			}
		}
		if rerr == io.EOF {
			if ctx.Err() != nil {
				w.Abort()
				<-done
				return Database{}, ctx.Err()
			}
			break
		}
		if rerr != nil {
			w.Abort()
			kill()
			return Database{}, fmt.Errorf("read pg_dump's output: %w", rerr)
		}
		if ctx.Err() != nil {
			w.Abort()
			kill()
			return Database{}, ctx.Err()
		}
	}
	<-done
	if !cmd.ProcessState.Success() {
		w.Abort()
		msg := pgsource.Redact(stderr.String())
		hint := ""
		if strings.Contains(msg, "permission denied") {
			hint = fmt.Sprintf(" — pg_dump must read every table: connect as the role that owns Synapse's tables (%s), or run `GRANT pg_read_all_data TO %s;` as a superuser", db.Owner, quoteIdent(src.Params["user"]))
		}
		return Database{}, fmt.Errorf("%w: pg_dump of database %q (%s) failed (%s): %s%s", ErrTool, db.Name, src.Origin, cmd.ProcessState, msg, hint)
	}
	parts, err := w.Close()
	if err != nil {
		return Database{}, err
	}
	db.Parts = parts
	for _, p := range parts {
		db.Size += p.Size
		db.StoredSize += p.StoredSize
	}
	if db.Size != prog.Done {
		return Database{}, fmt.Errorf("dump of %q: stored %d bytes, pg_dump wrote %d", db.Name, db.Size, prog.Done)
	}
	db.EndTime = time.Now().UTC()
	prog.Finished = true
	if opts.Progress != nil {
		opts.Progress(prog)
	}
	log.Info("dumped", "id", id, "database", db.Name, "size", db.Size, "stored_size", db.StoredSize, "parts", len(parts), "seconds", db.EndTime.Sub(db.StartTime).Seconds())
	return db, nil
}
