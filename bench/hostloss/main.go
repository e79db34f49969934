// Command hostloss is the soak of the durability chain: N trials of losing
// the database host (postmaster's process group killed with SIGKILL, data
// directory moved away) under synchronous replication to a real `synbak
// agent`, in three modes taken in turn (the host lost while the agent runs;
// SIGTERM to the agent while disconnected; kill -9 of the agent, then the
// host lost, then the agent restarted without a server), each followed by
// `synbak restore --latest` and a count of the acknowledged commits it
// holds.
//
//	go run ./bench/hostloss -trials 30 -commits 2000
//
// The trial itself is the test TestHostLossSoak in cmd/synbak (the same
// code as the CI test TestHostLossLosesNothingAcknowledged, with more
// commits and trials); this command runs it and reports. See
// bench/README.md.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

type result struct {
	Mode     string `json:"mode"`
	Acked    int    `json:"acked"`
	Restored int    `json:"restored"`
	Missing  int    `json:"missing"`
}

func main() {
	trials := flag.Int("trials", 30, "host-loss trials (modes taken in turn)")
	commits := flag.Int("commits", 2000, "acknowledged commits at least before each loss")
	jsonOut := flag.String("json", "", "write the trials as JSON to this file")
	flag.Parse()
	if err := run(*trials, *commits, *jsonOut); err != nil {
		fmt.Fprintln(os.Stderr, "hostloss:", err)
		os.Exit(1)
	}
}

func run(trials, commits int, jsonOut string) error {
	start := time.Now()
	cmd := exec.Command("go", "test", "-count=1", "-v", "-timeout=0", "-run=^TestHostLossSoak$", "./cmd/synbak")
	cmd.Env = append(os.Environ(), "SYNBAK_HOSTLOSS_TRIALS="+strconv.Itoa(trials), "SYNBAK_HOSTLOSS_COMMITS="+strconv.Itoa(commits))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	log, err := os.CreateTemp("", "hostloss-*.log")
	if err != nil {
		return err
	}
	defer log.Close()
	if err := cmd.Start(); err != nil {
		return err
	}
	var results []result
	sc := bufio.NewScanner(io.TeeReader(out, log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		_, js, ok := strings.Cut(line, "hostloss-result ")
		if !ok {
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			return fmt.Errorf("parse %q: %w", line, err)
		}
		results = append(results, r)
		fmt.Printf("trial %2d  %-8s acknowledged %6d  restored %6d  missing %d\n", len(results), r.Mode, r.Acked, r.Restored, r.Missing)
	}
	testErr := cmd.Wait()

	acked, missing := 0, 0
	byMode := map[string][3]int{}
	for _, r := range results {
		acked += r.Acked
		missing += r.Missing
		m := byMode[r.Mode]
		m[0]++
		m[1] += r.Acked
		m[2] += r.Missing
		byMode[r.Mode] = m
	}
	fmt.Printf("\n| mode | trials | commits acknowledged | missing after restore --latest |\n|---|---|---|---|\n")
	for _, mode := range []string{"running", "sigterm", "kill9"} {
		m := byMode[mode]
		fmt.Printf("| %s | %d | %d | %d |\n", mode, m[0], m[1], m[2])
	}
	fmt.Printf("| **all** | %d | %d | %d |\n\n%d of %d trials completed in %s; test log: %s\n",
		len(results), acked, missing, len(results), trials, time.Since(start).Round(time.Second), log.Name())
	if jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if testErr != nil {
		return fmt.Errorf("the trials failed (%v): see %s", testErr, log.Name())
	}
	if len(results) != trials {
		return fmt.Errorf("%d of %d trials reported", len(results), trials)
	}
	if missing > 0 {
		return fmt.Errorf("%d acknowledged commits missing", missing)
	}
	return nil
}
