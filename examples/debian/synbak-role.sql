-- The synbak role's grants in the Synapse database, after
--   sudo -u postgres createuser --replication --pwprompt synbak
-- run as:
--   sudo -u postgres psql -d synapse -f /usr/share/doc/synbak/examples/synbak-role.sql
-- (run by TestReadmeServiceSteps on a throwaway cluster).
GRANT CONNECT ON DATABASE synapse TO synbak;
-- Media completeness checks (a file is copied once its row says it is
-- complete) and `synbak verify --media`:
GRANT SELECT ON local_media_repository, local_media_repository_thumbnails TO synbak;
