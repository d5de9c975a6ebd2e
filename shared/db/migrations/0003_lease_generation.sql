-- Fencing token of the ownership lease: every claim, adoption or forced release bumps it.
-- An owner writes (events, state) only while the generation it claimed is still current,
-- so an instance that lost its lease (paused, partitioned) cannot write after its adopter.
ALTER TABLE sessions ADD COLUMN lease_generation bigint NOT NULL DEFAULT 0;

-- The lease sweeper's scan: leases that ran out while still naming an owner.
CREATE INDEX sessions_lease_expiry_idx ON sessions (lease_expires_at)
    WHERE owner_instance_id IS NOT NULL;
