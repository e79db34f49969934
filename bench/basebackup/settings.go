package main

// clusterSettings are this benchmark's postgresql.conf additions.
const clusterSettings = `
max_wal_size = 4GB
min_wal_size = 256MB
`
