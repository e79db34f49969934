package main

// clusterSettings are this benchmark's postgresql.conf additions.
const clusterSettings = `
# The benchmark's slots hold all WAL; no checkpoint should recycle anything.
wal_keep_size = 0
max_wal_size = 64GB
min_wal_size = 1GB
# Speeds up generating the WAL; the lag phase sets it back per session.
synchronous_commit = off
`
