package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

func newListCommand(st *rootState) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List base backups, WAL ranges by timeline, and the recovery window",
		Long: `list reads the repository only (no PostgreSQL, no homeserver.yaml needed) and
shows the complete base backups, incomplete ones (interrupted or running;
never used by restore), the archived WAL as contiguous ranges per timeline
with the newest partial segment, and the recovery window: from the end of
the oldest complete backup to the server time of the newest archived WAL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runList(cmd.Context(), cfg, cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

// listing is what `synbak list --json` prints.
type listing struct {
	Backups        []listBackup     `json:"backups"`
	Incomplete     []listIncomplete `json:"incomplete_backups"`
	Dumps          []listDump       `json:"dumps"`
	IncompleteDump []listIncomplete `json:"incomplete_dumps"`
	WAL            []walTimeline    `json:"wal"`
	RecoveryWindow *window          `json:"recovery_window"`
	// Sizes are the stored bytes and object counts by kind (the first
	// element of the object names: backups, wal, media, config, meta).
	Sizes []kindSize `json:"sizes"`
}

type kindSize struct {
	Kind    string `json:"kind"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"bytes"`
}

type listBackup struct {
	ID          string    `json:"id"`
	Label       string    `json:"label"`
	StartTime   time.Time `json:"start_time"`
	EndTime     time.Time `json:"end_time"`
	StartLSN    string    `json:"start_lsn"`
	EndLSN      string    `json:"end_lsn"`
	Timeline    uint32    `json:"timeline"`
	PGVersion   int       `json:"pg_version_num"`
	Size        int64     `json:"size"`
	StoredSize  int64     `json:"stored_size"`
	Tablespaces int       `json:"tablespaces"`
	// Kind is "full" or "incremental"; Parent and Chain (oldest first,
	// the full backup first) name what an incremental backup needs.
	Kind   string   `json:"kind"`
	Parent string   `json:"parent,omitempty"`
	Chain  []string `json:"chain,omitempty"`
	// IncrementalRefused says why an incremental was asked for but this
	// full backup was taken instead.
	IncrementalRefused string `json:"incremental_refused,omitempty"`
}

type listDump struct {
	ID         string    `json:"id"`
	StartTime  time.Time `json:"start_time"`
	EndTime    time.Time `json:"end_time"`
	Databases  []string  `json:"databases"`
	PGVersion  int       `json:"pg_version_num"`
	PgDump     string    `json:"pg_dump"`
	Size       int64     `json:"size"`
	StoredSize int64     `json:"stored_size"`
}

type listIncomplete struct {
	ID           string    `json:"id"`
	Objects      int       `json:"objects"`
	StoredSize   int64     `json:"stored_size"`
	LastModified time.Time `json:"last_modified"`
}

type walTimeline struct {
	Timeline uint32     `json:"timeline"`
	Ranges   []walRange `json:"ranges"`
	// Partial is the newest partial segment beyond the ranges, if any.
	Partial *walPartial `json:"partial,omitempty"`
}

type walRange struct {
	FirstSegment string `json:"first_segment"`
	LastSegment  string `json:"last_segment"`
	StartLSN     string `json:"start_lsn"`
	EndLSN       string `json:"end_lsn"`
	Segments     int    `json:"segments"`
}

type walPartial struct {
	Segment string `json:"segment"`
	EndLSN  string `json:"end_lsn"`
}

type window struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// text is the window as restore names it (whole seconds, rounded inwards,
// so that every time printed can be restored to): list, status and the
// restore's refusals agree to the second.
func (w *window) text() string {
	rw := restore.Window{From: w.From, To: w.To}
	return strings.TrimPrefix(rw.String(), "restores are possible ")
}

func runList(ctx context.Context, cfg *config.Config, out io.Writer, asJSON bool) error {
	r, err := openRepo(ctx, cfg, false)
	if err != nil {
		return err
	}
	l, err := buildListing(ctx, r)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, l)
	}
	printListing(out, l)
	return nil
}

func buildListing(ctx context.Context, r *repo.Repo) (listing, error) {
	l := listing{Backups: []listBackup{}, Incomplete: []listIncomplete{}, Dumps: []listDump{}, IncompleteDump: []listIncomplete{}, WAL: []walTimeline{}, Sizes: []kindSize{}}
	sizes := map[string]*kindSize{}
	if err := r.List(ctx, "", func(oi storage.ObjectInfo) error {
		kind, _, _ := strings.Cut(oi.Name, "/")
		k := sizes[kind]
		if k == nil {
			k = &kindSize{Kind: kind}
			sizes[kind] = k
		}
		k.Objects++
		k.Bytes += oi.Size
		return nil
	}); err != nil {
		return l, fmt.Errorf("list %s: %w", r, err)
	}
	for _, kind := range []string{"backups", "wal", "dumps", "media", "config", "meta"} {
		if k := sizes[kind]; k != nil {
			l.Sizes = append(l.Sizes, *k)
			delete(sizes, kind)
		}
	}
	rest := make([]kindSize, 0, len(sizes))
	for _, k := range sizes {
		rest = append(rest, *k)
	}
	slices.SortFunc(rest, func(a, b kindSize) int { return strings.Compare(a.Kind, b.Kind) })
	l.Sizes = append(l.Sizes, rest...)
	bs, err := basebackup.List(ctx, r)
	if err != nil {
		return l, err
	}
	for _, b := range bs {
		l.Backups = append(l.Backups, listBackup{
			ID: b.ID, Label: b.Label, StartTime: b.StartTime, EndTime: b.EndTime,
			StartLSN: b.StartLSN.String(), EndLSN: b.EndLSN.String(), Timeline: b.Timeline,
			PGVersion: b.PGVersion, Size: b.Size(), StoredSize: b.StoredSize(), Tablespaces: len(b.Tablespaces),
			Kind: b.KindName(), Parent: b.Parent, Chain: b.Chain, IncrementalRefused: b.IncrementalRefused,
		})
	}
	inc, err := basebackup.ListIncomplete(ctx, r)
	if err != nil {
		return l, err
	}
	for _, i := range inc {
		l.Incomplete = append(l.Incomplete, listIncomplete{ID: i.ID, Objects: i.Objects, StoredSize: i.StoredSize, LastModified: i.LastModified})
	}

	ds, dinc, err := dump.Scan(ctx, r)
	if err != nil {
		return l, err
	}
	for _, d := range ds {
		ld := listDump{ID: d.ID, StartTime: d.StartTime, EndTime: d.EndTime, PGVersion: d.Main().ServerVersionNum, PgDump: d.Main().PgDump, Size: d.Size(), StoredSize: d.StoredSize()}
		for _, db := range d.Databases {
			ld.Databases = append(ld.Databases, db.Name)
		}
		l.Dumps = append(l.Dumps, ld)
	}
	for _, i := range dinc {
		l.IncompleteDump = append(l.IncompleteDump, listIncomplete{ID: i.ID, Objects: i.Objects, StoredSize: i.StoredSize, LastModified: i.LastModified})
	}

	a, err := wal.ReadArchive(ctx, r)
	if err != nil {
		if repo.IsNotExist(err) {
			return l, nil // no WAL archived yet
		}
		return l, err
	}
	var newest wal.Object // the newest WAL object: last timeline's partial or last segment
	for _, tli := range a.SegmentTLIs() {
		t := a.Timeline(tli)
		nos := t.Numbers()
		wt := walTimeline{Timeline: tli, Ranges: []walRange{}}
		for i := 0; i < len(nos); {
			j := i
			for j+1 < len(nos) && nos[j+1] == nos[j]+1 {
				j++
			}
			first, last := t.Segments[nos[i]].Segment, t.Segments[nos[j]].Segment
			wt.Ranges = append(wt.Ranges, walRange{
				FirstSegment: first.Name(), LastSegment: last.Name(),
				StartLSN: first.StartLSN().String(), EndLSN: last.EndLSN().String(), Segments: j - i + 1,
			})
			i = j + 1
		}
		newest, _ = t.Newest()
		if p, ok := t.Partial(); ok {
			wt.Partial = &walPartial{Segment: p.Segment.Name(), EndLSN: p.EndLSN().String()}
		}
		l.WAL = append(l.WAL, wt)
	}
	if len(bs) > 0 && newest.Name != "" {
		_, tr, err := a.Times(ctx, newest)
		if err != nil {
			return l, err
		}
		if to := tr.Last; !to.IsZero() {
			// A complete backup's WAL is archived up to its end, so the
			// window reaches at least that far even when the newest WAL's
			// server time (another clock) reads a little earlier.
			from := bs[0].EndTime
			l.RecoveryWindow = &window{From: from, To: maxTime(to.UTC(), from)}
		}
	}
	return l, nil
}

func printListing(out io.Writer, l listing) {
	if len(l.Backups) == 0 {
		fmt.Fprintln(out, "Base backups: none")
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "BACKUP\tKIND\tPARENT\tSTARTED\tENDED\tSTART LSN\tEND LSN\tTLI\tSIZE\tSTORED")
		for _, b := range l.Backups {
			parent := b.Parent
			if parent == "" {
				parent = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", b.ID, b.Kind, parent, b.StartTime.Format(time.RFC3339), b.EndTime.Format(time.RFC3339),
				b.StartLSN, b.EndLSN, b.Timeline, humanBytes(b.Size), humanBytes(b.StoredSize))
		}
		tw.Flush()
	}
	printIncomplete(out, "backups", l.Incomplete)
	fmt.Fprintln(out)
	if len(l.Dumps) == 0 {
		fmt.Fprintln(out, "Logical dumps: none")
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DUMP\tSTARTED\tENDED\tDATABASES\tPOSTGRESQL\tSIZE\tSTORED")
		for _, d := range l.Dumps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.StartTime.Format(time.RFC3339), d.EndTime.Format(time.RFC3339),
				strings.Join(d.Databases, ","), d.PGVersion/10000, humanBytes(d.Size), humanBytes(d.StoredSize))
		}
		tw.Flush()
	}
	printIncomplete(out, "dumps", l.IncompleteDump)
	fmt.Fprintln(out)
	if len(l.WAL) == 0 {
		fmt.Fprintln(out, "WAL: none archived")
	}
	for _, t := range l.WAL {
		fmt.Fprintf(out, "WAL timeline %d:\n", t.Timeline)
		for _, r := range t.Ranges {
			fmt.Fprintf(out, "  %s .. %s  (%s to %s, %d %s)\n", r.FirstSegment, r.LastSegment, r.StartLSN, r.EndLSN, r.Segments, map[bool]string{true: "segment", false: "segments"}[r.Segments == 1])
		}
		if t.Partial != nil {
			fmt.Fprintf(out, "  partial %s up to %s\n", t.Partial.Segment, t.Partial.EndLSN)
		}
	}
	fmt.Fprintln(out)
	if l.RecoveryWindow == nil {
		fmt.Fprintln(out, "Recovery window: none (a complete base backup and archived WAL are needed)")
		printSizes(out, l.Sizes)
		return
	}
	fmt.Fprintf(out, "Recovery window: %s\n", l.RecoveryWindow.text())
	printSizes(out, l.Sizes)
}

func printIncomplete(out io.Writer, what string, inc []listIncomplete) {
	if len(inc) == 0 {
		return
	}
	fmt.Fprintf(out, "Incomplete %s (interrupted or still running; never used by restore):\n", what)
	for _, i := range inc {
		fmt.Fprintf(out, "  %s  INCOMPLETE  %d objects, %s, last written %s\n",
			i.ID, i.Objects, humanBytes(i.StoredSize), i.LastModified.UTC().Format(time.RFC3339))
	}
}

func printSizes(out io.Writer, sizes []kindSize) {
	if len(sizes) == 0 {
		return
	}
	var parts []string
	var total int64
	for _, k := range sizes {
		parts = append(parts, fmt.Sprintf("%s %s (%d objects)", k.Kind, humanBytes(k.Bytes), k.Objects))
		total += k.Bytes
	}
	fmt.Fprintf(out, "Repository size: %s: %s\n", humanBytes(total), strings.Join(parts, ", "))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
