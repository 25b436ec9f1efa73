-- The deployment network's subnet, allocated from NETWORK_POOL (NULL for networks made by
-- Docker's default address pools before this column existed).
ALTER TABLE deployments ADD COLUMN subnet TEXT;
CREATE UNIQUE INDEX deployments_subnet ON deployments (subnet) WHERE subnet IS NOT NULL;
