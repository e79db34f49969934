package main

// clusterSettings are this benchmark's postgresql.conf additions.
const clusterSettings = `
max_wal_size = 4GB
archive_mode = on
archive_command = '/bin/true'
min_wal_size = 256MB
`
