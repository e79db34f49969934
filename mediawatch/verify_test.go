package mediawatch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/pgtest"
)

func TestThumbnailNames(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]Thumbnail{
		"32-32-image-png-crop":        {32, 32, "image/png", "crop"},
		"800-600-image-svg+xml-scale": {800, 600, "image/svg+xml", "scale"},
		"96-96-image-x-icon-crop":     {96, 96, "image/x-icon", "crop"},
	} {
		got, ok := ParseThumbnailName(name)
		if !ok || got != want || got.FileName() != name {
			t.Errorf("%s: %+v %v (file name %q)", name, got, ok, got.FileName())
		}
	}
	for _, name := range []string{"32-32-image-png", "x-32-image-png-crop", "32-32--png-crop", "0-32-image-png-crop", "thumb"} {
		if th, ok := ParseThumbnailName(name); ok {
			t.Errorf("%s parsed as %+v", name, th)
		}
	}
}

// verifyCase is one row of TestVerifyDatabase and what the report must say.
type verifyCase struct {
	path string
	kind ProblemKind // "" when not a problem
}

func TestVerifyDatabase(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	ctx := context.Background()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	for _, db := range []string{"synapse", "oldsynapse"} {
		c.CreateDB(t, db)
		c.CreateSynapseSchema(t, db)
	}
	// Synapse before 1.128: no sha256 column.
	c.Exec(t, "oldsynapse", "ALTER TABLE local_media_repository DROP COLUMN sha256")

	store, r := t.TempDir(), newTestRepo(t)
	rng := rand.New(rand.NewPCG(31, 32))
	old := time.Now().Add(-time.Hour).UnixMilli()
	type row struct {
		id, sha    string
		length     *int64
		created    int64
		urlCache   bool
		quarantine bool
	}
	var rows []row
	type thumbRow struct {
		id     string
		th     Thumbnail
		length int64
	}
	var thumbs []thumbRow
	n := func(v int) *int64 { x := int64(v); return &x }
	file := func(rel string, size int) []byte {
		b := randomContent(rng, size)
		writeLikeSynapse(t, store, rel, b)
		return b
	}
	var want, wantOld, wantQuarantineSkipped []verifyCase
	expect := func(p string, kind, kindOld ProblemKind) {
		want = append(want, verifyCase{p, kind})
		wantOld = append(wantOld, verifyCase{p, kindOld})
	}

	// ok: backed up, size and sha256 as recorded.
	idOK := mediaID(rng)
	okContent := file(contentPath(idOK), 3000)
	rows = append(rows, row{id: idOK, sha: sha(okContent), length: n(3000), created: old})
	expect(contentPath(idOK), "", "")
	th := Thumbnail{32, 32, "image/png", "crop"}
	file(thumbDir(idOK)+"/"+th.FileName(), 400)
	thumbs = append(thumbs, thumbRow{idOK, th, 400})
	expect(thumbDir(idOK)+"/"+th.FileName(), "", "")
	// A thumbnail backed up with another size than recorded.
	th2 := Thumbnail{320, 240, "image/jpeg", "scale"}
	file(thumbDir(idOK)+"/"+th2.FileName(), 500)
	thumbs = append(thumbs, thumbRow{idOK, th2, 501})
	expect(thumbDir(idOK)+"/"+th2.FileName(), SizeDiffers, SizeDiffers)
	// A thumbnail the backup never had.
	th3 := Thumbnail{96, 96, "image/png", "crop"}
	thumbs = append(thumbs, thumbRow{idOK, th3, 300})
	expect(thumbDir(idOK)+"/"+th3.FileName(), Missing, Missing)

	// Backed up with another size.
	idSize := mediaID(rng)
	file(contentPath(idSize), 1000)
	rows = append(rows, row{id: idSize, length: n(1200), created: old})
	expect(contentPath(idSize), SizeDiffers, SizeDiffers)
	// Same size, other content: only the sha256 column tells.
	idSHA := mediaID(rng)
	file(contentPath(idSHA), 2000)
	rows = append(rows, row{id: idSHA, sha: sha(randomContent(rng, 2000)), length: n(2000), created: old})
	expect(contentPath(idSHA), SHA256Differs, "")
	// sha256 NULL (media from before the column): size alone.
	idNull := mediaID(rng)
	file(contentPath(idNull), 700)
	rows = append(rows, row{id: idNull, length: n(700), created: old})
	expect(contentPath(idNull), "", "")
	// Backed up, then deleted from the store while the row stays.
	idGone := mediaID(rng)
	goneContent := file(contentPath(idGone), 800)
	rows = append(rows, row{id: idGone, sha: sha(goneContent), length: n(800), created: old})
	expect(contentPath(idGone), MissingDeleted, MissingDeleted)

	syncOnce(t, r, store, testOptions(t))
	if err := os.Remove(filepath.Join(store, filepath.FromSlash(contentPath(idGone)))); err != nil {
		t.Fatal(err)
	}
	syncOnce(t, r, store, testOptions(t))

	// Never backed up.
	idMissing := mediaID(rng)
	rows = append(rows, row{id: idMissing, length: n(100), created: old})
	expect(contentPath(idMissing), Missing, Missing)
	thumbs = append(thumbs, thumbRow{idMissing, th, 50})
	expect(thumbDir(idMissing)+"/"+th.FileName(), Missing, Missing)
	// Quarantined and not backed up: reported unless skipped.
	idQ := mediaID(rng)
	rows = append(rows, row{id: idQ, length: n(100), created: old, quarantine: true})
	expect(contentPath(idQ), Missing, Missing)
	wantQuarantineSkipped = append(wantQuarantineSkipped, verifyCase{contentPath(idQ), Missing})
	// Not problems: a URL-preview cache entry (its file and thumbnail are
	// under url_cache/), an unfinished upload, a recent upload.
	idURL := "2026-11-25_" + mediaID(rng)[:16]
	rows = append(rows, row{id: idURL, length: n(100), created: old, urlCache: true})
	thumbs = append(thumbs, thumbRow{idURL, th, 30})
	rows = append(rows, row{id: mediaID(rng), created: old})
	rows = append(rows, row{id: mediaID(rng), length: n(100), created: time.Now().UnixMilli()})

	for _, db := range []string{"synapse", "oldsynapse"} {
		for _, rw := range rows {
			var url, q, shaArg any
			if rw.urlCache {
				url = "https://example.org/"
			}
			if rw.quarantine {
				q = "@admin:example.org"
			}
			if rw.sha != "" {
				shaArg = rw.sha
			}
			if db == "synapse" {
				c.Exec(t, db, `INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id, url_cache, quarantined_by, sha256)
					VALUES ($1, 'image/png', $2, $3, '@a:example.org', $4, $5, $6)`, rw.id, rw.length, rw.created, url, q, shaArg)
			} else {
				c.Exec(t, db, `INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id, url_cache, quarantined_by)
					VALUES ($1, 'image/png', $2, $3, '@a:example.org', $4, $5)`, rw.id, rw.length, rw.created, url, q)
			}
		}
		for _, tr := range thumbs {
			c.Exec(t, db, `INSERT INTO local_media_repository_thumbnails (media_id, thumbnail_width, thumbnail_height, thumbnail_type, thumbnail_method, thumbnail_length)
				VALUES ($1, $2, $3, $4, $5, $6)`, tr.id, tr.th.Width, tr.th.Height, tr.th.Type, tr.th.Method, tr.length)
		}
	}

	check := func(t *testing.T, rep VerifyReport, cases []verifyCase, thumbnails bool) {
		t.Helper()
		var got, exp []string
		for _, p := range rep.Problems() {
			got = append(got, string(p.Kind)+" "+p.Path)
		}
		okMedia, okThumbs, media, thumbsN := 0, 0, 0, 0
		for _, vc := range cases {
			isThumb := strings.HasPrefix(vc.path, LocalThumbnails)
			if isThumb && !thumbnails {
				continue
			}
			if isThumb {
				thumbsN++
			} else {
				media++
			}
			if vc.kind != "" {
				exp = append(exp, string(vc.kind)+" "+vc.path)
			} else if isThumb {
				okThumbs++
			} else {
				okMedia++
			}
		}
		sort.Strings(got)
		sort.Strings(exp)
		if fmt.Sprint(got) != fmt.Sprint(exp) {
			t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(exp, "\n"))
		}
		// The recent upload counts as checked, neither ok nor a problem.
		if rep.Media != media+1 || rep.MediaOK != okMedia || rep.Thumbnails != thumbsN || rep.ThumbnailsOK != okThumbs {
			t.Errorf("counts: %+v; want media %d/%d ok, thumbnails %d/%d ok", rep, okMedia, media, okThumbs, thumbsN)
		}
		if rep.Recent != 1 || rep.SkippedPending != 1 || rep.SkippedURLCache != map[bool]int{true: 2, false: 1}[thumbnails] {
			t.Errorf("recent %d, unfinished %d, URL cache %d", rep.Recent, rep.SkippedPending, rep.SkippedURLCache)
		}
		lines := strings.Split(strings.TrimSuffix(rep.String(), "\n"), "\n")
		if len(lines) != 1+len(exp) {
			t.Errorf("String has %d lines, want a summary and %d problems:\n%s", len(lines), len(exp), rep.String())
		}
		t.Logf("report:\n%s", rep)
	}

	t.Run("sha256 column", func(t *testing.T) {
		rep, err := VerifyDatabase(ctx, r, c.Conn(t, "synapse"), VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.SHA256Column || rep.SHA256Checked != 2 {
			t.Errorf("sha256 column %v, %d compared; want true, 2", rep.SHA256Column, rep.SHA256Checked)
		}
		check(t, rep, want, true)
	})
	t.Run("no sha256 column", func(t *testing.T) {
		rep, err := VerifyDatabase(ctx, r, c.Conn(t, "oldsynapse"), VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.SHA256Column || rep.SHA256Checked != 0 {
			t.Errorf("sha256 column %v, %d compared", rep.SHA256Column, rep.SHA256Checked)
		}
		check(t, rep, wantOld, true)
	})
	t.Run("dynamic thumbnails, quarantined skipped, through DBLengths", func(t *testing.T) {
		db, err := OpenDBLengths(ctx, c.DSN("synapse"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(ctx)
		rep, err := db.Verify(ctx, r, VerifyOptions{DynamicThumbnails: true, SkipQuarantined: true})
		if err != nil {
			t.Fatal(err)
		}
		var cases []verifyCase
		for _, vc := range want {
			if vc.path != wantQuarantineSkipped[0].path {
				cases = append(cases, vc)
			}
		}
		check(t, rep, cases, false)
		if rep.SkippedQuarantined != 1 || rep.ThumbnailsChecked {
			t.Errorf("quarantined skipped %d, thumbnails checked %v", rep.SkippedQuarantined, rep.ThumbnailsChecked)
		}
	})
	t.Run("no grace", func(t *testing.T) {
		rep, err := VerifyDatabase(ctx, r, c.Conn(t, "synapse"), VerifyOptions{Grace: -1})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Recent != 0 || len(rep.Missing) != 6 {
			t.Errorf("without grace: %d recent, %d missing; want 0, 6", rep.Recent, len(rep.Missing))
		}
	})
}

// TestDatabaseDigestsAndThumbnails: with the database reachable, a file
// whose size matches media_length but whose sha256 does not is held back,
// a thumbnail whose size matches thumbnail_length is complete at once, and
// a database without the sha256 column works on lengths alone.
func TestDatabaseDigestsAndThumbnails(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	ctx := context.Background()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	for _, db := range []string{"synapse", "oldsynapse"} {
		c.CreateDB(t, db)
		c.CreateSynapseSchema(t, db)
	}
	c.Exec(t, "oldsynapse", "ALTER TABLE local_media_repository DROP COLUMN sha256")
	rng := rand.New(rand.NewPCG(33, 34))

	for _, dbname := range []string{"synapse", "oldsynapse"} {
		t.Run(dbname, func(t *testing.T) {
			db, err := OpenDBLengths(ctx, c.DSN(dbname))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close(ctx) })
			hasSHA := dbname == "synapse"
			store, r := t.TempDir(), newTestRepo(t)
			opts := testOptions(t)
			opts.QuietPeriod = time.Minute // only the database makes files complete in time
			opts.Lengths = db
			opts.ScanInterval = -1
			startWatcher(t, r, store, opts)

			insert := func(id string, length int, sha256hex string) {
				if hasSHA {
					c.Exec(t, dbname, "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id, sha256) VALUES ($1, 'image/png', $2, $3, '@a:example.org', NULLIF($4, ''))",
						id, length, time.Now().UnixMilli(), sha256hex)
				} else {
					c.Exec(t, dbname, "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id) VALUES ($1, 'image/png', $2, $3, '@a:example.org')",
						id, length, time.Now().UnixMilli())
				}
			}
			insertThumb := func(id string, th Thumbnail, length int) {
				c.Exec(t, dbname, "INSERT INTO local_media_repository_thumbnails (media_id, thumbnail_width, thumbnail_height, thumbnail_type, thumbnail_method, thumbnail_length) VALUES ($1, $2, $3, $4, $5, $6)",
					id, th.Width, th.Height, th.Type, th.Method, length)
			}
			// A: the row's sha256 is another content's (same size).
			idA := mediaID(rng)
			contentA := randomContent(rng, 4000)
			writeLikeSynapse(t, store, contentPath(idA), contentA)
			insert(idA, len(contentA), sha(randomContent(rng, 4000)))
			// B: sha256 as recorded; C: sha256 NULL.
			idB, idC := mediaID(rng), mediaID(rng)
			contentB, contentC := randomContent(rng, 5000), randomContent(rng, 6000)
			writeLikeSynapse(t, store, contentPath(idB), contentB)
			insert(idB, len(contentB), sha(contentB))
			writeLikeSynapse(t, store, contentPath(idC), contentC)
			insert(idC, len(contentC), "")
			// Thumbnails of B: one as recorded, one whose row says
			// another size, one without a row.
			thOK, thBad, thNone := Thumbnail{32, 32, "image/png", "crop"}, Thumbnail{96, 96, "image/png", "crop"}, Thumbnail{320, 240, "image/png", "scale"}
			tOK := randomContent(rng, 300)
			writeLikeSynapse(t, store, thumbDir(idB)+"/"+thOK.FileName(), tOK)
			insertThumb(idB, thOK, len(tOK))
			writeLikeSynapse(t, store, thumbDir(idB)+"/"+thBad.FileName(), randomContent(rng, 400))
			insertThumb(idB, thBad, 401)
			writeLikeSynapse(t, store, thumbDir(idB)+"/"+thNone.FileName(), randomContent(rng, 500))

			want := map[string][]byte{contentPath(idB): contentB, contentPath(idC): contentC, thumbDir(idB) + "/" + thOK.FileName(): tOK}
			if !hasSHA {
				want[contentPath(idA)] = contentA
			}
			waitFor(t, 20*time.Second, "the complete files", hasAll(t, r, want))
			// Give the held-back ones time to be copied wrongly.
			time.Sleep(2 * time.Second)
			checkRepo(t, r, want)

			if hasSHA {
				// The database was right about A's content: once the file
				// is, it is complete.
				c.Exec(t, dbname, "UPDATE local_media_repository SET sha256 = $2 WHERE media_id = $1", idA, sha(contentA))
				want[contentPath(idA)] = contentA
				waitFor(t, 20*time.Second, "A once its sha256 matches", hasAll(t, r, want))
				checkRepo(t, r, want)
			}
		})
	}
}
