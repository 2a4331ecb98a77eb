"""What the cluster's job runner needs beyond the embedded tables (PostgreSQL only; entry 12
of ``relay.storage.schema_list``).

- **Video holds owned by the cluster.** A video job's hold outlives the request and any
  instance, so it is not an instance's: ``relay.cluster.pg_videos`` moves the request's
  hold to the owner ``JOBS_OWNER`` (``holds.instance_id``, no row in ``instances``), with
  the job id as its ``request_id``. The lease sweep only releases holds of instances whose
  lease ran out, so it never touches these; the job runner settles or releases each once,
  when its job completes or fails. The index finds a job's hold.
- **Archive files in PostgreSQL** (``relay.cluster.pg_retention``): every instance can
  serve every archive without a shared disk, and an archive's bytes commit in the same
  transaction as its ``archives`` row, so there is no temporary file, rename or orphan to
  recover. Stored in chunks of at most ``ARCHIVE_CHUNK_BYTES`` (one ``bytea`` per row), so
  neither writing nor serving an archive holds the whole file in memory.
"""

from __future__ import annotations

__all__ = ["ARCHIVE_CHUNK_BYTES", "JOBS_OWNER", "POSTGRESQL_CLUSTER_JOBS"]

# holds.instance_id of the holds the cluster owns (video jobs); never an instance's id
# (those are "<name>-<hex>"), never in ``instances``, so never reaped.
JOBS_OWNER = "cluster:jobs"
ARCHIVE_CHUNK_BYTES = 1 << 20

POSTGRESQL_CLUSTER_JOBS = f"""
CREATE INDEX holds_of_jobs ON holds (request_id) WHERE instance_id = '{JOBS_OWNER}';

CREATE TABLE archive_chunks (
    name text NOT NULL REFERENCES archives (name) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (name, seq)
);
"""
