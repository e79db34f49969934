package mediawatch

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/pgtest"
)

func TestDatabaseLengths(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	ctx := context.Background()
	db, err := OpenDBLengths(ctx, c.DSN("synapse"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })

	store, r := t.TempDir(), newTestRepo(t)
	rng := rand.New(rand.NewPCG(13, 14))
	opts := testOptions(t)
	// Long enough that only the database can make files complete in time.
	opts.QuietPeriod = time.Minute
	opts.Lengths = db
	opts.ScanInterval = -1
	rw := startWatcher(t, r, store, opts)

	insert := func(id string, n int) {
		c.Exec(t, "synapse", "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id) VALUES ($1, 'image/png', $2, $3, '@a:example.org')", id, n, time.Now().UnixMilli())
	}
	// Incomplete: the row says 10 000 bytes, the file has 5 000 so far.
	idA := mediaID(rng)
	contentA := randomContent(rng, 10000)
	writeLikeSynapse(t, store, contentPath(idA), contentA[:5000])
	insert(idA, len(contentA))
	// Complete, with its row.
	idB := mediaID(rng)
	contentB := randomContent(rng, 3000)
	writeLikeSynapse(t, store, contentPath(idB), contentB)
	insert(idB, len(contentB))
	waitFor(t, 20*time.Second, "the complete file", hasAll(t, r, map[string][]byte{contentPath(idB): contentB}))
	if _, ok := current(readEvents(t, r))[contentPath(idA)]; ok {
		t.Fatalf("%s was copied while its size did not match media_length", contentPath(idA))
	}
	// The rest arrives: now it is complete.
	f, err := os.OpenFile(filepath.Join(store, contentPath(idA)), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(contentA[5000:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{contentPath(idA): contentA, contentPath(idB): contentB}
	waitFor(t, 20*time.Second, "the completed file", hasAll(t, r, want))

	// An upload nothing watches (its directory left the watch set; here:
	// events are lost) is found through its new row, thumbnails too.
	rw.w.dropEvents.Store(true)
	idC := mediaID(rng)
	contentC := randomContent(rng, 4000)
	writeLikeSynapse(t, store, contentPath(idC), contentC)
	writeLikeSynapse(t, store, thumbDir(idC)+"/32-32-image-png-crop", randomContent(rng, 400))
	insert(idC, len(contentC))
	want[contentPath(idC)] = contentC
	waitFor(t, 20*time.Second, "the unwatched upload, through the database", hasAll(t, r, want))
	checkRepo(t, r, want)
	// Its thumbnail waits for the (here one-minute) quiet period.
	waitFor(t, 10*time.Second, "the unwatched thumbnail noticed", func() bool {
		rw.w.e.mu.Lock()
		defer rw.w.e.mu.Unlock()
		_, ok := rw.w.e.pending[thumbDir(idC)+"/32-32-image-png-crop"]
		return ok
	})

}
