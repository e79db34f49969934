package main

import "github.com/synbak/synbak/bench/internal/walgen"

// The WAL generator shared with the other benchmarks.
type genResult = walgen.Result

var (
	walLSN      = walgen.WALLSN
	pgbench     = walgen.Pgbench
	tail        = walgen.Tail
	generate    = walgen.Generate
	synapseLoad = walgen.SynapseLoad
	sampleRatio = walgen.SampleRatio
	logf        = walgen.Logf
	tpsRE       = walgen.TPSRE
)
